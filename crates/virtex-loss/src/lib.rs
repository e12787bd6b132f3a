//! # virtex-loss
//!
//! The pretext losses of VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)),
//! on tensors only (no model types):
//!
//! - [`captioning_loss`]: `nn.CrossEntropyLoss(ignore_index=0)` of `logits[:, :-1]` against
//!   `tokens[:, 1:]`, a mean over every non-padding target token of the batch;
//! - [`bicaptioning_loss`]: the plain sum of the forward and backward terms, with both
//!   components ([`BicaptioningLoss`]);
//! - [`token_classification_loss`] and [`multilabel_classification_loss`]: the K-hot
//!   cross-entropy of the classification ablations ([`unique_label_cross_entropy`]).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Int, Tensor};
//! use virtex_loss::bicaptioning_loss;
//!
//! let device = Default::default();
//! let logits = || Tensor::<Flex, 3>::random([2, 4, 10], Distribution::Default, &device);
//! let caption = Tensor::<Flex, 2, Int>::from_ints([[1, 5, 6, 2], [1, 7, 2, 0]], &device);
//! let noitpac = Tensor::<Flex, 2, Int>::from_ints([[2, 6, 5, 1], [2, 7, 1, 0]], &device);
//! let losses = bicaptioning_loss(logits(), caption, logits(), noitpac);
//! let total = losses.loss.into_scalar();
//! let parts = losses.captioning_forward.into_scalar() + losses.captioning_backward.into_scalar();
//! assert!((total - parts).abs() < 1e-5);
//! ```
#![warn(missing_docs)]

mod captioning;
mod classification;

pub use captioning::{bicaptioning_loss, captioning_loss, BicaptioningLoss, PADDING_INDEX};
pub use classification::{
    multilabel_classification_loss, token_classification_loss, unique_label_cross_entropy,
    MULTILABEL_IGNORE, TOKEN_CLASSIFICATION_IGNORE,
};
