//! Word + learned position embedding (`virtex/modules/embedding.py`).

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::prelude::*;
use burn::tensor::module::embedding;

use crate::init;
use crate::layer_norm::TorchLayerNorm;

/// Epsilon of the embedding LayerNorm: 1e-8 upstream, not the decoder's 1e-5.
pub const EMBEDDING_LAYER_NORM_EPS: f64 = 1e-8;

/// `WordAndPositionalEmbedding`: `LayerNorm_eps=1e-8(words[tok] + positions[0..T])`, dropout,
/// then every position holding the padding id zeroed. Nothing is scaled by √H.
///
/// `words.weight` doubles as the output projection of the head (weight tying); row
/// `padding_idx` starts at zero like torch's `padding_idx` row. torch also blocks the lookup's
/// gradient to that row; here no gradient reaches it through the lookup either, because every
/// position holding the padding id is multiplied by zero after the LayerNorm.
#[derive(Module, Debug)]
pub struct WordAndPositionalEmbedding<B: Backend> {
    /// Word table, weight `[V, H]` (row `padding_idx` initialised to zero).
    pub words: Embedding<B>,
    /// Learned position table, weight `[max_caption_length, H]`.
    pub positions: Embedding<B>,
    /// LayerNorm with eps 1e-8.
    pub layer_norm: TorchLayerNorm<B>,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
    /// Token id whose positions are zeroed (0, `<unk>`).
    pub padding_idx: usize,
}

impl<B: Backend> WordAndPositionalEmbedding<B> {
    /// Creates the tables with upstream's initialisation: N(0, 0.02), padding row zero.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        max_caption_length: usize,
        padding_idx: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let words = init::normal([vocab_size, hidden_size], device).slice_assign(
            [padding_idx..padding_idx + 1, 0..hidden_size],
            Tensor::zeros([1, hidden_size], device),
        );
        Self {
            words: Embedding {
                weight: Param::from_tensor(words),
            },
            positions: Embedding {
                weight: Param::from_tensor(init::normal([max_caption_length, hidden_size], device)),
            },
            layer_norm: TorchLayerNorm::new(hidden_size, EMBEDDING_LAYER_NORM_EPS, device),
            dropout: DropoutConfig::new(dropout).init(),
            padding_idx,
        }
    }

    /// Rows of the position table: the longest sequence the head can read.
    pub fn max_caption_length(&self) -> usize {
        self.positions.weight.dims()[0]
    }

    /// Embeds a batch of captions starting at position 0.
    ///
    /// # Shapes
    /// - `tokens`: `[N, T]`, `T ≤ max_caption_length`
    /// - returns: `[N, T, H]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_at(tokens, 0)
    }

    /// Embeds tokens that sit at positions `start..start + T` (incremental decoding).
    ///
    /// # Panics
    /// If `start + T` exceeds the position table.
    ///
    /// # Shapes
    /// - `tokens`: `[N, T]`
    /// - returns: `[N, T, H]`
    pub fn forward_at(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let [n, t] = tokens.dims();
        let max = self.max_caption_length();
        assert!(
            start + t <= max,
            "positions {start}..{} exceed the {max} rows of the position table",
            start + t
        );
        let device = tokens.device();
        let words = self.words.forward(tokens.clone());
        let position_ids =
            Tensor::<B, 1, Int>::arange(start as i64..(start + t) as i64, &device).reshape([1, t]);
        let positions = embedding(self.positions.weight.val(), position_ids);
        let hidden = words.dims()[2];
        let x = self
            .layer_norm
            .forward(words + positions.expand([n, t, hidden]));
        let x = self.dropout.forward(x);
        let keep = tokens
            .not_equal_elem(self.padding_idx as i64)
            .float()
            .reshape([n, t, 1]);
        x * keep
    }
}
