//! # virtex-kernels
//!
//! Fast CPU kernels for VirTex on [Burn](https://burn.dev)'s flex backend, behind entry points
//! that are generic over `B: Backend`.
//!
//! burn-flex 0.21 computes a convolution's gradients through generic fallbacks (a transposed
//! convolution for the input gradient, a convolution with the batch and channel axes swapped
//! for the weight gradient), which made a ResNet-50 train step on the CPU about 10× slower than
//! PyTorch's. This crate computes the forward pass and both gradients as im2col + GEMM on the
//! `gemm` crate (the one burn-flex uses for its matmul), in NCHW, with rayon threads.
//!
//! - [`conv2d`], [`conv2d_x_backward`], [`conv2d_weight_backward`], [`forward_conv2d`]: on
//!   `Flex` and `Autodiff<Flex>` with `f32` and one group they take the GEMM path (a custom
//!   autodiff operation on `Autodiff<Flex>`, so both gradients take it too); every other
//!   backend (CUDA …), dtype or configuration calls burn's op unchanged.
//! - [`batch_norm2d_train`]: training-mode BatchNorm as one fused operation (forward and
//!   backward) on `Flex` / `Autodiff<Flex>`, composed from burn ops elsewhere;
//!   [`batch_norm2d_eval`]: eval-mode BatchNorm in one pass on `Flex`.
//! - [`relu`]: burn's ReLU with a vectorised, threaded backward pass on `Autodiff<Flex>`.
//! - [`max_pool2d`]: max pooling in one threaded pass on `Flex` / `Autodiff<Flex>` (an argmax
//!   kept only for training), burn's op elsewhere.
//! - [`sgd_update`]: `torch.optim.SGD`'s update (coupled decay, momentum, step) as one
//!   threaded pass on `Flex`, in place where the buffers are not shared; burn's ops elsewhere;
//!   [`squared_norm`]: `Σ x²` in one read-only pass (global gradient clipping).
//! - [`Precision`]: mixed precision by hand (burn 0.21 has no autocast): matrix products,
//!   linear layers and convolutions in bf16 with the result cast straight back, so norms,
//!   softmax, losses, parameters and gradients stay f32. [`Precision::F32`] runs exactly the
//!   plain ops.
//! - `VIRTEX_KERNELS=burn` in the environment switches back to burn's kernels everywhere
//!   ([`fast_kernels_enabled`]).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::ops::ConvOptions;
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = Default::default();
//! let x = Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
//! let w = Tensor::<Flex, 4>::random([8, 3, 3, 3], Distribution::Default, &device);
//! let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
//! let fast = virtex_kernels::conv2d(x.clone(), w.clone(), None, options.clone());
//! let reference = burn::tensor::module::conv2d(x, w, None, options);
//! fast.into_data().assert_approx_eq::<f32>(&reference.into_data(), Default::default());
//! ```
#![warn(missing_docs)]

mod activation;
mod batch_norm;
mod conv;
mod dispatch;
mod flex;
mod im2col;
mod optim;
mod pool;
mod precision;
mod selection;

pub use activation::relu;
pub use batch_norm::{batch_norm2d_eval, batch_norm2d_train, BatchNormTrain};
pub use conv::{conv2d, conv2d_weight_backward, conv2d_x_backward, forward_conv2d};
pub use optim::{sgd_update, squared_norm, SgdUpdate};
pub use pool::max_pool2d;
pub use precision::{Precision, UnknownPrecision};
pub use selection::{fast_kernels_enabled, KERNELS_ENV};
