//! Upstream's initialisation, in one place.
//!
//! `TransformerDecoderTextualHead._init_weights` draws every `nn.Linear`/`nn.Embedding` weight and
//! the MHA `in_proj_weight` from N(0, 0.02) but never touches the biases, so each bias keeps
//! what its constructor gave it: torch's default U(−1/√fan_in, 1/√fan_in) for `nn.Linear`
//! (visual projection, FFN, output), 0 for the MHA's `in_proj_bias` and `out_proj.bias`.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;

/// Standard deviation of every re-initialised weight.
pub(crate) const WEIGHT_STD: f64 = 0.02;

/// A `[rows, cols]` tensor drawn from N(0, 0.02).
pub(crate) fn normal<B: Backend>(shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::random(shape, Distribution::Normal(0.0, WEIGHT_STD), device)
}

/// torch's default `nn.Linear` bias: U(−1/√fan_in, 1/√fan_in).
pub(crate) fn default_bias<B: Backend>(
    fan_in: usize,
    size: usize,
    device: &B::Device,
) -> Param<Tensor<B, 1>> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Param::from_tensor(Tensor::random(
        [size],
        Distribution::Uniform(-bound, bound),
        device,
    ))
}

/// `nn.Linear(d_input, d_output)` as upstream leaves it: weight N(0, 0.02), bias either torch's
/// default (`zero_bias = false`) or 0 (the MHA's `out_proj`).
///
/// burn's `Linear` stores the weight as `[d_input, d_output]`, the transpose of torch's.
pub(crate) fn linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    zero_bias: bool,
    device: &B::Device,
) -> Linear<B> {
    let bias = if zero_bias {
        Param::from_tensor(Tensor::zeros([d_output], device))
    } else {
        default_bias(d_input, d_output, device)
    };
    Linear {
        weight: Param::from_tensor(normal([d_input, d_output], device)),
        bias: Some(bias),
    }
}
