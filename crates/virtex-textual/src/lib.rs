//! # virtex-textual
//!
//! The textual head of VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666))
//! in [Burn](https://burn.dev): the projected `layer4` grid of a CNN is the memory of a
//! Transformer decoder that predicts the next caption token.
//!
//! - [`TextualHeadConfig`]: upstream's `transdec_postnorm::L1_H2048_A32_F8192` names
//!   ([`TextualHeadConfig::from_name`]) and a preset per released width/depth.
//! - [`TransformerDecoderTextualHead`]: visual projection, [`WordAndPositionalEmbedding`],
//!   [`TransformerDecoder`] (post-norm or pre-norm [`TransformerDecoderLayer`]s) and the output
//!   layer tied to the word embedding ([`TiedOutput`]).
//! - [`MultiheadAttention`]: `torch.nn.MultiheadAttention` to the letter (dropout on the
//!   softmaxed weights, −∞ masking), with key/value caching for incremental decoding
//!   ([`DecodingState`]).
//! - [`load_torch_head`]/[`load_torch_decoder`]: a PyTorch state dict of the head (the
//!   `textual.*` part of a VirTex checkpoint) onto the module.
//!
//! Mixed precision: [`TransformerDecoderTextualHead::with_precision`]`(`[`Precision::Bf16`]`)`
//! runs every matrix product (projections, `q kᵀ`, `weights · v`, feed-forward, output layer) in
//! bf16 and everything else (embedding, LayerNorm, softmax, GELU, residual adds, parameters,
//! gradients) in f32.
//!
//! Dropout follows burn's convention: active on an autodiff backend (training), off otherwise
//! (`model.valid()`).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Int, Tensor};
//! use virtex_textual::TextualHeadConfig;
//!
//! let device = Default::default();
//! // A narrow head so the example runs instantly; real ones come from `from_name` or presets.
//! let config = TextualHeadConfig::from_name("transdec_postnorm::L1_H64_A2_F256", 32, 100).unwrap();
//! let head = config.init::<Flex>(&device);
//! let grid = Tensor::<Flex, 4>::random([2, 32, 3, 3], Distribution::Default, &device);
//! let tokens = Tensor::<Flex, 2, Int>::from_ints([[1, 7, 9, 2], [1, 5, 2, 0]], &device);
//! let lengths = Tensor::<Flex, 1, Int>::from_ints([4, 3], &device);
//! let logits = head.forward(grid, tokens, lengths);
//! assert_eq!(logits.dims(), [2, 4, 100]);
//! ```
#![warn(missing_docs)]

mod attention;
mod config;
mod decoder;
mod embedding;
mod error;
mod head;
mod init;
mod layer_norm;
mod weights;

pub use attention::{causal_mask, masked_softmax, padding_mask, KeyValue, MultiheadAttention};
pub use config::{NormType, TextualHeadConfig};
pub use decoder::{
    DecodingState, LayerState, TransformerDecoder, TransformerDecoderLayer, DECODER_LAYER_NORM_EPS,
};
pub use embedding::{WordAndPositionalEmbedding, EMBEDDING_LAYER_NORM_EPS};
pub use error::{Result, TextualError};
pub use head::{TiedOutput, TransformerDecoderTextualHead};
pub use layer_norm::TorchLayerNorm;
pub use virtex_kernels::{Precision, UnknownPrecision};
pub use weights::{
    load_torch_decoder, load_torch_decoder_matching, load_torch_head, load_torch_head_matching,
    torch_key_to_burn, HeadLoadReport, MatchingLoadReport, TorchKey,
};
