//! Numerical parity with `torch.nn.TransformerDecoder` (fixtures from
//! `tools/reference/textual.py`).

mod common;

use burn::prelude::*;
use common::*;
use virtex_textual::{
    load_torch_head, torch_key_to_burn, NormType, TextualError, TextualHeadConfig,
    TransformerDecoderTextualHead,
};

/// The contract for logits; observed differences are ~1e-6.
const LOGIT_TOLERANCE: f32 = 1e-4;
/// The contract for gradients (relative to the largest entry); observed ~1e-6.
const GRADIENT_TOLERANCE: f32 = 1e-4;

/// The head of `head_fixture` in `textual.py`: C=24, V=40, H=16, L=2, A=2, F=64, 12 positions.
fn fixture_config(norm: NormType) -> TextualHeadConfig {
    TextualHeadConfig::new(24, 40, 16, 2, 2, 64)
        .with_norm_type(norm)
        .with_dropout(0.0)
        .with_max_caption_length(12)
}

fn fixture_name(norm: NormType) -> &'static str {
    match norm {
        NormType::Post => "head_postnorm.safetensors",
        NormType::Pre => "head_prenorm.safetensors",
    }
}

fn load_head<Bk: Backend>(norm: NormType) -> TransformerDecoderTextualHead<Bk> {
    let mut head = fixture_config(norm).init::<Bk>(&Default::default());
    let report = load_torch_head(&mut head, &state_dict(fixture_name(norm)), "state.").unwrap();
    assert!(report.tied_output_checked);
    head
}

fn eval_parity(norm: NormType) {
    let reference = reference(fixture_name(norm));
    let head = load_head::<B>(norm);
    let logits = head.forward(
        float(&reference["input.visual_features"]),
        int(&reference["input.caption_tokens"]),
        int(&reference["input.caption_lengths"]),
    );
    let logits = logits.into_data();
    assert!(logits
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
    let diff = max_abs_diff(&logits, &reference["eval.logits"]);
    println!("{norm:?}: max |Δ logits| = {diff:e}");
    assert!(
        diff <= LOGIT_TOLERANCE,
        "{norm:?} logits differ by {diff:e}"
    );
}

#[test]
fn postnorm_logits_match_torch() {
    eval_parity(NormType::Post);
}

#[test]
fn prenorm_logits_match_torch() {
    eval_parity(NormType::Pre);
}

fn gradient_parity(norm: NormType) {
    let reference = reference(fixture_name(norm));
    let head = load_head::<AB>(norm);
    let logits = head.forward(
        float(&reference["input.visual_features"]),
        int(&reference["input.caption_tokens"]),
        int(&reference["input.caption_lengths"]),
    );
    let loss = (logits * float::<AB, 3>(&reference["train.loss_weights"])).sum();
    let gradients = loss.backward();
    let by_path = gradients_by_path(&head, &gradients);
    let mut checked = 0;
    for (key, expected) in reference
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("grad.")?, v)))
    {
        let mapping = torch_key_to_burn(key).unwrap();
        let grad = by_path
            .get(&mapping.path)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let grad = if mapping.transpose {
            transposed(grad)
        } else {
            grad.clone()
        };
        let error = relative_error(&grad, expected);
        println!("{norm:?}: grad {key}: rel {error:e}");
        assert!(
            error <= GRADIENT_TOLERANCE,
            "{norm:?} grad {key}: rel {error:e}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} gradients in the fixture");
}

#[test]
fn postnorm_gradients_match_torch() {
    gradient_parity(NormType::Post);
}

#[test]
fn prenorm_gradients_match_torch() {
    gradient_parity(NormType::Pre);
}

/// Feeding tokens one at a time (and in chunks) through the key/value cache gives the logits of
/// a full forward pass at every position.
#[test]
fn incremental_decoding_equals_full_recomputation() {
    for norm in [NormType::Post, NormType::Pre] {
        let reference = reference(fixture_name(norm));
        let head = load_head::<B>(norm);
        let device = Default::default();
        let features = float::<B, 4>(&reference["input.visual_features"]);
        let tokens = Tensor::<B, 2, Int>::from_ints(
            [
                [1, 7, 0, 12, 33, 4, 9, 2],
                [1, 21, 5, 5, 39, 2, 2, 2],
                [1, 3, 8, 13, 0, 0, 6, 1],
            ],
            &device,
        );
        let [n, t] = tokens.dims();
        let lengths = Tensor::<B, 1, Int>::from_ints([t as i64; 3], &device);
        let full = head.forward(features.clone(), tokens.clone(), lengths);

        let memory = head.project_visual(features);
        for chunks in [vec![1; t], vec![3, 1, 2, 2]] {
            let mut state = head.start_decoding(memory.clone());
            let mut start = 0;
            for chunk in chunks {
                let step = head.decode_step(&mut state, tokens.clone().narrow(1, start, chunk));
                start += chunk;
                let expected = full.clone().narrow(1, start - 1, 1).reshape([n, 40]);
                let diff = max_abs_diff(&step.into_data(), &expected.into_data());
                assert!(diff <= 1e-5, "{norm:?}: position {}: {diff:e}", start - 1);
            }
            assert_eq!(state.position, t);
        }
    }
}

#[test]
fn mismatched_state_dicts_are_rejected_with_the_key() {
    // Pre-norm weights into a post-norm head: the final norm has no home.
    let mut head = fixture_config(NormType::Post).init::<B>(&Default::default());
    let err =
        load_torch_head(&mut head, &state_dict("head_prenorm.safetensors"), "state.").unwrap_err();
    assert!(
        matches!(&err, TextualError::UnexpectedTensor { key, .. } if key == "state.transformer.norm.bias"),
        "{err}"
    );

    // Post-norm weights into a pre-norm head: the final norm is missing.
    let mut head = fixture_config(NormType::Pre).init::<B>(&Default::default());
    let err = load_torch_head(
        &mut head,
        &state_dict("head_postnorm.safetensors"),
        "state.",
    )
    .unwrap_err();
    assert!(
        matches!(&err, TextualError::MissingTensor { key, .. } if key == "state.transformer.norm.weight"),
        "{err}"
    );

    // A wider FFN: the first FFN weight is named with both shapes, in torch layout.
    let mut narrow = fixture_config(NormType::Post);
    narrow.feedforward_size = 32;
    let mut head = narrow.init::<B>(&Default::default());
    let err = load_torch_head(
        &mut head,
        &state_dict("head_postnorm.safetensors"),
        "state.",
    )
    .unwrap_err();
    match err {
        TextualError::ShapeMismatch {
            key,
            expected,
            found,
        } => {
            assert_eq!(key, "state.transformer.layers.0.linear1.weight");
            assert_eq!(expected, vec![32, 16]);
            assert_eq!(found, vec![64, 16]);
        }
        other => panic!("unexpected error {other}"),
    }

    // A wrong prefix finds nothing.
    let mut head = fixture_config(NormType::Post).init::<B>(&Default::default());
    let err = load_torch_head(
        &mut head,
        &state_dict("head_postnorm.safetensors"),
        "textual.",
    )
    .unwrap_err();
    assert!(
        matches!(err, TextualError::MissingTensor { found: 0, .. }),
        "{err}"
    );
}
