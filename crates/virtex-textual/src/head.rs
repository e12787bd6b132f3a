//! `TransformerDecoderTextualHead` (`virtex/modules/textual_heads.py`).

use burn::module::{ModuleMapper, Param, ParamId};
use burn::nn::Linear;
use burn::prelude::*;
use virtex_kernels::Precision;

use crate::attention::{causal_mask, padding_mask};
use crate::config::TextualHeadConfig;
use crate::decoder::{DecodingState, TransformerDecoder};
use crate::embedding::WordAndPositionalEmbedding;
use crate::init;

/// The output layer's own parameter: its bias. Its weight **is** the word-embedding matrix
/// (`output.weight = embedding.words.weight` upstream), so it is not stored twice.
#[derive(Module, Debug)]
pub struct TiedOutput<B: Backend> {
    /// `[V]`, torch's default U(−1/√H, 1/√H).
    pub bias: Param<Tensor<B, 1>>,
}

/// VirTex's textual head: the projected visual grid is the memory of a Transformer decoder over
/// the caption, and the output layer is tied to the word embedding.
///
/// ```text
/// memory = visual_projection(grid.view(N, C, h·w).permute(0, 2, 1))   # [N, h·w, H], row-major
/// x      = embedding(caption_tokens)                                   # [N, T, H]
/// y      = transformer(x, memory, causal mask + padding mask from caption_lengths)
/// logits = y · words.weightᵀ + output.bias                             # [N, T, V]
/// ```
/// The visual tokens get no positional encoding and no LayerNorm, and are never masked.
///
/// Field names follow upstream's state-dict keys (`visual_projection.weight`,
/// `embedding.words.weight`, `transformer.layers.0.self_attn.in_proj_weight`,
/// `transformer.layers.0.norm1.weight`, `output.bias`, …); burn's `Linear` weights are stored
/// transposed (`[d_input, d_output]`).
#[derive(Module, Debug)]
pub struct TransformerDecoderTextualHead<B: Backend> {
    /// `Linear(C, H)`, weight `[C, H]`.
    pub visual_projection: Linear<B>,
    /// Word + position embedding; `embedding.words.weight` `[V, H]` is also the output weight.
    pub embedding: WordAndPositionalEmbedding<B>,
    /// The decoder stack.
    pub transformer: TransformerDecoder<B>,
    /// The output layer's bias `[V]`.
    pub output: TiedOutput<B>,
    /// Whether the causal mask is applied (captioning: yes).
    pub mask_future_positions: bool,
    /// Precision of the visual projection and the output layer (the decoder's layers carry
    /// their own); set everything at once with [`TransformerDecoderTextualHead::with_precision`].
    pub precision: Precision,
}

impl<B: Backend> TransformerDecoderTextualHead<B> {
    pub(crate) fn new(config: &TextualHeadConfig, device: &B::Device) -> Self {
        let h = config.hidden_size;
        Self {
            visual_projection: init::linear(config.visual_feature_size, h, false, device),
            embedding: WordAndPositionalEmbedding::new(
                config.vocab_size,
                h,
                config.max_caption_length,
                config.padding_idx,
                config.dropout,
                device,
            ),
            transformer: TransformerDecoder::new(config, device),
            output: TiedOutput {
                bias: init::default_bias(h, config.vocab_size, device),
            },
            mask_future_positions: config.mask_future_positions,
            precision: Precision::F32,
        }
    }

    /// The head with every matrix product in `precision`: the visual projection, the
    /// attention projections and products, the feed-forward block and the tied output layer.
    /// [`Precision::Bf16`] runs those in bf16 and casts each result back, so the embedding,
    /// LayerNorms, softmax, GELU, residual adds, logits, parameters and gradients stay f32.
    /// [`Precision::F32`] (the default) computes exactly what a head without this setting
    /// computes. Not saved with the weights: set it after building or loading.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            transformer: self.transformer.with_precision(precision),
            precision,
            ..self
        }
    }

    /// Vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        self.embedding.words.weight.dims()[0]
    }

    /// Width `H`.
    pub fn hidden_size(&self) -> usize {
        self.embedding.words.weight.dims()[1]
    }

    /// Channels `C` of the visual grid the head expects.
    pub fn visual_feature_size(&self) -> usize {
        self.visual_projection.weight.dims()[0]
    }

    /// Projects the visual grid into the decoder's memory, tokens in row-major `h·W + w` order.
    ///
    /// # Shapes
    /// - `visual_features`: `[N, C, h, w]`
    /// - returns: `[N, h·w, H]`
    pub fn project_visual(&self, visual_features: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, c, h, w] = visual_features.dims();
        let tokens = visual_features.reshape([n, c, h * w]).swap_dims(1, 2);
        self.precision
            .forward_linear(&self.visual_projection, tokens)
    }

    /// Logits of every position for teacher-forced captions.
    ///
    /// # Shapes
    /// - `visual_features`: `[N, C, h, w]`
    /// - `caption_tokens`: `[N, T]`
    /// - `caption_lengths`: `[N]` (positions `≥ length` are padding)
    /// - returns: `[N, T, V]`
    pub fn forward(
        &self,
        visual_features: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> Tensor<B, 3> {
        let memory = self.project_visual(visual_features);
        self.forward_with_decoder(&self.transformer, memory, caption_tokens, caption_lengths)
    }

    /// Like [`TransformerDecoderTextualHead::forward`] on an already projected memory, through
    /// any decoder stack that shares this head's projection, embedding and output layer (the
    /// backward stack of the bicaptioning model).
    ///
    /// # Shapes
    /// - `memory`: `[N, S, H]` from [`TransformerDecoderTextualHead::project_visual`]
    /// - `caption_tokens`: `[N, T]`
    /// - `caption_lengths`: `[N]`
    /// - returns: `[N, T, V]`
    pub fn forward_with_decoder(
        &self,
        decoder: &TransformerDecoder<B>,
        memory: Tensor<B, 3>,
        caption_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> Tensor<B, 3> {
        let [n, t] = caption_tokens.dims();
        let device = caption_tokens.device();
        let x = self.embedding.forward(caption_tokens);
        let padding = padding_mask(caption_lengths, t)
            .reshape([n, 1, 1, t])
            .expand([n, 1, t, t]);
        let mask = if self.mask_future_positions {
            causal_mask::<B>(t, 0, &device)
                .expand([n, 1, t, t])
                .bool_or(padding)
        } else {
            padding
        };
        self.logits(decoder.forward(x, memory, Some(mask)))
    }

    /// The tied output layer.
    ///
    /// # Shapes
    /// - `hidden`: `[N, T, H]`
    /// - returns: `[N, T, V]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.precision.linear(
            hidden,
            self.embedding.words.weight.val().transpose(),
            Some(self.output.bias.val()),
        )
    }

    /// Starts incremental decoding over a projected memory.
    ///
    /// # Shapes
    /// - `memory`: `[N, S, H]`
    pub fn start_decoding(&self, memory: Tensor<B, 3>) -> DecodingState<B> {
        self.transformer.start(memory)
    }

    /// Feeds `T` new tokens at positions `state.position..` and returns the logits of the last
    /// one (the distribution of the token that follows). Caption lengths are taken as full,
    /// as upstream's decoding step does.
    ///
    /// # Panics
    /// If the positions exceed the position table (`max_caption_length`).
    ///
    /// # Shapes
    /// - `tokens`: `[N, T]`
    /// - returns: `[N, V]`
    pub fn decode_step(
        &self,
        state: &mut DecodingState<B>,
        tokens: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let [n, t] = tokens.dims();
        let device = tokens.device();
        let past = state.position;
        let x = self.embedding.forward_at(tokens, past);
        let mask =
            (self.mask_future_positions && t > 1).then(|| causal_mask::<B>(t, past, &device));
        let hidden = self.transformer.forward_incremental(x, state, mask);
        let last = hidden.narrow(1, t - 1, 1);
        let v = self.vocab_size();
        self.logits(last).reshape([n, v])
    }
}

impl<B: Backend> TransformerDecoder<B> {
    /// A deep copy with fresh parameter ids: equal weights, but a separate set of parameters for
    /// the optimizer and for autodiff (upstream's `copy.deepcopy(textual)` for the backward
    /// decoder, which therefore starts from the forward decoder's exact initial weights).
    pub fn duplicate(&self) -> Self {
        self.clone().map(&mut FreshParameters)
    }
}

/// Gives every float parameter a new id and a new autodiff leaf.
struct FreshParameters;

impl<B: Backend> ModuleMapper<B> for FreshParameters {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let copy = tensor.detach().set_require_grad(require_grad);
        Param::from_mapped_value(ParamId::new(), copy, mapper)
    }
}
