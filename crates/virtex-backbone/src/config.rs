//! ResNet configuration and the torchvision presets.

use burn::prelude::*;

use crate::error::{BackboneError, Result};
use crate::resnet::ResNet;

/// The residual block a ResNet is built from.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions, expansion 1 (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 → 1×1, expansion 4 (ResNet-50/101/152, wide ResNet).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block per "plane": 1 for basic blocks, 4 for bottlenecks.
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// Configuration of a torchvision-style ResNet (v1.5 topology).
///
/// Use a preset ([`ResNetConfig::resnet50`], …) or [`ResNetConfig::from_name`]; the knobs below
/// exist to reproduce torchvision exactly and to build reduced networks for tests.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// The block type.
    pub block: BlockKind,
    /// Number of blocks in layer1..layer4.
    pub layers: [usize; 4],
    /// Bottleneck width per group (torchvision `width_per_group`): 64, or 128 for wide ResNets.
    #[config(default = 64)]
    pub width_per_group: usize,
    /// Channels of the stem; the stages use 1×, 2×, 4× and 8× this many planes. torchvision: 64.
    #[config(default = 64)]
    pub stem_channels: usize,
    /// Zero-initialise the last BatchNorm γ of every block (VirTex always sets this).
    #[config(default = true)]
    pub zero_init_residual: bool,
    /// BatchNorm epsilon.
    #[config(default = 1e-5)]
    pub bn_epsilon: f64,
    /// BatchNorm momentum.
    #[config(default = 0.1)]
    pub bn_momentum: f64,
}

impl ResNetConfig {
    /// torchvision `resnet18`.
    pub fn resnet18() -> Self {
        Self::new(BlockKind::Basic, [2, 2, 2, 2])
    }

    /// torchvision `resnet34`.
    pub fn resnet34() -> Self {
        Self::new(BlockKind::Basic, [3, 4, 6, 3])
    }

    /// torchvision `resnet50`: VirTex's backbone, 23,508,032 parameters without `fc`.
    pub fn resnet50() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    /// torchvision `resnet101`.
    pub fn resnet101() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 23, 3])
    }

    /// torchvision `resnet152`.
    pub fn resnet152() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 8, 36, 3])
    }

    /// torchvision `wide_resnet50_2` (VirTex's `R_50W2X`).
    pub fn wide_resnet50_2() -> Self {
        Self::resnet50().with_width_per_group(128)
    }

    /// A preset from its torchvision name, with or without VirTex's `torchvision::` prefix.
    pub fn from_name(name: &str) -> Result<Self> {
        let short = name.strip_prefix("torchvision::").unwrap_or(name);
        match short {
            "resnet18" => Ok(Self::resnet18()),
            "resnet34" => Ok(Self::resnet34()),
            "resnet50" => Ok(Self::resnet50()),
            "resnet101" => Ok(Self::resnet101()),
            "resnet152" => Ok(Self::resnet152()),
            "wide_resnet50_2" => Ok(Self::wide_resnet50_2()),
            _ => Err(BackboneError::UnknownArchitecture(name.to_string())),
        }
    }

    /// Channels of the `layer4` grid: 512 for basic-block ResNets, 2048 for the others.
    pub fn output_channels(&self) -> usize {
        self.stem_channels * 8 * self.block.expansion()
    }

    /// Checks the configuration and builds the network with torchvision's initialisation.
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>> {
        if self.layers.contains(&0) {
            return Err(BackboneError::InvalidConfig(format!(
                "every stage needs at least one block, got layers {:?}",
                self.layers
            )));
        }
        if self.stem_channels == 0 || self.width_per_group == 0 {
            return Err(BackboneError::InvalidConfig(
                "stem_channels and width_per_group must be positive".into(),
            ));
        }
        if !(self.bn_epsilon > 0.0 && (0.0..=1.0).contains(&self.bn_momentum)) {
            return Err(BackboneError::InvalidConfig(format!(
                "BatchNorm epsilon must be > 0 and momentum in [0, 1], got {} and {}",
                self.bn_epsilon, self.bn_momentum
            )));
        }
        Ok(ResNet::new(self, device))
    }

    /// Builds the network; panics on a configuration that [`ResNetConfig::try_init`] rejects.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        match self.try_init(device) {
            Ok(model) => model,
            Err(err) => panic!("{err}"),
        }
    }
}
