//! Upstream's options beyond the released recipe, through the whole loop: AdamW
//! (`OPTIM.OPTIMIZER_NAME`), a pretrained and a frozen visual backbone
//! (`MODEL.VISUAL.PRETRAINED` / `FROZEN`), the padding id, configurable validation transforms,
//! and `train.precision = auto`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use virtex::backbone as virtex_backbone;
use virtex::{CaptioningModel, Precision};
use virtex_optim::OptimizerName;
use virtex_train::config::PrecisionChoice;
use virtex_train::{PretrainConfig, RunOptions, RunSummary, TrainError};

use common::{exclusive, tiny_config};

type B = Autodiff<Flex>;

fn train_any(
    config: PretrainConfig,
    run_dir: &Path,
    resume: bool,
    stop_after: Option<u64>,
) -> Result<RunSummary, TrainError> {
    virtex_train::train::<B>(
        RunOptions {
            resume,
            stop_after,
            ..RunOptions::new(config, run_dir)
        },
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
}

/// Every tensor of a safetensors file, by name, as raw bytes.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn adamw_trains_and_resumes_exactly() {
    let _exclusive = exclusive();
    let mut config = tiny_config(6, 3);
    config.optim.optimizer_name = OptimizerName::AdamW;
    let straight_dir = tempfile::tempdir().unwrap();
    let split_dir = tempfile::tempdir().unwrap();
    let straight = train_any(config.clone(), straight_dir.path(), false, None).unwrap();
    let first = train_any(config.clone(), split_dir.path(), false, Some(3)).unwrap();
    let second = train_any(config.clone(), split_dir.path(), true, None).unwrap();
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, straight.losses, "AdamW loss trajectories differ");
    let final_weights = |dir: &Path| tensors(&dir.join("checkpoint_00000006/model.safetensors"));
    assert!(
        final_weights(straight_dir.path()) == final_weights(split_dir.path()),
        "AdamW parameters differ after resume"
    );

    // SGD from the same start takes another path: the option is not ignored.
    let sgd_dir = tempfile::tempdir().unwrap();
    let mut sgd = config;
    sgd.optim.optimizer_name = OptimizerName::Sgd;
    let sgd = train_any(sgd, sgd_dir.path(), false, None).unwrap();
    assert_eq!(
        sgd.losses[0], straight.losses[0],
        "the same first batch and model"
    );
    assert_ne!(sgd.losses, straight.losses);

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight_dir.path().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["optim"]["optimizer_name"], "adamw");
    let err = PretrainConfig::preset("small_cpu")
        .unwrap()
        .apply_overrides(&["optim.optimizer_name=adam".into()])
        .unwrap_err();
    assert!(err.to_string().contains("optim.optimizer_name"), "{err}");
}

#[test]
fn a_pretrained_frozen_backbone_stays_as_loaded_while_the_head_trains() {
    let _exclusive = exclusive();
    let dir = tempfile::tempdir().unwrap();
    // "ImageNet weights": a ResNet-18 with trained-looking BatchNorm statistics, written with
    // torchvision's names as a user's `resnet18-f37072fd.pth` would hold them.
    let device = Default::default();
    let mut cnn = virtex_backbone::ResNetConfig::resnet18().init::<Flex>(&device);
    cnn.bn1.running_mean = burn::module::RunningState::new(Tensor::full([64], 0.25, &device));
    cnn.bn1.running_var = burn::module::RunningState::new(Tensor::full([64], 2.0, &device));
    let pretrained = dir.path().join("resnet18_imagenet.safetensors");
    cnn.save_torchvision_safetensors(&pretrained).unwrap();

    let mut config = tiny_config(3, 3);
    config.model.visual_pretrained = Some(pretrained.clone());
    config.model.visual_frozen = true;
    let run_dir = dir.path().join("run");
    let summary = train_any(config.clone(), &run_dir, false, None).unwrap();
    assert_eq!(summary.iteration, 3);
    assert!(summary.losses.iter().all(|loss| loss.is_finite()));

    // The CNN (weights and BatchNorm statistics) is bit for bit the file's; the head moved.
    let exported = run_dir.join("backbone.safetensors");
    assert_eq!(tensors(&exported), tensors(&pretrained));
    let initial = CaptioningModel::<Flex>::from_config_for_tests(&config);
    let trained = tensors(&run_dir.join("checkpoint_00000003/model.safetensors"));
    let moved = trained
        .iter()
        .filter(|(name, _)| name.starts_with("textual."))
        .filter(|(name, data)| initial.get(*name).is_some_and(|start| start != *data))
        .count();
    assert!(moved > 5, "only {moved} textual tensors changed");

    // Not frozen: the same start trains the CNN too.
    config.model.visual_frozen = false;
    let unfrozen_dir = dir.path().join("unfrozen");
    train_any(config, &unfrozen_dir, false, None).unwrap();
    assert_ne!(
        tensors(&unfrozen_dir.join("backbone.safetensors")),
        tensors(&pretrained)
    );
}

/// The model of a config as `Trainer::start` would build it, as named tensors.
trait FromConfigForTests {
    fn from_config_for_tests(config: &PretrainConfig) -> BTreeMap<String, Vec<u8>>;
}

impl FromConfigForTests for CaptioningModel<Flex> {
    fn from_config_for_tests(config: &PretrainConfig) -> BTreeMap<String, Vec<u8>> {
        // Re-seeded as the run seeds it, so the head starts where the run's did.
        <Flex as Backend>::seed(&Default::default(), config.random_seed);
        let model = virtex_train::captioning_model::<Flex>(config, &Default::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        model.save(&path).unwrap();
        tensors(&path)
    }
}

#[test]
fn a_missing_pretrained_file_is_named_before_the_run_writes_anything() {
    let _exclusive = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(3, 3);
    config.model.visual_pretrained = Some(dir.path().join("no_such_resnet.pth"));
    let run_dir = dir.path().join("run");
    let err = train_any(config, &run_dir, false, None).unwrap_err();
    assert!(err.to_string().contains("no_such_resnet.pth"), "{err}");
    assert!(!run_dir.join("config.json").exists());
}

#[test]
fn the_padding_id_comes_from_the_config_and_must_be_the_tokenizers() {
    let _exclusive = exclusive();
    // The model's loss ignores the configured id, not a hard-coded 0.
    let device = Default::default();
    let mut model_config = virtex_train::model_config(&tiny_config(3, 3), 400).unwrap();
    model_config.textual.padding_idx = 7;
    let model: CaptioningModel<Flex> = model_config.init(&device).unwrap();
    let tokens =
        Tensor::<Flex, 2, Int>::from_data([[1, 20, 30, 2, 7, 7], [1, 40, 2, 7, 7, 7]], &device);
    let noitpac =
        Tensor::<Flex, 2, Int>::from_data([[2, 30, 20, 1, 7, 7], [2, 40, 1, 7, 7, 7]], &device);
    let lengths = Tensor::<Flex, 1, Int>::from_data([4, 3], &device);
    let images = Tensor::<Flex, 4>::zeros([2, 3, 32, 32], &device);
    let output = model.forward_eval(images, tokens.clone(), noitpac, lengths);
    let model_loss: f32 = output.losses.captioning_forward.into_scalar();
    let loss = virtex::loss::captioning_loss::<Flex>;
    let ignoring_7: f32 = loss(output.forward_logits.clone(), tokens.clone(), 7).into_scalar();
    let ignoring_0: f32 = loss(output.forward_logits, tokens, 0).into_scalar();
    assert_eq!(model_loss, ignoring_7);
    assert!((model_loss - ignoring_0).abs() > 1e-4);
    assert_padding_config_is_checked();
}

fn assert_padding_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(3, 3);
    config.data.padding_index = 3;
    let err = train_any(config.clone(), dir.path(), false, None).unwrap_err();
    assert!(
        err.to_string().contains("data.padding_index is 3")
            && err.to_string().contains("set data.padding_index=0"),
        "{err}"
    );
    config.data.padding_index = 400;
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // An old config.json without the key reads as upstream's 0.
    let mut tree = serde_json::to_value(PretrainConfig::preset("small_cpu").unwrap()).unwrap();
    tree["data"]
        .as_object_mut()
        .unwrap()
        .remove("padding_index");
    let old: PretrainConfig = serde_json::from_value(tree).unwrap();
    assert_eq!(old.data.padding_index, 0);
}

#[test]
fn validation_transforms_come_from_the_config() {
    let _exclusive = exclusive();
    let mut config = tiny_config(3, 3);
    assert_eq!(
        config.data.image_transform_val,
        ["smallest_resize", "center_crop", "normalize"]
    );
    config.data.image_transform_val = vec!["smallest_resize".into(), "sharpen".into()];
    let dir = tempfile::tempdir().unwrap();
    let err = train_any(config.clone(), dir.path(), false, None).unwrap_err();
    assert!(err.to_string().contains("sharpen"), "{err}");

    // Without `normalize` the validation images differ, and so does the validation loss.
    let path = write_model(&config);
    let loss_with = |transforms: Vec<String>| {
        let mut config = config.clone();
        config.data.image_transform_val = transforms;
        validation_loss(&path, &config)
    };
    let standard = loss_with(vec![
        "smallest_resize".into(),
        "center_crop".into(),
        "normalize".into(),
    ]);
    let unnormalised = loss_with(vec!["smallest_resize".into(), "center_crop".into()]);
    assert!(standard.is_finite() && unnormalised.is_finite());
    assert_ne!(standard, unnormalised);
}

/// The validation loss of the model in `path` under `config`'s validation data.
fn validation_loss(path: &Path, config: &PretrainConfig) -> f64 {
    let (model, config, _) = virtex_train::load_model::<Flex, CaptioningModel<Flex>>(
        &virtex_train::ModelSource::File(path.to_path_buf()),
        config.clone(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    virtex_train::evaluate::<Flex, _>(&model, &config, &Default::default())
        .unwrap()
        .loss
}

fn write_model(config: &PretrainConfig) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("model.safetensors");
    <Flex as Backend>::seed(&Default::default(), 0);
    virtex_train::captioning_model::<Flex>(config, &Default::default())
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

#[test]
fn upstreams_resize_mode_is_one_key_and_changes_the_validation_images() {
    let _exclusive = exclusive();
    let config = tiny_config(3, 3);
    assert_eq!(
        config.data.resize_mode,
        virtex_data::ResizeMode::Torchvision
    );
    let upstream = config
        .clone()
        .apply_overrides(&["data.resize_mode=upstream".into()])
        .unwrap();
    assert_eq!(upstream.data.resize_mode, virtex_data::ResizeMode::Upstream);
    let err = config
        .clone()
        .apply_overrides(&["data.resize_mode=lanczos".into()])
        .unwrap_err();
    assert!(err.to_string().contains("data.resize_mode"), "{err}");
    let path = write_model(&config);
    let (torchvision, opencv) = (
        validation_loss(&path, &config),
        validation_loss(&path, &upstream),
    );
    assert!(torchvision.is_finite() && opencv.is_finite());
    assert_ne!(torchvision, opencv);
}

#[test]
fn released_presets_train_in_bf16_on_cuda_and_f32_elsewhere() {
    for name in PretrainConfig::PRESETS {
        let config = PretrainConfig::preset(name).unwrap();
        let (mut on_cuda, mut on_cpu) = (config.clone(), config.clone());
        on_cuda.resolve_precision(true);
        on_cpu.resolve_precision(false);
        assert_eq!(on_cpu.train.precision, Precision::F32, "{name}");
        if name == "small_cpu" {
            assert_eq!(config.train.precision, PrecisionChoice::F32);
            assert_eq!(on_cuda.train.precision, Precision::F32);
        } else {
            assert_eq!(config.train.precision, PrecisionChoice::Auto, "{name}");
            assert_eq!(on_cuda.train.precision, Precision::Bf16, "{name}");
        }
    }
    // A fixed choice is kept on any device.
    let mut fixed = PretrainConfig::preset("bicaptioning_R_50_L1_H2048")
        .unwrap()
        .apply_overrides(&["train.precision=f32".into()])
        .unwrap();
    fixed.resolve_precision(true);
    assert_eq!(fixed.train.precision, Precision::F32);
    assert!(!virtex_device::runs_on_cuda::<B>());
}

#[test]
fn init_from_into_a_deeper_head_names_what_was_loaded_and_initialised() {
    let _exclusive = exclusive();
    let source_dir = tempfile::tempdir().unwrap();
    train_any(tiny_config(3, 3), source_dir.path(), false, None).unwrap();
    let source = source_dir
        .path()
        .join("checkpoint_00000003/model.safetensors");

    let mut deeper = tiny_config(3, 3);
    deeper.model.textual = "transdec_postnorm::L2_H64_A1_F256".into();
    let run = tempfile::tempdir().unwrap();
    virtex_train::train::<B>(
        RunOptions {
            init_from: Some(source.clone()),
            ..RunOptions::new(deeper, run.path())
        },
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.path().join(virtex_train::INIT_FROM_FILE)).unwrap(),
    )
    .unwrap();
    let list = |name: &str| -> Vec<String> {
        record[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key.as_str().unwrap().to_string())
            .collect()
    };
    let (loaded, initialised) = (list("loaded"), list("initialised"));
    assert!(list("unused").is_empty());
    assert!(loaded
        .iter()
        .any(|key| key.starts_with("textual.transformer.layers.0.")));
    assert!(!initialised.is_empty());
    assert!(
        initialised
            .iter()
            .all(|key| key.contains("transformer.layers.1.")),
        "{initialised:?}"
    );
    assert!(record["cnn_tensors"].as_u64().unwrap() > 0);
}
