//! # virtex
//!
//! VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)) in
//! [Burn](https://burn.dev): the captioning models composed from the parts, the pretext
//! ablations' models, official checkpoint import, and caption decoding.
//!
//! - [`CaptioningModel`]: a [`backbone::ResNet`] (`visual.cnn`), a
//!   [`textual::TransformerDecoderTextualHead`] (`textual`) and, with
//!   [`CaptioningModelConfig::caption_backward`] (VirTex, `bicaptioning`; off for forward-only
//!   `captioning`), a second decoder stack (`backward_textual.transformer`) sharing the head's
//!   projection, embedding and tied output layer. Losses come from [`loss`].
//! - [`CaptioningModelConfig`]: from upstream's names
//!   ([`CaptioningModelConfig::from_names`]) or presets ([`CaptioningModelConfig::virtex`]).
//! - Checkpoints: the released `.pth` files
//!   ([`CaptioningModel::from_official_checkpoint`]) and our own safetensors
//!   format ([`CaptioningModel::save`] / [`CaptioningModel::load`]).
//! - Mixed precision: [`CaptioningModel::with_precision`]`(`[`Precision::Bf16`]`)`
//!   runs convolutions and matrix products in bf16, everything else (norms, softmax, losses,
//!   parameters, gradients) in f32.
//! - Decoding ([`DecodingConfig`]): beam search (upstream's SOS quirk or the corrected
//!   decoder), nucleus sampling, greedy, all with key/value caching.
//! - The pretext ablations: [`ClassificationModel`] (`token_classification`,
//!   `multilabel_classification`: pooled grid → `Linear(C, V)`, unique-label cross-entropy;
//!   [`ClassificationKind`] sets `V` and the ignored ids) and [`MaskedLmModel`] (the transformer
//!   head without its causal mask, cross-entropy on `[MASK]`ed positions; captions masked by
//!   [`mask_tokens`]), each with official import, our format and backbone export.
//! - burn-train (cargo feature `burn-train`): `CaptionBatch`, and burn-train's `TrainStep` /
//!   `InferenceStep` for [`CaptioningModel`] with [`CaptioningLosses`] as the step output read
//!   by burn-train's `LossMetric`, for burn's `Learner` (`examples/burn_train_learner`).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Int, Tensor};
//! use virtex::backbone::ResNetConfig;
//! use virtex::textual::TextualHeadConfig;
//! use virtex::{BeamSearchMode, CaptioningModelConfig, DecodingConfig};
//!
//! let device = Default::default();
//! // A tiny model so the example runs in milliseconds; real ones come from `from_names`.
//! let backbone = ResNetConfig::resnet18().with_stem_channels(4);
//! let textual = TextualHeadConfig::from_name("transdec_postnorm::L1_H32_A2_F64", 32, 50).unwrap();
//! let model = CaptioningModelConfig::new(backbone, textual)
//!     .init::<burn::backend::Autodiff<Flex>>(&device)
//!     .unwrap();
//!
//! let images = Tensor::random([2, 3, 64, 64], Distribution::Default, &device);
//! let caption = Tensor::<_, 2, Int>::from_ints([[1, 7, 9, 2], [1, 5, 2, 0]], &device);
//! let noitpac = Tensor::<_, 2, Int>::from_ints([[2, 9, 7, 1], [2, 5, 1, 0]], &device);
//! let lengths = Tensor::<_, 1, Int>::from_ints([4, 3], &device);
//! let output = model.forward_train(images.clone(), caption, noitpac, lengths);
//! let _gradients = output.loss.backward();
//!
//! use burn::module::AutodiffModule;
//! let captions = model
//!     .valid()
//!     .decode(images.inner(), &DecodingConfig::beam_search(BeamSearchMode::Correct))
//!     .unwrap();
//! assert_eq!(captions.tokens.len(), 2);
//! ```
#![warn(missing_docs)]

#[cfg(feature = "burn-train")]
mod burn_train;
mod checkpoint;
mod classification;
mod config;
mod decoding;
mod error;
mod masked_lm;
mod model;

pub use virtex_backbone as backbone;
pub use virtex_loss as loss;
pub use virtex_textual as textual;

#[cfg(feature = "burn-train")]
pub use burn_train::CaptionBatch;
pub use checkpoint::{
    infer_official_config, ImportOptions, ImportReport, InitReport, PretextImportReport,
};
pub use classification::{
    ClassificationKind, ClassificationModel, ClassificationModelConfig, ClassificationOutput,
    LinearTextualHead,
};
pub use config::CaptioningModelConfig;
pub use decoding::{
    decode, BeamSearchMode, CaptionAttention, Captions, DecodingConfig, DecodingStrategy,
};
pub use error::{Result, VirtexError};
pub use masked_lm::{
    mask_tokens, mask_tokens_with, masked_lm_loss, MaskedLmModel, MaskedLmModelConfig,
    MaskedLmOutput, MaskingConfig, MASK_INDEX,
};
pub use model::reverse_captions;
pub use model::{
    BackwardTextualHead, CaptioningLosses, CaptioningModel, CaptioningOutput, VisualBackbone,
};
pub use virtex_backbone::Precision;
