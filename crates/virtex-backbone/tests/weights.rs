//! Every checkpoint kind loads to the same network; bad files give errors naming the problem;
//! our own formats round-trip.

mod common;

use burn::prelude::*;
use common::*;
use virtex_backbone::{BackboneError, BlockKind, ResNetConfig, WeightsFormat};

fn layer4(kind: BlockKind, weights: &str) -> (TensorData, virtex_backbone::LoadReport) {
    let reference = reference(match kind {
        BlockKind::Bottleneck => "resnet_bottleneck_tiny_reference.safetensors",
        BlockKind::Basic => "resnet_basic_tiny_reference.safetensors",
    });
    let mut model = tiny_config(kind).init::<B>(&Default::default());
    let report = model.load_weights(fixture(weights)).unwrap();
    let grid = model.forward(tensor::<B, 4>(&reference["input"]));
    assert_close(
        weights,
        &grid.clone().into_data(),
        &reference["eval.layer4"],
        1e-4,
    );
    (grid.into_data(), report)
}

#[test]
fn torchvision_pth_loads_every_tensor() {
    let (_, report) = layer4(BlockKind::Bottleneck, "resnet_bottleneck_tiny.pth");
    assert_eq!(report.format, WeightsFormat::Pytorch);
    assert_eq!(report.prefix, "");
    let model = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    assert_eq!(report.applied, model.num_tensors());
    // fc.weight, fc.bias and one num_batches_tracked per BatchNorm.
    assert_eq!(report.ignored, 2 + model.batch_norms().len());
}

#[test]
fn safetensors_state_dict_loads() {
    let (_, report) = layer4(BlockKind::Bottleneck, "resnet_bottleneck_tiny.safetensors");
    assert_eq!(report.format, WeightsFormat::Safetensors);
}

#[test]
fn hub_backbone_in_legacy_pickle_format_loads() {
    let (_, report) = layer4(BlockKind::Basic, "resnet_basic_tiny_hub.pth");
    assert_eq!(report.format, WeightsFormat::Pytorch);
    assert_eq!(report.prefix, "");
}

#[test]
fn cnn_of_a_full_virtex_checkpoint_loads() {
    let (_, report) = layer4(BlockKind::Bottleneck, "virtex_checkpoint_tiny.pth");
    assert_eq!(report.prefix, "model.visual.cnn.");
}

#[test]
fn wrong_architecture_names_the_mismatched_key() {
    let mut model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());
    let err = model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap_err();
    match &err {
        BackboneError::ShapeMismatch { key, .. } | BackboneError::MissingTensor { key, .. } => {
            assert!(!key.is_empty())
        }
        other => panic!("unexpected error {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("resnet_bottleneck_tiny.pth"), "{message}");
}

#[test]
fn wider_network_reports_shapes() {
    let mut model = tiny_config(BlockKind::Bottleneck)
        .with_stem_channels(8)
        .init::<B>(&Default::default());
    let err = model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap_err();
    let BackboneError::ShapeMismatch {
        key,
        expected,
        found,
        ..
    } = &err
    else {
        panic!("expected a shape mismatch, got {err}");
    };
    assert!(key.ends_with(".weight") || key.contains("running"), "{key}");
    assert_ne!(expected, found);
}

#[test]
fn deeper_network_names_the_missing_key() {
    let mut model = ResNetConfig::new(BlockKind::Bottleneck, [3, 1, 1, 1])
        .with_stem_channels(4)
        .init::<B>(&Default::default());
    let err = model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap_err();
    let BackboneError::MissingTensor { key, .. } = &err else {
        panic!("expected a missing tensor, got {err}");
    };
    assert!(key.starts_with("layer1.2."), "{key}");
}

#[test]
fn a_file_without_a_backbone_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bert.safetensors");
    let bytes: Vec<u8> = [0f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &bytes).unwrap();
    safetensors::serialize_to_file([("encoder.weight", view)], None, &path).unwrap();

    let mut model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());
    let err = model.load_weights(&path).unwrap_err();
    assert!(
        matches!(err, BackboneError::MissingTensor { ref key, .. } if key == "conv1.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("encoder.weight"), "{err}");

    // A partial match (a different network's tensors under `grad.`) names the first gap.
    let err = model
        .load_weights(fixture("resnet_basic_tiny_reference.safetensors"))
        .unwrap_err();
    assert!(matches!(err, BackboneError::MissingTensor { .. }), "{err}");
}

#[test]
fn missing_empty_corrupt_and_truncated_files_are_typed_errors() {
    let directory = tempfile::tempdir().unwrap();
    let mut model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());

    let missing = directory.path().join("nope.pth");
    let err = model.load_weights(&missing).unwrap_err();
    assert!(matches!(err, BackboneError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.pth"));

    let empty = directory.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let err = model.load_weights(&empty).unwrap_err();
    assert!(err.to_string().contains("empty.pth"), "{err}");

    let text = directory.path().join("notes.txt");
    std::fs::write(&text, b"hello, I am not a checkpoint").unwrap();
    let err = model.load_weights(&text).unwrap_err();
    assert!(matches!(err, BackboneError::Unreadable { .. }), "{err}");

    let bytes = std::fs::read(fixture("resnet_basic_tiny.pth")).unwrap();
    let truncated = directory.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = model.load_weights(&truncated).unwrap_err();
    assert!(err.to_string().contains("truncated.pth"), "{err}");
}

#[test]
fn burnpack_round_trip_is_exact() {
    let (expected, _) = layer4(BlockKind::Bottleneck, "resnet_bottleneck_tiny.pth");
    let mut model = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("backbone.bpk");
    model.save_burnpack(&path).unwrap();

    let mut reloaded = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    let report = reloaded.load_weights(&path).unwrap();
    assert_eq!(report.format, WeightsFormat::Burnpack);
    let reference = reference("resnet_bottleneck_tiny_reference.safetensors");
    let grid = reloaded
        .forward(tensor::<B, 4>(&reference["input"]))
        .into_data();
    assert_eq!(grid, expected);
}

#[test]
fn torchvision_safetensors_export_has_torchvision_keys_and_reloads() {
    let mut model = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("backbone.safetensors");
    model.save_torchvision_safetensors(&path).unwrap();

    // Same key set as torchvision's state_dict without fc (num_batches_tracked included, so
    // `load_state_dict(strict=True)` accepts it once fc is removed).
    let exported = std::fs::read(&path).unwrap();
    let exported = safetensors::SafeTensors::deserialize(&exported).unwrap();
    let original = std::fs::read(fixture("resnet_bottleneck_tiny.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let mut exported_keys: Vec<String> = exported.names().into_iter().map(str::to_string).collect();
    let mut original_keys: Vec<String> = original
        .names()
        .into_iter()
        .filter(|k| !k.starts_with("fc."))
        .map(str::to_string)
        .collect();
    exported_keys.sort();
    original_keys.sort();
    assert_eq!(exported_keys, original_keys);
    for key in original_keys
        .iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
    {
        assert_eq!(
            exported.tensor(key).unwrap().data(),
            original.tensor(key).unwrap().data(),
            "{key}"
        );
    }

    let mut reloaded = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    reloaded.load_weights(&path).unwrap();
}

#[test]
fn overwriting_keeps_a_loadable_file() {
    // The writer renames a finished temporary file into place: the target is never half-written.
    let model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("weights.safetensors");
    model.save_torchvision_safetensors(&path).unwrap();
    model.save_torchvision_safetensors(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}
