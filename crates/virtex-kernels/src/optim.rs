//! `torch.optim.SGD`'s per-parameter update as one pass over the parameter, its gradient and
//! its momentum buffer.
//!
//! burn's `Sgd` composes the update from tensor ops (decay, momentum, scale, subtract), each a
//! separate pass that allocates its output: five passes over 70 M parameters for R50-L1-H1024.
//! On `Flex` with `f32` tensors [`sgd_update`] computes the same numbers in one threaded pass,
//! writing the parameter and the buffer in place when no other tensor shares their storage
//! (a shared one, e.g. a Lookahead slow weight that aliases the parameter right after a
//! synchronisation, is copied first, so nobody else sees the write). Every other backend or
//! dtype runs burn's ops in burn's order.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::dispatch::{cast, is};
use crate::selection::fast_kernels_enabled;

/// Hyper-parameters of one [`sgd_update`]: `torch.optim.SGD` with dampening 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdUpdate {
    /// Learning rate.
    pub lr: f64,
    /// Coupled (L2) weight decay added to the gradient; `None` when the group has none.
    pub weight_decay: Option<f32>,
    /// Momentum factor μ; `None` keeps no buffer.
    pub momentum: Option<f32>,
    /// Nesterov momentum (only with a momentum).
    pub nesterov: bool,
}

/// One SGD step for one parameter:
///
/// ```text
/// d ← g + wd·p                   (when weight_decay is set)
/// v ← d on the first step (velocity None), else d + μ·v
/// u ← d + μ·v if nesterov, else v
/// p ← p − lr·u
/// ```
///
/// Returns the new parameter and, with a momentum, the new buffer. Bit for bit what burn 0.21's
/// `Sgd` with dampening 0 computes (same `f32` operations in the same order); one pass on
/// `Flex`, burn's ops elsewhere.
///
/// # Panics
/// If the shapes of `param`, `grad` and `velocity` differ.
pub fn sgd_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    velocity: Option<Tensor<B, D>>,
    update: &SgdUpdate,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    assert_eq!(param.dims(), grad.dims(), "sgd_update: gradient shape");
    if let Some(velocity) = &velocity {
        assert_eq!(param.dims(), velocity.dims(), "sgd_update: buffer shape");
    }
    if is::<B, burn::backend::Flex>()
        && fast_kernels_enabled()
        && param.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && velocity
            .as_ref()
            .is_none_or(|velocity| velocity.dtype() == DType::F32)
    {
        let to_flex = |tensor: Tensor<B, D>| -> FlexTensor {
            match cast::<FloatTensor<B>, FlexTensor>(tensor.into_primitive().tensor()) {
                Ok(flex) => flex,
                Err(_) => unreachable!("B is Flex"),
            }
        };
        let from_flex = |flex: FlexTensor| -> Tensor<B, D> {
            match cast::<FlexTensor, FloatTensor<B>>(flex) {
                Ok(primitive) => Tensor::from_primitive(TensorPrimitive::Float(primitive)),
                Err(_) => unreachable!("B is Flex"),
            }
        };
        let (param, velocity) = flex_sgd_update(
            to_flex(param),
            &to_flex(grad),
            velocity.map(to_flex),
            update,
        );
        return (from_flex(param), velocity.map(from_flex));
    }
    burn_sgd_update(param, grad, velocity, update)
}

/// burn 0.21's `Sgd::step` (`WeightDecay::transform`, `Momentum::transform` with dampening 0,
/// `tensor - grad · lr`), op for op.
fn burn_sgd_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    velocity: Option<Tensor<B, D>>,
    update: &SgdUpdate,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    let mut grad = grad;
    if let Some(decay) = update.weight_decay {
        grad = param.clone().mul_scalar(decay).add(grad);
    }
    let mut new_velocity = None;
    if let Some(momentum) = update.momentum {
        let velocity = match velocity {
            Some(velocity) => grad
                .clone()
                .mul_scalar(1.0)
                .add(velocity.mul_scalar(momentum)),
            None => grad.clone(),
        };
        grad = if update.nesterov {
            velocity.clone().mul_scalar(momentum).add(grad)
        } else {
            velocity.clone()
        };
        new_velocity = Some(velocity);
    }
    (param - grad.mul_scalar(update.lr), new_velocity)
}

/// `tensor` as a dense, row-major buffer covering all of its storage (copied when it is a view).
fn dense(tensor: FlexTensor) -> FlexTensor {
    let elements = tensor.layout().num_elements();
    if tensor.is_contiguous()
        && tensor.layout().start_offset() == 0
        && tensor.bytes().len() == elements * std::mem::size_of::<f32>()
    {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// Elements per rayon task: large enough that a task's overhead is noise, small enough to split
/// the 4M-element matrices between the threads.
const CHUNK: usize = 1 << 16;

fn flex_sgd_update(
    param: FlexTensor,
    grad: &FlexTensor,
    velocity: Option<FlexTensor>,
    update: &SgdUpdate,
) -> (FlexTensor, Option<FlexTensor>) {
    let mut param = dense(param);
    let grad = dense(grad.clone());
    let elements = param.layout().num_elements();
    let lr = update.lr as f32;
    let decay = update.weight_decay;
    let nesterov = update.nesterov;
    let g: &[f32] = grad.storage();
    // `storage_mut` copies a shared buffer first (copy-on-write), so the write stays private.
    let p: &mut [f32] = param.storage_mut();
    let Some(momentum) = update.momentum else {
        let step: fn(&mut [f32], &[f32], [f32; 2]) = match decay {
            Some(_) => plain_step::<true>,
            None => plain_step::<false>,
        };
        let decay = decay.unwrap_or(0.0);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| step(p, g, [decay, lr]));
        return (param, None);
    };
    let first = velocity.is_none();
    let mut velocity = match velocity {
        Some(velocity) => dense(velocity),
        None => FlexTensor::zeros(param_shape(&grad), DType::F32),
    };
    let v: &mut [f32] = velocity.storage_mut();
    debug_assert_eq!((p.len(), g.len(), v.len()), (elements, elements, elements));
    let decay_or_zero = decay.unwrap_or(0.0);
    let step: MomentumStep = match (decay.is_some(), first, nesterov) {
        (false, false, false) => momentum_step::<false, false, false>,
        (false, false, true) => momentum_step::<false, false, true>,
        (false, true, false) => momentum_step::<false, true, false>,
        (false, true, true) => momentum_step::<false, true, true>,
        (true, false, false) => momentum_step::<true, false, false>,
        (true, false, true) => momentum_step::<true, false, true>,
        (true, true, false) => momentum_step::<true, true, false>,
        (true, true, true) => momentum_step::<true, true, true>,
    };
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|((p, g), v)| step(p, g, v, [decay_or_zero, momentum, lr]));
    (param, Some(velocity))
}

// The options are const parameters so that each loop body is branch-free and the compiler
// vectorises it: with run-time branches inside, the loop stayed scalar (9 % of the `small_cpu`
// step).

/// `p ← p − lr·(g [+ decay·p])` over one chunk: `[decay, lr]`.
fn plain_step<const DECAY: bool>(p: &mut [f32], g: &[f32], [decay, lr]: [f32; 2]) {
    for (p, &g) in p.iter_mut().zip(g) {
        let d = if DECAY { *p * decay + g } else { g };
        *p -= d * lr;
    }
}

/// One monomorphised [`momentum_step`]: parameter, gradient and buffer chunks,
/// `[decay, μ, lr]`.
type MomentumStep = fn(&mut [f32], &[f32], &mut [f32], [f32; 3]);

/// The momentum update of [`sgd_update`]'s formula over one chunk: `[decay, μ, lr]`.
fn momentum_step<const DECAY: bool, const FIRST: bool, const NESTEROV: bool>(
    p: &mut [f32],
    g: &[f32],
    v: &mut [f32],
    [decay, momentum, lr]: [f32; 3],
) {
    for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
        // Same f32 operations, in the same order, as burn's ops (no fused multiply-add: Rust
        // never contracts them).
        let d = if DECAY { *p * decay + g } else { g };
        let new_v = if FIRST { d } else { d * 1.0 + *v * momentum };
        let u = if NESTEROV {
            new_v * momentum + d
        } else {
            new_v
        };
        *v = new_v;
        *p -= u * lr;
    }
}

/// `Σ x²` over every element of `tensor`, as a `[1]` tensor on its device: the squared L2
/// norm that global gradient clipping sums over all parameters.
///
/// On `Flex` with `f32` one read-only threaded pass accumulating in `f64` (so the result is at
/// least as accurate as the tensor-op version); elsewhere `(x · x).sum()`, which allocates the
/// squares.
pub fn squared_norm<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Tensor<B, 1> {
    if is::<B, burn::backend::Flex>() && fast_kernels_enabled() && tensor.dtype() == DType::F32 {
        let primitive = tensor.clone().into_primitive().tensor();
        if let Ok(flex) = cast::<FloatTensor<B>, FlexTensor>(primitive) {
            let flex = dense(flex);
            let sum: f64 = flex
                .storage::<f32>()
                .par_chunks(CHUNK)
                .map(sum_of_squares)
                .sum();
            return Tensor::from_data([sum as f32], &tensor.device());
        }
    }
    tensor.clone().mul(tensor.clone()).sum()
}

/// Lanes of independent partial sums in [`sum_of_squares`].
const LANES: usize = 8;

/// `Σ x²` in `f64`, over [`LANES`] interleaved partial sums: one running sum is a chain of
/// dependent additions the compiler may not reorder (scalar, latency-bound: 4 % of the
/// `small_cpu` step); independent lanes vectorise.
fn sum_of_squares(chunk: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let mut blocks = chunk.chunks_exact(LANES);
    for block in &mut blocks {
        for (lane, &x) in lanes.iter_mut().zip(block) {
            *lane += f64::from(x) * f64::from(x);
        }
    }
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

fn param_shape(tensor: &FlexTensor) -> burn::tensor::Shape {
    tensor.layout().shape().clone()
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    use super::*;

    /// The one-pass sum of squares must agree with `(x · x).sum()` (to f32 rounding: the
    /// order of the sum differs) on a contiguous and a transposed tensor.
    #[test]
    fn squared_norm_matches_the_tensor_ops() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([333, 257], Distribution::Default, &device);
        for x in [x.clone(), x.transpose()] {
            let fused: f32 = squared_norm(&x).into_scalar();
            let plain: f32 = x.clone().mul(x).sum().into_scalar();
            assert!((fused - plain).abs() <= 1e-5 * plain, "{fused} vs {plain}");
        }
    }

    /// The fused pass must give burn's op-by-op result bit for bit, over several steps (so the
    /// buffer's update is checked too), with and without decay, Nesterov and momentum, and on
    /// a transposed (non-contiguous) gradient.
    #[test]
    fn fused_update_is_bitwise_burns_update() {
        let device = Default::default();
        let cases = [
            (Some(1e-4), Some(0.9), false),
            (Some(1e-4), Some(0.9), true),
            (None, Some(0.9), false),
            (None, Some(0.9), true),
            (Some(1e-2), None, false),
            (None, None, false),
        ];
        for (weight_decay, momentum, nesterov) in cases {
            let update = SgdUpdate {
                lr: 0.2,
                weight_decay,
                momentum,
                nesterov,
            };
            let start = Tensor::<Flex, 2>::random([300, 517], Distribution::Default, &device);
            let (mut fused, mut fused_v) = (start.clone(), None);
            let (mut plain, mut plain_v) = (start, None);
            for step in 0..3 {
                let grad = Tensor::<Flex, 2>::random([517, 300], Distribution::Default, &device)
                    .transpose();
                let kept = fused.clone(); // shares storage: must not see the update
                let before = kept.to_data();
                (fused, fused_v) = sgd_update(fused, grad.clone(), fused_v, &update);
                (plain, plain_v) = burn_sgd_update(plain, grad, plain_v, &update);
                assert_eq!(kept.to_data(), before, "a shared parameter was written");
                assert_eq!(fused.to_data(), plain.to_data(), "step {step}, {update:?}");
                assert_eq!(
                    fused_v.as_ref().map(|v| v.to_data()),
                    plain_v.as_ref().map(|v| v.to_data()),
                    "buffer at step {step}, {update:?}"
                );
            }
        }
    }
}
