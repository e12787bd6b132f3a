//! `data.format = plain`: the embedded sample written as JSON lines and as TSV trains exactly as
//! the COCO-layout sample does, and the config names the key a plain setup is missing.
//!
//! Equal losses are expected, not just close ones: both readers give the same images in the same
//! order with the same normalised captions, and every random draw of the loader (shuffle,
//! caption choice, augmentation) is a function of the seed and the dataset index, never of the
//! image id (which differs: COCO's ids vs. line numbers).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex_data::sample_data_root;
use virtex_train::config::DataFormat;
use virtex_train::{PretrainConfig, RunOptions, RunSummary};

use common::{exclusive, tiny_config};

type B = Autodiff<Flex>;

fn train(config: PretrainConfig) -> RunSummary {
    let run_dir = tempfile::tempdir().unwrap();
    virtex_train::train::<B>(
        RunOptions::new(config, run_dir.path()),
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

/// One split of the sample as `(image path relative to the sample root, raw caption)` lines,
/// in COCO's annotation order (which is the order the COCO reader groups images in).
fn sample_lines(split: &str) -> Vec<(String, String)> {
    let root = sample_data_root();
    let file = root.join(format!("annotations/captions_{split}2017.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let names: std::collections::HashMap<u64, String> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let name = im["file_name"].as_str().unwrap();
            (im["id"].as_u64().unwrap(), format!("{split}2017/{name}"))
        })
        .collect();
    json["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ann| {
            (
                names[&ann["image_id"].as_u64().unwrap()].clone(),
                ann["caption"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `split.jsonl` in `dir` with absolute image paths.
fn write_jsonl(dir: &Path, split: &str) -> PathBuf {
    let path = dir.join(format!("{split}.jsonl"));
    let text: String = sample_lines(split)
        .into_iter()
        .map(|(image, caption)| {
            let image = sample_data_root().join(image);
            format!(
                "{}\n",
                serde_json::json!({ "image": image, "caption": caption })
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `split.tsv` in `dir` with a header and paths relative to the sample root.
fn write_tsv(dir: &Path, split: &str) -> PathBuf {
    let path = dir.join(format!("{split}.tsv"));
    let mut text = String::from("image\tcaption\n");
    for (image, caption) in sample_lines(split) {
        assert!(!caption.contains(['\t', '\n']));
        text.push_str(&format!("{image}\t{caption}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plain_jsonl_and_tsv_copies_of_the_sample_train_exactly_as_coco() {
    let _exclusive = exclusive();
    // Validation at the last iteration, so the validation split is compared too.
    let mut coco = tiny_config(3, 3);
    coco.train.val_every = 3;
    coco.train.val_batches = None;
    let coco_run = train(coco.clone());

    // Explicit files, JSON lines, absolute paths.
    let files = tempfile::tempdir().unwrap();
    let mut jsonl = coco.clone();
    jsonl.data.format = DataFormat::Plain;
    jsonl.data.captions_train = Some(write_jsonl(files.path(), "train"));
    jsonl.data.captions_val = Some(write_jsonl(files.path(), "val"));
    jsonl.data.tokenizer = Some(virtex_data::sample_vocab_path());
    jsonl.validate().unwrap();
    let jsonl_run = train(jsonl);

    // A root holding `train.tsv` / `val.tsv`, images relative to `data.image_root`.
    let root = tempfile::tempdir().unwrap();
    write_tsv(root.path(), "train");
    write_tsv(root.path(), "val");
    let mut tsv = coco.clone();
    tsv.data.format = DataFormat::Plain;
    tsv.data.root = Some(root.path().to_path_buf());
    tsv.data.image_root = Some(sample_data_root());
    tsv.data.tokenizer = Some(virtex_data::sample_vocab_path());
    tsv.validate().unwrap();
    let tsv_run = train(tsv);

    assert_eq!(coco_run.losses.len(), 3);
    assert_eq!(jsonl_run.losses, coco_run.losses, "JSON lines vs COCO");
    assert_eq!(tsv_run.losses, coco_run.losses, "TSV vs COCO");
    assert!(coco_run.last_val.is_some());
    assert_eq!(jsonl_run.last_val, coco_run.last_val);
    assert_eq!(tsv_run.last_val, coco_run.last_val);
}

#[test]
fn the_config_names_what_a_plain_setup_is_missing() {
    let mut config = tiny_config(3, 3);
    config.data.format = DataFormat::Plain;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("data.captions_train"), "{message}");
    config.data.captions_train = Some("train.jsonl".into());
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("data.captions_val"), "{message}");

    // COCO reads no plain key, and says so instead of ignoring it.
    let mut coco = tiny_config(3, 3);
    coco.data.image_root = Some("images".into());
    let message = coco.validate().unwrap_err().to_string();
    assert!(
        message.contains("data.image_root") && message.contains("plain"),
        "{message}"
    );

    // `--set` reaches the new keys.
    let overridden = tiny_config(3, 3)
        .apply_overrides(&[
            "data.format=plain".into(),
            "data.captions_train=a/train.tsv".into(),
            "data.captions_val=a/val.tsv".into(),
        ])
        .unwrap();
    assert_eq!(overridden.data.format, DataFormat::Plain);
    assert_eq!(overridden.data.captions_val, Some("a/val.tsv".into()));

    // A root without the split's file names the file looked for and the key to set instead.
    let root = tempfile::tempdir().unwrap();
    write_tsv(root.path(), "train");
    let mut missing_val = tiny_config(3, 3);
    missing_val.data.format = DataFormat::Plain;
    missing_val.data.root = Some(root.path().to_path_buf());
    missing_val.data.image_root = Some(sample_data_root());
    missing_val.data.tokenizer = Some(virtex_data::sample_vocab_path());
    missing_val.validate().unwrap();
    let message = match virtex_train::validation_data(&missing_val) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("a root without val.* loaded"),
    };
    assert!(
        message.contains("val.tsv") && message.contains("data.captions_val"),
        "{message}"
    );
}

#[test]
fn configs_written_before_the_plain_format_still_load_as_coco() {
    let mut tree = serde_json::to_value(PretrainConfig::preset("small_cpu").unwrap()).unwrap();
    let data = tree["data"].as_object_mut().unwrap();
    for key in ["format", "captions_train", "captions_val", "image_root"] {
        assert!(data.remove(key).is_some(), "{key}");
    }
    let config: PretrainConfig = serde_json::from_value(tree).unwrap();
    assert_eq!(config.data.format, DataFormat::Coco);
    assert_eq!(config.data.captions_train, None);
    config.validate().unwrap();
}
