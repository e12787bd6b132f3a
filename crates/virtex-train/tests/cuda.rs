//! The CUDA backend against the CPU: the same short pretraining run (same initial weights, same
//! batches, dropout 0, no augmentation) on `cuda:0` and on flex gives the same loss trajectory
//! and validation loss within a few 1e-3 (CUDA's f32 matmuls may use TF32), and a bf16 run stays
//! close to f32.
//!
//! Run by `scripts/device-check.sh` on a GPU machine (`--features cuda`). This binary has its
//! own `main` (`harness = false`): without the `cuda` feature or without a CUDA driver it
//! reports each test as *skipped* with the reason, instead of passing tests that ran nothing;
//! with `VIRTEX_REQUIRE_CUDA=1` (the device check sets it) a machine that cannot run them fails.

#[cfg(feature = "cuda")]
mod on_cuda {

    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use burn::backend::cuda::CudaDevice;
    use burn::backend::Autodiff;
    use virtex::{CaptioningModel, Precision};
    use virtex_device::{CpuBackend, CudaBackend, DeviceSpec};
    use virtex_train::{model_config, PretrainConfig, RunOptions, RunSummary, Trainer};

    /// The first GPU, or why there is none.
    pub fn cuda_device() -> Result<CudaDevice, String> {
        DeviceSpec::Cuda(0)
            .check()
            .map_err(|err| err.to_string())?
            .cuda_device()
            .ok_or_else(|| "no CUDA device 0".to_string())
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
        config.train.precision = precision.into();
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
        let vocab =
            virtex_data::SentencePieceBpeTokenizer::from_file(virtex_data::sample_vocab_path())
                .expect("sample vocabulary")
                .vocab_size();
        let model_config = model_config(&config, vocab).expect("model config");
        let model: CaptioningModel<CpuBackend> =
            model_config.init(&Default::default()).expect("init");
        let path = dir.join("initial.safetensors");
        model.save(&path).expect("save initial weights");
        path
    }

    fn cpu_run(config: PretrainConfig, dir: &Path, init: &Path) -> RunSummary {
        Trainer::<Autodiff<CpuBackend>, CaptioningModel<Autodiff<CpuBackend>>>::start(
            options(config, dir, init),
            vec![Default::default()],
            Arc::new(AtomicBool::new(false)),
        )
        .and_then(Trainer::run)
        .expect("CPU run")
    }

    fn cuda_run(config: PretrainConfig, dir: &Path, init: &Path, device: CudaDevice) -> RunSummary {
        Trainer::<Autodiff<CudaBackend>, CaptioningModel<Autodiff<CudaBackend>>>::start(
            options(config, dir, init),
            vec![device],
            Arc::new(AtomicBool::new(false)),
        )
        .and_then(Trainer::run)
        .expect("CUDA run")
    }

    fn max_relative_difference(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len(), "trajectories of different lengths");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
            .fold(0.0, f64::max)
    }

    pub fn a_short_run_on_cuda_follows_the_cpu_run(device: CudaDevice) {
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
            cpu.last_val.expect("CPU validation").loss,
            cuda.last_val.expect("CUDA validation").loss,
        );
        let val = (cuda_val - cpu_val).abs() / cpu_val.abs();
        assert!(
            val < 5e-3,
            "val loss {cuda_val} on CUDA vs {cpu_val} on the CPU"
        );
        assert!(cuda.losses.last() < cuda.losses.first(), "the loss falls");
    }

    pub fn a_bf16_run_on_cuda_stays_close_to_f32(device: CudaDevice) {
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
}

const TESTS: [&str; 2] = [
    "a_short_run_on_cuda_follows_the_cpu_run",
    "a_bf16_run_on_cuda_stays_close_to_f32",
];

fn main() -> std::process::ExitCode {
    #[cfg(feature = "cuda")]
    return run_or_skip(on_cuda::cuda_device(), |device| {
        on_cuda::a_short_run_on_cuda_follows_the_cpu_run(device.clone());
        println!("test {} ... ok", TESTS[0]);
        on_cuda::a_bf16_run_on_cuda_stays_close_to_f32(device);
        println!("test {} ... ok", TESTS[1]);
    });
    #[cfg(not(feature = "cuda"))]
    run_or_skip(Err("built without the `cuda` feature".into()), |()| {})
}

/// Runs every test on `device`, or reports each as skipped with the reason there is none (a
/// failure when `VIRTEX_REQUIRE_CUDA` is set).
fn run_or_skip<D>(device: Result<D, String>, run: impl FnOnce(D)) -> std::process::ExitCode {
    match device {
        Ok(device) => {
            run(device);
            println!(
                "\ntest result: ok. {} passed; 0 failed; 0 skipped",
                TESTS.len()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(reason) if std::env::var_os("VIRTEX_REQUIRE_CUDA").is_some() => {
            eprintln!("VIRTEX_REQUIRE_CUDA is set but CUDA is unusable: {reason}");
            std::process::ExitCode::FAILURE
        }
        Err(reason) => {
            for name in TESTS {
                println!("test {name} ... skipped: {reason}");
            }
            println!(
                "\ntest result: ok. 0 passed; 0 failed; {} skipped",
                TESTS.len()
            );
            std::process::ExitCode::SUCCESS
        }
    }
}
