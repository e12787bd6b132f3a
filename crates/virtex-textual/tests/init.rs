//! Initialisation, parameter counts and attention semantics that fixtures cannot show.

mod common;

use burn::module::{Module, Param};
use burn::prelude::*;
use common::*;
use virtex_textual::{masked_softmax, MultiheadAttention, TextualHeadConfig};

fn values<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().unwrap()
}

fn std(values: &[f32]) -> f32 {
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt()
}

fn assert_normal_002(name: &str, values: &[f32]) {
    let s = std(values);
    assert!((s - 0.02).abs() < 0.002, "{name}: std {s}, expected 0.02");
}

/// torch's default bias U(−1/√fan_in, 1/√fan_in): inside the bound and spread over it.
fn assert_default_bias(name: &str, values: &[f32], fan_in: usize) {
    let bound = 1.0 / (fan_in as f32).sqrt();
    assert!(
        values.iter().all(|v| v.abs() <= bound),
        "{name}: outside ±{bound}"
    );
    let s = std(values);
    let expected = bound / 3f32.sqrt();
    assert!(
        (s - expected).abs() < 0.2 * expected,
        "{name}: std {s}, expected {expected}"
    );
}

#[test]
fn initialisation_follows_upstream() {
    let device = Default::default();
    let (c, v, h, f) = (256, 300, 128, 512);
    let head = TextualHeadConfig::new(c, v, h, 2, 2, f).init::<B>(&device);

    let words = values(head.embedding.words.weight.val());
    assert!(
        words[..h].iter().all(|x| *x == 0.0),
        "padding row must start at zero"
    );
    assert_normal_002("words", &words[h..]);
    assert_normal_002("positions", &values(head.embedding.positions.weight.val()));
    assert_normal_002(
        "visual_projection.weight",
        &values(head.visual_projection.weight.val()),
    );
    assert_default_bias(
        "visual_projection.bias",
        &values(head.visual_projection.bias.as_ref().unwrap().val()),
        c,
    );
    assert_default_bias("output.bias", &values(head.output.bias.val()), h);
    assert_eq!(head.embedding.layer_norm.epsilon, 1e-8);

    for layer in &head.transformer.layers {
        for attention in [&layer.self_attn, &layer.multihead_attn] {
            assert_eq!(attention.in_proj_weight.dims(), [3 * h, h]);
            assert_normal_002("in_proj_weight", &values(attention.in_proj_weight.val()));
            assert!(values(attention.in_proj_bias.val())
                .iter()
                .all(|x| *x == 0.0));
            assert_normal_002("out_proj.weight", &values(attention.out_proj.weight.val()));
            let bias = values(attention.out_proj.bias.as_ref().unwrap().val());
            assert!(bias.iter().all(|x| *x == 0.0));
        }
        assert_normal_002("linear1.weight", &values(layer.linear1.weight.val()));
        assert_normal_002("linear2.weight", &values(layer.linear2.weight.val()));
        assert_default_bias(
            "linear1.bias",
            &values(layer.linear1.bias.as_ref().unwrap().val()),
            h,
        );
        assert_default_bias(
            "linear2.bias",
            &values(layer.linear2.bias.as_ref().unwrap().val()),
            f,
        );
        for norm in [&layer.norm1, &layer.norm2, &layer.norm3] {
            assert!(values(norm.weight.val()).iter().all(|x| *x == 1.0));
            assert!(values(norm.bias.val()).iter().all(|x| *x == 0.0));
            assert_eq!(norm.epsilon, 1e-5);
        }
    }
    // Each layer gets its own draw.
    let first = values(head.transformer.layers[0].linear1.weight.val());
    let second = values(head.transformer.layers[1].linear1.weight.val());
    assert_ne!(first, second);
    assert!(head.transformer.norm.is_none());
}

/// Spec §1.6 (vocab 10000, 30 positions, 2048-channel features), in millions, rounded to 0.01.
#[test]
fn parameter_counts_match_the_spec() {
    let device = Default::default();
    for (config, head_millions, stack_millions) in [
        (TextualHeadConfig::l1_h512(), 10.40, 4.20),
        (TextualHeadConfig::l1_h768(), 18.74, 9.45),
    ] {
        let head = config.init::<B>(&device);
        let total = head.num_params() as f64 / 1e6;
        let stack = head.transformer.num_params() as f64 / 1e6;
        assert!(
            (total - head_millions).abs() < 0.006,
            "{}: {total}M",
            config.name()
        );
        assert!(
            (stack - stack_millions).abs() < 0.006,
            "{}: stack {stack}M",
            config.name()
        );
        // Bicaptioning adds one more stack.
        let bicaptioning = total + stack;
        println!(
            "{}: head {total:.3}M, stack {stack:.3}M, bicaptioning {bicaptioning:.3}M",
            config.name()
        );
    }
}

#[test]
fn a_duplicated_decoder_has_equal_values_and_its_own_parameters() {
    let device = Default::default();
    let head = TextualHeadConfig::new(8, 20, 16, 1, 2, 32).init::<AB>(&device);
    let copy = head.transformer.duplicate();
    let original = &head.transformer.layers[0].linear1.weight;
    let duplicate = &copy.layers[0].linear1.weight;
    assert_ne!(original.id, duplicate.id);
    assert_eq!(values(original.val()), values(duplicate.val()));

    // Gradients flow to each separately.
    let x = Tensor::<AB, 3>::ones([1, 3, 16], &device);
    let memory = Tensor::<AB, 3>::ones([1, 2, 16], &device);
    let loss = head
        .transformer
        .forward(x.clone(), memory.clone(), None)
        .sum()
        + copy.forward(x, memory, None).sum().mul_scalar(3.0);
    let gradients = loss.backward();
    let g1 = values(original.val().grad(&gradients).unwrap());
    let g2 = values(duplicate.val().grad(&gradients).unwrap());
    for (a, b) in g1.iter().zip(&g2) {
        assert!((3.0 * a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// torch drops softmaxed weights: with a single key the weight is exactly 1, so each context
/// vector is either 0 (dropped) or 2·v (kept, rescaled by 1/(1−p)). burn-nn's MHA drops
/// *scores* before the softmax, which would leave every context equal to v.
#[test]
fn attention_dropout_acts_on_the_softmaxed_weights() {
    let device = Default::default();
    let h = 4;
    let mut attention = MultiheadAttention::<AB>::new(h, 1, 0.5, &device);
    attention.out_proj.weight = Param::from_tensor(Tensor::eye(h, &device));
    attention.out_proj.bias = Some(Param::from_tensor(Tensor::zeros([h], &device)));
    let memory = Tensor::<AB, 3>::random([1, 1, h], burn::tensor::Distribution::Default, &device);
    let queries = Tensor::<AB, 3>::random([1, 64, h], burn::tensor::Distribution::Default, &device);
    let key_value = attention.memory_key_value(memory);
    let v = values(key_value.value.clone().reshape([h]));
    let out = values(attention.cross_attention(queries, &key_value));
    let (mut dropped, mut kept) = (0, 0);
    for row in out.chunks(h) {
        if row.iter().all(|x| *x == 0.0) {
            dropped += 1;
        } else {
            assert!(
                row.iter().zip(&v).all(|(o, v)| (o - 2.0 * v).abs() < 1e-5),
                "{row:?} vs 2·{v:?}"
            );
            kept += 1;
        }
    }
    assert!(dropped > 10 && kept > 10, "dropped {dropped}, kept {kept}");
}

/// A row whose keys are all masked gets zero weights and a zero (finite) gradient.
#[test]
fn fully_masked_rows_give_zero_weights_not_nan() {
    let device = Default::default();
    let scores = Tensor::<AB, 4>::from_floats([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], &device)
        .require_grad();
    let mask = Tensor::<AB, 4, Bool>::from_bool(
        TensorData::from([[[[false, true, false], [true, true, true]]]]),
        &device,
    );
    let weights = masked_softmax(scores.clone(), Some(mask));
    let w = values(weights.clone());
    let e = (1f32 - 3.0).exp();
    assert!((w[0] - e / (1.0 + e)).abs() < 1e-6 && w[1] == 0.0);
    assert_eq!(&w[3..], &[0.0, 0.0, 0.0]);
    let gradients = (weights
        * Tensor::<AB, 4>::from_floats([[[[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]]], &device))
    .sum()
    .backward();
    let g = values(scores.grad(&gradients).unwrap());
    assert!(g.iter().all(|x| x.is_finite()));
    assert_eq!(&g[3..], &[0.0, 0.0, 0.0]);
}
