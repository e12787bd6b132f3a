//! The token-classification, multilabel-classification and masked-LM pretexts (`model.name =
//! token_classification` / `multilabel_classification` / `masked_lm`, presets
//! `token_classification_R_50` / `multilabel_classification_R_50` / `masked_lm_R_50_L1_H2048`)
//! through the whole loop: each trains on the sample data, resumes exactly, evaluates and
//! exports its backbone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use common::{exclusive, tiny_config};
use virtex::{ClassificationKind, ClassificationModel, MaskedLmModel};
use virtex_data::{CocoInstances, ImageId};
use virtex_train::{
    evaluate, load_model, ModelSource, PretrainConfig, ResumeOverrides, RunOptions, RunSummary,
};

type B = Autodiff<Flex>;

fn token_classification() -> PretrainConfig {
    let mut config = tiny_config(4, 2);
    config.model.name = "token_classification".into();
    config.model.textual = "none".into();
    config.optim.no_decay = String::new();
    config
}

/// The sample has object labels for 4 of its 10 training images and 1 of its 3 validation
/// images: batches of 4.
fn multilabel() -> PretrainConfig {
    let mut config = tiny_config(4, 2);
    config.model.name = "multilabel_classification".into();
    config.model.textual = "none".into();
    config.data.vocab_size = 81;
    config.optim.no_decay = String::new();
    config
}

fn masked_lm() -> PretrainConfig {
    let mut config = tiny_config(4, 2);
    config.model.name = "masked_lm".into();
    config
}

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

fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn token_classification_trains_resumes_evaluates_and_exports() {
    let _exclusive = exclusive();
    let preset = PretrainConfig::preset("token_classification_R_50").unwrap();
    assert_eq!(preset.model.name, "token_classification");
    assert!(PretrainConfig::PRESETS.contains(&"token_classification_R_50"));
    let config = token_classification;

    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let whole = train(config(), straight.path(), false, None);
    assert!(whole.losses.iter().all(|loss| loss.is_finite()));
    let first = train(config(), split.path(), false, Some(2));
    let second = train(config(), split.path(), true, None);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(
        resumed, whole.losses,
        "token classification resumes exactly"
    );
    let model_file = |dir: &Path| dir.join("checkpoint_00000004/model.safetensors");
    assert!(tensors(&model_file(straight.path())) == tensors(&model_file(split.path())));

    // metrics.jsonl names the loss; a classifier writes no sample captions.
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"token_classification\""), "{metrics}");
    assert!(!metrics.contains("\"kind\":\"samples\""));

    let device = Default::default();
    let (model, config, iteration) = load_model::<Flex, ClassificationModel<Flex>>(
        &ModelSource::Run(straight.path().to_path_buf()),
        config(),
        &ResumeOverrides::default(),
        &device,
    )
    .unwrap();
    assert_eq!(iteration, 4);
    let val = evaluate(&model, &config, &device).unwrap();
    assert!(val.loss.is_finite() && val.loss > 0.0, "{val:?}");
    let exported = straight.path().join("exported.safetensors");
    virtex_train::PretextModel::export_backbone(&model, &exported).unwrap();
    assert!(tensors(&exported).contains_key("conv1.weight"));
    // The end of the run wrote the same backbone.
    assert_eq!(
        tensors(&exported),
        tensors(&straight.path().join("backbone.safetensors"))
    );
}

#[test]
fn masked_lm_trains_resumes_and_evaluates() {
    let _exclusive = exclusive();
    let preset = PretrainConfig::preset("masked_lm_R_50_L1_H2048").unwrap();
    assert_eq!(preset.model.name, "masked_lm");
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let whole = train(masked_lm(), straight.path(), false, None);
    assert!(whole
        .losses
        .iter()
        .all(|loss| loss.is_finite() && *loss > 0.0));
    let first = train(masked_lm(), split.path(), false, Some(2));
    let second = train(masked_lm(), split.path(), true, None);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, whole.losses, "the masks replay exactly on resume");
    let model_file = |dir: &Path| dir.join("checkpoint_00000004/model.safetensors");
    assert!(tensors(&model_file(straight.path())) == tensors(&model_file(split.path())));
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"masked_lm\""), "{metrics}");

    let device = Default::default();
    let (model, config, _) = load_model::<Flex, MaskedLmModel<Flex>>(
        &ModelSource::Run(straight.path().to_path_buf()),
        masked_lm(),
        &ResumeOverrides::default(),
        &device,
    )
    .unwrap();
    let val = evaluate(&model, &config, &device).unwrap();
    assert!(val.loss.is_finite(), "{val:?}");
}

#[test]
fn multilabel_classification_trains_resumes_evaluates_and_exports() {
    let _exclusive = exclusive();
    let preset = PretrainConfig::preset("multilabel_classification_R_50").unwrap();
    assert_eq!(preset.model.name, "multilabel_classification");
    assert_eq!(preset.data.vocab_size, 81);
    assert!(preset.optim.no_decay.is_empty());

    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let whole = train(multilabel(), straight.path(), false, None);
    assert_eq!(whole.losses.len(), 4);
    assert!(whole
        .losses
        .iter()
        .all(|loss| loss.is_finite() && *loss > 0.0));
    let first = train(multilabel(), split.path(), false, Some(2));
    let second = train(multilabel(), split.path(), true, None);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(
        resumed, whole.losses,
        "multilabel classification resumes exactly"
    );
    let model_file = |dir: &Path| dir.join("checkpoint_00000004/model.safetensors");
    assert!(tensors(&model_file(straight.path())) == tensors(&model_file(split.path())));
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"multilabel_classification\""),
        "{metrics}"
    );

    let device = Default::default();
    let (model, config, iteration) = load_model::<Flex, ClassificationModel<Flex>>(
        &ModelSource::Run(straight.path().to_path_buf()),
        multilabel(),
        &ResumeOverrides::default(),
        &device,
    )
    .unwrap();
    assert_eq!(iteration, 4);
    assert_eq!(model.config.kind, ClassificationKind::Multilabel);
    let val = evaluate(&model, &config, &device).unwrap();

    // The validation loss is the loss of the one labelled validation image (000000000011, a
    // wall clock) against its label from the instances file, not against its caption tokens.
    let labels = CocoInstances::load(
        virtex_data::sample_data_root().join("annotations/instances_val2017.json"),
    )
    .unwrap();
    let clock = labels.labels(&ImageId::Int(11)).to_vec();
    assert_eq!(labels.category_names()[clock[0] as usize], "clock");
    let loader = virtex_train::validation_data(&config).unwrap();
    assert_eq!(loader.dataset().len(), 1, "only labelled images are kept");
    let batch = loader.load_batch(Default::default()).unwrap();
    assert_eq!(batch.image_ids, vec![ImageId::Int(11)]);
    let images = batch.to_device::<Flex>(&device).images;
    let expected = model
        .loss(
            images.clone(),
            Tensor::from_data(TensorData::new(vec![i64::from(clock[0])], [1, 1]), &device),
        )
        .into_scalar()
        .elem::<f64>();
    assert!((val.loss - expected).abs() < 1e-6, "{val:?} vs {expected}");
    let another = model
        .loss(
            images,
            Tensor::from_data(TensorData::new(vec![1i64], [1, 1]), &device),
        )
        .into_scalar()
        .elem::<f64>();
    assert!((val.loss - another).abs() > 1e-6, "the label matters");

    let exported = straight.path().join("exported.safetensors");
    virtex_train::PretextModel::export_backbone(&model, &exported).unwrap();
    assert_eq!(
        tensors(&exported),
        tensors(&straight.path().join("backbone.safetensors"))
    );
}

#[test]
fn multilabel_classification_needs_coco_instances() {
    let _exclusive = exclusive();
    // A COCO-layout root without the instances files: the error names the missing file.
    let root = tempfile::tempdir().unwrap();
    let sample = virtex_data::sample_data_root();
    std::fs::create_dir(root.path().join("annotations")).unwrap();
    for file in ["captions_train2017.json", "captions_val2017.json"] {
        std::fs::copy(
            sample.join("annotations").join(file),
            root.path().join("annotations").join(file),
        )
        .unwrap();
    }
    for dir in ["train2017", "val2017"] {
        std::os::unix::fs::symlink(sample.join(dir), root.path().join(dir)).unwrap();
    }
    let mut config = multilabel();
    config.data.root = Some(root.path().to_path_buf());
    config.data.tokenizer = Some(virtex_data::sample_vocab_path());
    let run_dir = tempfile::tempdir().unwrap();
    let err = virtex_train::train::<B>(
        RunOptions::new(config, run_dir.path().join("run")),
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    let message = err.to_string();
    let missing = root.path().join("annotations/instances_train2017.json");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        !run_dir.path().join("run").exists(),
        "a failed start leaves nothing"
    );

    // Plain captions have no object labels: refused when the config is checked.
    let err = multilabel()
        .apply_overrides(&[
            "data.format=plain".into(),
            format!("data.root={}", root.path().display()),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("data.format=plain"), "{err}");

    // Data parallel is refused (the replicas would get their shards without labels).
    let err = virtex_train::train::<B>(
        RunOptions::new(multilabel(), run_dir.path().join("parallel")),
        vec![Default::default(), Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("one device"), "{err}");

    // data.vocab_size must be the instances file's classes (81).
    let mut config = multilabel();
    config.data.vocab_size = 400;
    let err = virtex_train::validation_data(&config).unwrap_err();
    assert!(err.to_string().contains("data.vocab_size=81"), "{err}");
}
