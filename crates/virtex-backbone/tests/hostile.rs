//! Hostile and careless weight files: other dtypes, damaged archives, files of another kind.
//! Every one must give a value or a typed error naming the file (and tensor), never a panic (a
//! panic inside burn-store's applier aborts the whole process with a double free).

mod common;

use std::path::Path;

use burn::tensor::DType;
use burn_store::{BurnpackWriter, ModuleSnapshot, TensorSnapshot};
use common::files::{retype_one_pth, retype_pth, retype_safetensors, Retype, ALL_RETYPES};
use common::*;
use virtex_backbone::{BackboneError, BlockKind, LoadReport, ResNet, WeightsFormat};

fn bottleneck() -> ResNet<B> {
    tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default())
}

/// Every tensor of a model as f32 values, by burn path.
fn values(model: &ResNet<B>) -> Vec<(String, Vec<f32>)> {
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

/// The model loaded from `original` (f32), with every value rounded as `to` rounds it.
fn expected_values(original: &Path, to: Retype) -> Vec<(String, Vec<f32>)> {
    let mut model = bottleneck();
    model.load_weights(original).unwrap();
    values(&model)
        .into_iter()
        .map(|(key, values)| (key, values.into_iter().map(|v| to.round(v)).collect()))
        .collect()
}

fn write(directory: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Loads `path`; floats must give `original`'s values rounded through the dtype, int64 the
/// typed error naming `int64_key`.
fn check_retyped(path: &Path, original: &Path, to: Retype, int64_key: &str) -> Option<LoadReport> {
    let mut model = bottleneck();
    let result = model.load_weights(path);
    if to == Retype::I64 {
        let err = result.unwrap_err();
        let message = err.to_string();
        let BackboneError::UnsupportedDType {
            key,
            found,
            expected,
            ..
        } = &err
        else {
            panic!("{to:?}: expected UnsupportedDType, got {err}");
        };
        assert_eq!(key, int64_key);
        assert_eq!((*found, *expected), (DType::I64, DType::F32));
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(
            message.contains("int64") && message.contains("float32"),
            "{message}"
        );
        return None;
    }
    let report = result.unwrap_or_else(|err| panic!("{to:?}: {err}"));
    assert_eq!(values(&model), expected_values(original, to), "{to:?}");
    Some(report)
}

#[test]
fn safetensors_in_half_bfloat_and_double_load_and_int64_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let original = fixture("resnet_bottleneck_tiny.safetensors");
    let bytes = std::fs::read(&original).unwrap();
    for to in ALL_RETYPES {
        let path = write(
            directory.path(),
            &format!("{to:?}.safetensors"),
            &retype_safetensors(&bytes, to, None),
        );
        check_retyped(&path, &original, to, "conv1.weight");
    }
    // One tensor deep inside the network, named in the file's (torchvision) naming.
    let path = write(
        directory.path(),
        "one.safetensors",
        &retype_safetensors(&bytes, Retype::I64, Some("layer1.0.downsample.0.weight")),
    );
    let err = bottleneck().load_weights(&path).unwrap_err();
    assert!(
        matches!(&err, BackboneError::UnsupportedDType { key, .. } if key == "layer1.0.downsample.0.weight"),
        "{err}"
    );
}

#[test]
fn pth_in_half_bfloat_and_double_load_and_int64_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let original = fixture("resnet_bottleneck_tiny.pth");
    let bytes = std::fs::read(&original).unwrap();
    for to in ALL_RETYPES {
        let path = write(
            directory.path(),
            &format!("{to:?}.pth"),
            &retype_pth(&bytes, to),
        );
        check_retyped(&path, &original, to, "conv1.weight");
    }
    for to in [Retype::I64, Retype::F16] {
        let path = write(
            directory.path(),
            "one.pth",
            &retype_one_pth(&bytes, "layer1.0.conv2.weight", to),
        );
        let result = bottleneck().load_weights(&path);
        match to {
            Retype::I64 => assert!(
                matches!(&result, Err(BackboneError::UnsupportedDType { key, .. }) if key == "layer1.0.conv2.weight"),
                "{result:?}"
            ),
            _ => {
                result.unwrap();
            }
        }
    }
}

#[test]
fn the_cnn_of_a_full_virtex_checkpoint_in_other_dtypes() {
    let directory = tempfile::tempdir().unwrap();
    let original = fixture("virtex_checkpoint_tiny.pth");
    let bytes = std::fs::read(&original).unwrap();
    for to in ALL_RETYPES {
        let path = write(
            directory.path(),
            &format!("{to:?}.pth"),
            &retype_pth(&bytes, to),
        );
        if let Some(report) = check_retyped(&path, &original, to, "model.visual.cnn.conv1.weight") {
            assert_eq!(report.prefix, "model.visual.cnn.");
        }
    }
}

#[test]
fn burnpack_in_other_dtypes() {
    let directory = tempfile::tempdir().unwrap();
    let original = fixture("resnet_bottleneck_tiny.pth");
    let mut model = bottleneck();
    model.load_weights(&original).unwrap();
    for (to, dtype) in [
        (Retype::F16, DType::F16),
        (Retype::BF16, DType::BF16),
        (Retype::F64, DType::F64),
        (Retype::I64, DType::I64),
    ] {
        let snapshots: Vec<TensorSnapshot> = model
            .collect(None, None, false)
            .into_iter()
            .map(|snapshot| {
                let data = snapshot.to_data().unwrap().convert_dtype(dtype);
                TensorSnapshot::from_data(
                    data,
                    snapshot.path_stack.clone().unwrap(),
                    Vec::new(),
                    snapshot.tensor_id.unwrap(),
                )
            })
            .collect();
        let path = directory.path().join(format!("{to:?}.bpk"));
        BurnpackWriter::new(snapshots).write_to_file(&path).unwrap();
        let report = check_retyped(&path, &original, to, "conv1.weight");
        if let Some(report) = report {
            assert_eq!(report.format, WeightsFormat::Burnpack);
        }
    }
}

#[test]
fn truncated_zip_pth_files_are_named_as_such() {
    let directory = tempfile::tempdir().unwrap();
    for name in [
        "resnet_bottleneck_tiny.pth",
        "resnet_basic_tiny.pth",
        "virtex_checkpoint_tiny.pth",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let length = bytes.len();
        for cut in [
            4,
            30,
            100,
            1000,
            length / 3,
            length / 2,
            length - 100,
            length - 1,
        ] {
            let path = write(directory.path(), "truncated.pth", &bytes[..cut]);
            let err = bottleneck().load_weights(&path).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, BackboneError::DamagedArchive { .. }),
                "{name} cut at {cut}: {message}"
            );
            assert!(
                message.contains("truncated or damaged .pth (zip) file")
                    && message.contains("truncated.pth"),
                "{message}"
            );
        }
    }
}

#[test]
fn bit_rot_in_a_zip_pth_is_found_not_loaded_as_zeros() {
    // burn-store reads a storage whose CRC fails as zeros; the archive is checked first.
    let directory = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("resnet_bottleneck_tiny.pth")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let path = write(directory.path(), "rotten.pth", &bytes);
    let err = bottleneck().load_weights(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, BackboneError::DamagedArchive { .. }),
        "{message}"
    );
    assert!(
        message.contains("CRC-32 mismatch") && message.contains("rotten.pth"),
        "{message}"
    );
}

#[test]
fn truncated_legacy_pickle_files_are_errors() {
    let directory = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("resnet_basic_tiny_hub.pth")).unwrap();
    assert_eq!(bytes[0], 0x80, "a legacy (pickle) file");
    let length = bytes.len();
    for cut in [
        1,
        2,
        15,
        100,
        1000,
        length / 3,
        length / 2,
        length - 100,
        length - 1,
    ] {
        let path = write(directory.path(), "hub.pth", &bytes[..cut]);
        let mut model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());
        let err = model.load_weights(&path).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("hub.pth"), "cut at {cut}: {message}");
        assert!(
            message.contains("truncated") || message.contains("damaged"),
            "cut at {cut}: {message}"
        );
    }
}

#[test]
fn files_that_are_not_torch_saves_say_what_they_are() {
    let directory = tempfile::tempdir().unwrap();
    let safetensors = std::fs::read(fixture("resnet_bottleneck_tiny.safetensors")).unwrap();
    for (contents, says) in [
        (
            &b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n"[..],
            "Git LFS pointer",
        ),
        (
            &b"<!DOCTYPE html><html><body>Not Found</body></html>"[..],
            "HTML page",
        ),
        (&b"\x1f\x8b\x08\x00\x00\x00\x00\x00"[..], "gzip"),
        (&safetensors[..], "safetensors"),
        (&b"just some notes"[..], "text file"),
        (&[0u8, 1, 2, 3, 250, 251][..], "no known format"),
    ] {
        let path = write(directory.path(), "weights.pth", contents);
        let err = bottleneck()
            .load_weights_as(&path, WeightsFormat::Pytorch)
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, BackboneError::Unreadable { .. }), "{message}");
        assert!(
            message.contains(says) && message.contains("weights.pth"),
            "{says}: {message}"
        );
    }
}
