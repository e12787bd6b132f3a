//! `torch.nn.TransformerDecoder(TransformerDecoderLayer(..., activation="gelu",
//! batch_first=True, norm_first=...))`, with incremental decoding.

use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use virtex_kernels::Precision;

use crate::attention::{KeyValue, MultiheadAttention};
use crate::config::{NormType, TextualHeadConfig};
use crate::init;
use crate::layer_norm::TorchLayerNorm;

/// LayerNorm epsilon inside the decoder (torch's default).
pub const DECODER_LAYER_NORM_EPS: f64 = 1e-5;

/// One decoder layer, `torch.nn.TransformerDecoderLayer` with exact-erf GELU.
///
/// Post-norm (`norm_first = false`, every released model):
/// ```text
/// x = norm1(x + dropout(self_attn(x, x, x, causal + padding mask)))
/// x = norm2(x + dropout(multihead_attn(x, m, m)))
/// x = norm3(x + dropout(linear2(dropout(gelu(linear1(x))))))
/// ```
/// Pre-norm applies each norm to the sublayer's input instead: `x = x + dropout(f(norm(x)))`.
///
/// torch has four dropout modules (`dropout`, `dropout1..3`) with the same probability; one
/// module applied at the same four places is equivalent.
#[derive(Module, Debug)]
pub struct TransformerDecoderLayer<B: Backend> {
    /// Masked self-attention.
    pub self_attn: MultiheadAttention<B>,
    /// Cross-attention over the projected visual grid.
    pub multihead_attn: MultiheadAttention<B>,
    /// FFN expansion, weight `[H, F]` (`[d_input, d_output]`).
    pub linear1: Linear<B>,
    /// FFN projection, weight `[F, H]`.
    pub linear2: Linear<B>,
    /// Norm of the self-attention block.
    pub norm1: TorchLayerNorm<B>,
    /// Norm of the cross-attention block.
    pub norm2: TorchLayerNorm<B>,
    /// Norm of the feed-forward block.
    pub norm3: TorchLayerNorm<B>,
    /// Dropout of the residual branches and inside the FFN.
    pub dropout: Dropout,
    /// Pre-norm (`true`) or post-norm (`false`).
    pub norm_first: bool,
    /// Precision of the feed-forward products (the attentions carry their own; not a
    /// parameter).
    pub precision: Precision,
}

/// What one layer keeps between decoding steps.
#[derive(Debug, Clone)]
pub struct LayerState<B: Backend> {
    /// Self-attention keys/values of the positions decoded so far (`None` before the first).
    pub self_attn: Option<KeyValue<B>>,
    /// Cross-attention keys/values of the memory, computed once.
    pub memory: KeyValue<B>,
}

/// The incremental-decoding state of a whole decoder: per-layer key/value caches and the
/// number of positions already consumed.
///
/// Because every layer is causal, the keys/values of earlier positions never change when new
/// tokens are appended, so feeding one token at a time with this cache gives the same logits as
/// re-running the whole prefix (up to float summation order).
#[derive(Debug, Clone)]
pub struct DecodingState<B: Backend> {
    /// One entry per decoder layer.
    pub layers: Vec<LayerState<B>>,
    /// Positions consumed so far; the next token sits at this position.
    pub position: usize,
    /// Whether [`TransformerDecoder::forward_incremental`] keeps each layer's cross-attention
    /// weights in [`DecodingState::cross_attention`] (off by default: decoding for captions
    /// alone does not need them).
    pub record_cross_attention: bool,
    /// With [`DecodingState::record_cross_attention`] on, the cross-attention weights of the
    /// positions fed by the latest call, one `[N, A, T, S]` tensor per layer; empty otherwise.
    pub cross_attention: Vec<Tensor<B, 4>>,
}

impl<B: Backend> DecodingState<B> {
    /// The state with cross-attention recording switched on or off (see
    /// [`DecodingState::cross_attention`]).
    pub fn recording_cross_attention(mut self, record: bool) -> Self {
        self.record_cross_attention = record;
        self
    }

    /// Number of rows `N` (batch × beams).
    pub fn batch_size(&self) -> usize {
        self.layers
            .first()
            .map(|layer| layer.memory.key.dims()[0])
            .unwrap_or(0)
    }

    /// Keeps (and reorders, or repeats) the rows `indices`: beam reordering and expansion.
    ///
    /// # Shapes
    /// - `indices`: `[N']`, values in `0..N`
    pub fn select(self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|layer| LayerState {
                    self_attn: layer.self_attn.map(|kv| kv.select(indices.clone())),
                    memory: layer.memory.select(indices.clone()),
                })
                .collect(),
            position: self.position,
            record_cross_attention: self.record_cross_attention,
            cross_attention: self
                .cross_attention
                .into_iter()
                .map(|weights| weights.select(0, indices.clone()))
                .collect(),
        }
    }

    /// Forgets every decoded position but keeps the memory's keys/values: the next token goes
    /// to position 0 again.
    pub fn clear_history(&mut self) {
        for layer in &mut self.layers {
            layer.self_attn = None;
        }
        self.position = 0;
    }
}

impl<B: Backend> TransformerDecoderLayer<B> {
    /// Creates a layer with upstream's initialisation.
    pub fn new(config: &TextualHeadConfig, device: &B::Device) -> Self {
        let h = config.hidden_size;
        let f = config.feedforward_size;
        let norm = || TorchLayerNorm::new(h, DECODER_LAYER_NORM_EPS, device);
        Self {
            self_attn: MultiheadAttention::new(h, config.attention_heads, config.dropout, device),
            multihead_attn: MultiheadAttention::new(
                h,
                config.attention_heads,
                config.dropout,
                device,
            ),
            linear1: init::linear(h, f, false, device),
            linear2: init::linear(f, h, false, device),
            norm1: norm(),
            norm2: norm(),
            norm3: norm(),
            dropout: DropoutConfig::new(config.dropout).init(),
            norm_first: config.norm_type == NormType::Pre,
            precision: Precision::F32,
        }
    }

    /// The layer with every matrix product (both attentions and the feed-forward block) in
    /// `precision`; LayerNorms, GELU, dropout and residual adds stay in the input's dtype.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            self_attn: self.self_attn.with_precision(precision),
            multihead_attn: self.multihead_attn.with_precision(precision),
            precision,
            ..self
        }
    }

    /// Runs the layer on new positions.
    ///
    /// # Shapes
    /// - `x`: `[N, T, H]` (the `T` newest positions)
    /// - `memory`: this layer's cross-attention keys/values, `[N, A, S, H/A]`
    /// - `mask`: self-attention mask `[N|1, 1, T, past + T]`, `true` = masked
    /// - `past`: self-attention keys/values of earlier positions
    /// - returns: `[N, T, H]` and the self-attention keys/values of all positions
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: &KeyValue<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        past: Option<KeyValue<B>>,
    ) -> (Tensor<B, 3>, KeyValue<B>) {
        let (x, key_value, _) = self.forward_with_attention(x, memory, mask, past);
        (x, key_value)
    }

    /// [`TransformerDecoderLayer::forward`] that also returns the cross-attention weights of
    /// every head over the memory (what the paper's attention figures show).
    ///
    /// # Shapes
    /// - as [`TransformerDecoderLayer::forward`]
    /// - returns: `[N, T, H]`, the self-attention keys/values, and the cross-attention weights
    ///   `[N, A, T, S]`
    pub fn forward_with_attention(
        &self,
        x: Tensor<B, 3>,
        memory: &KeyValue<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        past: Option<KeyValue<B>>,
    ) -> (Tensor<B, 3>, KeyValue<B>, Tensor<B, 4>) {
        if self.norm_first {
            let (attended, key_value) =
                self.self_attn
                    .self_attention(self.norm1.forward(x.clone()), past, mask);
            let x = x + self.dropout.forward(attended);
            let (crossed, weights) = self
                .multihead_attn
                .cross_attention_with_weights(self.norm2.forward(x.clone()), memory);
            let x = x + self.dropout.forward(crossed);
            let x = x.clone()
                + self
                    .dropout
                    .forward(self.feed_forward(self.norm3.forward(x)));
            (x, key_value, weights)
        } else {
            let (attended, key_value) = self.self_attn.self_attention(x.clone(), past, mask);
            let x = self.norm1.forward(x + self.dropout.forward(attended));
            let (crossed, weights) = self
                .multihead_attn
                .cross_attention_with_weights(x.clone(), memory);
            let x = self.norm2.forward(x + self.dropout.forward(crossed));
            let x = self
                .norm3
                .forward(x.clone() + self.dropout.forward(self.feed_forward(x)));
            (x, key_value, weights)
        }
    }

    /// `linear2(dropout(gelu(linear1(x))))`.
    fn feed_forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = gelu(self.precision.forward_linear(&self.linear1, x));
        self.precision
            .forward_linear(&self.linear2, self.dropout.forward(hidden))
    }
}

/// A stack of decoder layers, `torch.nn.TransformerDecoder(layer, L, norm)`; `norm` is the
/// final LayerNorm that only pre-norm heads have.
#[derive(Module, Debug)]
pub struct TransformerDecoder<B: Backend> {
    /// The `L` layers.
    pub layers: Vec<TransformerDecoderLayer<B>>,
    /// Final LayerNorm (pre-norm only).
    pub norm: Option<TorchLayerNorm<B>>,
}

impl<B: Backend> TransformerDecoder<B> {
    /// Creates `L` independently initialised layers (upstream builds them with `deepcopy` of
    /// one layer *before* `_init_weights` runs, so each gets its own draw).
    pub fn new(config: &TextualHeadConfig, device: &B::Device) -> Self {
        Self {
            layers: (0..config.num_layers)
                .map(|_| TransformerDecoderLayer::new(config, device))
                .collect(),
            norm: (config.norm_type == NormType::Pre)
                .then(|| TorchLayerNorm::new(config.hidden_size, DECODER_LAYER_NORM_EPS, device)),
        }
    }

    /// The stack with every layer's matrix products in `precision` (see
    /// [`TransformerDecoderLayer::with_precision`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|layer| layer.with_precision(precision))
                .collect(),
            ..self
        }
    }

    /// Runs the whole stack over a full sequence.
    ///
    /// # Shapes
    /// - `x`: `[N, T, H]`
    /// - `memory`: `[N, S, H]`
    /// - `mask`: `[N|1, 1, T, T]`, `true` = masked
    /// - returns: `[N, T, H]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let mut state = self.start(memory);
        self.forward_incremental(x, &mut state, mask)
    }

    /// A fresh decoding state: the memory's cross-attention keys/values for every layer.
    ///
    /// # Shapes
    /// - `memory`: `[N, S, H]`
    pub fn start(&self, memory: Tensor<B, 3>) -> DecodingState<B> {
        DecodingState {
            layers: self
                .layers
                .iter()
                .map(|layer| LayerState {
                    self_attn: None,
                    memory: layer.multihead_attn.memory_key_value(memory.clone()),
                })
                .collect(),
            position: 0,
            record_cross_attention: false,
            cross_attention: Vec::new(),
        }
    }

    /// Runs the stack over `T` new positions, reading and extending `state`.
    ///
    /// # Shapes
    /// - `x`: `[N, T, H]`, already embedded at positions `state.position..`
    /// - `mask`: `[N|1, 1, T, state.position + T]`
    /// - returns: `[N, T, H]`
    pub fn forward_incremental(
        &self,
        x: Tensor<B, 3>,
        state: &mut DecodingState<B>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let steps = x.dims()[1];
        let mut x = x;
        state.cross_attention.clear();
        for (layer, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            let past = layer_state.self_attn.take();
            let (y, key_value, weights) =
                layer.forward_with_attention(x, &layer_state.memory, mask.clone(), past);
            layer_state.self_attn = Some(key_value);
            if state.record_cross_attention {
                state.cross_attention.push(weights);
            }
            x = y;
        }
        state.position += steps;
        match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}
