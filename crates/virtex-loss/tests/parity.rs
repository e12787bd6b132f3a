//! Parity with `nn.CrossEntropyLoss(ignore_index=0)` and upstream's classification loss
//! (fixtures from `tools/reference/textual.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;
use virtex_loss::{
    bicaptioning_loss, captioning_loss, multilabel_classification_loss, token_classification_loss,
    PADDING_INDEX,
};

type B = burn::backend::Flex;
type AB = burn::backend::Autodiff<B>;

/// Losses are scalars of magnitude ~1-1000; f32 log-softmax differs from torch's by ~1e-7
/// relative. Gradients are compared relative to their largest entry.
const TOLERANCE: f32 = 1e-5;

fn reference() -> HashMap<String, TensorData> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses.safetensors");
    let bytes = std::fs::read(path).expect("fixture exists");
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

fn relative_error(actual: &TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape, expected.shape);
    let a = actual.to_vec::<f32>().unwrap();
    let e = expected.to_vec::<f32>().unwrap();
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&e)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()))
        / scale
}

fn check(what: &str, actual: Tensor<AB, 1>, expected: &TensorData) {
    let error = relative_error(&actual.into_data(), expected);
    println!("{what}: rel {error:e}");
    assert!(error <= TOLERANCE, "{what}: rel {error:e}");
}

#[test]
fn bicaptioning_loss_and_components_match_torch() {
    let reference = reference();
    let device = Default::default();
    for scale in ["", "large."] {
        let forward = Tensor::<AB, 3>::from_data(
            reference[&format!("{scale}forward_logits")].clone(),
            &device,
        )
        .require_grad();
        let backward = Tensor::<AB, 3>::from_data(
            reference[&format!("{scale}backward_logits")].clone(),
            &device,
        )
        .require_grad();
        let caption = Tensor::<AB, 2, Int>::from_data(reference["caption_tokens"].clone(), &device);
        let noitpac = Tensor::<AB, 2, Int>::from_data(reference["noitpac_tokens"].clone(), &device);
        let losses = bicaptioning_loss(forward.clone(), caption, backward.clone(), noitpac);
        check(
            &format!("{scale}loss"),
            losses.loss.clone(),
            &reference[&format!("{scale}loss")],
        );
        check(
            &format!("{scale}captioning_forward"),
            losses.captioning_forward,
            &reference[&format!("{scale}captioning_forward")],
        );
        check(
            &format!("{scale}captioning_backward"),
            losses.captioning_backward,
            &reference[&format!("{scale}captioning_backward")],
        );
        let gradients = losses.loss.backward();
        for (name, logits) in [("forward_logits", forward), ("backward_logits", backward)] {
            let grad = logits.grad(&gradients).unwrap().into_data();
            let error = relative_error(&grad, &reference[&format!("{scale}grad.{name}")]);
            println!("{scale}grad.{name}: rel {error:e}");
            assert!(error <= TOLERANCE, "{scale}grad.{name}: rel {error:e}");
        }
    }
}

#[test]
fn classification_losses_match_upstream() {
    let reference = reference();
    let device = Default::default();
    for name in ["token_classification", "multilabel"] {
        let logits =
            Tensor::<AB, 2>::from_data(reference[&format!("{name}.logits")].clone(), &device)
                .require_grad();
        let labels =
            Tensor::<AB, 2, Int>::from_data(reference[&format!("{name}.labels")].clone(), &device);
        let loss = match name {
            "token_classification" => token_classification_loss(logits.clone(), labels),
            _ => multilabel_classification_loss(logits.clone(), labels),
        };
        check(
            &format!("{name}.loss"),
            loss.clone(),
            &reference[&format!("{name}.loss")],
        );
        let grad = logits.grad(&loss.backward()).unwrap().into_data();
        let error = relative_error(&grad, &reference[&format!("{name}.grad")]);
        println!("{name}.grad: rel {error:e}");
        assert!(error <= TOLERANCE, "{name}.grad: rel {error:e}");
    }
}

/// A batch without a single target: torch gives NaN (0/0); we give 0 and a zero gradient.
#[test]
fn an_all_padding_batch_gives_zero_not_nan() {
    let device = Default::default();
    let logits = Tensor::<AB, 3>::random([2, 3, 5], burn::tensor::Distribution::Default, &device)
        .require_grad();
    let tokens = Tensor::<AB, 2, Int>::from_ints([[1, 0, 0], [1, 0, 0]], &device);
    let loss = captioning_loss(logits.clone(), tokens, PADDING_INDEX);
    assert_eq!(loss.clone().into_scalar(), 0.0);
    let grad = logits
        .grad(&loss.backward())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(grad.iter().all(|g| *g == 0.0));
}

/// An image without labels contributes 0 to the batch mean instead of NaN.
#[test]
fn an_image_without_labels_contributes_zero() {
    let device = Default::default();
    let logits = Tensor::<B, 2>::from_floats([[1.0, 2.0, 3.0, 4.0, 0.5], [0.0; 5]], &device);
    let labels = Tensor::<B, 2, Int>::from_ints([[4, 4, 1], [1, 2, 3]], &device);
    let loss = token_classification_loss(logits.clone(), labels).into_scalar();
    let log_softmax_4 =
        0.5 - (1f32.exp() + 2f32.exp() + 3f32.exp() + 4f32.exp() + 0.5f32.exp()).ln();
    assert!((loss - (-log_softmax_4) / 2.0).abs() < 1e-5, "{loss}");
}
