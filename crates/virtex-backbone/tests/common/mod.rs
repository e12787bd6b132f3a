//! Shared helpers of the backbone tests: fixture paths, reference tensors, tolerances.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;
use virtex_backbone::{BlockKind, ResNetConfig};

pub type B = burn::backend::Flex;
pub type AB = burn::backend::Autodiff<B>;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The reduced networks of `tools/reference/backbone.py`.
pub fn tiny_config(kind: BlockKind) -> ResNetConfig {
    match kind {
        BlockKind::Bottleneck => ResNetConfig::new(kind, [2, 1, 1, 1]).with_stem_channels(4),
        BlockKind::Basic => ResNetConfig::new(kind, [2, 1, 1, 1]).with_stem_channels(8),
    }
}

/// All tensors of a reference safetensors file, as f32 data.
pub fn reference(name: &str) -> HashMap<String, TensorData> {
    let bytes = std::fs::read(fixture(name)).expect("fixture exists");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(key, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (key, TensorData::new(values, view.shape().to_vec()))
        })
        .collect()
}

pub fn tensor<Bk: Backend, const D: usize>(data: &TensorData) -> Tensor<Bk, D> {
    Tensor::from_data(data.clone(), &Default::default())
}

/// Largest absolute difference divided by the largest reference magnitude.
///
/// A max-normalised error is used rather than an element-wise relative error because ReLU
/// outputs contain exact zeros and tiny values whose relative error is meaningless; f32
/// convolutions accumulated in a different order differ by ~1e-6 of the output scale.
pub fn relative_error(actual: &TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape, expected.shape, "shapes differ");
    let actual = actual.to_vec::<f32>().unwrap();
    let expected = expected.to_vec::<f32>().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = actual
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

pub fn assert_close(what: &str, actual: &TensorData, expected: &TensorData, tolerance: f32) {
    let error = relative_error(actual, expected);
    assert!(
        error <= tolerance,
        "{what}: relative error {error:e} exceeds {tolerance:e}"
    );
}

pub mod files;
