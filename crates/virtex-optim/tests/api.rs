//! Behaviour of the public API on burn modules: discovery by path, groups, real autodiff
//! gradients, AdamW, misuse.
mod common;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use common::*;
use virtex_optim::{
    clip_grad_norm, grad_norm, trainable_params, GroupedOptimizerConfig, LookaheadError,
    LrScheduleConfig, ParamGroupsConfig,
};

const TINY_PATHS: [&str; 13] = [
    "visual.cnn.conv1.weight",
    "visual.cnn.bn1.weight",
    "visual.cnn.bn1.bias",
    "textual.visual_projection.weight",
    "textual.visual_projection.bias",
    "textual.embedding.words.weight",
    "textual.embedding.layer_norm.gamma",
    "textual.embedding.layer_norm.beta",
    "textual.transformer.layers.0.linear1.weight",
    "textual.transformer.layers.0.linear1.bias",
    "textual.transformer.layers.0.norm1.gamma",
    "textual.transformer.layers.0.norm1.beta",
    "textual.output.bias",
];

fn tiny_model() -> Tiny<AB> {
    tiny(&tensors("grouped.safetensors"), "init")
}

#[test]
fn parameters_are_found_by_path_without_buffers() {
    let paths: Vec<String> = trainable_params(&tiny_model())
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, TINY_PATHS);
}

#[test]
fn describe_lists_groups_with_virtex_defaults() {
    let table = ParamGroupsConfig::new().describe(&tiny_model()).unwrap();
    let summary: Vec<(String, f64, f64, usize, usize)> = table
        .summary()
        .into_iter()
        .map(|s| {
            (
                s.group.name,
                s.group.lr,
                s.group.weight_decay,
                s.tensors,
                s.elements,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("visual".into(), 0.2, 1e-4, 3, 80),
            ("common".into(), 0.001, 1e-4, 5, 148),
            ("common".into(), 0.001, 0.0, 5, 32),
        ]
    );
    assert_eq!(table.total_elements(), 260);
    let text = table.to_string();
    assert!(
        text.contains("textual.embedding.layer_norm.gamma"),
        "{text}"
    );
    assert!(text.ends_with("total 260 parameters"), "{text}");
}

#[derive(Module, Debug)]
struct Tied<B: Backend> {
    first: Linear<B>,
    second: Linear<B>,
}

#[test]
fn a_tied_parameter_is_listed_once_under_its_first_path() {
    let device = Default::default();
    let first: Linear<AB> = LinearConfig::new(2, 2).init(&device);
    let mut second: Linear<AB> = LinearConfig::new(2, 2).init(&device);
    second.weight = first.weight.clone();
    let paths: Vec<String> = trainable_params(&Tied { first, second })
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["first.weight", "first.bias", "second.bias"]);
}

#[derive(Module, Debug)]
struct Net<B: Backend> {
    cnn: Linear<B>,
    head: Linear<B>,
}

/// A linear layer with fixed, asymmetric weights: the tests do not depend on random draws.
fn linear(d_in: usize, d_out: usize, phase: f32) -> Linear<AB> {
    let device = Default::default();
    let mut layer: Linear<AB> = LinearConfig::new(d_in, d_out).init(&device);
    let values = |n: usize, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 * (1.3 * i as f32 + offset).sin())
            .collect()
    };
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(values(d_in * d_out, phase), [d_in, d_out]),
        &device,
    ));
    layer.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(values(d_out, phase + 0.4), [d_out]),
        &device,
    )));
    layer
}

fn net() -> Net<AB> {
    Net {
        cnn: linear(3, 4, 0.1),
        head: linear(4, 1, 0.7),
    }
}

fn loss(net: &Net<AB>) -> Tensor<AB, 1> {
    let device = Default::default();
    let x = Tensor::<AB, 2>::from_floats([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]], &device);
    net.head
        .forward(net.cnn.forward(x).tanh())
        .powf_scalar(2.0)
        .mean()
}

#[test]
fn trains_with_autodiff_gradients_and_adamw() {
    let mut model = net();
    let start = values(&model);
    let config = GroupedOptimizerConfig::new().with_schedule(
        LrScheduleConfig::new()
            .with_warmup_steps(0)
            .with_total_steps(50),
    );
    let mut optim = config
        .init_with(&model, |group| {
            Ok(AdamWConfig::new()
                .with_weight_decay(group.weight_decay as f32)
                .init())
        })
        .unwrap();
    let groups: Vec<(String, f64)> = optim
        .groups()
        .into_iter()
        .map(|g| (g.name, g.weight_decay))
        .collect();
    // `cnn.*` is the visual group; nothing matches the no-decay regex here.
    assert_eq!(groups, [("visual".into(), 1e-4), ("common".into(), 1e-4)]);
    let first = loss(&model).into_scalar();
    for step in 1..=10 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        let (updated, report) = optim.step(model, grads);
        model = updated;
        assert_eq!(report.lookahead_synced, step % 5 == 0, "step {step}");
        assert!(report.grad_norm.is_finite() && !report.skipped);
    }
    assert!(loss(&model).into_scalar() < first);
    let end = values(&model);
    assert!(start.iter().all(|(path, data)| end[path] != *data));
}

#[test]
fn non_finite_gradients_skip_the_step() {
    let mut model = net();
    let mut optim = GroupedOptimizerConfig::new()
        .with_schedule(
            LrScheduleConfig::new()
                .with_warmup_steps(0)
                .with_total_steps(50),
        )
        .init(&model)
        .unwrap();
    let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
    model = optim.step(model, grads).0;
    let before = values(&model);
    let counter = optim.lookahead_counter();

    let mut grads = GradientsParams::from_grads(loss(&model).backward(), &model);
    let weight = model.cnn.weight.id;
    let bad = grads
        .remove::<Inner, 2>(weight)
        .unwrap()
        .mul_scalar(f32::INFINITY);
    grads.register(weight, bad);
    let (model, report) = optim.step(model, grads);
    assert!(report.skipped && !report.grad_norm.is_finite());
    assert_eq!(report.iteration, 2, "the schedule advances anyway");
    assert_eq!(optim.lookahead_counter(), counter);
    assert_eq!(values(&model), before);
}

#[test]
#[should_panic(expected = "cnn.weight")]
fn stepping_a_module_the_optimizer_does_not_know_panics() {
    let model = net();
    let mut optim = GroupedOptimizerConfig::new().init(&model).unwrap();
    let other = net(); // fresh parameter ids
    let grads = GradientsParams::from_grads(loss(&other).backward(), &other);
    let _ = optim.step(other, grads);
}

#[test]
fn a_module_without_parameters_is_an_error() {
    let model = net().no_grad();
    let err = GroupedOptimizerConfig::new().init(&model).err().unwrap();
    assert!(matches!(err, LookaheadError::NoParameters), "{err}");
}

#[test]
fn invalid_settings_are_errors_naming_the_setting() {
    let model = net();
    let bad_clip = GroupedOptimizerConfig::new().with_clip_grad_norm(Some(0.0));
    assert!(bad_clip
        .init(&model)
        .err()
        .unwrap()
        .to_string()
        .contains("clip_grad_norm"));
    let bad_k = GroupedOptimizerConfig::new()
        .with_lookahead(Some(virtex_optim::LookaheadConfig::new().with_steps(0)));
    assert!(bad_k
        .init(&model)
        .err()
        .unwrap()
        .to_string()
        .contains("lookahead.steps"));
    let bad_sgd = GroupedOptimizerConfig::new().with_sgd(
        virtex_optim::TorchSgdConfig::new()
            .with_momentum(0.0)
            .with_nesterov(true),
    );
    assert!(bad_sgd
        .init(&model)
        .err()
        .unwrap()
        .to_string()
        .contains("sgd.nesterov"));
}

#[test]
fn clip_grad_norm_scales_to_the_maximum() {
    let model = net();
    let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
    let total = grad_norm(&model, &grads);
    let max_norm = total / 4.0;
    let (clipped, outcome) = clip_grad_norm(&model, grads, max_norm);
    assert_eq!(outcome.total_norm, total);
    assert!((outcome.coefficient - max_norm / (total + 1e-6)).abs() < 1e-15);
    // The rescaled f32 gradients and their f32 sum of squares each round by ~1e-7.
    let after = grad_norm(&model, &clipped);
    assert!(
        (after - max_norm).abs() <= 1e-5 * max_norm,
        "{after} vs {max_norm}"
    );
    let (_, outcome) = clip_grad_norm(&model, clipped, 1e9);
    assert_eq!(outcome.coefficient, 1.0);
}

#[test]
fn without_lookahead_and_clipping() {
    let mut model = net();
    let mut optim = GroupedOptimizerConfig::new()
        .with_lookahead(None)
        .with_clip_grad_norm(None)
        .with_schedule(
            LrScheduleConfig::new()
                .with_warmup_steps(0)
                .with_total_steps(50),
        )
        .init(&model)
        .unwrap();
    assert_eq!(optim.lookahead_counter(), None);
    for _ in 0..5 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        let (updated, report) = optim.step(model, grads);
        model = updated;
        assert!(!report.lookahead_synced);
        assert_eq!(report.clip_coefficient, 1.0);
    }
    let same = values(&optim.with_slow_weights(model.clone()));
    assert_eq!(same, values(&model));
}

#[test]
fn config_round_trips_through_json() {
    let config = GroupedOptimizerConfig::new();
    let text = config.to_string();
    assert!(text.contains("\"no_decay\""), "{text}");
    let back = GroupedOptimizerConfig::load_binary(text.as_bytes()).unwrap();
    assert_eq!(back, config);
    assert_eq!(config.groups.rules[0].lr, 0.2);
    assert_eq!(config.schedule.total_steps, 500_000);
}
