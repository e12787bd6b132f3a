//! The linear probe (`virtex_train::linear_probe`) on a small image-folder set of real
//! photographs whose two classes are separable by colour: the sample photographs tinted red
//! and tinted blue.

mod common;

use common::exclusive;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use virtex::backbone::{ResNet, ResNetConfig};
use virtex_data::ClassificationDataset;
use virtex_train::linear_probe::{
    probe_layer, run_linear_probe, LinearClassifier, LinearProbeConfig, ProbeRunOptions,
};

type B = Autodiff<Flex>;

fn sample_photos() -> Vec<PathBuf> {
    let root = virtex_data::sample_data_root();
    let mut photos =
        virtex_data::collect_image_files(&[root.join("train2017"), root.join("val2017")]).unwrap();
    photos.sort();
    photos
}

/// `root/{train,val}/{blue,red}/*.png`: photos 0..9 tinted both ways for training, the rest
/// for validation (other photographs than the training ones).
fn tinted_folders(root: &Path) {
    for (index, photo) in sample_photos().iter().enumerate() {
        let split = if index < 9 { "train" } else { "val" };
        let image = image::open(photo).unwrap().to_rgb8();
        for (class, colour) in [("red", [255.0, 0.0, 0.0]), ("blue", [0.0, 0.0, 255.0])] {
            // Half the photograph, half the colour: even a dark photograph takes the tint.
            let mut tinted = image.clone();
            for pixel in tinted.pixels_mut() {
                for (channel, value) in pixel.0.iter_mut().enumerate() {
                    *value = (0.5 * *value as f32 + 0.5 * colour[channel]) as u8;
                }
            }
            let directory = root.join(split).join(class);
            std::fs::create_dir_all(&directory).unwrap();
            tinted
                .save(directory.join(format!("{index:02}.png")))
                .unwrap();
        }
    }
}

/// A random ResNet-18, the same one every time (the callers hold [`exclusive`]).
fn backbone() -> ResNet<B> {
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
    ResNetConfig::resnet18()
        .with_stem_channels(8)
        .init(&Default::default())
}

fn values<const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().unwrap()
}

/// The classifier a probe checkpoint holds.
fn checkpoint_model(path: &Path) -> LinearClassifier<B> {
    let device = Default::default();
    let model = LinearClassifier {
        backbone: backbone(),
        fc: probe_layer::<B>(512, 2, &device),
    };
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(std::fs::read(path).unwrap(), &device)
        .unwrap();
    model.load_record(record)
}

fn config(iterations: u64) -> LinearProbeConfig {
    LinearProbeConfig {
        batch_size: 6,
        num_iterations: Some(iterations),
        crop_size: 48,
        val_resize: 56,
        log_every: 1,
        checkpoint_every: 4,
        eval_batch_size: 8,
        ..LinearProbeConfig::imagenet()
    }
}

fn datasets(root: &Path) -> (ClassificationDataset, ClassificationDataset) {
    let train = ClassificationDataset::image_folder(root.join("train")).unwrap();
    let val =
        ClassificationDataset::image_folder_with_classes(root.join("val"), &train.classes).unwrap();
    (train, val)
}

fn options(run_dir: &Path, resume: bool, stop_after: Option<u64>) -> ProbeRunOptions {
    ProbeRunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        stop_after,
    }
}

#[test]
fn the_probe_separates_tinted_photographs_and_leaves_the_cnn_alone() {
    let _exclusive = exclusive();
    let data = tempfile::tempdir().unwrap();
    tinted_folders(data.path());
    let (train, val) = datasets(data.path());
    assert_eq!(train.classes, vec!["blue", "red"]);
    assert_eq!((train.len(), val.len()), (18, 8));

    for quick in [false, true] {
        let run = tempfile::tempdir().unwrap();
        let config = LinearProbeConfig {
            quick,
            ..config(60)
        };
        let cnn = backbone();
        let (conv1, running_mean) = (
            values(cnn.conv1.weight.val()),
            values(cnn.bn1.running_mean.value()),
        );
        let result = run_linear_probe(
            cnn,
            &train,
            &val,
            &config,
            &options(run.path(), false, None),
            &Default::default(),
        )
        .unwrap();
        assert!(result.top1 > 90.0, "quick={quick}: {result:?}");
        assert_eq!(result.top5, 100.0, "two classes: top-k is everything");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.path().join("result.json")).unwrap())
                .unwrap();
        assert_eq!(written["top1"].as_f64().unwrap(), result.top1);
        // The CNN is frozen: weights and BatchNorm statistics are the ones it came with.
        if !quick {
            let trained = checkpoint_model(&run.path().join("checkpoint_00000060/model.mpk"));
            assert_eq!(values(trained.backbone.conv1.weight.val()), conv1);
            assert_eq!(
                values(trained.backbone.bn1.running_mean.value()),
                running_mean
            );
        }
    }
}

#[test]
fn a_resumed_probe_continues_exactly() {
    let _exclusive = exclusive();
    let data = tempfile::tempdir().unwrap();
    tinted_folders(data.path());
    let (train, val) = datasets(data.path());
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let run = |dir: &Path, resume: bool, stop: Option<u64>| {
        run_linear_probe(
            backbone(),
            &train,
            &val,
            &config(8),
            &options(dir, resume, stop),
            &Default::default(),
        )
    };
    let whole = run(straight.path(), false, None).unwrap();
    run(split.path(), false, Some(4)).unwrap();
    // A process killed between checkpoints logged an iteration the resumed run replays: it is
    // dropped, not duplicated.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(split.path().join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(
        &mut log,
        b"{\"kind\":\"train\",\"iteration\":5,\"loss\":99.0}\n",
    )
    .unwrap();
    let resumed = run(split.path(), true, None).unwrap();
    assert_eq!((whole.top1, whole.top5), (resumed.top1, resumed.top5));
    let losses = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record["kind"] == "train")
            .map(|record| record["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(straight.path()).len(), 8);
    assert_eq!(losses(straight.path()), losses(split.path()));
    // Parameter ids differ between model instances; the values must not.
    let final_fc = |dir: &Path| {
        let model = checkpoint_model(&dir.join("checkpoint_00000008/model.mpk"));
        (
            values(model.fc.weight.val()),
            values(model.fc.bias.unwrap().val()),
        )
    };
    assert_eq!(final_fc(straight.path()), final_fc(split.path()));

    // A second start over a finished run is refused; resuming it changes nothing.
    assert!(run(split.path(), false, None).is_err());
}

#[test]
fn fine_tuning_trains_the_cnn_too() {
    let _exclusive = exclusive();
    let data = tempfile::tempdir().unwrap();
    tinted_folders(data.path());
    let (train, val) = datasets(data.path());
    let run = tempfile::tempdir().unwrap();
    let cnn = backbone();
    let (conv1, running_mean) = (
        values(cnn.conv1.weight.val()),
        values(cnn.bn1.running_mean.value()),
    );
    let config = LinearProbeConfig {
        fine_tune: true,
        lr: 0.01,
        ..config(4)
    };
    run_linear_probe(
        cnn,
        &train,
        &val,
        &config,
        &options(run.path(), false, None),
        &Default::default(),
    )
    .unwrap();
    let trained = checkpoint_model(&run.path().join("checkpoint_00000004/model.mpk"));
    assert_ne!(values(trained.backbone.conv1.weight.val()), conv1);
    // BatchNorm in training mode: its running statistics move.
    assert_ne!(
        values(trained.backbone.bn1.running_mean.value()),
        running_mean
    );
}
