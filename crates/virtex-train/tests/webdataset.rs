//! `data.format = webdataset`: shards written from the embedded sample train exactly as the
//! COCO-layout sample does (same order: shuffling off in both), and a run from shuffled shards
//! resumes exactly, its shard position stored in the checkpoint.
//!
//! Equal losses are expected, not just close ones: `write_shards` copies the image files' bytes
//! and captions in the folder's order, and the shard loader processes stream sample `k` as the
//! folder loader processes dataset index `k` (same caption draw, same augmentation).

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex_data::{
    sample_data_root, write_shards, CocoCaptions, CocoOptions, ShardWriterOptions, Split,
};
use virtex_train::config::DataFormat;
use virtex_train::{PretrainConfig, RunOptions, RunSummary};

use common::{exclusive, tiny_config};

type B = Autodiff<Flex>;

fn train(config: PretrainConfig, run_dir: &Path, resume: bool, stop: Option<u64>) -> RunSummary {
    virtex_train::train::<B>(
        RunOptions {
            resume,
            stop_after: stop,
            ..RunOptions::new(config, run_dir)
        },
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

/// The sample's `split` as shards of `per_shard` samples in `dir`; returns the pattern.
fn shards(dir: &Path, split: Split, per_shard: usize) -> String {
    let coco = CocoCaptions::load(sample_data_root(), split, &CocoOptions::default()).unwrap();
    let options = ShardWriterOptions {
        samples_per_shard: per_shard,
        ..ShardWriterOptions::default()
    };
    write_shards(coco.images(), &dir.join(split.name()), &options)
        .unwrap()
        .pattern
}

fn webdataset(config: &PretrainConfig, dir: &Path, per_shard: usize) -> PretrainConfig {
    let mut config = config.clone();
    config.data.format = DataFormat::WebDataset;
    config.data.shards_train = Some(shards(dir, Split::Train, per_shard));
    config.data.shards_val = Some(shards(dir, Split::Val, per_shard));
    config.data.tokenizer = Some(virtex_data::sample_vocab_path());
    config.validate().unwrap();
    config
}

#[test]
fn shards_of_the_sample_train_exactly_as_the_folder() {
    let _exclusive = exclusive();
    // Shuffling off in both: the folder reads images in annotation order, the shards in the
    // order they were written. Four iterations of 4 images cross an epoch of 10 (2 batches).
    let mut folder = tiny_config(4, 4);
    folder.data.shuffle = false;
    folder.data.num_workers = 2;
    folder.train.val_every = 4;
    folder.train.val_batches = None;
    let folder_run = train(
        folder.clone(),
        tempfile::tempdir().unwrap().path(),
        false,
        None,
    );

    let dir = tempfile::tempdir().unwrap();
    let shard_run = train(
        webdataset(&folder, dir.path(), 3),
        tempfile::tempdir().unwrap().path(),
        false,
        None,
    );
    assert_eq!(folder_run.losses.len(), 4);
    assert_eq!(shard_run.losses, folder_run.losses, "shards vs folder");
    assert!(folder_run.last_val.is_some());
    assert_eq!(shard_run.last_val, folder_run.last_val, "validation");
}

#[test]
fn a_run_from_shuffled_shards_resumes_exactly() {
    let _exclusive = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let mut config = webdataset(&tiny_config(5, 3), dir.path(), 3);
    config.data.shuffle = true;
    config.data.shuffle_buffer = 4;

    let straight = train(
        config.clone(),
        tempfile::tempdir().unwrap().path(),
        false,
        None,
    );
    let split_dir = tempfile::tempdir().unwrap();
    // Stops at iteration 3: mid-epoch (epoch 1, batch 1), samples in the shuffle buffer.
    let first = train(config.clone(), split_dir.path(), false, Some(3));
    assert_eq!(first.iteration, 3);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(split_dir.path().join("checkpoint_00000003/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["loader_position"]["epoch"], 1);
    assert_eq!(state["loader_position"]["batch"], 1);
    let position = &state["shard_position"];
    assert_eq!(position["epoch"], 1);
    assert_eq!(position["sample"], 4);
    assert!(position["read"].as_u64().unwrap() >= 4, "{position}");
    let second = train(config, split_dir.path(), true, None);
    assert_eq!(second.iteration, 5);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, straight.losses, "loss trajectories differ");
}

#[test]
fn the_config_names_what_a_webdataset_setup_is_missing() {
    let mut config = tiny_config(3, 3);
    config.data.format = DataFormat::WebDataset;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("data.shards_train"), "{message}");
    config.data.shards_train = Some("s/{0..3}.tar".into());
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("data.shards_val"), "{message}");
    config.data.shards_val = Some("v/{0..1}.tar".into());
    config.validate().unwrap();
    config.data.image_fraction = Some(0.5);
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("webdataset"), "{message}");

    let mut coco = tiny_config(3, 3);
    coco.data.shards_train = Some("s.tar".into());
    let message = coco.validate().unwrap_err().to_string();
    assert!(message.contains("data.shards_train"), "{message}");

    let overridden = tiny_config(3, 3)
        .apply_overrides(&[
            "data.format=webdataset".into(),
            "data.shards_train=s/{00..02}.tar".into(),
            "data.shards_val=v.tar".into(),
            "data.shuffle_buffer=50".into(),
        ])
        .unwrap();
    assert_eq!(overridden.data.format, DataFormat::WebDataset);
    assert_eq!(overridden.data.shuffle_buffer, 50);

    // A missing shard is named when the data is opened.
    let dir = tempfile::tempdir().unwrap();
    let mut missing = tiny_config(3, 3);
    missing.data.format = DataFormat::WebDataset;
    missing.data.shards_val = Some(
        dir.path()
            .join("{00000..00001}.tar")
            .to_string_lossy()
            .into_owned(),
    );
    missing.data.shards_train = missing.data.shards_val.clone();
    let message = match virtex_train::validation_data(&missing) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("missing shards loaded"),
    };
    assert!(
        message.contains("00000.tar") && message.contains("does not exist"),
        "{message}"
    );
}
