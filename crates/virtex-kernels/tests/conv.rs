//! The GEMM convolution against burn's own op on random shapes: forward on `Flex`, both
//! gradients directly and through `Autodiff<Flex>` (the path the backbone trains on).
//!
//! Tolerance: relative 1e-4 of the largest magnitude of the reference (both sides sum the same
//! products in a different order in f32; the worst case measured here is reported on failure).

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorPrimitive};

type Ad = Autodiff<Flex>;

const REL_TOLERANCE: f32 = 1e-4;

/// Max |a − b| relative to max |b|.
fn relative_error<B: Backend>(got: Tensor<B, 4>, want: Tensor<B, 4>) -> f32 {
    let scale = want
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>()
        .max(1e-12);
    (got - want).abs().max().into_scalar().elem::<f32>() / scale
}

fn assert_close<B: Backend>(what: &str, got: Tensor<B, 4>, want: Tensor<B, 4>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let error = relative_error(got, want);
    assert!(error <= REL_TOLERANCE, "{what}: relative error {error:e}");
}

/// A small deterministic generator for the random shapes.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

struct Case {
    x: [usize; 4],
    w: [usize; 4],
    options: ConvOptions<2>,
}

/// Random convolutions the fast path handles: batch 1–5, channels 1–12, kernels 1–5, strides
/// 1–3, padding 0–3, dilation 1–2, square and non-square inputs.
fn random_cases(count: usize) -> Vec<Case> {
    let mut rng = Lcg(7);
    let mut cases = Vec::new();
    while cases.len() < count {
        let kernel = [1 + rng.below(5), 1 + rng.below(5)];
        let dilation = [1 + rng.below(2), 1 + rng.below(2)];
        let stride = [1 + rng.below(3), 1 + rng.below(3)];
        let padding = [rng.below(4), rng.below(4)];
        let size = [3 + rng.below(12), 3 + rng.below(12)];
        let fits = (0..2).all(|a| size[a] + 2 * padding[a] > dilation[a] * (kernel[a] - 1));
        if !fits {
            continue;
        }
        let (c_in, c_out) = (1 + rng.below(12), 1 + rng.below(12));
        cases.push(Case {
            x: [1 + rng.below(5), c_in, size[0], size[1]],
            w: [c_out, c_in, kernel[0], kernel[1]],
            options: ConvOptions::new(stride, padding, dilation, 1),
        });
    }
    // The ResNet-50 kinds, too: 7×7/2 stem, 3×3/2, 1×1/2 shortcut, 1×1 over a tiny grid.
    cases.push(Case {
        x: [2, 3, 32, 32],
        w: [8, 3, 7, 7],
        options: ConvOptions::new([2, 2], [3, 3], [1, 1], 1),
    });
    cases.push(Case {
        x: [3, 8, 14, 14],
        w: [8, 8, 3, 3],
        options: ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
    });
    cases.push(Case {
        x: [3, 8, 14, 14],
        w: [16, 8, 1, 1],
        options: ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
    });
    cases.push(Case {
        x: [6, 16, 4, 4],
        w: [12, 16, 1, 1],
        options: ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    });
    cases
}

fn out_dims(case: &Case) -> [usize; 4] {
    let out = |axis: usize| {
        let span = case.options.dilation[axis] * (case.w[2 + axis] - 1) + 1;
        (case.x[2 + axis] + 2 * case.options.padding[axis] - span) / case.options.stride[axis] + 1
    };
    [case.x[0], case.w[0], out(0), out(1)]
}

fn primitive(
    tensor: Tensor<Flex, 4>,
) -> <Flex as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

fn tensor(
    primitive: <Flex as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive,
) -> Tensor<Flex, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

#[test]
fn forward_and_gradients_match_burn_on_flex() {
    let device = Default::default();
    for case in random_cases(40) {
        let x = Tensor::<Flex, 4>::random(case.x, Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 4>::random(case.w, Distribution::Normal(0.0, 1.0), &device);
        let dy =
            Tensor::<Flex, 4>::random(out_dims(&case), Distribution::Normal(0.0, 1.0), &device);
        let what = format!("x {:?} w {:?} {:?}", case.x, case.w, case.options);
        let opts = case.options.clone();

        let fast = virtex_kernels::conv2d(x.clone(), w.clone(), None, opts.clone());
        let reference = burn::tensor::module::conv2d(x.clone(), w.clone(), None, opts.clone());
        assert_close(&format!("forward, {what}"), fast, reference);

        let fast =
            virtex_kernels::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), opts.clone());
        let reference = tensor(Flex::conv2d_x_backward(
            primitive(x.clone()),
            primitive(w.clone()),
            primitive(dy.clone()),
            opts.clone(),
        ));
        assert_close(&format!("x gradient, {what}"), fast, reference);

        let fast =
            virtex_kernels::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), opts.clone());
        let reference = tensor(Flex::conv2d_weight_backward(
            primitive(x),
            primitive(w),
            primitive(dy),
            opts,
        ));
        assert_close(&format!("weight gradient, {what}"), fast, reference);
    }
}

#[test]
fn autodiff_gradients_match_burn_including_bias() {
    let device = Default::default();
    for case in random_cases(25) {
        let what = format!("x {:?} w {:?} {:?}", case.x, case.w, case.options);
        let x = Tensor::<Ad, 4>::random(case.x, Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Ad, 4>::random(case.w, Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<Ad, 1>::random([case.w[0]], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<Ad, 4>::random(out_dims(&case), Distribution::Normal(0.0, 1.0), &device);

        let run = |fast: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if fast {
                virtex_kernels::conv2d(x.clone(), w.clone(), Some(b.clone()), case.options.clone())
            } else {
                burn::tensor::module::conv2d(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    case.options.clone(),
                )
            };
            // A non-uniform upstream gradient, and a second use of x after the convolution so
            // that gradient accumulation into x is exercised too.
            let loss = (y.clone() * g.clone()).sum() + x.clone().sum().mul_scalar(0.5);
            let grads = loss.backward();
            let bias_grad = b.grad(&grads).expect("bias gradient");
            (
                y.inner(),
                x.grad(&grads).expect("x gradient"),
                w.grad(&grads).expect("weight gradient"),
                bias_grad.reshape([1, 1, 1, case.w[0]]),
            )
        };
        let (y, dx, dw, db) = run(true);
        let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
        assert_close(&format!("autodiff forward, {what}"), y, y_ref);
        assert_close(&format!("autodiff x gradient, {what}"), dx, dx_ref);
        assert_close(&format!("autodiff weight gradient, {what}"), dw, dw_ref);
        assert_close(&format!("autodiff bias gradient, {what}"), db, db_ref);
    }
}

#[test]
fn frozen_weights_and_inputs_get_no_gradient() {
    let device = Default::default();
    let x = Tensor::<Ad, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let w = Tensor::<Ad, 4>::random([4, 3, 3, 3], Distribution::Default, &device).require_grad();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let grads = virtex_kernels::conv2d(x.clone(), w.clone(), None, options)
        .sum()
        .backward();
    assert!(
        x.grad(&grads).is_none(),
        "an input without require_grad has no gradient"
    );
    assert_eq!(
        w.grad(&grads).expect("weight gradient").dims(),
        [4, 3, 3, 3]
    );
}

#[test]
fn module_helper_matches_the_module_and_falls_back_for_unsupported_configs() {
    let device = Default::default();
    let x = Tensor::<Flex, 4>::random([2, 4, 9, 9], Distribution::Default, &device);
    let configs = [
        Conv2dConfig::new([4, 6], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        Conv2dConfig::new([4, 6], [3, 3]).with_stride([2, 2]),
        // Asymmetric padding and groups: burn's own path.
        Conv2dConfig::new([4, 6], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 0, 2, 1)),
        Conv2dConfig::new([4, 6], [3, 3]).with_padding(PaddingConfig2d::Same),
        Conv2dConfig::new([4, 6], [1, 1]).with_groups(2),
    ];
    for config in configs {
        let conv = config.init::<Flex>(&device);
        let fast = virtex_kernels::forward_conv2d(&conv, x.clone());
        assert_close(&format!("{config:?}"), fast, conv.forward(x.clone()));
    }
    // A module whose weight was replaced keeps working (no cached state in the helper).
    let mut conv = Conv2dConfig::new([4, 6], [1, 1]).init::<Flex>(&device);
    conv.weight = Param::from_tensor(Tensor::ones([6, 4, 1, 1], &device));
    let fast = virtex_kernels::forward_conv2d(&conv, x.clone());
    assert_close("ones", fast, conv.forward(x));
}
