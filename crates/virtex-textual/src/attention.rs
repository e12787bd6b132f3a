//! Multi-head attention that computes exactly what `torch.nn.MultiheadAttention` computes.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use virtex_kernels::Precision;

use crate::init;

/// `torch.nn.MultiheadAttention(H, A, dropout, batch_first=True)`, reproduced exactly.
///
/// # Why not burn-nn's `MultiHeadAttention`
///
/// burn-nn 0.21's MHA differs from PyTorch's in two ways that change training, and neither can
/// be configured away:
/// - it applies dropout to the **pre-softmax scores**; torch applies it to the **softmaxed
///   weights** (`attn = dropout(softmax(q kᵀ / √d + mask))`), which is what VirTex trained with;
/// - it fills masked scores with −1e4 (`min_float`); torch uses −∞, so a masked key gets
///   exactly zero weight. When every key of a row is masked (a caption of length 0: the causal
///   and padding masks together hide everything), torch's SDPA returns zero weights instead of
///   NaN; [`masked_softmax`] does the same.
///
/// The parameters also keep torch's layout and names, so state-dict keys map one to one:
/// `in_proj_weight` is the stacked `[Wq; Wk; Wv]` of shape `[3H, H]` (rows, torch layout) and
/// `in_proj_bias` is `[3H]`; `out_proj` is a burn [`Linear`] (weight `[H, H]` stored
/// `[d_input, d_output]`, the transpose of torch's). Self-attention projects q, k and v with one
/// matrix product; cross-attention slices the rows it needs.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    /// Stacked query/key/value projection `[Wq; Wk; Wv]`, `[3H, H]` (torch layout).
    pub in_proj_weight: Param<Tensor<B, 2>>,
    /// Stacked query/key/value bias, `[3H]`.
    pub in_proj_bias: Param<Tensor<B, 1>>,
    /// Output projection, weight `[H, H]` (`[d_input, d_output]`), bias `[H]`.
    pub out_proj: Linear<B>,
    /// Dropout on the softmaxed attention weights.
    pub dropout: Dropout,
    /// Number of heads `A`.
    pub num_heads: usize,
    /// Precision of the projections and of the two attention products `q kᵀ` and
    /// `weights · v`; the softmax always runs in the input's dtype (not a parameter).
    pub precision: Precision,
}

/// Keys and values of one attention, split into heads, kept between decoding steps.
#[derive(Debug, Clone)]
pub struct KeyValue<B: Backend> {
    /// `[N, A, S, H/A]`.
    pub key: Tensor<B, 4>,
    /// `[N, A, S, H/A]`.
    pub value: Tensor<B, 4>,
}

impl<B: Backend> KeyValue<B> {
    /// Number of key positions `S`.
    pub fn len(&self) -> usize {
        self.key.dims()[2]
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the positions of `newer` after ours.
    pub fn append(self, newer: Self) -> Self {
        Self {
            key: Tensor::cat(vec![self.key, newer.key], 2),
            value: Tensor::cat(vec![self.value, newer.value], 2),
        }
    }

    /// Keeps the rows `indices` of the batch (beam reordering), `[N'] → [N', A, S, d]`.
    pub fn select(self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            key: self.key.select(0, indices.clone()),
            value: self.value.select(0, indices),
        }
    }
}

impl<B: Backend> MultiheadAttention<B> {
    /// Creates the module with upstream's initialisation: `in_proj_weight` and `out_proj.weight`
    /// from N(0, 0.02), both biases 0.
    pub fn new(hidden_size: usize, num_heads: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            in_proj_weight: Param::from_tensor(init::normal(
                [3 * hidden_size, hidden_size],
                device,
            )),
            in_proj_bias: Param::from_tensor(Tensor::zeros([3 * hidden_size], device)),
            out_proj: init::linear(hidden_size, hidden_size, true, device),
            dropout: DropoutConfig::new(dropout).init(),
            num_heads,
            precision: Precision::F32,
        }
    }

    /// The attention with its matrix products in `precision` (see [`Precision`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Width `H`.
    pub fn hidden_size(&self) -> usize {
        self.in_proj_weight.dims()[1]
    }

    /// Self-attention over `input`.
    ///
    /// `past` holds the keys/values of earlier positions (incremental decoding); the new
    /// positions' keys/values are appended and returned so the caller can keep them.
    ///
    /// # Shapes
    /// - `input`: `[N, T, H]`
    /// - `mask`: `[N, 1, T, S]` or `[1, 1, T, S]`, `true` = masked, `S` = past + T
    /// - returns: `[N, T, H]` and the keys/values of all `S` positions
    pub fn self_attention(
        &self,
        input: Tensor<B, 3>,
        past: Option<KeyValue<B>>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> (Tensor<B, 3>, KeyValue<B>) {
        let h = self.hidden_size();
        let qkv = self.precision.linear(
            input,
            self.in_proj_weight.val().transpose(),
            Some(self.in_proj_bias.val()),
        );
        let query = self.split_heads(qkv.clone().narrow(2, 0, h));
        let current = KeyValue {
            key: self.split_heads(qkv.clone().narrow(2, h, h)),
            value: self.split_heads(qkv.narrow(2, 2 * h, h)),
        };
        let key_value = match past {
            Some(past) if !past.is_empty() => past.append(current),
            _ => current,
        };
        let (output, _) = self.attend(query, &key_value, mask);
        (output, key_value)
    }

    /// Keys and values of the memory for cross-attention (computed once per image when decoding).
    ///
    /// # Shapes
    /// - `memory`: `[N, S, H]`
    /// - returns: `[N, A, S, H/A]` each
    pub fn memory_key_value(&self, memory: Tensor<B, 3>) -> KeyValue<B> {
        let h = self.hidden_size();
        let weight = self.in_proj_weight.val().narrow(0, h, 2 * h);
        let bias = self.in_proj_bias.val().narrow(0, h, 2 * h);
        let kv = self
            .precision
            .linear(memory, weight.transpose(), Some(bias));
        KeyValue {
            key: self.split_heads(kv.clone().narrow(2, 0, h)),
            value: self.split_heads(kv.narrow(2, h, h)),
        }
    }

    /// Cross-attention of `input` over the memory's keys/values (no mask: every visual token is
    /// always visible).
    ///
    /// # Shapes
    /// - `input`: `[N, T, H]`
    /// - `memory`: from [`MultiheadAttention::memory_key_value`]
    /// - returns: `[N, T, H]`
    pub fn cross_attention(&self, input: Tensor<B, 3>, memory: &KeyValue<B>) -> Tensor<B, 3> {
        self.cross_attention_with_weights(input, memory).0
    }

    /// [`MultiheadAttention::cross_attention`] that also returns the attention weights of every
    /// head, as `torch.nn.MultiheadAttention(..., need_weights=True,
    /// average_attn_weights=False)` does (after dropout, which is off in evaluation). They are
    /// computed anyway; returning them costs nothing.
    ///
    /// # Shapes
    /// - `input`: `[N, T, H]`
    /// - `memory`: from [`MultiheadAttention::memory_key_value`], `S` positions
    /// - returns: `[N, T, H]` and the weights `[N, A, T, S]` (each row sums to 1 over `S`)
    pub fn cross_attention_with_weights(
        &self,
        input: Tensor<B, 3>,
        memory: &KeyValue<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let h = self.hidden_size();
        let weight = self.in_proj_weight.val().narrow(0, 0, h);
        let bias = self.in_proj_bias.val().narrow(0, 0, h);
        let query = self.split_heads(self.precision.linear(input, weight.transpose(), Some(bias)));
        self.attend(query, memory, None)
    }

    /// `softmax(q kᵀ / √d, masked with −∞)`, dropout on the weights, weights · v, `out_proj`;
    /// also returns the (dropped-out) weights `[N, A, T, S]`.
    fn attend(
        &self,
        query: Tensor<B, 4>,
        key_value: &KeyValue<B>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let [n, heads, t, d] = query.dims();
        let s = key_value.len();
        let scores = self.precision.matmul(
            query.mul_scalar(1.0 / (d as f64).sqrt()),
            key_value.key.clone().swap_dims(2, 3),
        );
        let mask = mask.map(|mask| mask.expand([n, heads, t, s]));
        let weights = self.dropout.forward(masked_softmax(scores, mask));
        let context = self
            .precision
            .matmul(weights.clone(), key_value.value.clone());
        let context = context.swap_dims(1, 2).reshape([n, t, heads * d]);
        (
            self.precision.forward_linear(&self.out_proj, context),
            weights,
        )
    }

    /// `[N, T, H]` → `[N, A, T, H/A]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, t, h] = x.dims();
        x.reshape([n, t, self.num_heads, h / self.num_heads])
            .swap_dims(1, 2)
    }
}

/// Softmax over the last dimension with masked entries at −∞.
///
/// A row whose entries are all masked gets all-zero weights (and zero gradient), as torch's
/// scaled-dot-product attention does, instead of `0/0 = NaN`.
///
/// # Shapes
/// - `scores`, `mask`: `[N, A, T, S]`, `true` = masked
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let Some(mask) = mask else {
        return softmax(scores, 3);
    };
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let max = scores.clone().detach().max_dim(3);
    let max = max.clone().mask_fill(max.is_inf(), 0.0);
    let exp = (scores - max).exp();
    let sum = exp.clone().sum_dim(3);
    let sum = sum.clone().mask_fill(sum.equal_elem(0.0), 1.0);
    exp / sum
}

/// The causal mask of `queries` new positions after `past` earlier ones: key `j` is hidden from
/// query `i` when `j > past + i`.
///
/// # Shapes
/// - returns: `[1, 1, queries, past + queries]`, `true` = masked
pub fn causal_mask<B: Backend>(
    queries: usize,
    past: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let keys = past + queries;
    let query_position = Tensor::<B, 1, Int>::arange(past as i64..keys as i64, device)
        .reshape([queries, 1])
        .expand([queries, keys]);
    let key_position = Tensor::<B, 1, Int>::arange(0..keys as i64, device)
        .reshape([1, keys])
        .expand([queries, keys]);
    key_position
        .greater(query_position)
        .reshape([1, 1, queries, keys])
}

/// The key-padding mask of upstream: position `j` of caption `b` is padding when
/// `caption_lengths[b] < j + 1`.
///
/// # Shapes
/// - `caption_lengths`: `[N]`
/// - returns: `[N, T]`, `true` = padding
pub fn padding_mask<B: Backend>(
    caption_lengths: Tensor<B, 1, Int>,
    max_length: usize,
) -> Tensor<B, 2, Bool> {
    let [n] = caption_lengths.dims();
    let device = caption_lengths.device();
    let positions = Tensor::<B, 1, Int>::arange(0..max_length as i64, &device)
        .reshape([1, max_length])
        .expand([n, max_length]);
    positions.greater_equal(caption_lengths.reshape([n, 1]).expand([n, max_length]))
}
