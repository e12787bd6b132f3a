//! Training-mode batch normalisation over `[N, C, H, W]` as one fused operation.
//!
//! Composed from burn tensor ops, a training BatchNorm is ~10 full-size passes forward
//! (three reductions per statistic, broadcasts, the affine map) and as many again backward
//! through the autodiff graph; on flex that cost more than the ResNet-50's convolutions. The
//! fused version reads the input twice forward (statistics, then `y = x·scale + shift`) and
//! reads `x` and `∂L/∂y` twice backward, with rayon threads over channels and planes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::dispatch::{cast, is};
use crate::selection::fast_kernels_enabled;

/// The result of [`batch_norm2d_train`].
#[derive(Debug, Clone)]
pub struct BatchNormTrain<B: Backend> {
    /// The normalised input, `[N, C, H, W]`, differentiable with respect to the input, the
    /// weight and the bias.
    pub output: Tensor<B, 4>,
    /// Batch mean per channel, `[C]`, without gradient.
    pub mean: Tensor<B, 1>,
    /// Biased batch variance per channel (divided by `N·H·W`), `[C]`, without gradient.
    pub variance: Tensor<B, 1>,
}

/// Batch normalisation with batch statistics (PyTorch's `BatchNorm2d` in training mode, without
/// the running-statistic update, which needs [`BatchNormTrain::mean`] and
/// [`BatchNormTrain::variance`]):
/// `y = (x − mean) / √(var + ε) · weight + bias`, statistics over `N`, `H` and `W`.
///
/// On `Flex` and `Autodiff<Flex>` (f32) this is one fused operation with its own backward;
/// elsewhere it is composed from burn tensor ops.
///
/// # Shapes
/// - `input`: `[N, C, H, W]`
/// - `weight`, `bias`: `[C]`
pub fn batch_norm2d_train<B: Backend>(
    input: Tensor<B, 4>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> BatchNormTrain<B> {
    if fast_kernels_enabled() {
        let args = (input, weight, bias);
        let args = match try_flex::<B>(args, epsilon) {
            Ok(result) => return result,
            Err(args) => args,
        };
        let args = match try_autodiff::<B, NoCheckpointing>(args, epsilon) {
            Ok(result) => return result,
            Err(args) => args,
        };
        let (input, weight, bias) = match try_autodiff::<B, BalancedCheckpointing>(args, epsilon) {
            Ok(result) => return result,
            Err(args) => args,
        };
        return composed(input, weight, bias, epsilon);
    }
    composed(input, weight, bias, epsilon)
}

/// The same computation from burn tensor ops (any backend).
fn composed<B: Backend>(
    input: Tensor<B, 4>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> BatchNormTrain<B> {
    let [batch, channels, height, width] = input.dims();
    let count = (batch * height * width) as f64;
    let sum = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([channels]);
    let mean = sum(input.clone()).div_scalar(count);
    let centred = input.clone() - mean.clone().reshape([1, channels, 1, 1]);
    let variance = sum(centred.square()).div_scalar(count);
    let scale = weight / variance.clone().add_scalar(epsilon).sqrt();
    let shift = bias - mean.clone() * scale.clone();
    let output = input * scale.reshape([1, channels, 1, 1]) + shift.reshape([1, channels, 1, 1]);
    BatchNormTrain {
        output,
        mean: mean.detach(),
        variance: variance.detach(),
    }
}

/// Batch normalisation with given statistics (PyTorch's `BatchNorm2d` in eval mode):
/// `y = x · scale + shift` with `scale = weight / √(variance + ε)` and
/// `shift = bias − mean · scale`.
///
/// On `Flex` (f32) one pass over the input (burn-flex 0.21 broadcasts a `[1, C, 1, 1]` operand
/// through a scalar strided loop, ~100× slower than this); elsewhere, including autodiff
/// backends, composed from burn tensor ops.
///
/// # Shapes
/// - `input`: `[N, C, H, W]`
/// - `mean`, `variance`, `weight`, `bias`: `[C]`
pub fn batch_norm2d_eval<B: Backend>(
    input: Tensor<B, 4>,
    mean: Tensor<B, 1>,
    variance: Tensor<B, 1>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, 4> {
    let channels = mean.dims()[0];
    let scale = weight / variance.add_scalar(epsilon).sqrt();
    let shift = bias - mean * scale.clone();
    if fast_kernels_enabled() && is::<B, Flex>() {
        let flex = |t: FloatTensor<B>| -> FlexTensor { cast(t).unwrap_or_else(|_| unreachable!()) };
        let x = flex(primitive(input.clone()));
        let (a, b) = (
            flex(primitive(scale.clone())),
            flex(primitive(shift.clone())),
        );
        if let Some(dims) = shape_of(&x, &a, &b) {
            let output = plain::<4>(affine(dims, &x, &a, &b));
            return cast(output).unwrap_or_else(|_| unreachable!("B is Flex"));
        }
    }
    input * scale.reshape([1, channels, 1, 1]) + shift.reshape([1, channels, 1, 1])
}

/// `y[n, c] = x[n, c] · scale[c] + shift[c]`, planes in parallel.
fn affine(dims: [usize; 4], x: &FlexTensor, scale: &FlexTensor, shift: &FlexTensor) -> FlexTensor {
    let [_, channels, height, width] = dims;
    let plane = height * width;
    let (x, scale, shift) = (
        x.to_contiguous(),
        scale.to_contiguous(),
        shift.to_contiguous(),
    );
    let (xs, a, b) = (
        x.storage::<f32>(),
        scale.storage::<f32>(),
        shift.storage::<f32>(),
    );
    let mut output = vec![0.0f32; xs.len()];
    output
        .par_chunks_mut(plane)
        .zip(xs.par_chunks(plane))
        .enumerate()
        .for_each(|(index, (out, input))| {
            let c = index % channels;
            let (a, b) = (a[c], b[c]);
            for (o, &v) in out.iter_mut().zip(input) {
                *o = v * a + b;
            }
        });
    flex_tensor(output, dims)
}

type Args<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>);

fn primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FloatTensor<B> {
    tensor.into_primitive().tensor()
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn plain<const D: usize>(tensor: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// `[N, C, H, W]` of an f32 input and `[C]` parameters, when the fused kernels apply.
fn shape_of(input: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> Option<[usize; 4]> {
    let (shape, w, b) = (input.shape(), weight.shape(), bias.shape());
    let f32s = [input.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
    let ok = f32s
        && shape.num_dims() == 4
        && w.num_dims() == 1
        && b.num_dims() == 1
        && w[0] == shape[1]
        && b[0] == shape[1]
        && shape[0] * shape[2] * shape[3] > 0;
    ok.then(|| [shape[0], shape[1], shape[2], shape[3]])
}

fn try_flex<B: Backend>(args: Args<B>, epsilon: f64) -> Result<BatchNormTrain<B>, Args<B>> {
    if !is::<B, Flex>() {
        return Err(args);
    }
    let (input, weight, bias) = args;
    let flex = |t: FloatTensor<B>| -> FlexTensor { cast(t).unwrap_or_else(|_| unreachable!()) };
    let x = flex(primitive(input.clone()));
    let (w, b) = (
        flex(primitive(weight.clone())),
        flex(primitive(bias.clone())),
    );
    let Some(dims) = shape_of(&x, &w, &b) else {
        return Err((input, weight, bias));
    };
    let forward = Forward::run(dims, &x, &w, &b, epsilon);
    let result = BatchNormTrain::<Flex> {
        output: plain(forward.output),
        mean: plain(flex_tensor(forward.mean, [dims[1]])),
        variance: plain(flex_tensor(forward.variance, [dims[1]])),
    };
    Ok(cast(result).unwrap_or_else(|_| unreachable!("B is Flex")))
}

fn try_autodiff<B: Backend, C: CheckpointStrategy>(
    args: Args<B>,
    epsilon: f64,
) -> Result<BatchNormTrain<B>, Args<B>> {
    if !is::<B, Autodiff<Flex, C>>() {
        return Err(args);
    }
    let (input, weight, bias) = args;
    let ad = |t: FloatTensor<B>| -> FloatTensor<Autodiff<Flex, C>> {
        cast(t).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex, C>"))
    };
    let x = ad(primitive(input.clone()));
    let (w, b) = (ad(primitive(weight.clone())), ad(primitive(bias.clone())));
    let Some(dims) = shape_of(&x.primitive, &w.primitive, &b.primitive) else {
        return Err((input, weight, bias));
    };
    let forward = Forward::run(dims, &x.primitive, &w.primitive, &b.primitive, epsilon);
    let channels = dims[1];
    let stats = |values: Vec<f32>| {
        Tensor::<Autodiff<Flex, C>, 1>::from_inner(plain(flex_tensor(values, [channels])))
    };
    let (mean, variance) = (stats(forward.mean.clone()), stats(forward.variance.clone()));
    let prepared = FusedBatchNormBackward
        .prepare::<C>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful();
    let output = match prepared {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let state = BackwardState {
                dims,
                mean: forward.mean,
                inv_std: forward.inv_std,
                weight: forward.weight,
            };
            prep.finish((x_state, state), forward.output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward.output),
    };
    let result = BatchNormTrain::<Autodiff<Flex, C>> {
        output: Tensor::from_primitive(TensorPrimitive::Float(output)),
        mean,
        variance,
    };
    Ok(cast(result).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex, C>")))
}

/// Sum of a slice in f64, with 16 f32 lanes inside (vectorisable, and exact enough for a plane).
fn sum(values: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// `Σ (x − shift)²` and `Σ (x − shift)·y` helpers.
fn sum_centred_square(values: &[f32], shift: f32) -> f64 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| ((v - shift) as f64).powi(2))
        .sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            let d = value - shift;
            *lane += d * d;
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

fn sum_centred_product(x: &[f32], shift: f32, y: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&a, &b)| ((a - shift) * b) as f64)
        .sum();
    for (a, b) in xc.zip(yc) {
        for ((lane, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += (a - shift) * b;
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// Per-channel reduction over the `N` planes of channel `c`.
fn per_channel<F>(dims: [usize; 4], f: F) -> Vec<f64>
where
    F: Fn(usize, std::ops::Range<usize>) -> f64 + Sync,
{
    let [batch, channels, height, width] = dims;
    let plane = height * width;
    (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..batch)
                .map(|n| {
                    f(
                        c,
                        (n * channels + c) * plane..(n * channels + c + 1) * plane,
                    )
                })
                .sum()
        })
        .collect()
}

struct Forward {
    output: FlexTensor,
    mean: Vec<f32>,
    variance: Vec<f32>,
    inv_std: Vec<f32>,
    weight: Vec<f32>,
}

impl Forward {
    fn run(
        dims: [usize; 4],
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        epsilon: f64,
    ) -> Self {
        let [batch, channels, height, width] = dims;
        let plane = height * width;
        let count = (batch * plane) as f64;
        let x = x.to_contiguous();
        let (weight, bias) = (weight.to_contiguous(), bias.to_contiguous());
        let (xs, ws, bs) = (
            x.storage::<f32>(),
            weight.storage::<f32>(),
            bias.storage::<f32>(),
        );
        let mean: Vec<f32> = per_channel(dims, |_, range| sum(&xs[range]))
            .into_iter()
            .map(|s| (s / count) as f32)
            .collect();
        let variance: Vec<f32> =
            per_channel(dims, |c, range| sum_centred_square(&xs[range], mean[c]))
                .into_iter()
                .map(|s| (s / count) as f32)
                .collect();
        let inv_std: Vec<f32> = variance
            .iter()
            .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = ws.iter().zip(&inv_std).map(|(w, s)| w * s).collect();
        let shift: Vec<f32> = (0..channels).map(|c| bs[c] - mean[c] * scale[c]).collect();
        let output = affine(
            dims,
            &x,
            &flex_tensor(scale, [channels]),
            &flex_tensor(shift, [channels]),
        );
        Self {
            output,
            mean,
            variance,
            inv_std,
            weight: ws.to_vec(),
        }
    }
}

/// What the backward step keeps from the forward pass (besides the checkpointed input).
#[derive(Debug, Clone)]
struct BackwardState {
    dims: [usize; 4],
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    weight: Vec<f32>,
}

#[derive(Debug)]
struct FusedBatchNormBackward;

impl Backward<Flex, 3> for FusedBatchNormBackward {
    type State = (NodeId, BackwardState);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let output_grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x_state, state) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let x = x.to_contiguous();
        let (xs, dys) = (x.storage::<f32>(), output_grad.storage::<f32>());
        let BackwardState {
            dims,
            mean,
            inv_std,
            weight,
        } = state;
        let [batch, channels, height, width] = dims;
        let plane = height * width;
        let count = (batch * plane) as f64;
        // Σ dy and Σ dy·x̂ per channel (x̂ = (x − mean)·inv_std).
        let grad_bias = per_channel(dims, |_, range| sum(&dys[range]));
        let grad_weight: Vec<f64> = per_channel(dims, |c, range| {
            sum_centred_product(&xs[range.clone()], mean[c], &dys[range])
        })
        .into_iter()
        .zip(&inv_std)
        .map(|(s, &inv)| s * inv as f64)
        .collect();
        if let Some(node) = node_x {
            // dx = weight·inv_std·(dy − Σdy/n − x̂·Σ(dy·x̂)/n)
            let mut dx = vec![0.0f32; xs.len()];
            dx.par_chunks_mut(plane)
                .zip(xs.par_chunks(plane).zip(dys.par_chunks(plane)))
                .enumerate()
                .for_each(|(index, (out, (x, dy)))| {
                    let c = index % channels;
                    let inv = inv_std[c];
                    let k = weight[c] * inv;
                    let mean_dy = (grad_bias[c] / count) as f32;
                    let slope = (grad_weight[c] / count) as f32 * inv;
                    let m = mean[c];
                    for ((o, &xv), &g) in out.iter_mut().zip(x).zip(dy) {
                        *o = k * (g - mean_dy - (xv - m) * slope);
                    }
                });
            grads.register::<Flex>(node.id, flex_tensor(dx, dims));
        }
        let as_f32 = |values: &[f64]| values.iter().map(|&v| v as f32).collect::<Vec<_>>();
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, flex_tensor(as_f32(&grad_weight), [channels]));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, flex_tensor(as_f32(&grad_bias), [channels]));
        }
    }
}
