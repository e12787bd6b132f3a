//! State dicts with other dtypes, lying headers and absurd shapes: values or typed errors naming
//! the tensor, never a panic (a panic inside burn-store's applier aborts the process).

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::{bf16, f16, DType};
use burn_store::{ModuleSnapshot, TensorSnapshot, TensorSnapshotError};
use common::*;
use virtex_textual::{
    load_torch_head, TextualError, TextualHeadConfig, TransformerDecoderTextualHead,
};

const FIXTURE: &str = "head_postnorm.safetensors";

fn head() -> TransformerDecoderTextualHead<B> {
    TextualHeadConfig::new(24, 40, 16, 2, 2, 64)
        .with_dropout(0.0)
        .with_max_caption_length(12)
        .init::<B>(&Default::default())
}

fn values(head: &TransformerDecoderTextualHead<B>) -> Vec<(String, Vec<f32>)> {
    head.collect(None, None, false)
        .into_iter()
        .map(|snapshot| {
            let data = snapshot.to_data().unwrap();
            assert_eq!(data.dtype, DType::F32, "{}", snapshot.full_path());
            (snapshot.full_path(), data.to_vec::<f32>().unwrap())
        })
        .collect()
}

/// The state dict with the tensors `which` selects stored as `dtype`.
fn retyped(dtype: DType, which: impl Fn(&str) -> bool) -> BTreeMap<String, TensorSnapshot> {
    state_dict(FIXTURE)
        .into_iter()
        .map(|(key, snapshot)| {
            if !which(&key) || snapshot.dtype != DType::F32 {
                return (key, snapshot);
            }
            let data = snapshot.to_data().unwrap().convert_dtype(dtype);
            let path = key.split('.').map(str::to_string).collect();
            let converted = TensorSnapshot::from_data(data, path, Vec::new(), ParamId::new());
            (key, converted)
        })
        .collect()
}

fn round(dtype: DType, value: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(value).to_f32(),
        DType::BF16 => bf16::from_f32(value).to_f32(),
        _ => value,
    }
}

#[test]
fn half_bfloat_and_double_state_dicts_load_as_their_values() {
    let mut reference = head();
    load_torch_head(&mut reference, &state_dict(FIXTURE), "state.").unwrap();
    let reference = values(&reference);
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        let mut loaded = head();
        let report = load_torch_head(&mut loaded, &retyped(dtype, |_| true), "state.")
            .unwrap_or_else(|err| panic!("{dtype:?}: {err}"));
        assert!(report.tied_output_checked);
        let expected: Vec<(String, Vec<f32>)> = reference
            .iter()
            .map(|(key, values)| {
                (
                    key.clone(),
                    values.iter().map(|&v| round(dtype, v)).collect(),
                )
            })
            .collect();
        assert_eq!(values(&loaded), expected, "{dtype:?}");
    }
}

#[test]
fn integer_tensors_are_refused_naming_the_key() {
    for (dtype, key) in [
        (DType::I64, "state.transformer.layers.1.linear2.weight"),
        (DType::I32, "state.visual_projection.bias"),
        (DType::I64, "state.embedding.words.weight"),
    ] {
        // The tied output weight is stored like the word matrix it duplicates.
        let twin = key.replace("embedding.words", "output");
        let state_dict = retyped(dtype, |k| k == key || k == twin);
        let err = load_torch_head(&mut head(), &state_dict, "state.").unwrap_err();
        match &err {
            TextualError::UnsupportedDType {
                key: named,
                found,
                expected,
            } => {
                assert_eq!(named, key);
                assert_eq!((*found, *expected), (dtype, DType::F32));
            }
            other => panic!("{key}: expected UnsupportedDType, got {other}"),
        }
        assert!(err.to_string().contains(key), "{err}");
    }
}

/// A snapshot whose header claims `shape` (f32) and whose data is `data`.
fn lying(
    key: &str,
    shape: Vec<usize>,
    data: Result<TensorData, TensorSnapshotError>,
) -> TensorSnapshot {
    TensorSnapshot::from_closure(
        Rc::new(move || data.clone()),
        DType::F32,
        shape.into(),
        key.split('.').map(str::to_string).collect(),
        Vec::new(),
        ParamId::new(),
    )
}

#[test]
fn lying_headers_and_absurd_shapes_are_errors() {
    // The header says [64, 16] f32, the data holds fewer bytes.
    let key = "state.transformer.layers.0.linear1.weight";
    let mut dict = state_dict(FIXTURE);
    let short = TensorData::from_bytes_vec(vec![0u8; 100], vec![64, 16], DType::F32);
    dict.insert(key.into(), lying(key, vec![64, 16], Ok(short)));
    let err = load_torch_head(&mut head(), &dict, "state.").unwrap_err();
    assert!(matches!(err, TextualError::BadTensor { .. }), "{err}");

    // The data is int64 although the header says f32.
    let mut dict = state_dict(FIXTURE);
    let ints = TensorData::new(vec![0i64; 64 * 16], [64, 16]);
    dict.insert(key.into(), lying(key, vec![64, 16], Ok(ints)));
    let err = load_torch_head(&mut head(), &dict, "state.").unwrap_err();
    assert!(matches!(err, TextualError::BadTensor { .. }), "{err}");

    // A word matrix (and its tied twin) claiming 2^40 rows is a shape error; neither is read.
    let mut dict = state_dict(FIXTURE);
    let unreadable = || Err(TensorSnapshotError::IoError("must not be read".into()));
    for key in ["state.embedding.words.weight", "state.output.weight"] {
        dict.insert(key.into(), lying(key, vec![1 << 40, 16], unreadable()));
    }
    let err = load_torch_head(&mut head(), &dict, "state.").unwrap_err();
    assert!(
        matches!(&err, TextualError::ShapeMismatch { key, .. } if key == "state.embedding.words.weight"),
        "{err}"
    );
}
