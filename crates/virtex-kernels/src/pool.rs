//! 2-D max pooling on `Flex` and `Autodiff<Flex>`: one threaded pass over the planes.
//!
//! burn-flex 0.21 pools through a generic 3-D loop that checks every tap's bounds in `isize`
//! arithmetic and writes an `i64` argmax even for inference: the ResNet stem's 3×3 / 2 pool was
//! 7 % of a ResNet-50 inference pass. Here each output row and column knows its valid taps
//! beforehand, inference keeps no argmax, and training keeps a `u32` one per output (its
//! position in the input plane) for a backward pass that scatters the gradient plane by plane.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::dispatch::{cast, is};
use crate::flex::unary_backward;
use crate::selection::fast_kernels_enabled;

/// `max_pool2d` as [`burn::tensor::module::max_pool2d`] with `ceil_mode = false` (torchvision's
/// ResNet stem: kernel 3, stride 2, padding 1): a fast pass on `Flex` and `Autodiff<Flex>` with
/// `f32`, burn's op elsewhere. Padding never wins the maximum; among equal values the first in
/// scan order wins, and a NaN propagates, as in PyTorch.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - returns: `[N, C, OH, OW]`, `OH = (H + 2·padding − dilation·(kernel − 1) − 1) / stride + 1`
pub fn max_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Tensor<B, 4> {
    let geometry = PoolGeometry::new(x.dims(), kernel, stride, padding, dilation);
    if let (true, Some(g), DType::F32) = (fast_kernels_enabled(), geometry, x.dtype()) {
        if is::<B, Flex>() {
            let input: FlexTensor =
                cast(x.into_primitive().tensor()).unwrap_or_else(|_| unreachable!("B is Flex"));
            let output = pool_for_inference(&g, &input.to_contiguous());
            let output: FloatTensor<B> = cast(output).unwrap_or_else(|_| unreachable!("B is Flex"));
            return Tensor::from_primitive(TensorPrimitive::Float(output));
        }
        if is::<B, Autodiff<Flex, NoCheckpointing>>() {
            return autodiff_max_pool2d::<B, NoCheckpointing>(x, g);
        }
        if is::<B, Autodiff<Flex, BalancedCheckpointing>>() {
            return autodiff_max_pool2d::<B, BalancedCheckpointing>(x, g);
        }
    }
    burn::tensor::module::max_pool2d(x, kernel, stride, padding, dilation, false)
}

/// The sizes of one pooling, validated: every output sees at least one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolGeometry {
    planes: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl PoolGeometry {
    /// `None` for what this kernel leaves to burn: empty tensors, zero sizes, padding of more
    /// than half the kernel (PyTorch refuses it too), planes of 2³² elements or more, and any
    /// output that would see only padding.
    fn new(
        [batch, channels, height, width]: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Option<Self> {
        let out = |size: usize, axis: usize| {
            let span = dilation[axis] * (kernel[axis] - 1) + 1;
            (size + 2 * padding[axis])
                .checked_sub(span)
                .map(|room| room / stride[axis] + 1)
        };
        let valid = (0..2).all(|axis| {
            kernel[axis] > 0
                && stride[axis] > 0
                && dilation[axis] > 0
                && 2 * padding[axis] <= kernel[axis]
        });
        // The argmax is a u32 position in the input plane.
        let plane_fits = u32::try_from(height * width).is_ok();
        if !valid || !plane_fits || batch * channels * height * width == 0 {
            return None;
        }
        let geometry = Self {
            planes: batch * channels,
            channels,
            height,
            width,
            out_height: out(height, 0)?,
            out_width: out(width, 1)?,
            kernel,
            stride,
            padding,
            dilation,
        };
        // Every output must see at least one input (dilation can step over a small one).
        let sees_input = |axis| geometry.taps(axis).iter().all(|taps| taps.count > 0);
        (sees_input(0) && sees_input(1)).then_some(geometry)
    }

    fn output_shape(&self) -> [usize; 4] {
        let batch = self.planes / self.channels;
        [batch, self.channels, self.out_height, self.out_width]
    }

    fn input_shape(&self) -> [usize; 4] {
        let batch = self.planes / self.channels;
        [batch, self.channels, self.height, self.width]
    }

    /// For each output position along `axis`: its valid taps, as the first one's input
    /// coordinate and their number (the others follow at `dilation` steps).
    fn taps(&self, axis: usize) -> Vec<Taps> {
        let (size, out) = match axis {
            0 => (self.height, self.out_height),
            _ => (self.width, self.out_width),
        };
        let (stride, dilation) = (self.stride[axis], self.dilation[axis]);
        (0..out)
            .map(|o| {
                let mut valid = (0..self.kernel[axis]).filter_map(|k| {
                    let at = (o * stride + k * dilation).checked_sub(self.padding[axis])?;
                    (at < size).then_some(at)
                });
                match valid.next() {
                    Some(first) => Taps {
                        first,
                        count: 1 + valid.count(),
                        step: dilation,
                    },
                    None => Taps {
                        first: 0,
                        count: 0,
                        step: dilation,
                    },
                }
            })
            .collect()
    }
}

/// The valid taps of one output along one axis: input coordinates `first + i·step`, `i < count`.
#[derive(Debug, Clone, Copy)]
struct Taps {
    first: usize,
    count: usize,
    step: usize,
}

impl Taps {
    fn coordinates(self) -> impl Iterator<Item = usize> {
        (0..self.count).map(move |i| self.first + i * self.step)
    }
}

/// The larger of the two, `value` when it is a NaN (it propagates, as in PyTorch).
#[inline(always)]
fn max_or_nan(best: f32, value: f32) -> f32 {
    if value > best || value.is_nan() {
        value
    } else {
        best
    }
}

/// The pooled planes and, with `keep_argmax`, each output's argmax (its position in its input
/// plane).
fn pool_forward(g: &PoolGeometry, x: &[f32], keep_argmax: bool) -> (Vec<f32>, Vec<u32>) {
    let (rows, cols) = (g.taps(0), g.taps(1));
    let (in_plane, out_plane) = (g.height * g.width, g.out_height * g.out_width);
    let mut output = vec![0.0f32; g.planes * out_plane];
    let inputs = x.par_chunks(in_plane);
    if !keep_argmax {
        // Max is separable: each input row pooled along the width into `across`, then
        // `across`'s rows pooled along the height (whole rows at a time: vectorised).
        inputs.zip(output.par_chunks_mut(out_plane)).for_each_init(
            || vec![0.0f32; g.height * g.out_width],
            |across, (input, out)| {
                for (row, pooled) in input
                    .chunks_exact(g.width)
                    .zip(across.chunks_exact_mut(g.out_width))
                {
                    // Every output has a first valid tap (`PoolGeometry::new` checks it).
                    for (pooled, taps) in pooled.iter_mut().zip(&cols) {
                        *pooled = taps
                            .coordinates()
                            .skip(1)
                            .fold(row[taps.first], |best, c| max_or_nan(best, row[c]));
                    }
                }
                for (out_row, taps) in out.chunks_exact_mut(g.out_width).zip(&rows) {
                    out_row.copy_from_slice(&across[taps.first * g.out_width..][..g.out_width]);
                    for ih in taps.coordinates().skip(1) {
                        let pooled = &across[ih * g.out_width..][..g.out_width];
                        for (best, &value) in out_row.iter_mut().zip(pooled) {
                            *best = max_or_nan(*best, value);
                        }
                    }
                }
            },
        );
        return (output, Vec::new());
    }
    let mut argmax = vec![0u32; output.len()];
    inputs
        .zip(output.par_chunks_mut(out_plane))
        .zip(argmax.par_chunks_mut(out_plane))
        .for_each(|((input, out), arg)| {
            for (oh, taps_h) in rows.iter().enumerate() {
                for (ow, taps_w) in cols.iter().enumerate() {
                    // The first valid tap (every output has one), then all of them in scan
                    // order: the first maximum wins.
                    let first = taps_h.first * g.width + taps_w.first;
                    let (mut best, mut at) = (input[first], first);
                    for ih in taps_h.coordinates() {
                        let row = &input[ih * g.width..][..g.width];
                        for iw in taps_w.coordinates() {
                            let value = row[iw];
                            // PyTorch's test: the last NaN of a window is its argmax.
                            if value > best || value.is_nan() {
                                (best, at) = (value, ih * g.width + iw);
                            }
                        }
                    }
                    let o = oh * g.out_width + ow;
                    out[o] = best;
                    arg[o] = at as u32;
                }
            }
        });
    (output, argmax)
}

/// The pooled tensor of contiguous `input`, without an argmax (inference).
fn pool_for_inference(g: &PoolGeometry, input: &FlexTensor) -> FlexTensor {
    let (output, _) = pool_forward(g, input.storage(), false);
    FlexTensor::from_data(TensorData::new(output, g.output_shape()))
}

/// `dx`: each output's gradient added at its argmax, plane by plane.
fn pool_backward(g: &PoolGeometry, argmax: &[u32], dy: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane) = (g.height * g.width, g.out_height * g.out_width);
    let mut dx = vec![0.0f32; g.planes * in_plane];
    dx.par_chunks_mut(in_plane)
        .zip(argmax.par_chunks(out_plane).zip(dy.par_chunks(out_plane)))
        .for_each(|(dx, (argmax, dy))| {
            for (&at, &grad) in argmax.iter().zip(dy) {
                dx[at as usize] += grad;
            }
        });
    dx
}

fn autodiff_max_pool2d<B: Backend, C: CheckpointStrategy>(
    x: Tensor<B, 4>,
    g: PoolGeometry,
) -> Tensor<B, 4> {
    let x: FloatTensor<Autodiff<Flex, C>> = cast(x.into_primitive().tensor())
        .unwrap_or_else(|_| unreachable!("B is Autodiff<Flex, C>"));
    let input = x.primitive.to_contiguous();
    let prepared = MaxPoolBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful();
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let (output, argmax) = pool_forward(&g, input.storage(), true);
            let output = FlexTensor::from_data(TensorData::new(output, g.output_shape()));
            prep.finish(
                MaxPoolState {
                    geometry: g,
                    argmax: Arc::new(argmax),
                },
                output,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(pool_for_inference(&g, &input)),
    };
    let output: FloatTensor<B> = cast(output).unwrap_or_else(|_| unreachable!("B is Autodiff"));
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// What the backward pass keeps: the geometry and each output's argmax.
#[derive(Debug, Clone)]
struct MaxPoolState {
    geometry: PoolGeometry,
    argmax: Arc<Vec<u32>>,
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    type State = MaxPoolState;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        unary_backward(ops, grads, |MaxPoolState { geometry, argmax }, grad| {
            let dx = pool_backward(&geometry, &argmax, grad.to_contiguous().storage());
            FlexTensor::from_data(TensorData::new(dx, geometry.input_shape()))
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// burn's own max pooling (floor mode), the reference.
    fn burns_pool<B: Backend>(
        x: Tensor<B, 4>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Tensor<B, 4> {
        burn::tensor::module::max_pool2d(x, kernel, stride, padding, dilation, false)
    }

    /// Forward (both paths) and input gradient of this module's kernels, called directly,
    /// against burn's own pooling, for the ResNet stem's pooling, a dilated one and a
    /// rectangular one with odd sizes; values drawn from a few levels so that ties occur (the
    /// first in scan order must win, as in burn and PyTorch).
    #[test]
    fn matches_burns_pooling_forward_and_backward() {
        let device = Default::default();
        let cases = [
            ([2, 3, 13, 12], [3, 3], [2, 2], [1, 1], [1, 1]),
            ([1, 2, 9, 11], [3, 2], [1, 2], [1, 0], [2, 1]),
            ([2, 1, 7, 5], [2, 2], [2, 2], [0, 0], [1, 1]),
            // Padding of half the kernel: the corner windows see one element.
            ([1, 2, 5, 6], [2, 2], [2, 2], [1, 1], [1, 1]),
        ];
        for (shape, kernel, stride, padding, dilation) in cases {
            let g = PoolGeometry::new(shape, kernel, stride, padding, dilation)
                .expect("a geometry this kernel handles");
            let x =
                Tensor::<Flex, 4>::random(shape, Distribution::Uniform(0.0, 4.0), &device).floor();
            let values: Vec<f32> = x.to_data().to_vec().expect("f32 values");
            let burns = burns_pool(x.clone(), kernel, stride, padding, dilation);
            let want: Vec<f32> = burns.to_data().to_vec().expect("f32 values");
            for keep_argmax in [false, true] {
                let (got, _) = pool_forward(&g, &values, keep_argmax);
                assert_eq!(got, want, "forward, {shape:?}, argmax kept: {keep_argmax}");
            }

            let dy = Tensor::<Ad, 4>::random(burns.dims(), Distribution::Default, &device);
            let gradient = |fast: bool| {
                let x = Tensor::<Ad, 4>::from_data(x.to_data(), &device).require_grad();
                let y = if fast {
                    autodiff_max_pool2d::<Ad, NoCheckpointing>(x.clone(), g)
                } else {
                    burns_pool(x.clone(), kernel, stride, padding, dilation)
                };
                let grads = (y * dy.clone()).sum().backward();
                x.grad(&grads).expect("x has a gradient").to_data()
            };
            assert_eq!(gradient(true), gradient(false), "gradient, {shape:?}");
        }
    }

    /// A NaN in a window wins it, as in PyTorch (burn-flex keeps the first non-NaN maximum, so
    /// this also shows that `max_pool2d` takes this kernel on `Flex` and `Autodiff<Flex>`).
    #[test]
    fn a_nan_propagates() {
        let device = Default::default();
        let values = TensorData::new(vec![1.0, f32::NAN, 3.0, 2.0], [1, 1, 2, 2]);
        let pooled = |y: TensorData| -> f32 { y.to_vec::<f32>().expect("f32 values")[0] };
        let x = Tensor::<Flex, 4>::from_data(values.clone(), &device);
        let y = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1]);
        assert!(pooled(y.into_data()).is_nan(), "Flex");
        let x = Tensor::<Ad, 4>::from_data(values, &device).require_grad();
        let y = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1]);
        assert!(pooled(y.into_data()).is_nan(), "Autodiff<Flex>");
    }

    #[test]
    fn leaves_what_it_does_not_handle_to_burn() {
        assert_eq!(
            PoolGeometry::new([1, 1, 4, 4], [3, 3], [1, 1], [2, 2], [1, 1]),
            None,
            "padding of more than half the kernel"
        );
        assert_eq!(
            PoolGeometry::new([1, 1, 2, 2], [3, 3], [1, 1], [0, 0], [1, 1]),
            None,
            "kernel larger than the input"
        );
        assert_eq!(
            PoolGeometry::new([0, 1, 4, 4], [2, 2], [1, 1], [0, 0], [1, 1]),
            None,
            "empty"
        );
    }
}
