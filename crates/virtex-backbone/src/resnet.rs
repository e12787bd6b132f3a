//! The ResNet module and its feature outputs.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use virtex_kernels::{relu, Precision};

use crate::batch_norm::{BatchNorm2d, BatchNorm2dConfig};
use crate::block::{conv_init, BlockSpec, ResidualBlock};
use crate::config::ResNetConfig;

/// A torchvision ResNet without `avgpool` and `fc`, as VirTex uses it.
///
/// NOTE: this is the v1.5 topology of torchvision (stride 2 on the 3×3 convolution of the first
/// bottleneck in layer2–4), not the original v1 of He et al. (stride on the first 1×1).
///
/// Field names follow torchvision so that a `state_dict` maps onto the module almost one to one
/// (see `weights.rs` for the table).
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// 7×7 stride-2 stem convolution, weight `[64, 3, 7, 7]`.
    pub conv1: Conv2d<B>,
    /// Stem normalisation.
    pub bn1: BatchNorm2d<B>,
    /// 3×3 stride-2 max pooling (padding 1).
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4 overall).
    pub layer1: Vec<ResidualBlock<B>>,
    /// Stage 2 (stride 8).
    pub layer2: Vec<ResidualBlock<B>>,
    /// Stage 3 (stride 16).
    pub layer3: Vec<ResidualBlock<B>>,
    /// Stage 4 (stride 32): the grid VirTex trains on.
    pub layer4: Vec<ResidualBlock<B>>,
    /// Precision of the convolutions (not a parameter, not saved): [`Precision::F32`] unless
    /// set with [`ResNet::with_precision`].
    pub precision: Precision,
}

/// Every stage's output, for users who need intermediate features.
#[derive(Debug, Clone)]
pub struct ResNetFeatures<B: Backend> {
    /// After conv1 → bn1 → relu → maxpool: `[B, 64, H/4, W/4]`.
    pub stem: Tensor<B, 4>,
    /// `[B, 64·e, H/4, W/4]` (e = block expansion).
    pub layer1: Tensor<B, 4>,
    /// `[B, 128·e, H/8, W/8]`.
    pub layer2: Tensor<B, 4>,
    /// `[B, 256·e, H/16, W/16]`.
    pub layer3: Tensor<B, 4>,
    /// `[B, 512·e, H/32, W/32]`.
    pub layer4: Tensor<B, 4>,
}

impl<B: Backend> ResNet<B> {
    pub(crate) fn new(config: &ResNetConfig, device: &B::Device) -> Self {
        let stem = config.stem_channels;
        let mut in_channels = stem;
        let mut stage = |planes: usize, blocks: usize, stride: usize| {
            (0..blocks)
                .map(|index| {
                    let spec = BlockSpec {
                        in_channels,
                        planes,
                        stride: if index == 0 { stride } else { 1 },
                    };
                    in_channels = planes * config.block.expansion();
                    ResidualBlock::new(config, spec, device)
                })
                .collect::<Vec<_>>()
        };
        let layer1 = stage(stem, config.layers[0], 1);
        let layer2 = stage(stem * 2, config.layers[1], 2);
        let layer3 = stage(stem * 4, config.layers[2], 2);
        let layer4 = stage(stem * 8, config.layers[3], 2);
        Self {
            conv1: conv_init(3, stem, 7, 2, device),
            bn1: BatchNorm2dConfig::new(stem)
                .with_epsilon(config.bn_epsilon)
                .with_momentum(config.bn_momentum)
                .init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            precision: Precision::F32,
        }
    }

    /// The network with every convolution in `precision`: [`Precision::Bf16`] runs the
    /// convolutions in bf16 and casts each result back, so BatchNorm, ReLU, residual adds,
    /// pooling, the parameters and their gradients stay f32 (see [`Precision`]).
    /// [`Precision::F32`] (the default) computes exactly what a network without this setting
    /// computes. Not saved with the weights: set it after building or loading.
    pub fn with_precision(self, precision: Precision) -> Self {
        let stage = |blocks: Vec<ResidualBlock<B>>| {
            blocks
                .into_iter()
                .map(|block| block.with_precision(precision))
                .collect()
        };
        Self {
            layer1: stage(self.layer1),
            layer2: stage(self.layer2),
            layer3: stage(self.layer3),
            layer4: stage(self.layer4),
            precision,
            ..self
        }
    }

    /// The `layer4` grid, what VirTex's textual heads attend to.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, ImageNet-normalised
    /// - returns: `[B, C, ⌈H/32⌉, ⌈W/32⌉]` (`[B, 2048, 7, 7]` for ResNet-50 at 224²)
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.forward_stem(images);
        let x = run_stage(&self.layer1, x);
        let x = run_stage(&self.layer2, x);
        let x = run_stage(&self.layer3, x);
        run_stage(&self.layer4, x)
    }

    /// The output of every stage.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - returns: see [`ResNetFeatures`]
    pub fn forward_features(&self, images: Tensor<B, 4>) -> ResNetFeatures<B> {
        let stem = self.forward_stem(images);
        let layer1 = run_stage(&self.layer1, stem.clone());
        let layer2 = run_stage(&self.layer2, layer1.clone());
        let layer3 = run_stage(&self.layer3, layer2.clone());
        let layer4 = run_stage(&self.layer4, layer3.clone());
        ResNetFeatures {
            stem,
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }

    /// Global-average-pooled `layer4` features (torchvision's `avgpool` + `flatten`).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - returns: `[B, C]`
    pub fn forward_pooled(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        global_average_pool(self.forward(images))
    }

    /// The stem: conv1 → bn1 → relu → maxpool.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - returns: `[B, 64, H/4, W/4]`
    pub fn forward_stem(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(
            self.bn1
                .forward(self.precision.forward_conv2d(&self.conv1, images)),
        );
        self.max_pool(x)
    }

    /// `self.maxpool` through `virtex_kernels::max_pool2d` (a fast kernel on the CPU backend)
    /// when its padding is symmetric and it floors, as torchvision's stem; the module otherwise.
    fn max_pool(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pool = &self.maxpool;
        match pool.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right)
                if top == bottom && left == right && !pool.ceil_mode =>
            {
                virtex_kernels::max_pool2d(
                    x,
                    pool.kernel_size,
                    pool.stride,
                    [top, left],
                    pool.dilation,
                )
            }
            _ => pool.forward(x),
        }
    }
}

impl<B: Backend> ResNet<B> {
    /// Every BatchNorm of the network, stem first, in module order.
    pub fn batch_norms(&self) -> Vec<&BatchNorm2d<B>> {
        let mut norms = vec![&self.bn1];
        for block in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
        {
            norms.extend([&block.bn1, &block.bn2]);
            norms.extend(block.bn3.as_ref());
            norms.extend(block.downsample.as_ref().map(|shortcut| &shortcut.bn));
        }
        norms
    }

    /// The network frozen, as upstream's `MODEL.VISUAL.FROZEN`: no parameter requires a
    /// gradient (so optimizers leave them out and autodiff records nothing for them) and every
    /// BatchNorm normalises with its running statistics, which stay as they are, also during
    /// training (torch's `requires_grad = False` plus `eval()`).
    pub fn frozen(mut self) -> Self {
        self.bn1.frozen = true;
        for block in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ]
        .into_iter()
        .flatten()
        {
            block.bn1.frozen = true;
            block.bn2.frozen = true;
            if let Some(bn3) = block.bn3.as_mut() {
                bn3.frozen = true;
            }
            if let Some(shortcut) = block.downsample.as_mut() {
                shortcut.bn.frozen = true;
            }
        }
        self.no_grad()
    }

    /// Whether [`frozen`](Self::frozen) was applied (every BatchNorm in evaluation mode).
    pub fn is_frozen(&self) -> bool {
        self.batch_norms().iter().all(|norm| norm.frozen)
    }

    /// Channels of the output grid and of the pooled features (2048 for ResNet-50, 512 for
    /// ResNet-18): the width of the last block's last BatchNorm.
    pub fn feature_size(&self) -> usize {
        self.batch_norms()
            .last()
            .map_or(0, |norm| norm.weight.dims()[0])
    }

    /// Synchronises the running statistics of every BatchNorm (see
    /// [`BatchNorm2d::sync_running_statistics`]); savers call it before reading the weights.
    pub fn sync_running_statistics(&self) {
        self.batch_norms()
            .into_iter()
            .for_each(BatchNorm2d::sync_running_statistics);
    }
}

fn run_stage<B: Backend>(blocks: &[ResidualBlock<B>], input: Tensor<B, 4>) -> Tensor<B, 4> {
    blocks.iter().fold(input, |x, block| block.forward(x))
}

/// Mean over the spatial grid.
///
/// # Shapes
/// - `grid`: `[B, C, h, w]`
/// - returns: `[B, C]`
pub fn global_average_pool<B: Backend>(grid: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, channels, _, _] = grid.dims();
    grid.mean_dim(3).mean_dim(2).reshape([batch, channels])
}

/// Row-wise L2 normalisation as `torch.nn.functional.normalize(x, dim=1)`:
/// `x / max(‖x‖₂, 1e-12)`, what the VOC07 SVM protocol applies to pooled features.
///
/// # Shapes
/// - `features`: `[B, C]`
/// - returns: `[B, C]`
pub fn l2_normalize<B: Backend>(features: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = features.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    features / norm
}
