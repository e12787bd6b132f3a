//! The masked language modelling ablation (`masked_lm_R_50_L1_H2048`): upstream's
//! `MaskedLMModel` (`virtex/models/masked_lm.py`) and the masking of its dataset
//! (`virtex/data/datasets/masked_lm.py`).
//!
//! The textual head is the captioning [`TransformerDecoderTextualHead`] (`textual.*` keys, tied
//! output layer) run **without** the causal mask (`mask_future_positions = false`, as
//! upstream's factory sets it for every `MODEL.NAME` but `virtex`/`captioning`/`bicaptioning`):
//! every position sees the whole (masked) caption. The loss is `CrossEntropyLoss(ignore_index=0)`
//! of the logits at every position against `masked_labels`, with no shift ([`masked_lm_loss`]).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::{Rng, RngExt};
use virtex_backbone::{Precision, ResNetConfig};
use virtex_textual::{TextualHeadConfig, TransformerDecoderTextualHead};

use crate::error::{Result, VirtexError};
use crate::model::VisualBackbone;

/// `[MASK]`'s id in VirTex's vocabulary (`DATA.MASK_INDEX`).
pub const MASK_INDEX: u32 = 3;

/// Configuration of [`mask_tokens_with`]: upstream's `MaskedLmDataset` arguments, with the
/// values of its config (`mask_probability` 0.85; the dataset's own default is 0.80).
#[derive(Config, Debug)]
pub struct MaskingConfig {
    /// Vocabulary size `V`: replacement tokens are drawn from `0..V`.
    pub vocab_size: usize,
    /// `[MASK]`'s id.
    #[config(default = 3)]
    pub mask_index: u32,
    /// Label of every position without a target (`padding_idx`, ignored by the loss).
    #[config(default = 0)]
    pub padding_idx: u32,
    /// Share of the caption's inner tokens chosen: `ceil(mask_proportion · (len − 2))`.
    #[config(default = 0.15)]
    pub mask_proportion: f64,
    /// A chosen token becomes `[MASK]` (with a label) when a uniform draw is `≤` this.
    #[config(default = 0.85)]
    pub mask_probability: f64,
    /// A chosen token becomes a random id (without a label) when the draw is in
    /// `(mask_probability, mask_probability + replace_probability]`; above, it stays unchanged
    /// (without a label).
    #[config(default = 0.10)]
    pub replace_probability: f64,
}

/// Upstream's masking with its config's values ([`MaskingConfig`] defaults): see
/// [`mask_tokens_with`].
pub fn mask_tokens<R: Rng + ?Sized>(
    tokens: &[u32],
    vocab_size: usize,
    mask_index: u32,
    rng: &mut R,
) -> (Vec<u32>, Vec<u32>) {
    mask_tokens_with(
        tokens,
        &MaskingConfig::new(vocab_size).with_mask_index(mask_index),
        rng,
    )
}

/// Masks one unpadded caption `[SOS, t1..tn, EOS]` as upstream's `MaskedLmDataset` does:
///
/// 1. `k = ceil(mask_proportion · (len − 2))` positions are drawn without replacement from
///    `1..len−1`, so the first and last tokens (`[SOS]`, `[EOS]`) are never chosen;
/// 2. if `k == 1` the chosen token becomes `[MASK]`; otherwise each chosen token draws
///    `p ~ U[0, 1)`: `p ≤ mask_probability` → `[MASK]`, `p ≤ mask_probability +
///    replace_probability` → a uniform id in `0..V`, else it is left unchanged;
/// 3. the label of a `[MASK]`ed position is the original token; every other label is
///    `padding_idx`. So the loss only sees `[MASK]`ed positions.
///
/// Returns `(masked_tokens, masked_labels)`, both of `tokens.len()`. The random stream is
/// `rng`'s, not Python's `random`, so the choices differ from upstream's for a given seed; the
/// rule and its statistics are the same.
pub fn mask_tokens_with<R: Rng + ?Sized>(
    tokens: &[u32],
    config: &MaskingConfig,
    rng: &mut R,
) -> (Vec<u32>, Vec<u32>) {
    let mut masked = tokens.to_vec();
    let mut labels = vec![config.padding_idx; tokens.len()];
    let inner = tokens.len().saturating_sub(2);
    // In f64 like Python's `math.ceil((len - 2) * 0.15)`, so the counts agree exactly.
    let chosen = ((inner as f64 * config.mask_proportion).ceil().max(0.0) as usize).min(inner);
    let positions = rand::seq::index::sample(rng, inner, chosen);
    for position in positions.iter().map(|index| index + 1) {
        let mask = chosen == 1 || {
            let draw: f64 = rng.random();
            if draw <= config.mask_probability {
                true
            } else {
                if draw <= config.mask_probability + config.replace_probability {
                    masked[position] = rng.random_range(0..config.vocab_size.max(1)) as u32;
                }
                false
            }
        };
        if mask {
            labels[position] = tokens[position];
            masked[position] = config.mask_index;
        }
    }
    (masked, labels)
}

/// `nn.CrossEntropyLoss(ignore_index)` of the logits at every position against `labels`, with
/// no shift: a mean over the non-ignored labels of the batch (0, with a zero gradient, when
/// there is none; torch gives NaN).
///
/// # Panics
/// If the shapes disagree. Labels must be in `0..V`.
///
/// # Shapes
/// - `logits`: `[B, T, V]`
/// - `labels`: `[B, T]`
/// - returns: `[1]`
pub fn masked_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
    ignore_index: usize,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    assert_eq!(
        labels.dims(),
        [b, t],
        "masked_lm_loss: labels {:?} do not match logits {:?}",
        labels.dims(),
        logits.dims()
    );
    let n = b * t;
    let targets = labels.reshape([n, 1]);
    let picked = log_softmax(logits.reshape([n, v]), 1)
        .gather(1, targets.clone())
        .reshape([n]);
    let keep = targets
        .reshape([n])
        .not_equal_elem(ignore_index as i64)
        .float();
    let count = keep.clone().sum().clamp_min(1.0);
    (picked * keep).sum().neg() / count
}

/// Configuration of a [`MaskedLmModel`].
#[derive(Config, Debug)]
pub struct MaskedLmModelConfig {
    /// The visual backbone.
    pub backbone: ResNetConfig,
    /// The textual head; `mask_future_positions` is forced off by
    /// [`MaskedLmModelConfig::init`].
    pub textual: TextualHeadConfig,
    /// `[MASK]`'s id (`DATA.MASK_INDEX`).
    #[config(default = 3)]
    pub mask_index: usize,
}

impl MaskedLmModelConfig {
    /// From upstream's names, e.g. `("torchvision::resnet50",
    /// "transdec_postnorm::L1_H2048_A32_F8192", 10000, 30, 0.1)`.
    pub fn from_names(
        visual: &str,
        textual: &str,
        vocab_size: usize,
        max_caption_length: usize,
        dropout: f64,
    ) -> Result<Self> {
        let backbone = ResNetConfig::from_name(visual)?;
        let textual =
            TextualHeadConfig::from_name(textual, backbone.output_channels(), vocab_size)?
                .with_max_caption_length(max_caption_length)
                .with_dropout(dropout)
                .with_mask_future_positions(false);
        let config = Self::new(backbone, textual);
        config.validate()?;
        Ok(config)
    }

    /// `masked_lm_R_50_L1_H2048`: ResNet-50, `transdec_postnorm::L1_H2048_A32_F8192`, 10K
    /// vocabulary, 30 positions, dropout 0.1.
    pub fn masked_lm_r50_l1_h2048() -> Self {
        Self::new(
            ResNetConfig::resnet50(),
            TextualHeadConfig::l1_h2048().with_mask_future_positions(false),
        )
    }

    /// Checks that the parts fit together.
    pub fn validate(&self) -> Result<()> {
        self.textual.validate()?;
        let channels = self.backbone.output_channels();
        if channels != self.textual.visual_feature_size {
            return Err(VirtexError::InvalidConfig(format!(
                "the backbone outputs {channels} channels but the textual head expects {}",
                self.textual.visual_feature_size
            )));
        }
        if self.mask_index >= self.textual.vocab_size {
            return Err(VirtexError::InvalidConfig(format!(
                "mask_index {} is outside the vocabulary of {}",
                self.mask_index, self.textual.vocab_size
            )));
        }
        Ok(())
    }

    /// Builds the model (upstream's initialisation), with the head's causal mask off.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<MaskedLmModel<B>> {
        self.validate()?;
        let mut config = self.clone();
        config.textual.mask_future_positions = false;
        let cnn = config.backbone.try_init(device)?;
        let textual = config.textual.try_init(device)?;
        Ok(MaskedLmModel {
            visual: VisualBackbone { cnn },
            textual,
            config,
        })
    }
}

/// The loss of a [`MaskedLmModel`] with its logits.
#[derive(Debug, Clone)]
pub struct MaskedLmOutput<B: Backend> {
    /// The objective (upstream's `loss_components["masked_lm"]`), `[1]`.
    pub loss: Tensor<B, 1>,
    /// The logits of every position, `[B, T, V]`.
    pub logits: Tensor<B, 3>,
}

/// Upstream's `MaskedLMModel`: the CNN (`visual.cnn.*`) and a bidirectional transformer head
/// (`textual.*`) that predicts the `[MASK]`ed tokens of a caption from the image and the rest
/// of the caption.
///
/// Training/evaluation mode follows burn: BatchNorm uses batch statistics and dropout is
/// active on an autodiff backend; call `model.valid()` for evaluation.
#[derive(Module, Debug)]
pub struct MaskedLmModel<B: Backend> {
    /// The CNN (`visual.cnn.*`).
    pub visual: VisualBackbone<B>,
    /// The head, `mask_future_positions = false` (`textual.*`).
    pub textual: TransformerDecoderTextualHead<B>,
    /// The configuration the model was built from (not a parameter).
    pub config: MaskedLmModelConfig,
}

impl<B: Backend> MaskedLmModel<B> {
    /// Logits of every position of the masked captions.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - `masked_tokens`: `[B, T]`, captions after [`mask_tokens`], right-padded with 0
    /// - `caption_lengths`: `[B]`
    /// - returns: `[B, T, V]`
    pub fn forward(
        &self,
        images: Tensor<B, 4>,
        masked_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> Tensor<B, 3> {
        self.textual
            .forward(self.visual.forward(images), masked_tokens, caption_lengths)
    }

    /// The objective: `CrossEntropyLoss(ignore_index=padding_idx)` over every position against
    /// `masked_labels` (no shift).
    ///
    /// # Shapes
    /// - `images`, `masked_tokens`, `caption_lengths`: as [`MaskedLmModel::forward`]
    /// - `masked_labels`: `[B, T]`, the original token at `[MASK]`ed positions, 0 elsewhere
    /// - returns: `[1]`
    pub fn loss(
        &self,
        images: Tensor<B, 4>,
        masked_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
        masked_labels: Tensor<B, 2, Int>,
    ) -> Tensor<B, 1> {
        self.forward_eval(images, masked_tokens, caption_lengths, masked_labels)
            .loss
    }

    /// [`MaskedLmModel::loss`] with the logits.
    ///
    /// # Shapes
    /// as [`MaskedLmModel::loss`]
    pub fn forward_eval(
        &self,
        images: Tensor<B, 4>,
        masked_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
        masked_labels: Tensor<B, 2, Int>,
    ) -> MaskedLmOutput<B> {
        let logits = self.forward(images, masked_tokens, caption_lengths);
        MaskedLmOutput {
            loss: masked_lm_loss(
                logits.clone(),
                masked_labels,
                self.config.textual.padding_idx,
            ),
            logits,
        }
    }

    /// The `[B, C, h, w]` grid of the backbone.
    pub fn visual_features(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.visual.forward(images)
    }

    /// The model with its convolutions and matrix products in `precision` (as
    /// [`crate::CaptioningModel::with_precision`]). Not saved with the weights.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            visual: self.visual.with_precision(precision),
            textual: self.textual.with_precision(precision),
            config: self.config,
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
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn short_captions_have_nothing_to_mask() {
        let mut rng = StdRng::seed_from_u64(0);
        for caption in [&[][..], &[1][..], &[1, 2][..]] {
            let (masked, labels) = mask_tokens(caption, 50, MASK_INDEX, &mut rng);
            assert_eq!(masked, caption);
            assert!(labels.iter().all(|&l| l == 0));
        }
    }

    #[test]
    fn one_chosen_token_is_always_masked() {
        // len − 2 ≤ 6 gives ceil(0.15·n) = 1.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..500 {
            let caption = [1, 10, 11, 12, 13, 14, 15, 2];
            let (masked, labels) = mask_tokens(&caption, 50, MASK_INDEX, &mut rng);
            let changed: Vec<usize> = (0..caption.len())
                .filter(|&i| masked[i] != caption[i])
                .collect();
            assert_eq!(changed.len(), 1);
            let i = changed[0];
            assert_eq!((masked[i], labels[i]), (MASK_INDEX, caption[i]));
        }
    }

    #[test]
    fn the_loss_is_a_mean_over_labelled_positions_without_shift() {
        use burn::backend::Flex;
        let device = Default::default();
        let logits = Tensor::<Flex, 3>::from_floats(
            [
                [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]],
                [[0.5, 0.5, 3.0], [0.0, 0.0, 0.0]],
            ],
            &device,
        );
        let labels = Tensor::<Flex, 2, Int>::from_ints([[2, 0], [1, 0]], &device);
        let lse = |v: [f32; 3]| v.iter().map(|x| x.exp()).sum::<f32>().ln();
        let expected = ((lse([0.0, 1.0, 2.0]) - 2.0) + (lse([0.5, 0.5, 3.0]) - 0.5)) / 2.0;
        let loss = masked_lm_loss(logits, labels.clone(), 0).into_scalar();
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        let none = masked_lm_loss(
            Tensor::<Flex, 3>::zeros([2, 2, 3], &device),
            labels.zeros_like(),
            0,
        );
        assert_eq!(none.into_scalar(), 0.0);
    }
}
