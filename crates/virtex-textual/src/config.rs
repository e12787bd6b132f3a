//! Textual head configuration, upstream's `transdec_*` names and the released presets.

use burn::prelude::*;
use regex::Regex;

use crate::error::{Result, TextualError};
use crate::head::TransformerDecoderTextualHead;

/// Where the decoder layers put their LayerNorms.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormType {
    /// `transdec_postnorm`: `x = norm(x + sublayer(x))`, what every released model uses.
    Post,
    /// `transdec_prenorm`: `x = x + sublayer(norm(x))`, plus a final LayerNorm after the stack.
    Pre,
}

impl NormType {
    /// Upstream's name prefix: `transdec_postnorm` or `transdec_prenorm`.
    pub fn upstream_prefix(self) -> &'static str {
        match self {
            Self::Post => "transdec_postnorm",
            Self::Pre => "transdec_prenorm",
        }
    }
}

/// Configuration of a [`TransformerDecoderTextualHead`], mirroring upstream's constructor
/// (`TransformerDecoderTextualHead(visual_feature_size, vocab_size, hidden_size, num_layers,
/// attention_heads, feedforward_size, dropout, norm_type, mask_future_positions,
/// max_caption_length, padding_idx)`).
///
/// Build one from an upstream name ([`TextualHeadConfig::from_name`]) or a preset
/// ([`TextualHeadConfig::l1_h2048`], …).
#[derive(Config, Debug)]
pub struct TextualHeadConfig {
    /// Channels `C` of the visual grid (2048 for ResNet-50).
    pub visual_feature_size: usize,
    /// Vocabulary size `V` (10000 for VirTex's SentencePiece model).
    pub vocab_size: usize,
    /// Width `H` of the decoder.
    pub hidden_size: usize,
    /// Number of decoder layers `L`.
    pub num_layers: usize,
    /// Number of attention heads `A` (every released model: `H / 64`).
    pub attention_heads: usize,
    /// Width `F` of the feed-forward block (every released model: `4 H`).
    pub feedforward_size: usize,
    /// Post-norm (released models) or pre-norm layers.
    #[config(default = "NormType::Post")]
    pub norm_type: NormType,
    /// Dropout of the embedding, the attention weights, the residual branches and the FFN.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Rows of the learned position table, the longest caption (30 with SOS/EOS).
    #[config(default = 30)]
    pub max_caption_length: usize,
    /// The padding token id, zeroed in the embedding and ignored by the loss (`<unk>` = 0).
    #[config(default = 0)]
    pub padding_idx: usize,
    /// Apply the causal mask (captioning); masked LM turns it off.
    #[config(default = true)]
    pub mask_future_positions: bool,
}

impl TextualHeadConfig {
    /// A head of a released width/depth: `A = H / 64`, `F = 4 H`, post-norm, with VirTex's
    /// ResNet-50 features (2048) and 10K vocabulary.
    pub fn released(num_layers: usize, hidden_size: usize) -> Self {
        Self::new(
            2048,
            10_000,
            hidden_size,
            num_layers,
            hidden_size / 64,
            4 * hidden_size,
        )
    }

    /// `transdec_postnorm::L1_H512_A8_F2048` (width ablation).
    pub fn l1_h512() -> Self {
        Self::released(1, 512)
    }

    /// `transdec_postnorm::L1_H768_A12_F3072` (width ablation).
    pub fn l1_h768() -> Self {
        Self::released(1, 768)
    }

    /// `transdec_postnorm::L1_H1024_A16_F4096` (the base config).
    pub fn l1_h1024() -> Self {
        Self::released(1, 1024)
    }

    /// `transdec_postnorm::L1_H2048_A32_F8192` (the best released model, upstream's default).
    pub fn l1_h2048() -> Self {
        Self::released(1, 2048)
    }

    /// `transdec_postnorm::L2_H1024_A16_F4096` (depth ablation).
    pub fn l2_h1024() -> Self {
        Self::released(2, 1024)
    }

    /// `transdec_postnorm::L3_H1024_A16_F4096` (depth ablation).
    pub fn l3_h1024() -> Self {
        Self::released(3, 1024)
    }

    /// `transdec_postnorm::L4_H1024_A16_F4096` (depth ablation).
    pub fn l4_h1024() -> Self {
        Self::released(4, 1024)
    }

    /// Parses upstream's `MODEL.TEXTUAL.NAME`, e.g. `transdec_postnorm::L1_H2048_A32_F8192`.
    ///
    /// The architecture part must match `L(\d+)_H(\d+)_A(\d+)_F(\d+)` exactly. Every other field
    /// takes its default (dropout 0.1, 30 positions, padding id 0, causal mask on).
    pub fn from_name(name: &str, visual_feature_size: usize, vocab_size: usize) -> Result<Self> {
        let invalid = |reason: &str| TextualError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let (prefix, architecture) = name
            .split_once("::")
            .ok_or_else(|| invalid("no `::` between the head kind and its size"))?;
        let norm_type = match prefix {
            "transdec_postnorm" => NormType::Post,
            "transdec_prenorm" => NormType::Pre,
            other => {
                return Err(invalid(&format!(
                    "unknown head kind `{other}` (expected transdec_postnorm or transdec_prenorm)"
                )))
            }
        };
        let pattern = Regex::new(r"^L(\d+)_H(\d+)_A(\d+)_F(\d+)$").expect("valid regex");
        let captures = pattern
            .captures(architecture)
            .ok_or_else(|| invalid(&format!("`{architecture}` is not L<n>_H<n>_A<n>_F<n>")))?;
        let number = |index: usize| -> Result<usize> {
            captures[index]
                .parse::<usize>()
                .map_err(|err| invalid(&format!("`{}`: {err}", &captures[index])))
        };
        let config = Self::new(
            visual_feature_size,
            vocab_size,
            number(2)?,
            number(1)?,
            number(3)?,
            number(4)?,
        )
        .with_norm_type(norm_type);
        config.validate()?;
        Ok(config)
    }

    /// Upstream's name of this head, e.g. `transdec_postnorm::L1_H2048_A32_F8192`.
    pub fn name(&self) -> String {
        format!(
            "{}::L{}_H{}_A{}_F{}",
            self.norm_type.upstream_prefix(),
            self.num_layers,
            self.hidden_size,
            self.attention_heads,
            self.feedforward_size
        )
    }

    /// Width of one attention head, `H / A` (64 in every released model).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.attention_heads.max(1)
    }

    /// Checks that the configuration can build a head.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(TextualError::InvalidConfig(message));
        let sizes = [
            ("visual_feature_size", self.visual_feature_size),
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("attention_heads", self.attention_heads),
            ("feedforward_size", self.feedforward_size),
            ("max_caption_length", self.max_caption_length),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return invalid(format!("{field} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.attention_heads) {
            return invalid(format!(
                "hidden_size {} is not a multiple of attention_heads {}",
                self.hidden_size, self.attention_heads
            ));
        }
        if !(0.0..=1.0).contains(&self.dropout) {
            return invalid(format!("dropout must be in [0, 1], got {}", self.dropout));
        }
        if self.padding_idx >= self.vocab_size {
            return invalid(format!(
                "padding_idx {} is outside the vocabulary of {}",
                self.padding_idx, self.vocab_size
            ));
        }
        Ok(())
    }

    /// Checks the configuration and builds the head with upstream's initialisation.
    pub fn try_init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<TransformerDecoderTextualHead<B>> {
        self.validate()?;
        Ok(TransformerDecoderTextualHead::new(self, device))
    }

    /// Builds the head; panics on a configuration that [`TextualHeadConfig::try_init`] rejects.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TransformerDecoderTextualHead<B> {
        match self.try_init(device) {
            Ok(head) => head,
            Err(err) => panic!("{err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_released_name() {
        for (name, preset) in [
            (
                "transdec_postnorm::L1_H512_A8_F2048",
                TextualHeadConfig::l1_h512(),
            ),
            (
                "transdec_postnorm::L1_H768_A12_F3072",
                TextualHeadConfig::l1_h768(),
            ),
            (
                "transdec_postnorm::L1_H1024_A16_F4096",
                TextualHeadConfig::l1_h1024(),
            ),
            (
                "transdec_postnorm::L1_H2048_A32_F8192",
                TextualHeadConfig::l1_h2048(),
            ),
            (
                "transdec_postnorm::L2_H1024_A16_F4096",
                TextualHeadConfig::l2_h1024(),
            ),
            (
                "transdec_postnorm::L3_H1024_A16_F4096",
                TextualHeadConfig::l3_h1024(),
            ),
            (
                "transdec_postnorm::L4_H1024_A16_F4096",
                TextualHeadConfig::l4_h1024(),
            ),
        ] {
            let parsed = TextualHeadConfig::from_name(name, 2048, 10_000).unwrap();
            assert_eq!(parsed.name(), name);
            assert_eq!(preset.name(), name);
            assert_eq!(parsed.head_dim(), 64);
            assert_eq!(parsed.norm_type, NormType::Post);
        }
        let pre =
            TextualHeadConfig::from_name("transdec_prenorm::L2_H64_A4_F96", 512, 100).unwrap();
        assert_eq!(pre.norm_type, NormType::Pre);
        assert_eq!(
            (
                pre.num_layers,
                pre.hidden_size,
                pre.attention_heads,
                pre.feedforward_size
            ),
            (2, 64, 4, 96)
        );
        assert_eq!((pre.visual_feature_size, pre.vocab_size), (512, 100));
    }

    #[test]
    fn rejects_malformed_names() {
        for name in [
            "transdec_postnorm",
            "transformer::L1_H2048_A32_F8192",
            "transdec_postnorm::L1_H2048_A32",
            "transdec_postnorm::L1_H2048_A32_F8192_x",
            "transdec_postnorm::L0_H2048_A32_F8192",
            "transdec_postnorm::L1_H2048_A30_F8192",
        ] {
            let err = TextualHeadConfig::from_name(name, 2048, 10_000).unwrap_err();
            assert!(
                err.to_string().contains(name) || matches!(err, TextualError::InvalidConfig(_)),
                "{err}"
            );
        }
    }
}
