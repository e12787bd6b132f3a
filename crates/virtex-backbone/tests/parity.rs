//! Numerical parity with torchvision (fixtures from `tools/reference/backbone.py`).

mod common;

use std::collections::HashMap;

use burn::prelude::*;
use common::*;
use virtex_backbone::{l2_normalize, BlockKind};

/// rel ≤ 1e-4 on features, the contract; observed errors are ~1e-6.
const FEATURE_TOLERANCE: f32 = 1e-4;

fn eval_parity(kind: BlockKind, weights: &str, reference_file: &str) {
    let reference = reference(reference_file);
    let mut model = tiny_config(kind).init::<B>(&Default::default());
    model.load_weights(fixture(weights)).unwrap();

    let images = tensor::<B, 4>(&reference["input"]);
    let features = model.forward_features(images.clone());
    for (name, value) in [
        ("stem", features.stem),
        ("layer1", features.layer1),
        ("layer2", features.layer2),
        ("layer3", features.layer3),
        ("layer4", features.layer4.clone()),
    ] {
        assert_close(
            name,
            &value.into_data(),
            &reference[&format!("eval.{name}")],
            FEATURE_TOLERANCE,
        );
    }
    let grid = model.forward(images.clone());
    assert_close(
        "forward",
        &grid.into_data(),
        &reference["eval.layer4"],
        FEATURE_TOLERANCE,
    );
    let pooled = model.forward_pooled(images);
    assert_close(
        "pooled",
        &pooled.clone().into_data(),
        &reference["eval.pooled"],
        FEATURE_TOLERANCE,
    );
    assert_close(
        "pooled_l2",
        &l2_normalize(pooled).into_data(),
        &reference["eval.pooled_l2"],
        FEATURE_TOLERANCE,
    );
}

#[test]
fn bottleneck_eval_matches_torchvision() {
    eval_parity(
        BlockKind::Bottleneck,
        "resnet_bottleneck_tiny.pth",
        "resnet_bottleneck_tiny_reference.safetensors",
    );
}

#[test]
fn basic_block_eval_matches_torchvision() {
    eval_parity(
        BlockKind::Basic,
        "resnet_basic_tiny.pth",
        "resnet_basic_tiny_reference.safetensors",
    );
}

fn train_parity(kind: BlockKind, weights: &str, reference_file: &str, grad_keys: &[&str]) {
    let reference = reference(reference_file);
    let mut model = tiny_config(kind).init::<AB>(&Default::default());
    model.load_weights(fixture(weights)).unwrap();

    let images = tensor::<AB, 4>(&reference["input"]);
    let grid = model.forward(images);
    assert_close(
        "train-mode layer4",
        &grid.clone().into_data(),
        &reference["train.layer4"],
        FEATURE_TOLERANCE,
    );
    let loss = (grid * tensor::<AB, 4>(&reference["train.loss_weights"])).sum();
    let gradients = loss.backward();

    // Gradients are compared through the torchvision-named export so keys match the fixture.
    let directory = tempfile::tempdir().unwrap();
    let exported = directory.path().join("after_step.safetensors");
    model.save_torchvision_safetensors(&exported).unwrap();
    let state = read_exported(&exported);
    for (key, value) in &reference {
        if let Some(name) = key.strip_prefix("running.") {
            assert_close(key, &state[name], value, 1e-5);
        }
    }

    let gradients = gradient_map(&model, &gradients);
    for key in grad_keys {
        let grad = gradients
            .get(*key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        assert_close(
            &format!("grad {key}"),
            grad,
            &reference[&format!("grad.{key}")],
            FEATURE_TOLERANCE,
        );
    }
}

/// Gradients of every float parameter, keyed by torchvision name.
fn gradient_map(
    model: &virtex_backbone::ResNet<AB>,
    gradients: &<AB as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> HashMap<String, TensorData> {
    struct Visitor<'a> {
        gradients: &'a <AB as burn::tensor::backend::AutodiffBackend>::Gradients,
        path: Vec<String>,
        found: HashMap<String, TensorData>,
    }
    impl burn::module::ModuleVisitor<AB> for Visitor<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<AB, D>>) {
            let key = self
                .path
                .join(".")
                .replace(".downsample.conv.", ".downsample.0.")
                .replace(".downsample.bn.", ".downsample.1.");
            if let Some(grad) = param.val().grad(self.gradients) {
                self.found.insert(key, grad.into_data());
            }
        }
    }
    let mut visitor = Visitor {
        gradients,
        path: Vec::new(),
        found: HashMap::new(),
    };
    model.visit(&mut visitor);
    visitor.found
}

fn read_exported(path: &std::path::Path) -> HashMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(key, view)| {
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (key, TensorData::new(values, view.shape().to_vec()))
        })
        .collect()
}

#[test]
fn bottleneck_train_mode_matches_torchvision() {
    train_parity(
        BlockKind::Bottleneck,
        "resnet_bottleneck_tiny.pth",
        "resnet_bottleneck_tiny_reference.safetensors",
        &[
            "conv1.weight",
            "bn1.weight",
            "layer1.0.conv3.weight",
            "layer1.0.bn3.bias",
            "layer4.0.conv2.weight",
            "layer4.0.downsample.0.weight",
            "layer4.0.downsample.1.weight",
        ],
    );
}

#[test]
fn basic_block_train_mode_matches_torchvision() {
    train_parity(
        BlockKind::Basic,
        "resnet_basic_tiny.pth",
        "resnet_basic_tiny_reference.safetensors",
        &[
            "conv1.weight",
            "layer1.0.conv2.weight",
            "layer2.0.downsample.0.weight",
            "layer4.0.bn2.weight",
        ],
    );
}
