//! `--precision bf16` on the CPU: the option parses from the command line and the config, the
//! optimizer keeps f32 master weights under bf16 compute, and a short run trains and validates
//! with finite losses that start where f32 starts.

mod common;

use common::exclusive;

use std::path::Path;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use clap::Parser;
use virtex::backbone::ResNetConfig;
use virtex::textual::TextualHeadConfig;
use virtex::{CaptioningModel, CaptioningModelConfig, Precision};
use virtex_optim::{GroupedOptimizerConfig, LrScheduleConfig};
use virtex_train::cli::Args;
use virtex_train::PretrainConfig;
use virtex_train::{RunOptions, RunSummary, Trainer};

type B = Autodiff<Flex>;
type Model = CaptioningModel<B>;

#[test]
fn command_line_and_config_select_the_precision() {
    let parse = |extra: &[&str]| {
        Args::try_parse_from(["pretrain_coco"].iter().chain(extra).copied())
            .map(|args| args.precision)
    };
    assert_eq!(parse(&[]).unwrap(), None);
    assert_eq!(
        parse(&["--precision", "bf16"]).unwrap(),
        Some(Precision::Bf16)
    );
    assert_eq!(
        parse(&["--precision", "f32"]).unwrap(),
        Some(Precision::F32)
    );
    let err = parse(&["--precision", "fp16"]).unwrap_err().to_string();
    assert!(err.contains("expected f32 or bf16"), "{err}");

    let config = PretrainConfig::preset("small_cpu").unwrap();
    assert_eq!(config.train.precision, Precision::F32);
    let bf16 = config
        .clone()
        .apply_overrides(&["train.precision=bf16".into()])
        .unwrap();
    assert_eq!(bf16.train.precision, Precision::Bf16);
    let json = serde_json::to_value(&bf16).unwrap();
    assert_eq!(json["train"]["precision"], "bf16");
    let err = config
        .apply_overrides(&["train.precision=fp16".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16"), "{err}");
}

/// Every float tensor of a module (parameters and BatchNorm running statistics).
fn float_tensors<M: Module<B>>(module: &M) -> Vec<Tensor<Flex, 1>> {
    struct Collect(Vec<Tensor<Flex, 1>>);
    impl ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().inner().flatten(0, D - 1));
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

#[test]
fn optimizer_steps_keep_f32_master_weights_under_bf16_compute() {
    let _exclusive = exclusive();
    let device = Default::default();
    let backbone = ResNetConfig::resnet18().with_stem_channels(8);
    let textual = TextualHeadConfig::from_name("transdec_postnorm::L1_H32_A2_F64", 64, 40)
        .unwrap()
        .with_max_caption_length(8);
    let mut model = CaptioningModelConfig::new(backbone, textual)
        .init::<B>(&device)
        .unwrap()
        .with_precision(Precision::Bf16);
    let initial = float_tensors(&model);
    let schedule = LrScheduleConfig::new()
        .with_warmup_steps(1)
        .with_total_steps(10);
    let mut optimizer = GroupedOptimizerConfig::new()
        .with_schedule(schedule)
        .init(&model)
        .unwrap();

    let caption =
        Tensor::<B, 2, Int>::from_ints([[1, 7, 9, 12, 2, 0], [1, 5, 30, 2, 0, 0]], &device);
    let lengths = Tensor::<B, 1, Int>::from_ints([5, 4], &device);
    let noitpac = virtex::reverse_captions(caption.clone(), lengths.clone());
    for _ in 0..3 {
        let images =
            Tensor::<B, 4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let loss = model
            .forward_train(images, caption.clone(), noitpac.clone(), lengths.clone())
            .loss;
        assert!(loss.clone().into_scalar().is_finite());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (updated, report) = optimizer.step(model, grads);
        assert!(!report.skipped, "non-finite bf16 gradients");
        model = updated;
    }

    assert_eq!(
        model.precision(),
        Precision::Bf16,
        "the optimizer kept the precision"
    );
    let updated = float_tensors(&model);
    assert_eq!(updated.len(), initial.len());
    let mut changed = 0;
    for (before, after) in initial.into_iter().zip(updated) {
        assert_eq!(after.dtype(), DType::F32, "a master weight left f32");
        assert!(after.clone().is_finite().all().into_scalar());
        changed += usize::from(before.not_equal(after).any().into_scalar());
    }
    assert!(changed > 40, "only {changed} tensors were updated");
}

/// The `small_cpu` preset shrunk to seconds (as in `resume.rs`): 32-pixel crops, batch 4.
fn tiny_config(precision: Precision) -> PretrainConfig {
    let mut config = PretrainConfig::preset("small_cpu").unwrap();
    config.data.image_crop_size = 32;
    config.data.num_workers = 1;
    config.optim.batch_size = 4;
    config.optim.num_iterations = 4;
    config.optim.warmup_steps = 1;
    config.train.log_every = 1;
    config.train.checkpoint_every = 4;
    config.train.val_every = 2;
    config.train.val_batches = Some(1);
    config.train.precision = precision.into();
    config
}

fn train(config: PretrainConfig, run_dir: &Path) -> RunSummary {
    let options = RunOptions::new(config, run_dir);
    Trainer::<B, Model>::start(options, vec![Default::default()], Arc::default())
        .and_then(Trainer::run)
        .unwrap()
}

#[test]
fn bf16_run_trains_and_validates_with_finite_losses() {
    let _exclusive = exclusive();
    let bf16_dir = tempfile::tempdir().unwrap();
    let f32_dir = tempfile::tempdir().unwrap();
    let bf16 = train(tiny_config(Precision::Bf16), bf16_dir.path());
    let f32 = train(tiny_config(Precision::F32), f32_dir.path());

    assert_eq!(bf16.iteration, 4);
    assert_eq!(bf16.skipped_steps, 0);
    assert_eq!(bf16.losses.len(), 4);
    assert!(bf16.losses.iter().all(|loss| loss.is_finite()));
    let val = bf16.last_val.expect("validation ran");
    assert!(val.loss.is_finite() && val.component("captioning_forward").unwrap().is_finite());
    for (iteration, (mixed, reference)) in bf16.losses.iter().zip(&f32.losses).enumerate() {
        eprintln!(
            "iteration {}: f32 {reference:.6}, bf16 {mixed:.6}, relative difference {:.2e}",
            iteration + 1,
            (mixed - reference).abs() / reference
        );
    }
    let f32_val = f32.last_val.unwrap().loss;
    eprintln!(
        "val loss: f32 {f32_val:.6}, bf16 {:.6}, relative difference {:.2e}",
        val.loss,
        (val.loss - f32_val).abs() / f32_val
    );
    // Same seed, same batches and dropout draws: the first loss differs by bf16 rounding only.
    let first = (bf16.losses[0] - f32.losses[0]).abs() / f32.losses[0];
    assert!(
        first < 1e-2,
        "first loss: bf16 {} vs f32 {}",
        bf16.losses[0],
        f32.losses[0]
    );

    // The resolved config records the precision; the checkpoint holds f32 weights.
    let config = std::fs::read_to_string(bf16_dir.path().join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
    let bytes = std::fs::read(
        bf16_dir
            .path()
            .join("checkpoint_00000004/model.safetensors"),
    )
    .unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.len() > 100);
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    }
}
