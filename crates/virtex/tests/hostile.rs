//! Hostile and careless checkpoint files through every entry point of the `virtex` crate: the
//! official import (one read of the `.pth`), our own safetensors (`load`, `load_weights`).
//! float16 / bfloat16 / float64 weights load as their f32 values; int64 weights are a typed
//! error naming the tensor; damaged files are typed errors naming the file. Never a panic (a
//! panic inside burn-store's applier aborts the process with a double free).

mod common;

#[path = "../../virtex-backbone/tests/common/files.rs"]
mod files;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn_store::ModuleSnapshot;
use common::*;
use files::{retype_one_pth, retype_pth, retype_safetensors, Retype, ALL_RETYPES};
use virtex::backbone::BackboneError;
use virtex::textual::TextualError;
use virtex::{CaptioningModel, ImportOptions, VirtexError};

const BICAPTIONING: &str = "bicaptioning_tiny.pth";

fn options() -> ImportOptions {
    ImportOptions {
        attention_heads: Some(2),
        dropout: 0.0,
        ..ImportOptions::default()
    }
}

fn import(path: &Path) -> virtex::Result<CaptioningModel<B>> {
    CaptioningModel::from_official_checkpoint(path, &options(), &Default::default())
        .map(|(model, _)| model)
}

/// Every tensor of a model as f32 values, by burn path.
fn values(model: &CaptioningModel<B>) -> Vec<(String, Vec<f32>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|snapshot| {
            let data = snapshot.to_data().unwrap();
            assert_eq!(data.dtype, DType::F32, "{}", snapshot.full_path());
            (snapshot.full_path(), data.to_vec::<f32>().unwrap())
        })
        .collect()
}

fn rounded(values: &[(String, Vec<f32>)], to: Retype) -> Vec<(String, Vec<f32>)> {
    values
        .iter()
        .map(|(key, values)| (key.clone(), values.iter().map(|&v| to.round(v)).collect()))
        .collect()
}

fn write(directory: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_int64_refused(err: &VirtexError, expected_key: &str, path: &Path) {
    let (key, found, expected) = match err {
        VirtexError::UnsupportedDType {
            key,
            found,
            expected,
            ..
        }
        | VirtexError::Backbone(BackboneError::UnsupportedDType {
            key,
            found,
            expected,
            ..
        })
        | VirtexError::TextualWeights {
            source:
                TextualError::UnsupportedDType {
                    key,
                    found,
                    expected,
                },
            ..
        } => (key, found, expected),
        other => panic!("expected an UnsupportedDType error, got {other}"),
    };
    assert_eq!(key, expected_key);
    assert_eq!((*found, *expected), (DType::I64, DType::F32));
    let message = err.to_string();
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    assert!(
        message.contains("int64") && message.contains(expected_key),
        "{message}"
    );
}

#[test]
fn official_checkpoints_in_other_dtypes() {
    let directory = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture(BICAPTIONING)).unwrap();
    let original = values(&import(&fixture(BICAPTIONING)).unwrap());
    for to in ALL_RETYPES {
        let path = write(directory.path(), "retyped.pth", &retype_pth(&bytes, to));
        match to {
            Retype::I64 => {
                let err = import(&path).unwrap_err();
                assert_int64_refused(&err, "model.visual.cnn.conv1.weight", &path);
            }
            _ => {
                let model = import(&path).unwrap_or_else(|err| panic!("{to:?}: {err}"));
                assert_eq!(values(&model), rounded(&original, to), "{to:?}");
                // Into an existing model too.
                let mut target = model.config.init::<B>(&Default::default()).unwrap();
                target.load_official_weights(&path).unwrap();
                assert_eq!(values(&target), rounded(&original, to), "{to:?}");
            }
        }
    }
    // One int64 tensor of each part: the forward head, the backward stack.
    for (pickle_key, file_key) in [
        (
            "textual.transformer.layers.0.linear1.weight",
            "model.textual.transformer.layers.0.linear1.weight",
        ),
        (
            "backward_textual.transformer.layers.0.linear2.weight",
            "model.backward_textual.transformer.layers.0.linear2.weight",
        ),
        (
            "visual.cnn.layer1.0.bn2.running_var",
            "model.visual.cnn.layer1.0.bn2.running_var",
        ),
    ] {
        let path = write(
            directory.path(),
            "one.pth",
            &retype_one_pth(&bytes, pickle_key, Retype::I64),
        );
        let err = import(&path).unwrap_err();
        assert_int64_refused(&err, file_key, &path);
        // A single f64 tensor among f32 ones loads.
        let path = write(
            directory.path(),
            "one.pth",
            &retype_one_pth(&bytes, pickle_key, Retype::F64),
        );
        assert_eq!(values(&import(&path).unwrap()), original, "{pickle_key}");
    }
}

#[test]
fn our_format_in_other_dtypes_through_load_and_load_weights() {
    let directory = tempfile::tempdir().unwrap();
    let model = import(&fixture(BICAPTIONING)).unwrap();
    let original = values(&model);
    let saved = directory.path().join("model.safetensors");
    model.save(&saved).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    for to in ALL_RETYPES {
        let path = write(
            directory.path(),
            "retyped.safetensors",
            &retype_safetensors(&bytes, to, None),
        );
        let loaded = CaptioningModel::<B>::load(&path, &Default::default());
        let mut target = model.config.init::<B>(&Default::default()).unwrap();
        let into = target.load_weights(&path);
        match to {
            Retype::I64 => {
                assert_int64_refused(&loaded.unwrap_err(), "visual.cnn.conv1.weight", &path);
                assert_int64_refused(&into.unwrap_err(), "visual.cnn.conv1.weight", &path);
            }
            _ => {
                let loaded = loaded.unwrap_or_else(|err| panic!("{to:?}: {err}"));
                assert_eq!(values(&loaded), rounded(&original, to), "{to:?}");
                into.unwrap_or_else(|err| panic!("{to:?}: {err}"));
                assert_eq!(values(&target), rounded(&original, to), "{to:?}");
            }
        }
    }
    let key = "textual.transformer.layers.0.linear1.weight";
    let path = write(
        directory.path(),
        "one.safetensors",
        &retype_safetensors(&bytes, Retype::I64, Some(key)),
    );
    let err = CaptioningModel::<B>::load(&path, &Default::default()).unwrap_err();
    assert_int64_refused(&err, key, &path);
}

#[test]
fn truncated_and_foreign_official_checkpoints_are_named() {
    let directory = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture(BICAPTIONING)).unwrap();
    let length = bytes.len();
    for cut in [0, 3, 50, 1000, length / 2, length - 22, length - 1] {
        let path = write(directory.path(), "cut.pth", &bytes[..cut]);
        let err = import(&path).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("cut.pth"), "cut at {cut}: {message}");
        if cut >= 4 {
            assert!(
                matches!(
                    err,
                    VirtexError::Backbone(BackboneError::DamagedArchive { .. })
                ),
                "cut at {cut}: {message}"
            );
            assert!(
                message.contains("truncated or damaged .pth (zip) file"),
                "{message}"
            );
        }
    }
    let path = write(
        directory.path(),
        "page.pth",
        b"<html><body>404</body></html>",
    );
    let err = import(&path).unwrap_err();
    assert!(err.to_string().contains("HTML page"), "{err}");
}

#[test]
fn truncated_own_files_are_errors() {
    let directory = tempfile::tempdir().unwrap();
    let model = import(&fixture(BICAPTIONING)).unwrap();
    let saved = directory.path().join("model.safetensors");
    model.save(&saved).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let length = bytes.len();
    for cut in [0, 7, 8, 100, length / 2, length - 1] {
        let path = write(directory.path(), "cut.safetensors", &bytes[..cut]);
        let err = CaptioningModel::<B>::load(&path, &Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("cut.safetensors"),
            "cut at {cut}: {err}"
        );
        let mut target = model.config.init::<B>(&Default::default()).unwrap();
        let err = target.load_weights(&path).unwrap_err();
        assert!(
            err.to_string().contains("cut.safetensors"),
            "cut at {cut}: {err}"
        );
    }
}
