//! Watching a run: sample captions at every validation (`metrics.jsonl` and `samples.html`),
//! TensorBoard event files read back with framing and CRCs checked, and the plot of losses,
//! learning rates and gradient norm.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex_train::metrics::MetricsLog;
use virtex_train::tensorboard::{event_files, read_scalars, EventWriter, Scalar};
use virtex_train::{train, PretrainConfig, RunOptions, TrainError};

use common::tiny_config;

type B = Autodiff<Flex>;

/// A tiny run validating every 2 iterations with 2 sample images.
fn watched_config(iterations: u64, checkpoint_every: u64) -> PretrainConfig {
    let mut config = tiny_config(iterations, checkpoint_every);
    config.train.val_every = 2;
    config.train.sample_captions = 2;
    config
}

fn run(config: PretrainConfig, run_dir: &Path, resume: bool, stop_after: Option<u64>) {
    let options = RunOptions {
        resume,
        stop_after,
        ..RunOptions::new(config, run_dir)
    };
    train::<B>(options, vec![Default::default()], Arc::default()).unwrap();
}

/// Every scalar of every event file of a run, by tag: (step, value) in file order.
fn scalars_by_tag(run_dir: &Path) -> BTreeMap<String, Vec<(u64, f32)>> {
    let mut tags: BTreeMap<String, Vec<(u64, f32)>> = BTreeMap::new();
    for file in event_files(run_dir).unwrap() {
        for Scalar {
            step, tag, value, ..
        } in read_scalars(&file).unwrap()
        {
            tags.entry(tag).or_default().push((step, value));
        }
    }
    tags
}

fn steps(tags: &BTreeMap<String, Vec<(u64, f32)>>, tag: &str) -> Vec<u64> {
    let mut steps: Vec<u64> = tags
        .get(tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {:?}", tags.keys()))
        .iter()
        .map(|(step, _)| *step)
        .collect();
    steps.sort_unstable();
    steps
}

/// The `src` attributes of the page's images.
fn image_links(page: &str) -> Vec<String> {
    page.split("<img src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_run_records_sample_captions_tensorboard_scalars_and_the_plot() {
    let run_dir = tempfile::tempdir().unwrap();
    run(watched_config(4, 4), run_dir.path(), false, None);

    // metrics.jsonl: a samples line at each validation, with a caption per sample image; the
    // loss records read as before.
    let samples = MetricsLog::read_samples(run_dir.path()).unwrap();
    let iterations: Vec<u64> = samples.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, vec![2, 4]);
    for record in &samples {
        assert_eq!(record.kind, "samples");
        assert_eq!(record.samples.len(), 2, "{record:?}");
        // The first images of the validation split, in its order, at every validation.
        assert_eq!(record.samples[0].image_id, samples[0].samples[0].image_id);
        assert!(record.samples[0].file.ends_with(".jpg"), "{record:?}");
    }
    assert_ne!(
        samples[0].samples[0].image_id,
        samples[0].samples[1].image_id
    );
    let (train_records, val_records) = MetricsLog::read(run_dir.path()).unwrap();
    assert_eq!(train_records.len(), 4);
    assert_eq!(val_records.len(), 2);
    // The CPU has no device memory to report, and the field is not written.
    assert!(train_records
        .iter()
        .all(|r| r.device_memory_bytes.is_none()));
    let text = std::fs::read_to_string(run_dir.path().join("metrics.jsonl")).unwrap();
    assert!(!text.contains("device_memory_bytes"));

    // samples.html: newest first, every image link resolves to a decodable thumbnail inside
    // the run directory.
    let page = std::fs::read_to_string(run_dir.path().join("samples.html")).unwrap();
    assert!(page.find("Iteration 4").unwrap() < page.find("Iteration 2").unwrap());
    let links = image_links(&page);
    assert_eq!(links.len(), 4, "{page}");
    for link in &links {
        assert!(link.starts_with("samples/"), "{link}");
        let thumbnail = image::open(run_dir.path().join(link)).unwrap();
        assert!(thumbnail.width() <= 192 && thumbnail.height() <= 192);
    }
    for sample in &samples[1].samples {
        let escaped = sample.caption.replace('&', "&amp;").replace('<', "&lt;");
        assert!(page.contains(&escaped), "{page}");
    }

    // The event file: one per invocation, each tag at the steps it was logged at, with the
    // values of metrics.jsonl (stored as f32).
    assert_eq!(event_files(run_dir.path()).unwrap().len(), 1);
    let tags = scalars_by_tag(run_dir.path());
    for tag in [
        "train/loss",
        "train/captioning_forward",
        "train/captioning_backward",
        "train/grad_norm",
        "train/images_per_second",
    ] {
        assert_eq!(steps(&tags, tag), vec![1, 2, 3, 4], "{tag}");
    }
    for (group, _) in &train_records[0].learning_rates {
        assert_eq!(steps(&tags, &format!("lr/{group}")), vec![1, 2, 3, 4]);
    }
    assert!(train_records[0].learning_rates.len() >= 2);
    for tag in [
        "val/loss",
        "val/captioning_forward",
        "val/captioning_backward",
    ] {
        assert_eq!(steps(&tags, tag), vec![2, 4], "{tag}");
    }
    assert!(!tags.contains_key("train/device_memory_bytes"));
    for (record, (step, value)) in train_records.iter().zip(&tags["train/loss"]) {
        assert_eq!(record.iteration, *step);
        assert_eq!(*value, record.loss as f32);
    }
    for (record, (_, value)) in train_records.iter().zip(&tags["lr/visual"]) {
        let lr = record.learning_rates.iter().find(|(g, _)| g == "visual");
        assert_eq!(*value, lr.unwrap().1 as f32);
    }
    for (record, (_, value)) in val_records.iter().zip(&tags["val/loss"]) {
        assert_eq!(*value, record.val_loss as f32);
    }

    // loss.png (now with the learning-rate and gradient-norm panels) still decodes.
    let plot = image::open(run_dir.path().join("loss.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (900, 960));
}

#[test]
fn a_resumed_run_logs_each_iteration_once() {
    let run_dir = tempfile::tempdir().unwrap();
    let config = watched_config(6, 3);
    run(config.clone(), run_dir.path(), false, Some(3));
    // A process killed after logging iteration 4 but before its next checkpoint: its events
    // (in a file of their own) and its log lines run ahead of the checkpoint at 3.
    let mut killed = EventWriter::create(run_dir.path()).unwrap();
    killed
        .scalars(
            4,
            &[("train/loss".into(), 123.0), ("val/loss".into(), 456.0)],
        )
        .unwrap();
    drop(killed);

    run(config, run_dir.path(), true, None);

    let tags = scalars_by_tag(run_dir.path());
    assert_eq!(steps(&tags, "train/loss"), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(steps(&tags, "val/loss"), vec![2, 4, 6]);
    assert!(!tags["train/loss"].iter().any(|(_, value)| *value == 123.0));
    let samples = MetricsLog::read_samples(run_dir.path()).unwrap();
    let iterations: Vec<u64> = samples.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, vec![2, 4, 6]);
    let page = std::fs::read_to_string(run_dir.path().join("samples.html")).unwrap();
    assert_eq!(page.matches("<h2").count(), 3, "{page}");
    // The thumbnails were written once, by the first invocation, and are still there.
    for link in image_links(&page) {
        assert!(run_dir.path().join(link).is_file());
    }
}

#[test]
fn the_reader_detects_any_corrupted_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path()).unwrap();
    writer
        .scalars(7, &[("train/loss".into(), 2.5), ("lr/visual".into(), 0.1)])
        .unwrap();
    let path = writer.path().to_path_buf();
    drop(writer);
    let scalars = read_scalars(&path).unwrap();
    assert_eq!(scalars.len(), 2);
    assert_eq!((scalars[0].step, scalars[0].value), (7, 2.5));
    assert_eq!(scalars[1].tag, "lr/visual");

    let good = std::fs::read(&path).unwrap();
    // Each byte lies in a CRC-checked length, in CRC-checked data or in a CRC itself.
    for offset in 0..good.len() {
        let mut bad = good.clone();
        bad[offset] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        match read_scalars(&path) {
            Err(TrainError::EventFile { message, .. }) => {
                assert!(message.contains("byte"), "{message}")
            }
            other => panic!("byte {offset} flipped, yet read as {other:?}"),
        }
    }
    // A file cut inside its last record is reported too.
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    assert!(matches!(
        read_scalars(&path),
        Err(TrainError::EventFile { .. })
    ));
}
