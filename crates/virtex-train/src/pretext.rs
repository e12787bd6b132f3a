//! What the loop needs from a pretext model: the seam that lets one loop train every pretext
//! task (upstream's `PretrainingModelFactory` builds the model; the loop only calls this).

use std::path::Path;

use burn::prelude::*;
use virtex::{CaptioningModel, InitReport, Precision, VirtexError};
use virtex_data::Batch;

use crate::config::PretrainConfig;
use crate::error::TrainError;

/// The loss of one batch and its logged components.
#[derive(Debug, Clone)]
pub struct Objective<B: Backend> {
    /// What is optimised, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Named parts of the loss for the log (upstream's `loss_components`), each `[1]`.
    pub components: Vec<(&'static str, Tensor<B, 1>)>,
}

/// A model the pretraining loop can train, validate, checkpoint and export: a pretext task is
/// one of these plus its loss, never a new loop.
pub trait PretextModel<B: Backend>: Module<B> + Sized {
    /// A freshly initialised model of the configuration's `model` section (upstream's
    /// `PretrainingModelFactory`).
    fn from_config(config: &PretrainConfig, device: &B::Device) -> Result<Self, TrainError>;
    /// The training objective on one batch (train mode on an autodiff backend, evaluation mode
    /// on its inner backend).
    fn objective(&self, batch: &Batch<B>) -> Objective<B>;
    /// Saves in our format (the configuration travels in the file).
    fn save(&self, path: &Path) -> Result<(), VirtexError>;
    /// Loads our format, rebuilding the model from the file's configuration.
    fn load(path: &Path, device: &B::Device) -> Result<Self, VirtexError>;
    /// Loads weights into this configured model, which keeps its settings (dropout): an
    /// official PyTorch checkpoint, or our format with the same architecture.
    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError>;
    /// Initialises this configured model from a checkpoint whose textual head may have another
    /// depth (`--init-from`): what matches is loaded, the rest keeps its initialisation, and
    /// the report names both (see [`virtex::CaptioningModel::init_from`]).
    fn init_from(&mut self, path: &Path) -> Result<InitReport, VirtexError>;
    /// Writes the visual backbone with torchvision key names (safetensors).
    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError>;
    /// The model with its convolutions and matrix products in `precision` (not saved in
    /// checkpoints: the loop sets it from `train.precision` after building or loading).
    fn with_precision(self, precision: Precision) -> Self;
    /// The model with its visual backbone frozen (`model.visual_frozen`): no gradient, and
    /// BatchNorm in evaluation mode (not saved: the loop sets it after building or loading).
    fn with_frozen_visual(self) -> Self;
    /// Loads torchvision-layout weights into the visual backbone (`model.visual_pretrained`).
    fn load_visual_weights(&mut self, path: &Path) -> Result<(), VirtexError>;
}

impl<B: Backend> PretextModel<B> for CaptioningModel<B> {
    fn from_config(config: &PretrainConfig, device: &B::Device) -> Result<Self, TrainError> {
        crate::factories::captioning_model(config, device)
    }

    fn objective(&self, batch: &Batch<B>) -> Objective<B> {
        let losses = self.forward_train(
            batch.images.clone(),
            batch.caption_tokens.clone(),
            batch.noitpac_tokens.clone(),
            batch.caption_lengths.clone(),
        );
        let mut components = vec![("captioning_forward", losses.captioning_forward)];
        components.extend(
            losses
                .captioning_backward
                .map(|backward| ("captioning_backward", backward)),
        );
        Objective {
            loss: losses.loss,
            components,
        }
    }

    fn save(&self, path: &Path) -> Result<(), VirtexError> {
        CaptioningModel::save(self, path)
    }

    fn with_frozen_visual(self) -> Self {
        CaptioningModel::with_frozen_visual(self)
    }

    fn load_visual_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        CaptioningModel::load_visual_weights(self, path)
    }

    fn load(path: &Path, device: &B::Device) -> Result<Self, VirtexError> {
        CaptioningModel::load(path, device)
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        let is_pytorch = matches!(
            virtex::backbone::WeightsFormat::detect(path),
            Ok(virtex::backbone::WeightsFormat::Pytorch)
        );
        if is_pytorch {
            self.load_official_weights(path).map(|_| ())
        } else {
            CaptioningModel::load_weights(self, path)
        }
    }

    fn init_from(&mut self, path: &Path) -> Result<InitReport, VirtexError> {
        CaptioningModel::init_from(self, path)
    }

    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError> {
        Ok(self.visual.cnn.save_torchvision_safetensors(path)?)
    }

    fn with_precision(self, precision: Precision) -> Self {
        CaptioningModel::with_precision(self, precision)
    }
}
