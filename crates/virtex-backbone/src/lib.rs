//! # virtex-backbone
//!
//! The visual backbones of VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)):
//! torchvision's ResNet family (v1.5 topology) in [Burn](https://burn.dev), with weight import
//! from PyTorch checkpoints and export back to them.
//!
//! - Presets: [`ResNetConfig::resnet18`] … [`ResNetConfig::resnet152`],
//!   [`ResNetConfig::wide_resnet50_2`], or [`ResNetConfig::from_name`] with VirTex's
//!   `torchvision::resnet50` names.
//! - Outputs: the `layer4` grid ([`ResNet::forward`], what VirTex trains on), every stage
//!   ([`ResNet::forward_features`]), global-average-pooled features ([`ResNet::forward_pooled`])
//!   and their L2-normalised form ([`l2_normalize`], the VOC07 protocol).
//! - Weights: torchvision `.pth`, the same as safetensors, the VirTex torch-hub backbone and the
//!   CNN of a full VirTex checkpoint ([`ResNet::load_weights`]); burn's own burnpack format and
//!   torchvision-named safetensors for the way back ([`ResNet::save_burnpack`],
//!   [`ResNet::save_torchvision_safetensors`]). float16, bfloat16 and float64 weights are
//!   converted to the model's f32; integer, bool and quantized tensors are refused with
//!   [`BackboneError::UnsupportedDType`] naming the tensor ([`conform_snapshot`] says why every
//!   tensor is checked before burn-store applies it).
//! - Exports to PyTorch (`torch.save` files that `torch.load(..., weights_only=True)` reads):
//!   a torchvision `state_dict` ([`ResNet::save_torchvision_pth`]) and the Detectron2 backbone
//!   of upstream's `detectron2_backbone_state_dict()` ([`ResNet::save_detectron2_pth`], names
//!   in [`DETECTRON2_RENAMES`]), through a small writer of torch's format ([`save_torch`]).
//!
//! Mixed precision: [`ResNet::with_precision`]`(`[`Precision::Bf16`]`)` runs the convolutions
//! in bf16 and everything else (BatchNorm, ReLU, residual adds, parameters, gradients) in f32.
//!
//! BatchNorm is PyTorch's ([`BatchNorm2d`]): batch statistics and running-statistic updates on an
//! autodiff backend, running statistics otherwise (call `model.valid()` for evaluation).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use virtex_backbone::ResNetConfig;
//!
//! let device = Default::default();
//! // A reduced ResNet so the example runs in milliseconds; use `ResNetConfig::resnet50()`.
//! let model = ResNetConfig::resnet18().with_stem_channels(8).init::<Flex>(&device);
//! let images = Tensor::<Flex, 4>::random([2, 3, 64, 64], Distribution::Default, &device);
//! let grid = model.forward(images.clone());
//! assert_eq!(grid.dims(), [2, 64, 2, 2]);
//! assert_eq!(model.forward_pooled(images).dims(), [2, 64]);
//! ```
#![warn(missing_docs)]

mod batch_norm;
mod block;
mod config;
mod error;
mod export;
mod resnet;
mod torch_save;
mod weights;
mod zip_check;

pub use batch_norm::{BatchNorm2d, BatchNorm2dConfig};
pub use block::{Downsample, ResidualBlock};
pub use config::{BlockKind, ResNetConfig};
pub use error::{BackboneError, Result};
pub use export::{detectron2_key, DETECTRON2_AUTHOR, DETECTRON2_RENAMES};
pub use resnet::{global_average_pool, l2_normalize, ResNet, ResNetFeatures};
pub use torch_save::{save_torch, TorchValue};
pub use virtex_device::{accepts_dtype, conform_snapshot, dtype_name};
pub use virtex_kernels::{Precision, UnknownPrecision};
pub use weights::{read_pytorch_snapshots, LoadReport, WeightsFormat};
