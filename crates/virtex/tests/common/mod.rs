//! Shared helpers of the model tests: fixtures, reference tensors, tolerances.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub type B = burn::backend::Flex;
pub type AB = burn::backend::Autodiff<B>;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every tensor of a reference file (f32 and i64), as burn data.
pub fn reference(name: &str) -> HashMap<String, TensorData> {
    let bytes = std::fs::read(fixture(name)).expect("fixture exists");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(key, view)| {
            let shape = view.shape().to_vec();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => TensorData::new(
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect::<Vec<f32>>(),
                    shape,
                ),
                safetensors::Dtype::I64 => TensorData::new(
                    view.data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect::<Vec<i64>>(),
                    shape,
                ),
                other => panic!("{key}: unexpected dtype {other:?}"),
            };
            (key, data)
        })
        .collect()
}

pub fn float<Bk: Backend, const D: usize>(data: &TensorData) -> Tensor<Bk, D> {
    Tensor::from_data(data.clone(), &Default::default())
}

pub fn int<Bk: Backend, const D: usize>(data: &TensorData) -> Tensor<Bk, D, Int> {
    Tensor::from_data(data.clone(), &Default::default())
}

pub fn max_abs_diff(actual: &TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape, expected.shape, "shapes differ");
    let a = actual.to_vec::<f32>().unwrap();
    let e = expected.to_vec::<f32>().unwrap();
    a.iter()
        .zip(&e)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()))
}

/// Largest absolute difference over the largest reference magnitude.
pub fn relative_error(actual: &TensorData, expected: &TensorData) -> f32 {
    let scale = expected
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    max_abs_diff(actual, expected) / scale
}

/// Transposes a 2-D tensor's data (torch ↔ burn `Linear` layout).
pub fn transposed(data: &TensorData) -> TensorData {
    let (rows, cols) = (data.shape[0], data.shape[1]);
    let v = data.to_vec::<f32>().unwrap();
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

/// Gradients of every float parameter, keyed by burn module path.
pub fn gradients_by_path<M: Module<AB>>(
    module: &M,
    gradients: &<AB as AutodiffBackend>::Gradients,
) -> HashMap<String, TensorData> {
    struct Visitor<'a> {
        gradients: &'a <AB as AutodiffBackend>::Gradients,
        path: Vec<String>,
        found: HashMap<String, TensorData>,
    }
    impl ModuleVisitor<AB> for Visitor<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if let Some(grad) = param.val().grad(self.gradients) {
                self.found.insert(self.path.join("."), grad.into_data());
            }
        }
    }
    let mut visitor = Visitor {
        gradients,
        path: Vec::new(),
        found: HashMap::new(),
    };
    module.visit(&mut visitor);
    visitor.found
}

/// The torch name of a burn parameter path of a captioning model.
pub fn torch_name(path: &str) -> String {
    path.replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.")
}

/// Whether the torch parameter `key` is an `nn.Linear` weight (stored transposed in burn).
pub fn is_linear_weight(key: &str) -> bool {
    let local = key
        .strip_prefix("backward_textual.")
        .or_else(|| key.strip_prefix("textual."));
    local.is_some_and(|local| {
        virtex::textual::torch_key_to_burn(local).is_some_and(|mapping| mapping.transpose)
    })
}
