//! Model configuration: upstream's `MODEL.VISUAL.NAME` / `MODEL.TEXTUAL.NAME` and presets.

use burn::prelude::*;
use virtex_backbone::ResNetConfig;
use virtex_textual::TextualHeadConfig;

use crate::error::{Result, VirtexError};
use crate::model::CaptioningModel;

/// Configuration of a [`CaptioningModel`]: one backbone, one textual head and, with
/// `caption_backward` (bicaptioning, the default), a second decoder stack built from the same
/// head configuration.
#[derive(Config, Debug)]
pub struct CaptioningModelConfig {
    /// The visual backbone.
    pub backbone: ResNetConfig,
    /// The textual head; its `visual_feature_size` must equal the backbone's output channels.
    pub textual: TextualHeadConfig,
    /// `[SOS]` id (`DATA.SOS_INDEX`).
    #[config(default = 1)]
    pub sos_index: usize,
    /// `[EOS]` id (`DATA.EOS_INDEX`).
    #[config(default = 2)]
    pub eos_index: usize,
    /// Add the right-to-left head (upstream's `caption_backward`: `true` for `virtex` /
    /// `bicaptioning`, `false` for forward-only `captioning`).
    #[config(default = true)]
    pub caption_backward: bool,
}

impl CaptioningModelConfig {
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
                .with_dropout(dropout);
        let config = Self::new(backbone, textual);
        config.validate()?;
        Ok(config)
    }

    /// `bicaptioning_R_50_L1_H2048`, the best released model (and upstream's defaults):
    /// ResNet-50, `transdec_postnorm::L1_H2048_A32_F8192`, 10K vocabulary, 30 positions,
    /// dropout 0.1.
    pub fn virtex() -> Self {
        Self::new(ResNetConfig::resnet50(), TextualHeadConfig::l1_h2048())
    }

    /// The base config of the ablations (`_base_bicaptioning_R_50_L1_H1024`).
    pub fn base() -> Self {
        Self::new(ResNetConfig::resnet50(), TextualHeadConfig::l1_h1024())
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
        let vocab = self.textual.vocab_size;
        for (name, id) in [("sos_index", self.sos_index), ("eos_index", self.eos_index)] {
            if id >= vocab {
                return Err(VirtexError::InvalidConfig(format!(
                    "{name} {id} is outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// Builds the model: bicaptioning (upstream's `BidirectionalCaptioningModel`, names
    /// `virtex`/`bicaptioning`) with `caption_backward`, forward-only `captioning` without.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<CaptioningModel<B>> {
        self.validate()?;
        CaptioningModel::new(self, device)
    }
}
