//! Mixed precision by hand: bf16 matrix products and convolutions inside an f32 model.
//!
//! Burn 0.21 has no autocast and no type promotion (every operand of an op must have the same
//! dtype), so the models choose, op by op, what runs in bf16: only the matrix products and
//! convolutions, through the entry points of [`Precision`]. Each casts its operands to bf16,
//! runs the op and casts the result straight back to the input's dtype, so everything between
//! them (BatchNorm, LayerNorm, softmax, GELU, residual adds, embeddings, losses) stays f32.
//! Parameters stay f32 too: burn's autodiff casts a gradient back to its parent's dtype, so a
//! parameter used as `weight.val().cast(bf16)` receives an f32 gradient, and the optimizer state
//! and master weights never leave f32.

use std::fmt;
use std::str::FromStr;

use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::prelude::*;
use burn::serde::{Deserialize, Serialize};
use burn::tensor::ops::ConvOptions;
use burn::tensor::FloatDType;

use crate::conv::{conv2d, conv_options, forward_conv2d};

/// The numeric precision of a model's matrix products and convolutions.
///
/// - [`Precision::F32`] (default): every op in the operands' own dtype, exactly the ops a
///   model without this setting runs (bit-identical results), except that [`Precision::linear`]
///   folds the leading dimensions of its input into one matrix first (same values up to the
///   order of the weight gradient's sum; much faster, see there).
/// - [`Precision::Bf16`]: matrix products and convolutions in bf16 (operands cast, result cast
///   back to the input's dtype); everything else, parameters, gradients and optimizer state
///   stay f32. Meant for GPUs with bf16 tensor cores; on the CPU backend the bf16 ops are
///   correct but slower than f32.
///
/// Parsed from and written as `f32` / `bf16` (command lines, JSON configs).
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::{DType, Distribution, Tensor, Tolerance};
/// use virtex_kernels::Precision;
///
/// let device = Default::default();
/// let x = Tensor::<Flex, 2>::random([4, 8], Distribution::Default, &device);
/// let w = Tensor::<Flex, 2>::random([8, 3], Distribution::Default, &device);
/// let precision: Precision = "bf16".parse().unwrap();
/// let y = precision.matmul(x.clone(), w.clone());
/// assert_eq!(y.dtype(), DType::F32); // computed in bf16, handed back in f32
/// // bf16 keeps 8 significant bits.
/// let tolerance = Tolerance::relative(2e-2).set_absolute(2e-2);
/// y.into_data().assert_approx_eq::<f32>(&x.matmul(w).into_data(), tolerance);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(crate = "burn::serde", rename_all = "lowercase")]
pub enum Precision {
    /// Full precision: no cast anywhere.
    #[default]
    F32,
    /// bf16 matrix products and convolutions, f32 everything else.
    Bf16,
}

impl Precision {
    /// Every precision, in the order of [`Precision::name`]s users see.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype the operands of a matrix product or convolution are cast to; `None` when they
    /// are used as they are.
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// `lhs · rhs` (burn's batched [`Tensor::matmul`]) in this precision; the result has `lhs`'s
    /// dtype.
    ///
    /// # Shapes
    /// - `lhs`: `[..., M, K]`, `rhs`: `[..., K, N]`
    /// - returns: `[..., M, N]`
    pub fn matmul<B: Backend, const D: usize>(
        self,
        lhs: Tensor<B, D>,
        rhs: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.compute_dtype() {
            None => lhs.matmul(rhs),
            Some(compute) => {
                let dtype = lhs.dtype();
                lhs.cast(compute).matmul(rhs.cast(compute)).cast(dtype)
            }
        }
    }

    /// `input · weight + bias` ([`burn::tensor::module::linear`]) in this precision. In bf16 the
    /// product runs in bf16 and the bias is added after the cast back, in the input's dtype.
    ///
    /// # Shapes
    /// - `input`: `[..., d_input]`
    /// - `weight`: `[d_input, d_output]`
    /// - `bias`: `[d_output]`
    /// - returns: `[..., d_output]`
    ///
    /// Inputs of rank 3 or more are folded into one `[rows, d_input]` matrix first (a free
    /// reshape of a contiguous tensor), as PyTorch does. burn 0.21's `linear` would instead
    /// broadcast the weight and run a *batched* product, whose weight gradient is one
    /// `xᵀ · dy` per leading index summed afterwards: a `[N, d_input, d_output]` temporary
    /// (328 MB for the 10K-token vocabulary layer at batch 8) and GEMMs with k = T.
    pub fn linear<B: Backend, const D: usize>(
        self,
        input: Tensor<B, D>,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, D> {
        if D > 2 {
            let dims = input.dims();
            let d_input = dims[D - 1];
            let rows = dims[..D - 1].iter().product::<usize>();
            let mut out_dims = dims;
            out_dims[D - 1] = weight.dims()[1];
            return self
                .linear(input.reshape([rows, d_input]), weight, bias)
                .reshape(out_dims);
        }
        let Some(compute) = self.compute_dtype() else {
            return burn::tensor::module::linear(input, weight, bias);
        };
        let dtype = input.dtype();
        let output = burn::tensor::module::linear(input.cast(compute), weight.cast(compute), None)
            .cast(dtype);
        match bias {
            Some(bias) => output + bias.unsqueeze(),
            None => output,
        }
    }

    /// [`Linear::forward`] in this precision (see [`Precision::linear`]).
    ///
    /// # Shapes
    /// - `input`: `[..., d_input]`
    /// - returns: `[..., d_output]`
    pub fn forward_linear<B: Backend, const D: usize>(
        self,
        linear: &Linear<B>,
        input: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.linear(
            input,
            linear.weight.val(),
            linear.bias.as_ref().map(|bias| bias.val()),
        )
    }

    /// [`crate::conv2d`] in this precision; in bf16 the bias is added after the cast back.
    ///
    /// # Shapes
    /// - `x`: `[N, C_in, H, W]`
    /// - `weight`: `[C_out, C_in / groups, KH, KW]`
    /// - `bias`: `[C_out]`
    /// - returns: `[N, C_out, OH, OW]`, in `x`'s dtype
    pub fn conv2d<B: Backend>(
        self,
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        options: ConvOptions<2>,
    ) -> Tensor<B, 4> {
        let Some(compute) = self.compute_dtype() else {
            return conv2d(x, weight, bias, options);
        };
        let dtype = x.dtype();
        let output = conv2d(x.cast(compute), weight.cast(compute), None, options).cast(dtype);
        match bias {
            Some(bias) => {
                let channels = bias.dims()[0];
                output + bias.reshape([1, channels, 1, 1])
            }
            None => output,
        }
    }

    /// [`crate::forward_conv2d`] in this precision. A convolution with asymmetric or `Same`
    /// padding (none in a ResNet) runs through burn's module in full precision.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - returns: `[N, C_out, OH, OW]`
    pub fn forward_conv2d<B: Backend>(self, conv: &Conv2d<B>, input: Tensor<B, 4>) -> Tensor<B, 4> {
        match (self.compute_dtype(), conv_options(conv)) {
            (Some(_), Some(options)) => self.conv2d(
                input,
                conv.weight.val(),
                conv.bias.as_ref().map(|bias| bias.val()),
                options,
            ),
            _ => forward_conv2d(conv, input),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision name that is neither `f32` nor `bf16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPrecision(pub String);

impl fmt::Display for UnknownPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown precision `{}`: expected f32 or bf16", self.0)
    }
}

impl std::error::Error for UnknownPrecision {}

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|precision| precision.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownPrecision(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{LinearConfig, PaddingConfig2d};
    use burn::tensor::{DType, Distribution};

    use super::*;

    type B = Flex;
    type AB = Autodiff<Flex>;

    /// bf16 keeps 8 significant bits: operands are rounded by up to 2⁻⁹ relative, and a sum of
    /// products of such operands by a few times that. 2e-2 of the largest output is generous.
    fn assert_close<const D: usize>(actual: Tensor<B, D>, expected: Tensor<B, D>) {
        let scale = expected.clone().abs().max().into_scalar();
        let error = (actual - expected).abs().max().into_scalar();
        assert!(
            error <= 2e-2 * scale,
            "max error {error} vs scale {scale} (bf16 tolerance 2e-2)"
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for precision in Precision::ALL {
            assert_eq!(precision.name().parse::<Precision>(), Ok(precision));
            assert_eq!(precision.to_string(), precision.name());
        }
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.to_string().contains("expected f32 or bf16"), "{err}");
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn f32_runs_exactly_the_plain_ops() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 5, 8], Distribution::Default, &device);
        let linear = LinearConfig::new(8, 3).init::<B>(&device);
        // The plain op on the folded input, bit for bit.
        let plain = linear
            .forward(x.clone().reshape([10, 8]))
            .reshape([2, 5, 3])
            .into_data();
        assert_eq!(
            Precision::F32
                .forward_linear(&linear, x.clone())
                .into_data(),
            plain
        );

        let w = Tensor::<B, 3>::random([2, 8, 4], Distribution::Default, &device);
        assert_eq!(
            Precision::F32.matmul(x.clone(), w.clone()).into_data(),
            x.matmul(w).into_data()
        );

        let images = Tensor::<B, 4>::random([2, 3, 9, 9], Distribution::Default, &device);
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&device);
        assert_eq!(
            Precision::F32
                .forward_conv2d(&conv, images.clone())
                .into_data(),
            forward_conv2d(&conv, images).into_data()
        );
    }

    /// The folded product must compute what burn's batched `linear` computes, forward and
    /// both gradients, for inputs of rank 3 and 4.
    #[test]
    fn folded_linear_matches_burns_batched_linear_with_gradients() {
        let device = Default::default();
        let tolerance = burn::tensor::Tolerance::<f32>::absolute(1e-5);
        for dims in [vec![3, 7, 16], vec![2, 3, 4, 16]] {
            let linear = LinearConfig::new(16, 5).init::<AB>(&device);
            let data = Tensor::<B, 1>::random(
                [dims.iter().product::<usize>()],
                Distribution::Default,
                &device,
            )
            .into_data();
            let rows: usize = dims[..dims.len() - 1].iter().product();
            let output_weights =
                Tensor::<B, 1>::random([rows * 5], Distribution::Default, &device).into_data();
            let run = |folded: bool| {
                let x = Tensor::<AB, 1>::from_data(data.clone(), &device).require_grad();
                let y = if dims.len() == 3 {
                    let x3 = x.clone().reshape([dims[0], dims[1], dims[2]]);
                    let y = if folded {
                        Precision::F32.forward_linear(&linear, x3)
                    } else {
                        linear.forward(x3)
                    };
                    y.reshape([-1])
                } else {
                    let x4 = x.clone().reshape([dims[0], dims[1], dims[2], dims[3]]);
                    let y = if folded {
                        Precision::F32.forward_linear(&linear, x4)
                    } else {
                        linear.forward(x4)
                    };
                    y.reshape([-1])
                };
                let weights = Tensor::<AB, 1>::from_data(output_weights.clone(), &device);
                let grads = (y.clone() * weights).sum().backward();
                (
                    y.inner().into_data(),
                    x.grad(&grads).expect("input gradient").into_data(),
                    linear
                        .weight
                        .grad(&grads)
                        .expect("weight gradient")
                        .into_data(),
                    linear
                        .bias
                        .as_ref()
                        .and_then(|bias| bias.grad(&grads))
                        .expect("bias gradient")
                        .into_data(),
                )
            };
            let (folded, reference) = (run(true), run(false));
            folded.0.assert_approx_eq::<f32>(&reference.0, tolerance);
            folded.1.assert_approx_eq::<f32>(&reference.1, tolerance);
            folded.2.assert_approx_eq::<f32>(&reference.2, tolerance);
            folded.3.assert_approx_eq::<f32>(&reference.3, tolerance);
        }
    }

    #[test]
    fn bf16_ops_return_the_input_dtype_and_approximate_f32() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 5, 16], Distribution::Default, &device);
        let linear = LinearConfig::new(16, 6).init::<B>(&device);
        let y = Precision::Bf16.forward_linear(&linear, x.clone());
        assert_eq!(y.dtype(), DType::F32);
        assert_close(y, linear.forward(x.clone()));

        let w = Tensor::<B, 3>::random([2, 16, 4], Distribution::Default, &device);
        let y = Precision::Bf16.matmul(x.clone(), w.clone());
        assert_eq!(y.dtype(), DType::F32);
        assert_close(y, x.matmul(w));

        let images = Tensor::<B, 4>::random([2, 3, 9, 9], Distribution::Default, &device);
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&device);
        let y = Precision::Bf16.forward_conv2d(&conv, images.clone());
        assert_eq!(y.dtype(), DType::F32);
        assert_close(y, conv.forward(images));
    }

    #[test]
    fn bf16_gradients_reach_f32_parameters_in_f32() {
        let device = Default::default();
        let x = Tensor::<AB, 3>::random([2, 5, 16], Distribution::Default, &device);
        let linear = LinearConfig::new(16, 6).init::<AB>(&device);
        let conv = Conv2dConfig::new([2, 3], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<AB>(&device);
        let images = Tensor::<AB, 4>::random([1, 2, 5, 5], Distribution::Default, &device);

        let loss_of = |precision: Precision| {
            let y = precision.forward_linear(&linear, x.clone());
            let z = precision.forward_conv2d(&conv, images.clone());
            y.square().mean() + z.square().mean()
        };
        let grads = loss_of(Precision::Bf16).backward();
        let reference = loss_of(Precision::F32).backward();
        let linear_weight = linear.weight.grad(&grads).expect("gradient");
        let linear_bias = linear
            .bias
            .as_ref()
            .unwrap()
            .grad(&grads)
            .expect("gradient");
        let conv_weight = conv.weight.grad(&grads).expect("gradient");
        let conv_bias = conv.bias.as_ref().unwrap().grad(&grads).expect("gradient");
        for dtype in [
            linear_weight.dtype(),
            linear_bias.dtype(),
            conv_weight.dtype(),
            conv_bias.dtype(),
        ] {
            assert_eq!(dtype, DType::F32);
        }
        assert_close(linear_weight, linear.weight.grad(&reference).unwrap());
        assert_close(conv_weight, conv.weight.grad(&reference).unwrap());
    }
}
