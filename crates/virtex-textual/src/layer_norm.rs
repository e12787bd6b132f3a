//! `torch.nn.LayerNorm` with PyTorch's parameter names.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

/// `torch.nn.LayerNorm(d, eps)` over the last dimension: `(x − mean) / √(var + eps) · weight + bias`
/// with the biased variance.
///
/// burn-nn's `LayerNorm` computes the same thing but names its parameters `gamma`/`beta`; this
/// module keeps torch's `weight`/`bias`, so that parameter paths read like upstream's state-dict
/// keys (`textual.transformer.layers.0.norm1.weight`) and upstream's no-decay regex
/// `.*textual.(embedding|transformer).*(norm.*|bias)` selects exactly what it selects upstream.
/// It runs on the backend's fused `layer_norm` kernel.
#[derive(Module, Debug)]
pub struct TorchLayerNorm<B: Backend> {
    /// Scale, `[d]`, initialised to 1.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift, `[d]`, initialised to 0.
    pub bias: Param<Tensor<B, 1>>,
    /// Added to the variance: 1e-5 in the decoder, **1e-8** in the word embedding.
    pub epsilon: f64,
}

impl<B: Backend> TorchLayerNorm<B> {
    /// A LayerNorm of width `d` with weight 1 and bias 0.
    pub fn new(d: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            epsilon,
        }
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// - `input`: `[..., d]`
    /// - returns: `[..., d]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            input.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            Some(self.bias.val().into_primitive().tensor()),
            self.epsilon,
        )))
    }
}
