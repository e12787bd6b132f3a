//! Files written by the code before `BidirectionalCaptioningModel` and `ForwardCaptioningModel`
//! became one `CaptioningModel` (commit 19e2786): `legacy_{bi,}captioning_tiny.safetensors`
//! were saved by that code, and `legacy_outputs.safetensors` holds the logits that code computed
//! from them (eval mode) on the images stored next to them. They must still load, as the right
//! kind, and compute the same logits.

mod common;

use burn::prelude::*;
use common::*;
use virtex::{CaptioningModel, VirtexError};

fn inputs() -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let device = Default::default();
    (
        Tensor::from_ints([[1, 7, 9, 2, 0], [1, 5, 6, 8, 2]], &device),
        Tensor::from_ints([[2, 9, 7, 1, 0], [2, 8, 6, 5, 1]], &device),
        Tensor::from_ints([4, 5], &device),
    )
}

#[test]
fn bicaptioning_files_of_the_two_type_code_load_and_compute_the_same_logits() {
    let reference = reference("legacy_outputs.safetensors");
    let model = CaptioningModel::<B>::load(
        fixture("legacy_bicaptioning_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    assert!(model.has_backward() && model.config.caption_backward);
    let (caption, noitpac, lengths) = inputs();
    let output = model.forward_eval(float(&reference["images"]), caption, noitpac, lengths);
    assert_eq!(
        max_abs_diff(
            &output.forward_logits.into_data(),
            &reference["bicaptioning.forward_logits"]
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &output.backward_logits.unwrap().into_data(),
            &reference["bicaptioning.backward_logits"]
        ),
        0.0
    );
}

#[test]
fn forward_only_files_of_the_two_type_code_load_as_forward_only() {
    let reference = reference("legacy_outputs.safetensors");
    let path = fixture("legacy_captioning_tiny.safetensors");
    let model = CaptioningModel::<B>::load(&path, &Default::default()).unwrap();
    assert!(!model.has_backward() && !model.config.caption_backward);
    let (caption, noitpac, lengths) = inputs();
    let output = model.forward_eval(float(&reference["images"]), caption, noitpac, lengths);
    assert_eq!(
        max_abs_diff(
            &output.forward_logits.into_data(),
            &reference["captioning.logits"]
        ),
        0.0
    );

    // Loading its weights into a bicaptioning model is refused, naming both kinds.
    let mut bicaptioning = model
        .config
        .clone()
        .with_caption_backward(true)
        .init::<B>(&Default::default())
        .unwrap();
    let err = bicaptioning.load_weights(&path).unwrap_err();
    assert!(
        matches!(&err, VirtexError::WrongModelKind { expected: "bicaptioning", found, .. } if found == "captioning"),
        "{err}"
    );
}
