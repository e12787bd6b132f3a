//! The CUDA backend against the CPU: the same short pretraining run (same initial weights, same
//! batches, dropout 0, no augmentation) on `cuda:0` and on flex gives the same loss trajectory
//! and validation loss within a few 1e-3 (CUDA's f32 matmuls may use TF32), and a bf16 run stays
//! close to f32.
//!
//! Compiled only with `--features cuda`; run by `scripts/device-check.sh` on a GPU machine.
//! Without a CUDA driver the tests print why and pass, unless `VIRTEX_REQUIRE_CUDA=1` is set (the
//! device check sets it, so a GPU machine that cannot run them fails loudly).
#![cfg(feature = "cuda")]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::Autodiff;
use pretrain_coco::config::PretrainConfig;
use pretrain_coco::model::PretrainModel;
use pretrain_coco::training::{model_config, run, RunOptions, RunSummary};
use virtex::{BidirectionalCaptioningModel, Precision};
use virtex_device::{CpuBackend, CudaBackend, DeviceSpec};

/// The first GPU, or `None` (test skipped) when this machine has none and none is required.
fn cuda_device() -> Option<burn::backend::cuda::CudaDevice> {
    match DeviceSpec::Cuda(0).check() {
        Ok(spec) => spec.cuda_device(),
        Err(err) if std::env::var_os("VIRTEX_REQUIRE_CUDA").is_some() => {
            panic!("VIRTEX_REQUIRE_CUDA is set but CUDA is unusable: {err}")
        }
        Err(err) => {
            eprintln!("skipped: {err}");
            None
        }
    }
}

/// The `small_cpu` preset, deterministic: no dropout, no augmentation, first caption, no
/// shuffling; 6 iterations at batch 8 on 64² images.
fn config(precision: Precision) -> PretrainConfig {
    let mut config = PretrainConfig::preset("small_cpu").expect("preset");
    config.model.dropout = 0.0;
    config.data.image_transform_train = Vec::new();
    config.data.caption_choice = "first".into();
    config.data.shuffle = false;
    config.data.num_workers = 2;
    config.optim.num_iterations = 6;
    config.optim.warmup_steps = 2;
    config.train.log_every = 1;
    config.train.checkpoint_every = 1000;
    config.train.val_every = 1000;
    config.train.val_batches = Some(1);
    config.train.precision = precision;
    config
}

fn options(config: PretrainConfig, run_dir: &Path, init: &Path) -> RunOptions {
    RunOptions {
        init_from: Some(init.to_path_buf()),
        ..RunOptions::new(config, run_dir)
    }
}

/// Initial weights both runs load, written from a CPU-initialised model in our format.
fn initial_weights(dir: &Path) -> std::path::PathBuf {
    let config = config(Precision::F32);
    let vocab = virtex_data::SentencePieceBpeTokenizer::from_file(virtex_data::sample_vocab_path())
        .expect("sample vocabulary")
        .vocab_size();
    let model_config = model_config(&config, vocab).expect("model config");
    let model: BidirectionalCaptioningModel<CpuBackend> =
        PretrainModel::init(&model_config, &Default::default()).expect("init");
    let path = dir.join("initial.safetensors");
    model.save_ours(&path).expect("save initial weights");
    path
}

fn cpu_run(config: PretrainConfig, dir: &Path, init: &Path) -> RunSummary {
    run::<Autodiff<CpuBackend>, BidirectionalCaptioningModel<Autodiff<CpuBackend>>>(
        options(config, dir, init),
        Default::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .expect("CPU run")
}

fn cuda_run(
    config: PretrainConfig,
    dir: &Path,
    init: &Path,
    device: burn::backend::cuda::CudaDevice,
) -> RunSummary {
    run::<Autodiff<CudaBackend>, BidirectionalCaptioningModel<Autodiff<CudaBackend>>>(
        options(config, dir, init),
        device,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("CUDA run")
}

fn max_relative_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "trajectories of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn a_short_run_on_cuda_follows_the_cpu_run() {
    let Some(device) = cuda_device() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let init = initial_weights(dir.path());
    let cpu = cpu_run(config(Precision::F32), &dir.path().join("cpu"), &init);
    let cuda = cuda_run(
        config(Precision::F32),
        &dir.path().join("cuda"),
        &init,
        device,
    );
    let losses = max_relative_difference(&cuda.losses, &cpu.losses);
    eprintln!(
        "losses cpu {:?}\nlosses cuda {:?}\nmax relative difference {losses:.2e}",
        cpu.losses, cuda.losses
    );
    assert!(losses < 5e-3, "loss trajectories differ by {losses:.2e}");
    let (cpu_val, cuda_val) = (
        cpu.last_val.expect("CPU validation").val_loss,
        cuda.last_val.expect("CUDA validation").val_loss,
    );
    let val = (cuda_val - cpu_val).abs() / cpu_val.abs();
    assert!(
        val < 5e-3,
        "val loss {cuda_val} on CUDA vs {cpu_val} on the CPU"
    );
    assert!(cuda.losses.last() < cuda.losses.first(), "the loss falls");
}

#[test]
fn a_bf16_run_on_cuda_stays_close_to_f32() {
    let Some(device) = cuda_device() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let init = initial_weights(dir.path());
    let f32_run = cuda_run(
        config(Precision::F32),
        &dir.path().join("f32"),
        &init,
        device.clone(),
    );
    let bf16_run = cuda_run(
        config(Precision::Bf16),
        &dir.path().join("bf16"),
        &init,
        device,
    );
    let difference = max_relative_difference(&bf16_run.losses, &f32_run.losses);
    eprintln!(
        "losses f32 {:?}\nlosses bf16 {:?}\nmax relative difference {difference:.2e}",
        f32_run.losses, bf16_run.losses
    );
    assert!(bf16_run.losses.iter().all(|l| l.is_finite()));
    assert!(
        difference < 5e-2,
        "bf16 departs from f32 by {difference:.2e}"
    );
}
