//! What the loop needs from a pretext model: the seam that lets one loop train every pretext
//! task (upstream's `PretrainingModelFactory` builds the model; the loop only calls this).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;
use virtex::{
    CaptioningModel, ClassificationKind, ClassificationModel, ImportOptions, InitReport,
    MaskedLmModel, Precision, VirtexError,
};
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
        if is_pytorch_file(path) {
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

/// Token classification (`model.name = token_classification`, upstream
/// `TokenClassificationModel`): each image's caption tokens, special tokens excluded, are its
/// labels (`virtex_loss::token_classification_loss`). Multilabel classification
/// (`model.name = multilabel_classification`, upstream `MultiLabelClassificationModel`): each
/// image's COCO object categories ([`Batch::object_labels`], padded with the ignored background
/// id 0) are its labels.
impl<B: Backend> PretextModel<B> for ClassificationModel<B> {
    fn from_config(config: &PretrainConfig, device: &B::Device) -> Result<Self, TrainError> {
        crate::factories::classification_model(config, device)
    }

    /// # Panics
    /// For multilabel classification, on a batch without [`Batch::object_labels`]: the loop's
    /// loaders attach them (`virtex_data::CollatedBatch::to_device_labelled`), and a batch
    /// without them would otherwise train on nothing.
    fn objective(&self, batch: &Batch<B>) -> Objective<B> {
        let labels = match self.config.kind {
            ClassificationKind::Token => batch.caption_tokens.clone(),
            ClassificationKind::Multilabel => batch.object_labels.clone().expect(
                "a multilabel-classification batch carries its object labels \
                 (CollatedBatch::to_device_labelled)",
            ),
        };
        let loss = self.loss(batch.images.clone(), labels);
        Objective {
            loss: loss.clone(),
            components: vec![(self.config.kind.name(), loss)],
        }
    }

    fn save(&self, path: &Path) -> Result<(), VirtexError> {
        ClassificationModel::save(self, path)
    }

    fn load(path: &Path, device: &B::Device) -> Result<Self, VirtexError> {
        ClassificationModel::load(path, device)
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        if !is_pytorch_file(path) {
            return ClassificationModel::load_weights(self, path);
        }
        let device = self.textual.output.weight.device();
        let (loaded, _) =
            ClassificationModel::from_official_checkpoint(path, self.config.kind, &device)?;
        if !same_config(&loaded.config, &self.config) {
            return Err(VirtexError::InvalidConfig(format!(
                "`{}` holds another classification model than the configured one",
                path.display()
            )));
        }
        *self = loaded;
        Ok(())
    }

    /// A linear head has no depth: everything is loaded (as [`PretextModel::load_weights`]).
    fn init_from(&mut self, path: &Path) -> Result<InitReport, VirtexError> {
        PretextModel::load_weights(self, path)?;
        Ok(everything_loaded(&self.visual.cnn, &self.textual))
    }

    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError> {
        Ok(self.visual.cnn.save_torchvision_safetensors(path)?)
    }

    fn with_precision(self, precision: Precision) -> Self {
        ClassificationModel::with_precision(self, precision)
    }

    fn with_frozen_visual(mut self) -> Self {
        self.visual.cnn = self.visual.cnn.frozen();
        self
    }

    fn load_visual_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        self.visual.cnn.load_weights(path)?;
        Ok(())
    }
}

/// Masked language modelling (`model.name = masked_lm`, upstream `MaskedLMModel`): each caption
/// is masked by upstream's rule ([`virtex::mask_tokens`]: ceil(0.15·(len − 2)) positions,
/// never `[SOS]`/`[EOS]`, 85 % `[MASK]` with a label, 10 % a random token, 5 % kept) and the
/// loss is the cross-entropy at the `[MASK]`ed positions.
///
/// Upstream masks in its dataset with Python's `random`; here the masks are drawn in the
/// objective from a host RNG seeded by one draw of the backend's generator, which the loop
/// reseeds every iteration: a resumed run replays the same masks, and every epoch masks anew.
impl<B: Backend> PretextModel<B> for MaskedLmModel<B> {
    fn from_config(config: &PretrainConfig, device: &B::Device) -> Result<Self, TrainError> {
        crate::factories::masked_lm_model(config, device)
    }

    fn objective(&self, batch: &Batch<B>) -> Objective<B> {
        let device = batch.images.device();
        let draw: f64 = Tensor::<B, 1>::random([1], Distribution::Uniform(0.0, 1.0), &device)
            .into_scalar()
            .elem();
        let mut rng = StdRng::seed_from_u64((draw * (1u64 << 53) as f64) as u64);
        let [rows, positions] = batch.caption_tokens.dims();
        let tokens: Vec<i64> = batch
            .caption_tokens
            .to_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        let lengths: Vec<i64> = batch
            .caption_lengths
            .to_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        let padding = self.textual.embedding.padding_idx as i64;
        let mut masked = vec![padding; rows * positions];
        let mut labels = vec![0i64; rows * positions];
        for row in 0..rows.min(lengths.len()) {
            let length = (lengths[row].max(0) as usize).min(positions);
            let caption: Vec<u32> = tokens[row * positions..row * positions + length]
                .iter()
                .map(|&token| token as u32)
                .collect();
            let (row_masked, row_labels) = virtex::mask_tokens(
                &caption,
                self.textual.vocab_size(),
                self.config.mask_index as u32,
                &mut rng,
            );
            for (position, (token, label)) in row_masked.into_iter().zip(row_labels).enumerate() {
                masked[row * positions + position] = i64::from(token);
                labels[row * positions + position] = i64::from(label);
            }
        }
        let to_tensor = |values: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(values, [rows, positions]), &device)
        };
        let loss = self.loss(
            batch.images.clone(),
            to_tensor(masked),
            batch.caption_lengths.clone(),
            to_tensor(labels),
        );
        Objective {
            loss: loss.clone(),
            components: vec![("masked_lm", loss)],
        }
    }

    fn save(&self, path: &Path) -> Result<(), VirtexError> {
        MaskedLmModel::save(self, path)
    }

    fn load(path: &Path, device: &B::Device) -> Result<Self, VirtexError> {
        MaskedLmModel::load(path, device)
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        if !is_pytorch_file(path) {
            return MaskedLmModel::load_weights(self, path);
        }
        let device = self.textual.output.bias.device();
        let options = ImportOptions {
            attention_heads: Some(self.config.textual.attention_heads),
            dropout: self.config.textual.dropout,
            ..ImportOptions::default()
        };
        let (loaded, _) = MaskedLmModel::from_official_checkpoint(path, &options, &device)?;
        if !same_config(&loaded.config, &self.config) {
            return Err(VirtexError::InvalidConfig(format!(
                "`{}` holds another masked language model than the configured one",
                path.display()
            )));
        }
        *self = loaded;
        Ok(())
    }

    /// Loads everything (as [`PretextModel::load_weights`]); another depth is not supported
    /// for this pretext.
    fn init_from(&mut self, path: &Path) -> Result<InitReport, VirtexError> {
        PretextModel::load_weights(self, path)?;
        Ok(everything_loaded(&self.visual.cnn, &self.textual))
    }

    fn export_backbone(&self, path: &Path) -> Result<(), VirtexError> {
        Ok(self.visual.cnn.save_torchvision_safetensors(path)?)
    }

    fn with_precision(self, precision: Precision) -> Self {
        MaskedLmModel::with_precision(self, precision)
    }

    fn with_frozen_visual(mut self) -> Self {
        self.visual.cnn = self.visual.cnn.frozen();
        self
    }

    fn load_visual_weights(&mut self, path: &Path) -> Result<(), VirtexError> {
        self.visual.cnn.load_weights(path)?;
        Ok(())
    }
}

/// Whether `path` is a PyTorch checkpoint (an official `.pth`) rather than our format.
fn is_pytorch_file(path: &Path) -> bool {
    matches!(
        virtex::backbone::WeightsFormat::detect(path),
        Ok(virtex::backbone::WeightsFormat::Pytorch)
    )
}

/// Two model configs are the same architecture; compared through their JSON form, as burn's
/// `Config` derives no `PartialEq`.
fn same_config<C: serde::Serialize>(a: &C, b: &C) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// The report of an `--init-from` that loaded every tensor (the pretext loads are strict): the
/// CNN's parameter count and the textual head's parameter paths (`textual.…`, the file's keys).
fn everything_loaded<B: Backend>(cnn: &impl Module<B>, textual: &impl Module<B>) -> InitReport {
    let mut cnn_paths = ParamPaths::<B>::new("visual.cnn");
    cnn.visit(&mut cnn_paths);
    let mut textual_paths = ParamPaths::<B>::new("textual");
    textual.visit(&mut textual_paths);
    InitReport {
        cnn_tensors: cnn_paths.paths.len(),
        loaded: textual_paths.paths,
        ..InitReport::default()
    }
}

/// Collects the dotted path of every float parameter of a module (burn's derive enters a
/// module per field and per `Vec` index).
struct ParamPaths<B> {
    stack: Vec<String>,
    paths: Vec<String>,
    backend: std::marker::PhantomData<B>,
}

impl<B> ParamPaths<B> {
    fn new(root: &str) -> Self {
        Self {
            stack: vec![root.to_string()],
            paths: Vec::new(),
            backend: std::marker::PhantomData,
        }
    }
}

impl<B: Backend> burn::module::ModuleVisitor<B> for ParamPaths<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, _param: &burn::module::Param<Tensor<B, D>>) {
        self.paths.push(self.stack.join("."));
    }
}
