//! `virtex export` end to end: the real binary, a real weights file, the files read back with
//! the PyTorch reader.

use std::path::Path;
use std::process::Command;

use burn::prelude::*;
use burn::tensor::DType;
use virtex_backbone::{detectron2_key, read_pytorch_snapshots, ResNet, ResNetConfig};

type B = burn::backend::Flex;

fn virtex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtex"))
}

/// A resnet18 with random weights (`zero_init_residual` off so that no two BatchNorms are
/// alike), saved as torchvision-named safetensors.
fn weights(directory: &Path) -> (ResNet<B>, std::path::PathBuf) {
    let model = ResNetConfig::resnet18()
        .with_zero_init_residual(false)
        .init::<B>(&Default::default());
    let path = directory.join("resnet18.safetensors");
    model.save_torchvision_safetensors(&path).unwrap();
    (model, path)
}

fn export(weights: &Path, format: &str, out: &Path) -> std::process::Output {
    virtex()
        .args([
            "export",
            "--arch",
            "resnet18",
            "--format",
            format,
            "--weights",
        ])
        .arg(weights)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The file holds exactly the model's tensors under `name(torchvision key)`: every float
/// tensor bit for bit, and the int64 `num_batches_tracked` counts. The model's own tensors come
/// from its torchvision safetensors export, read with the `safetensors` crate.
fn assert_holds_model(file: &Path, model: &ResNet<B>, name: impl Fn(&str) -> String) {
    let exported = read_pytorch_snapshots(file).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let own = directory.path().join("own.safetensors");
    model.save_torchvision_safetensors(&own).unwrap();
    let bytes = std::fs::read(&own).unwrap();
    let own = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(exported.len(), own.len());
    assert_eq!(own.len(), model.num_tensors() + model.batch_norms().len());
    for (key, view) in own.tensors() {
        let found = exported
            .get(&name(&key))
            .unwrap_or_else(|| panic!("{} missing", name(&key)))
            .to_data()
            .unwrap();
        let shape: burn::tensor::Shape = view.shape().to_vec().into();
        assert_eq!(found.shape, shape, "{key}");
        let dtype = if key.ends_with("num_batches_tracked") {
            DType::I64
        } else {
            DType::F32
        };
        assert_eq!(found.dtype, dtype, "{key}");
        assert_eq!(found.as_bytes(), view.data(), "{key}");
    }
}

#[test]
fn torchvision_export_holds_the_weights() {
    let directory = tempfile::tempdir().unwrap();
    let (model, weights) = weights(directory.path());
    let out = directory.path().join("resnet18.pth");
    let output = export(&weights, "torchvision", &out);
    assert!(output.status.success(), "{output:?}");
    assert_holds_model(&out, &model, str::to_string);

    // The export is itself a weights file `features`/`export` accept.
    let mut reloaded = ResNetConfig::resnet18().init::<B>(&Default::default());
    reloaded.load_weights(&out).unwrap();
    let images = Tensor::<B, 4>::random(
        [1, 3, 64, 64],
        burn::tensor::Distribution::Default,
        &Default::default(),
    );
    assert_eq!(
        reloaded.forward(images.clone()).into_data(),
        model.forward(images).into_data()
    );
}

#[test]
fn a_checkpoint_directory_exports_its_model() {
    let directory = tempfile::tempdir().unwrap();
    let checkpoint = directory.path().join("checkpoint_00000007");
    std::fs::create_dir(&checkpoint).unwrap();
    let (model, _) = weights(&checkpoint);
    std::fs::rename(
        checkpoint.join("resnet18.safetensors"),
        checkpoint.join("model.safetensors"),
    )
    .unwrap();
    let out = directory.path().join("from_checkpoint.pth");
    let output = export(&checkpoint, "torchvision", &out);
    assert!(output.status.success(), "{output:?}");
    assert_holds_model(&out, &model, str::to_string);
    // Never inside the checkpoint.
    let inside = checkpoint.join("export.pth");
    assert!(!export(&checkpoint, "torchvision", &inside).status.success());
    assert!(!inside.exists());
}

#[test]
fn detectron2_export_has_detectron2_names() {
    let directory = tempfile::tempdir().unwrap();
    let (model, weights) = weights(directory.path());
    let out = directory.path().join("resnet18_d2.pth");
    let output = export(&weights, "detectron2", &out);
    assert!(output.status.success(), "{output:?}");
    assert_holds_model(&out, &model, |key| format!("model.{}", detectron2_key(key)));
    let exported = read_pytorch_snapshots(&out).unwrap();
    assert!(exported.contains_key("model.stem.conv1.norm.running_var"));
    assert!(exported.contains_key("model.res3.0.shortcut.norm.weight"));
}

#[test]
fn the_weights_file_is_never_the_output() {
    let directory = tempfile::tempdir().unwrap();
    let (_, weights) = weights(directory.path());
    let before = std::fs::read(&weights).unwrap();
    let output = export(&weights, "detectron2", &weights);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("resnet18.safetensors"), "{stderr}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}

#[test]
fn unknown_formats_and_missing_weights_are_refused() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("out.pth");
    let output = export(&directory.path().join("resnet18.safetensors"), "onnx", &out);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("onnx"));

    let missing = directory.path().join("missing.pth");
    let output = export(&missing, "torchvision", &out);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.pth"), "{stderr}");
    assert!(!out.exists());
}
