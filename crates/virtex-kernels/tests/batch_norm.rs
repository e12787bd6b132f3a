//! The fused training BatchNorm against the same formula composed from burn tensor ops (what
//! burn's autodiff differentiates), on random shapes: output, statistics and all three
//! gradients. Tolerance: relative 1e-4 of the reference's largest magnitude.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor};
use virtex_kernels::{batch_norm2d_eval, batch_norm2d_train, BatchNormTrain};

type Ad = Autodiff<Flex>;

const REL_TOLERANCE: f32 = 1e-4;

fn assert_close<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let scale = want
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>()
        .max(1e-12);
    let error = (got - want).abs().max().into_scalar().elem::<f32>() / scale;
    assert!(error <= REL_TOLERANCE, "{what}: relative error {error:e}");
}

/// `(x − mean)/√(var + ε)·w + b` with biased batch statistics, from burn ops.
fn reference<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let [batch, channels, height, width] = x.dims();
    let per_channel = |t: Tensor<B, 4>| {
        t.swap_dims(0, 1)
            .reshape([channels, batch * height * width])
    };
    let mean = per_channel(x.clone()).mean_dim(1).reshape([channels]);
    let var = per_channel(x.clone() - mean.clone().reshape([1, channels, 1, 1]))
        .square()
        .mean_dim(1)
        .reshape([channels]);
    let normalised = (x - mean.clone().reshape([1, channels, 1, 1]))
        / var
            .clone()
            .add_scalar(epsilon)
            .sqrt()
            .reshape([1, channels, 1, 1]);
    let y = normalised * w.reshape([1, channels, 1, 1]) + b.reshape([1, channels, 1, 1]);
    (y, mean, var)
}

fn shapes() -> Vec<[usize; 4]> {
    vec![
        [2, 3, 5, 7],
        [4, 16, 8, 8],
        [1, 5, 1, 2],
        [8, 32, 1, 1],
        [3, 7, 13, 2],
        [2, 64, 16, 16],
    ]
}

#[test]
fn fused_forward_matches_the_formula_on_flex() {
    let device = Default::default();
    for dims in shapes() {
        let x = Tensor::<Flex, 4>::random(dims, Distribution::Normal(3.0, 2.0), &device);
        let w = Tensor::<Flex, 1>::random([dims[1]], Distribution::Normal(1.0, 0.5), &device);
        let b = Tensor::<Flex, 1>::random([dims[1]], Distribution::Normal(0.0, 1.0), &device);
        let BatchNormTrain {
            output,
            mean,
            variance,
        } = batch_norm2d_train(x.clone(), w.clone(), b.clone(), 1e-5);
        let (y, m, v) = reference(x, w, b, 1e-5);
        assert_close(&format!("output {dims:?}"), output, y);
        assert_close(&format!("mean {dims:?}"), mean, m);
        assert_close(&format!("variance {dims:?}"), variance, v);
    }
}

#[test]
fn fused_gradients_match_autodiff_of_the_formula() {
    let device = Default::default();
    for dims in shapes() {
        let x = Tensor::<Ad, 4>::random(dims, Distribution::Normal(-1.0, 3.0), &device);
        let w = Tensor::<Ad, 1>::random([dims[1]], Distribution::Normal(1.0, 0.5), &device);
        let b = Tensor::<Ad, 1>::random([dims[1]], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<Ad, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let (y, mean, var) = if fused {
                let out = batch_norm2d_train(x.clone(), w.clone(), b.clone(), 1e-5);
                (out.output, out.mean, out.variance)
            } else {
                let (y, mean, var) = reference(x.clone(), w.clone(), b.clone(), 1e-5);
                (y, mean.detach(), var.detach())
            };
            // x is used again after the norm, so its gradients must add up.
            let loss = (y.clone() * g.clone()).sum() + (x.clone() * x.clone()).sum();
            let grads = loss.backward();
            (
                y.inner(),
                mean.inner(),
                var.inner(),
                x.grad(&grads).expect("x gradient"),
                w.grad(&grads).expect("weight gradient"),
                b.grad(&grads).expect("bias gradient"),
            )
        };
        let fused = run(true);
        let reference = run(false);
        assert_close(&format!("output {dims:?}"), fused.0, reference.0);
        assert_close(&format!("mean {dims:?}"), fused.1, reference.1);
        assert_close(&format!("variance {dims:?}"), fused.2, reference.2);
        assert_close(&format!("x gradient {dims:?}"), fused.3, reference.3);
        assert_close(&format!("weight gradient {dims:?}"), fused.4, reference.4);
        assert_close(&format!("bias gradient {dims:?}"), fused.5, reference.5);
    }
}

#[test]
fn statistics_carry_no_gradient_and_frozen_parameters_get_none() {
    let device = Default::default();
    let x = Tensor::<Ad, 4>::random([2, 3, 4, 4], Distribution::Default, &device).require_grad();
    let w = Tensor::<Ad, 1>::ones([3], &device);
    let b = Tensor::<Ad, 1>::zeros([3], &device);
    let out = batch_norm2d_train(x.clone(), w.clone(), b.clone(), 1e-5);
    let grads = (out.output * x.clone()).sum().backward();
    assert!(x.grad(&grads).is_some());
    assert!(w.grad(&grads).is_none() && b.grad(&grads).is_none());
    assert!(out.mean.grad(&grads).is_none() && out.variance.grad(&grads).is_none());
}

#[test]
fn eval_mode_matches_the_formula_on_flex_and_autodiff() {
    let device = Default::default();
    for dims in shapes() {
        let c = dims[1];
        let x = Tensor::<Flex, 4>::random(dims, Distribution::Normal(3.0, 2.0), &device);
        let param = |mean: f64, std: f64| {
            Tensor::<Flex, 1>::random([c], Distribution::Normal(mean, std), &device)
        };
        let (mean, var) = (param(1.0, 1.0), param(2.0, 0.5).abs());
        let (w, b) = (param(1.0, 0.5), param(0.0, 1.0));
        let expected = (x.clone() - mean.clone().reshape([1, c, 1, 1]))
            / var.clone().add_scalar(1e-5).sqrt().reshape([1, c, 1, 1])
            * w.clone().reshape([1, c, 1, 1])
            + b.clone().reshape([1, c, 1, 1]);
        let got = batch_norm2d_eval(
            x.clone(),
            mean.clone(),
            var.clone(),
            w.clone(),
            b.clone(),
            1e-5,
        );
        assert_close(&format!("eval {dims:?}"), got, expected.clone());
        // On an autodiff backend the composed path runs; same values.
        let ad = |t: Tensor<Flex, 1>| Tensor::<Ad, 1>::from_inner(t);
        let got = batch_norm2d_eval(
            Tensor::<Ad, 4>::from_inner(x),
            ad(mean),
            ad(var),
            ad(w),
            ad(b),
            1e-5,
        );
        assert_close(&format!("eval autodiff {dims:?}"), got.inner(), expected);
    }
}
