//! Residual blocks of torchvision's ResNet (v1.5: the stride sits on the 3×3 convolution).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use virtex_kernels::{relu, Precision};

use crate::batch_norm::{BatchNorm2d, BatchNorm2dConfig};
use crate::config::{BlockKind, ResNetConfig};

/// torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: std = √2 / √fan_out.
pub(crate) fn kaiming_fan_out() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

/// A bias-free convolution as torchvision builds them (`padding = kernel / 2`).
pub(crate) fn conv_init<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let pad = kernel / 2;
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(kaiming_fan_out())
        .init(device)
}

/// The projection shortcut: 1×1 convolution (with the block's stride) then BatchNorm.
///
/// torchvision names these `downsample.0` and `downsample.1`; the loader maps them to
/// `downsample.conv` and `downsample.bn`.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1×1 convolution, weight `[C_out, C_in, 1, 1]`.
    pub conv: Conv2d<B>,
    /// Normalisation of the projected input.
    pub bn: BatchNorm2d<B>,
}

/// One residual block: torchvision's `BasicBlock` (two 3×3 convolutions) or `Bottleneck`
/// (1×1 → 3×3 → 1×1, expansion 4). Field names are torchvision's.
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    /// Basic: 3×3 with stride; bottleneck: 1×1 reduction.
    pub conv1: Conv2d<B>,
    /// Normalisation after `conv1`.
    pub bn1: BatchNorm2d<B>,
    /// 3×3 convolution (carries the stride in a bottleneck: ResNet v1.5).
    pub conv2: Conv2d<B>,
    /// Normalisation after `conv2` (zero-initialised last BN of a basic block).
    pub bn2: BatchNorm2d<B>,
    /// Bottleneck only: 1×1 expansion.
    pub conv3: Option<Conv2d<B>>,
    /// Bottleneck only: normalisation after `conv3` (zero-initialised with `zero_init_residual`).
    pub bn3: Option<BatchNorm2d<B>>,
    /// Projection shortcut when the shape changes.
    pub downsample: Option<Downsample<B>>,
    /// Precision of the convolutions (not a parameter; set through [`crate::ResNet::with_precision`]).
    pub precision: Precision,
}

/// Everything needed to build one block.
pub(crate) struct BlockSpec {
    pub in_channels: usize,
    pub planes: usize,
    pub stride: usize,
}

impl<B: Backend> ResidualBlock<B> {
    pub(crate) fn new(config: &ResNetConfig, spec: BlockSpec, device: &B::Device) -> Self {
        let BlockSpec {
            in_channels,
            planes,
            stride,
        } = spec;
        let out_channels = planes * config.block.expansion();
        let bn = |channels: usize, zero: bool| {
            let mut norm = BatchNorm2dConfig::new(channels)
                .with_epsilon(config.bn_epsilon)
                .with_momentum(config.bn_momentum)
                .init::<B>(device);
            if zero && config.zero_init_residual {
                // A fresh parameter: `Param::map` with `zeros_like` would drop `require_grad`
                // and silently freeze the residual scales.
                norm.weight = Param::from_tensor(Tensor::zeros([channels], device));
            }
            norm
        };
        let downsample = (stride != 1 || in_channels != out_channels).then(|| Downsample {
            conv: conv_init(in_channels, out_channels, 1, stride, device),
            bn: bn(out_channels, false),
        });
        match config.block {
            BlockKind::Basic => Self {
                conv1: conv_init(in_channels, planes, 3, stride, device),
                bn1: bn(planes, false),
                conv2: conv_init(planes, planes, 3, 1, device),
                bn2: bn(planes, true),
                conv3: None,
                bn3: None,
                downsample,
                precision: Precision::F32,
            },
            BlockKind::Bottleneck => {
                let width = planes * config.width_per_group / 64;
                Self {
                    conv1: conv_init(in_channels, width, 1, 1, device),
                    bn1: bn(width, false),
                    conv2: conv_init(width, width, 3, stride, device),
                    bn2: bn(width, false),
                    conv3: Some(conv_init(width, out_channels, 1, 1, device)),
                    bn3: Some(bn(out_channels, true)),
                    downsample,
                    precision: Precision::F32,
                }
            }
        }
    }

    /// # Shapes
    /// - `input`: `[B, C_in, H, W]`
    /// - returns: `[B, C_out, H / stride, W / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let conv = |conv: &Conv2d<B>, x| self.precision.forward_conv2d(conv, x);
        let identity = match &self.downsample {
            Some(shortcut) => shortcut.bn.forward(conv(&shortcut.conv, input.clone())),
            None => input.clone(),
        };
        let out = relu(self.bn1.forward(conv(&self.conv1, input)));
        let out = self.bn2.forward(conv(&self.conv2, out));
        let out = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => bn3.forward(conv(conv3, relu(out))),
            _ => out,
        };
        relu(out + identity)
    }

    /// The block with its convolutions in `precision` (BatchNorm, ReLU and the residual add
    /// stay in the input's dtype).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
}
