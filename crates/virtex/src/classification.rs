//! The classification pretext models of the ablations (`virtex/models/classification.py`):
//! upstream's `TokenClassificationModel` (`token_classification_R_50`) and
//! `MultiLabelClassificationModel` (`multilabel_classification_R_50`), one
//! [`ClassificationModel`] with a [`ClassificationKind`].
//!
//! The textual head is upstream's `LinearTextualHead` (`TEXTUAL.NAME: "none"`): global average
//! pooling of the `[B, C, 7, 7]` grid, then `Linear(C, V)`. The loss is the cross-entropy
//! against a K-hot target of each image's unique labels
//! ([`unique_label_cross_entropy`](virtex_loss::unique_label_cross_entropy)).
//!
//! Upstream's token classification is broken at its HEAD (`TokenClassificationDataset` never
//! sets `self.tokenizer`, so every `__getitem__` raises `AttributeError`); this is the intended
//! behaviour of v1.0, which worked: the labels are the caption's tokens.

use std::path::Path;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use virtex_backbone::{Precision, ResNetConfig};
use virtex_loss::{unique_label_cross_entropy, MULTILABEL_IGNORE, TOKEN_CLASSIFICATION_IGNORE};

use crate::error::{Result, VirtexError};
use crate::model::VisualBackbone;

/// Which classification ablation: it sets the default vocabulary and the ignored ids.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ClassificationKind {
    /// `token_classification`: the caption's BPE tokens as labels (V = 10000), ignoring
    /// `<unk>`/padding, `[SOS]`, `[EOS]` and `[MASK]` (ids 0..=3).
    Token,
    /// `multilabel_classification`: the image's COCO categories remapped to 1..=80 (V = 81),
    /// ignoring 0 (background and padding).
    Multilabel,
}

impl ClassificationKind {
    /// Upstream's `MODEL.NAME`: `token_classification` or `multilabel_classification`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token_classification",
            Self::Multilabel => "multilabel_classification",
        }
    }

    /// The kind of upstream's `MODEL.NAME`, `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "token_classification" => Some(Self::Token),
            "multilabel_classification" => Some(Self::Multilabel),
            _ => None,
        }
    }

    /// Upstream's `DATA.VOCAB_SIZE` for this task: 10000 or 81.
    pub fn default_vocab_size(self) -> usize {
        match self {
            Self::Token => 10_000,
            Self::Multilabel => 81,
        }
    }

    /// Label ids the loss ignores (upstream's `ignore_indices`).
    pub fn ignore_ids(self) -> &'static [usize] {
        match self {
            Self::Token => &TOKEN_CLASSIFICATION_IGNORE,
            Self::Multilabel => &MULTILABEL_IGNORE,
        }
    }
}

/// Configuration of a [`ClassificationModel`].
#[derive(Config, Debug)]
pub struct ClassificationModelConfig {
    /// The visual backbone.
    pub backbone: ResNetConfig,
    /// Token or multilabel classification.
    pub kind: ClassificationKind,
    /// Number of classes `V` (10000 for tokens, 81 for COCO categories upstream).
    pub vocab_size: usize,
}

impl ClassificationModelConfig {
    /// `token_classification_R_50` (or another backbone): V = 10000, ids 0..=3 ignored.
    pub fn token_classification(backbone: ResNetConfig) -> Self {
        Self::new(backbone, ClassificationKind::Token, 10_000)
    }

    /// `multilabel_classification_R_50` (or another backbone): V = 81, id 0 ignored.
    pub fn multilabel_classification(backbone: ResNetConfig) -> Self {
        Self::new(backbone, ClassificationKind::Multilabel, 81)
    }

    /// From upstream's names, e.g. `("token_classification", "torchvision::resnet50", 10000)`.
    pub fn from_names(model: &str, visual: &str, vocab_size: usize) -> Result<Self> {
        let kind = ClassificationKind::from_name(model).ok_or_else(|| {
            VirtexError::InvalidConfig(format!(
                "`{model}` is not a classification model (expected `token_classification` or \
                 `multilabel_classification`)"
            ))
        })?;
        let config = Self::new(ResNetConfig::from_name(visual)?, kind, vocab_size);
        config.validate()?;
        Ok(config)
    }

    /// Checks the vocabulary: every ignored id must be a class, and one class must remain.
    pub fn validate(&self) -> Result<()> {
        let ignored = self.kind.ignore_ids();
        if self.vocab_size <= ignored.len() {
            return Err(VirtexError::InvalidConfig(format!(
                "{} needs more than {} classes (ids {ignored:?} are ignored), got vocab_size {}",
                self.kind.name(),
                ignored.len(),
                self.vocab_size
            )));
        }
        Ok(())
    }

    /// Builds the model: the backbone with torchvision's initialisation, the linear head with
    /// `nn.Linear`'s (U(−1/√C, 1/√C) for weight and bias, as upstream leaves it).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ClassificationModel<B>> {
        self.validate()?;
        let cnn = self.backbone.try_init(device)?;
        let output =
            LinearConfig::new(self.backbone.output_channels(), self.vocab_size).init(device);
        Ok(ClassificationModel {
            visual: VisualBackbone { cnn },
            textual: LinearTextualHead { output },
            config: self.clone(),
        })
    }
}

/// Upstream's `LinearTextualHead`: global average pooling of the visual grid, then one linear
/// layer (`textual.output.{weight,bias}` in a checkpoint).
#[derive(Module, Debug)]
pub struct LinearTextualHead<B: Backend> {
    /// `Linear(C, V)`; its weight is `[C, V]` (burn's layout, the transpose of torch's).
    pub output: Linear<B>,
}

impl<B: Backend> LinearTextualHead<B> {
    /// # Shapes
    /// - `visual_features`: `[B, C, h, w]`
    /// - returns: `[B, V]` logits
    pub fn forward(&self, visual_features: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = visual_features.dims();
        let pooled = visual_features
            .reshape([b, c, h * w])
            .mean_dim(2)
            .reshape([b, c]);
        self.output.forward(pooled)
    }
}

/// The loss of a [`ClassificationModel`] with its logits (upstream's `loss` and
/// `loss_components`).
#[derive(Debug, Clone)]
pub struct ClassificationOutput<B: Backend> {
    /// The objective, `[1]`.
    pub loss: Tensor<B, 1>,
    /// The logits, `[B, V]`.
    pub logits: Tensor<B, 2>,
}

/// Token or multilabel classification: the CNN (`visual.cnn.*`, as [`crate::CaptioningModel`]'s)
/// and a [`LinearTextualHead`] (`textual.output.*`).
///
/// Training/evaluation mode follows burn: BatchNorm uses batch statistics on an autodiff
/// backend; call `model.valid()` for evaluation.
#[derive(Module, Debug)]
pub struct ClassificationModel<B: Backend> {
    /// The CNN (`visual.cnn.*`).
    pub visual: VisualBackbone<B>,
    /// Pooling and the linear layer (`textual.output.*`).
    pub textual: LinearTextualHead<B>,
    /// The configuration the model was built from (not a parameter).
    pub config: ClassificationModelConfig,
}

impl<B: Backend> ClassificationModel<B> {
    /// Logits of every class.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, ImageNet-normalised
    /// - returns: `[B, V]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.textual.forward(self.visual.forward(images))
    }

    /// The objective: per image, the mean over its unique labels (the kind's ignored ids left
    /// out) of `−log_softmax(logits)`, then the batch mean. An image left without a label adds 0
    /// (upstream would give NaN).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - `labels`: `[B, K]`, ids in `0..V`, padded with an ignored id (0): the caption tokens
    ///   for token classification, the category ids for multilabel
    /// - returns: `[1]`
    pub fn loss(&self, images: Tensor<B, 4>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        self.loss_from_logits(self.forward(images), labels)
    }

    /// [`ClassificationModel::loss`] with the logits.
    ///
    /// # Shapes
    /// as [`ClassificationModel::loss`]
    pub fn forward_eval(
        &self,
        images: Tensor<B, 4>,
        labels: Tensor<B, 2, Int>,
    ) -> ClassificationOutput<B> {
        let logits = self.forward(images);
        ClassificationOutput {
            loss: self.loss_from_logits(logits.clone(), labels),
            logits,
        }
    }

    /// The loss of [`ClassificationModel::loss`] on precomputed logits.
    ///
    /// # Shapes
    /// - `logits`: `[B, V]`
    /// - `labels`: `[B, K]`
    /// - returns: `[1]`
    pub fn loss_from_logits(
        &self,
        logits: Tensor<B, 2>,
        labels: Tensor<B, 2, Int>,
    ) -> Tensor<B, 1> {
        unique_label_cross_entropy(logits, labels, self.config.kind.ignore_ids())
    }

    /// The `[B, C, h, w]` grid of the backbone.
    pub fn visual_features(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.visual.forward(images)
    }

    /// The model with its convolutions in `precision` (the linear head stays f32: it is one
    /// `[B, C] × [C, V]` product). Not saved with the weights.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            visual: self.visual.with_precision(precision),
            ..self
        }
    }

    /// Saves the backbone as a torchvision `state_dict` `.pth`, as `virtex export --format
    /// torchvision` does for a captioning model.
    pub fn save_torchvision_backbone(&self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.sync_running_statistics();
        Ok(self.visual.cnn.save_torchvision_pth(path)?)
    }

    /// Saves the backbone for Detectron2 (upstream's `detectron2_backbone_state_dict()`).
    pub fn save_detectron2_backbone(&self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.sync_running_statistics();
        Ok(self.visual.cnn.save_detectron2_pth(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use virtex_backbone::BlockKind;

    fn tiny(kind: ClassificationKind, vocab: usize) -> ClassificationModelConfig {
        ClassificationModelConfig::new(
            ResNetConfig::new(BlockKind::Basic, [1, 1, 1, 1]).with_stem_channels(4),
            kind,
            vocab,
        )
    }

    #[test]
    fn kinds_set_upstreams_vocabulary_and_ignored_ids() {
        let token = ClassificationModelConfig::token_classification(ResNetConfig::resnet50());
        assert_eq!(
            (token.vocab_size, token.kind.ignore_ids()),
            (10_000, &[0, 1, 2, 3][..])
        );
        let multilabel =
            ClassificationModelConfig::multilabel_classification(ResNetConfig::resnet50());
        assert_eq!(
            (multilabel.vocab_size, multilabel.kind.ignore_ids()),
            (81, &[0][..])
        );
        for kind in [ClassificationKind::Token, ClassificationKind::Multilabel] {
            assert_eq!(ClassificationKind::from_name(kind.name()), Some(kind));
        }
        assert!(ClassificationModelConfig::from_names("captioning", "resnet50", 10).is_err());
        assert!(tiny(ClassificationKind::Token, 4).validate().is_err());
    }

    #[test]
    fn the_head_pools_then_projects() {
        let device = Default::default();
        let model = tiny(ClassificationKind::Multilabel, 9)
            .init::<Flex>(&device)
            .unwrap();
        let grid =
            Tensor::<Flex, 4>::random([2, 32, 2, 3], burn::tensor::Distribution::Default, &device);
        let pooled = grid.clone().mean_dim(3).mean_dim(2).reshape([2, 32]);
        let expected = model.textual.output.forward(pooled);
        let logits = model.textual.forward(grid);
        assert_eq!(logits.dims(), [2, 9]);
        logits.into_data().assert_approx_eq::<f32>(
            &expected.into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }
}
