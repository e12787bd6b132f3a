//! Backend-generic convolution entry points that take the GEMM kernels on burn-flex.

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::TensorPrimitive;

use crate::dispatch::{cast, is};
use crate::flex;
use crate::im2col::ConvGeometry;
use crate::selection::fast_kernels_enabled;

fn float<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(primitive: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The GEMM kernels on `Autodiff<Flex, C>` operands, or the operands back.
fn autodiff_fast<B: Backend, C: CheckpointStrategy>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: &ConvOptions<2>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    let (Ok(x_ad), Ok(w_ad)) = (
        cast::<_, Tensor<Autodiff<Flex, C>, 4>>(x.clone()),
        cast::<_, Tensor<Autodiff<Flex, C>, 4>>(weight.clone()),
    ) else {
        return Err((x, weight));
    };
    match flex::autodiff_conv2d::<C>(&float(x_ad), &float(w_ad), options) {
        Some(output) => Ok(cast(wrap::<Autodiff<Flex, C>, 4>(output))
            .unwrap_or_else(|_| unreachable!("B is Autodiff<Flex, C>"))),
        None => Err((x, weight)),
    }
}

/// The GEMM kernels on plain `Flex` operands, or the operands back.
fn flex_fast<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: &ConvOptions<2>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    let (Ok(x_flex), Ok(w_flex)) = (
        cast::<_, Tensor<Flex, 4>>(x.clone()),
        cast::<_, Tensor<Flex, 4>>(weight.clone()),
    ) else {
        return Err((x, weight));
    };
    let (x_flex, w_flex) = (float(x_flex), float(w_flex));
    match flex::geometry(&x_flex, &w_flex, options) {
        Some(g) => Ok(cast(wrap::<Flex, 4>(flex::forward(&g, &x_flex, &w_flex)))
            .unwrap_or_else(|_| unreachable!("B is Flex"))),
        None => Err((x, weight)),
    }
}

/// 2-D convolution, as [`burn::tensor::module::conv2d`] with symmetric padding.
///
/// On `Flex` and `Autodiff<Flex>` (f32, one group) the forward pass and both gradients run on
/// the GEMM kernels of this crate; every other backend, dtype or configuration uses burn's op.
///
/// # Shapes
/// - `x`: `[N, C_in, H, W]`
/// - `weight`: `[C_out, C_in / groups, KH, KW]`
/// - `bias`: `[C_out]`
/// - returns: `[N, C_out, OH, OW]`
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let fast = if !fast_kernels_enabled() {
        Err((x, weight))
    } else if is::<B, Flex>() {
        flex_fast(x, weight, &options)
    } else if is::<B, Autodiff<Flex, NoCheckpointing>>() {
        autodiff_fast::<B, NoCheckpointing>(x, weight, &options)
    } else if is::<B, Autodiff<Flex, BalancedCheckpointing>>() {
        autodiff_fast::<B, BalancedCheckpointing>(x, weight, &options)
    } else {
        Err((x, weight))
    };
    match fast {
        // The bias as a broadcast add keeps its gradient in burn's hands.
        Ok(output) => match bias {
            Some(bias) => {
                let channels = bias.dims()[0];
                output + bias.reshape([1, channels, 1, 1])
            }
            None => output,
        },
        Err((x, weight)) => burn::tensor::module::conv2d(x, weight, bias, options),
    }
}

/// Gradient of [`conv2d`] with respect to `x` (burn's `ModuleOps::conv2d_x_backward`).
///
/// # Shapes
/// - `x`: `[N, C_in, H, W]` (only its shape is used)
/// - `weight`: `[C_out, C_in / groups, KH, KW]`
/// - `output_grad`: `[N, C_out, OH, OW]`
/// - returns: `[N, C_in, H, W]`
pub fn conv2d_x_backward<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    output_grad: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    conv_gradient(
        [x, weight, output_grad],
        options,
        |g, [_, weight, output_grad]| flex::data_grad(g, weight, output_grad),
        Flex::conv2d_x_backward,
        B::conv2d_x_backward,
    )
}

/// A convolution gradient on the GEMM kernels when `B` is `Flex` and the operands are ones they
/// handle (`fast`), with flex's own op otherwise (`flex_fallback`), and `B`'s op on every other
/// backend (`generic`).
fn conv_gradient<B: Backend>(
    operands: [Tensor<B, 4>; 3],
    options: ConvOptions<2>,
    fast: impl FnOnce(&ConvGeometry, [&FloatTensor<Flex>; 3]) -> FloatTensor<Flex>,
    flex_fallback: impl FnOnce(
        FloatTensor<Flex>,
        FloatTensor<Flex>,
        FloatTensor<Flex>,
        ConvOptions<2>,
    ) -> FloatTensor<Flex>,
    generic: impl FnOnce(
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        ConvOptions<2>,
    ) -> B::FloatTensorPrimitive,
) -> Tensor<B, 4> {
    if fast_kernels_enabled() && is::<B, Flex>() {
        let [x, weight, output_grad] = operands.map(|t| {
            float(cast::<_, Tensor<Flex, 4>>(t).unwrap_or_else(|_| unreachable!("B is Flex")))
        });
        let grad = match flex::geometry(&x, &weight, &options) {
            Some(g) => fast(&g, [&x, &weight, &output_grad]),
            None => flex_fallback(x, weight, output_grad, options),
        };
        return cast(wrap::<Flex, 4>(grad)).unwrap_or_else(|_| unreachable!("B is Flex"));
    }
    let [x, weight, output_grad] = operands.map(float);
    wrap(generic(x, weight, output_grad, options))
}

/// Gradient of [`conv2d`] with respect to `weight` (burn's
/// `ModuleOps::conv2d_weight_backward`).
///
/// # Shapes
/// - `x`: `[N, C_in, H, W]`
/// - `weight`: `[C_out, C_in / groups, KH, KW]` (only its shape is used)
/// - `output_grad`: `[N, C_out, OH, OW]`
/// - returns: `[C_out, C_in / groups, KH, KW]`
pub fn conv2d_weight_backward<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    output_grad: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    conv_gradient(
        [x, weight, output_grad],
        options,
        |g, [x, _, output_grad]| flex::weight_grad(g, x, output_grad),
        Flex::conv2d_weight_backward,
        B::conv2d_weight_backward,
    )
}

/// [`Conv2d::forward`] through [`conv2d`]: the same result, on the GEMM kernels where they
/// apply. Asymmetric or `Same` padding goes to burn's module unchanged.
///
/// # Shapes
/// - `input`: `[N, C_in, H, W]`
/// - returns: `[N, C_out, OH, OW]`
pub fn forward_conv2d<B: Backend>(conv: &Conv2d<B>, input: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(options) = conv_options(conv) else {
        return conv.forward(input);
    };
    conv2d(
        input,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        options,
    )
}

/// The options of a module's convolution when its padding is symmetric (`None` otherwise).
pub(crate) fn conv_options<B: Backend>(conv: &Conv2d<B>) -> Option<ConvOptions<2>> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    Some(ConvOptions::new(
        conv.stride,
        padding,
        conv.dilation,
        conv.groups,
    ))
}
