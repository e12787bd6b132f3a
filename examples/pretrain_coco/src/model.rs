//! The two pretraining models behind one trait, so the loop is written once.

use std::path::Path;

use burn::prelude::*;
use virtex::{
    BidirectionalCaptioningModel, CaptioningModelConfig, ForwardCaptioningModel, Precision,
    VirtexError,
};
use virtex_data::Batch;

/// The loss of one batch and its two logged components.
#[derive(Debug, Clone)]
pub struct Objective<B: Backend> {
    /// What is optimised, `[1]`.
    pub loss: Tensor<B, 1>,
    /// `captioning_forward`, `[1]`.
    pub forward: Tensor<B, 1>,
    /// `captioning_backward`, `[1]` (zero for the forward-only model).
    pub backward: Tensor<B, 1>,
}

/// A captioning model the pretraining loop can train, checkpoint and initialise.
pub trait PretrainModel<B: Backend>: Module<B> + Sized {
    /// Builds a freshly initialised model.
    fn init(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self, VirtexError>;
    /// The training objective on one batch (train mode on an autodiff backend).
    fn objective(&self, batch: &Batch<B>) -> Objective<B>;
    /// Saves in our format.
    fn save_ours(&self, path: &Path) -> Result<(), VirtexError>;
    /// Loads our format.
    fn load_ours(path: &Path, device: &B::Device) -> Result<Self, VirtexError>;
    /// Loads an official VirTex `.pth` into this (matching) model.
    fn load_official(&mut self, path: &Path) -> Result<(), VirtexError>;
    /// Loads our format into this (matching) model, keeping its configuration (dropout).
    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError>;
    /// Exports the CNN as torchvision-named safetensors.
    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError>;
    /// The model with its convolutions and matrix products in `precision` (not saved in
    /// checkpoints: the loop sets it from `train.precision` after building or loading).
    fn with_precision(self, precision: Precision) -> Self;
}

impl<B: Backend> PretrainModel<B> for BidirectionalCaptioningModel<B> {
    fn init(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self, VirtexError> {
        config.init_bicaptioning(device)
    }

    fn objective(&self, batch: &Batch<B>) -> Objective<B> {
        let losses = self.forward_train(
            batch.images.clone(),
            batch.caption_tokens.clone(),
            batch.noitpac_tokens.clone(),
            batch.caption_lengths.clone(),
        );
        Objective {
            loss: losses.loss,
            forward: losses.captioning_forward,
            backward: losses.captioning_backward,
        }
    }

    fn save_ours(&self, path: &Path) -> Result<(), VirtexError> {
        self.save(path)
    }

    fn load_ours(path: &Path, device: &B::Device) -> Result<Self, VirtexError> {
        Self::load(path, device)
    }

    fn load_official(&mut self, path: &Path) -> Result<(), VirtexError> {
        self.load_official_weights(path).map(|_| ())
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        Self::load_weights(self, path)
    }

    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError> {
        Ok(self.visual.cnn.save_torchvision_safetensors(path)?)
    }

    fn with_precision(self, precision: Precision) -> Self {
        Self::with_precision(self, precision)
    }
}

impl<B: Backend> PretrainModel<B> for ForwardCaptioningModel<B> {
    fn init(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self, VirtexError> {
        config.init_captioning(device)
    }

    fn objective(&self, batch: &Batch<B>) -> Objective<B> {
        let loss = self.forward_train(
            batch.images.clone(),
            batch.caption_tokens.clone(),
            batch.caption_lengths.clone(),
        );
        Objective {
            backward: loss.zeros_like(),
            forward: loss.clone(),
            loss,
        }
    }

    fn save_ours(&self, path: &Path) -> Result<(), VirtexError> {
        self.save(path)
    }

    fn load_ours(path: &Path, device: &B::Device) -> Result<Self, VirtexError> {
        Self::load(path, device)
    }

    fn load_official(&mut self, path: &Path) -> Result<(), VirtexError> {
        self.load_official_weights(path).map(|_| ())
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        Self::load_weights(self, path)
    }

    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError> {
        Ok(self.visual.cnn.save_torchvision_safetensors(path)?)
    }

    fn with_precision(self, precision: Precision) -> Self {
        Self::with_precision(self, precision)
    }
}
