//! The token-classification and masked-LM pretexts (`model.name = token_classification` /
//! `masked_lm`, presets `token_classification_R_50` / `masked_lm_R_50_L1_H2048`) through the
//! whole loop: each trains on the sample data, resumes exactly, evaluates and exports its
//! backbone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use common::{exclusive, tiny_config};
use virtex::{ClassificationModel, MaskedLmModel};
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
