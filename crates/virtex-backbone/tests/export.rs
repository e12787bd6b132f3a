//! The PyTorch exports, read back with burn-store's PyTorch reader (the one that reads real
//! `torch.save` files): every key, shape and value; Detectron2 names per the table; the
//! wrapper entries Detectron2 looks at.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::pytorch::reader::PickleValue;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;
use common::*;
use virtex_backbone::{
    detectron2_key, read_pytorch_snapshots, save_torch, BackboneError, BlockKind, ResNet,
    TorchValue,
};

/// The tiny bottleneck network with the fixture's weights: trained-looking running statistics,
/// and a downsample in every stage.
fn model() -> ResNet<B> {
    let mut model = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    model
        .load_weights(fixture("resnet_bottleneck_tiny.pth"))
        .unwrap();
    model
}

/// The torchvision `state_dict` that `torch.save` wrote for the fixture, without `fc`: the
/// names and values our exports must reproduce.
fn torchvision_reference() -> BTreeMap<String, TensorData> {
    read_pytorch_snapshots(&fixture("resnet_bottleneck_tiny.pth"))
        .unwrap()
        .into_iter()
        .filter(|(key, _)| !key.starts_with("fc."))
        .map(|(key, snapshot)| (key, snapshot.to_data().unwrap()))
        .collect()
}

fn read(path: &Path) -> BTreeMap<String, TensorSnapshot> {
    read_pytorch_snapshots(path).unwrap()
}

/// Same key set; every float tensor bit-identical, every `num_batches_tracked` an int64 0.
fn assert_matches(
    exported: &BTreeMap<String, TensorSnapshot>,
    reference: &BTreeMap<String, TensorData>,
    name: impl Fn(&str) -> String,
) {
    let expected_keys: Vec<String> = reference.keys().map(|key| name(key)).collect();
    let mut found_keys: Vec<String> = exported.keys().cloned().collect();
    let mut sorted_expected = expected_keys.clone();
    sorted_expected.sort();
    found_keys.sort();
    assert_eq!(found_keys, sorted_expected);
    for (key, expected) in reference {
        let found = exported[&name(key)].to_data().unwrap();
        assert_eq!(found.shape, expected.shape, "{key}");
        if key.ends_with("num_batches_tracked") {
            // The count is not kept by the model (see the crate's export docs).
            assert_eq!(found.dtype, DType::I64, "{key}");
            assert_eq!(found.to_vec::<i64>().unwrap(), vec![0], "{key}");
        } else {
            assert_eq!(found.dtype, DType::F32, "{key}");
            // Exact: the writer copies the f32 bits.
            assert_eq!(
                found.to_vec::<f32>().unwrap(),
                expected.to_vec::<f32>().unwrap(),
                "{key}"
            );
        }
    }
}

#[test]
fn torchvision_pth_has_every_tensor_of_the_state_dict() {
    let model = model();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("backbone.pth");
    model.save_torchvision_pth(&path).unwrap();

    let reference = torchvision_reference();
    // 5 per BatchNorm (num_batches_tracked included) plus the convolutions.
    assert_eq!(
        reference.len(),
        model.num_tensors() + model.batch_norms().len()
    );
    assert_matches(&read(&path), &reference, str::to_string);

    // And it loads back into the same network.
    let mut reloaded = tiny_config(BlockKind::Bottleneck).init::<B>(&Default::default());
    let report = reloaded.load_weights(&path).unwrap();
    assert_eq!(report.prefix, "");
    assert_eq!(report.applied, model.num_tensors());
    let input = &common::reference("resnet_bottleneck_tiny_reference.safetensors")["input"];
    assert_eq!(
        reloaded.forward(tensor::<B, 4>(input)).into_data(),
        model.forward(tensor::<B, 4>(input)).into_data()
    );
}

#[test]
fn detectron2_pth_has_upstreams_names_and_wrapper() {
    let model = model();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("backbone_d2.pth");
    model.save_detectron2_pth(&path).unwrap();

    let exported = read(&path);
    // burn-store flattens the nested dict: `model.<Detectron2 name>`.
    assert_matches(&exported, &torchvision_reference(), |key| {
        format!("model.{}", detectron2_key(key))
    });
    // The table spelled out for a few keys, independently of `detectron2_key`.
    for key in [
        "model.stem.conv1.weight",
        "model.stem.conv1.norm.weight",
        "model.stem.conv1.norm.num_batches_tracked",
        "model.res2.0.conv1.weight",
        "model.res2.0.conv1.norm.running_mean",
        "model.res2.0.conv3.norm.running_var",
        "model.res2.0.shortcut.weight",
        "model.res2.0.shortcut.norm.bias",
        "model.res2.1.conv2.norm.weight",
        "model.res5.0.shortcut.norm.running_var",
    ] {
        assert!(exported.contains_key(key), "{key} missing");
    }
    assert!(exported
        .keys()
        .all(|key| key.starts_with("model.stem.") || key.starts_with("model.res")));
    assert!(!exported
        .keys()
        .any(|key| key.contains("layer") || key.contains("bn") || key.contains("fc.")));

    let entry = |key| PytorchReader::read_pickle_data(&path, Some(key)).unwrap();
    assert_eq!(entry("__author__"), PickleValue::String("virtex-rs".into()));
    assert_eq!(entry("matching_heuristics"), PickleValue::Bool(true));
}

#[test]
fn basic_blocks_export_too() {
    // resnet18/34 have no conv3/bn3: the same table applies.
    let model = tiny_config(BlockKind::Basic).init::<B>(&Default::default());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("basic_d2.pth");
    model.save_detectron2_pth(&path).unwrap();
    let exported = read(&path);
    assert_eq!(
        exported.len(),
        model.num_tensors() + model.batch_norms().len()
    );
    assert!(exported.contains_key("model.res3.0.shortcut.norm.weight"));
    assert!(!exported.keys().any(|key| key.contains("conv3")));
}

#[test]
fn writes_are_deterministic_and_atomic() {
    let model = model();
    let directory = tempfile::tempdir().unwrap();
    let first = directory.path().join("first.pth");
    let second = directory.path().join("second.pth");
    model.save_detectron2_pth(&first).unwrap();
    model.save_detectron2_pth(&second).unwrap();
    // Overwriting replaces the file whole, leaving no temporary behind.
    model.save_detectron2_pth(&second).unwrap();
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
    assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 2);

    let missing = directory.path().join("no such directory").join("out.pth");
    match model.save_torchvision_pth(&missing) {
        Err(BackboneError::Write { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a write error, got {other:?}"),
    }
}

#[test]
fn unsupported_tensor_dtypes_are_refused_before_writing() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ints.pth");
    let value = TorchValue::OrderedDict(vec![(
        "x".into(),
        TorchValue::Tensor(TensorData::new(vec![1u8, 2], [2])),
    )]);
    let err = save_torch(&value, &path).unwrap_err();
    assert!(err.to_string().contains("ints.pth"), "{err}");
    assert!(!path.exists());
}
