//! Data parallel over several devices (`--devices`), on the CPU: two replicas on the one flex
//! device exercise burn-collective's registration and all-reduce exactly as two GPUs would,
//! minus the device-to-device copies.
//!
//! These tests run one at a time (the collective server and flex's RNG are process-wide) and
//! with dropout 0: flex has one RNG for the whole process, so two ranks drawing dropout masks
//! from it at once would interleave their draws.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::collective::reset_collective;
use clap::Parser;
use virtex::CaptioningModel;
use virtex_data::{CollatedBatch, ImageId};
use virtex_device::DeviceSpec;
use virtex_train::cli::{Args, DeviceList};
use virtex_train::data_parallel::{replicate, ReplicaGroup};
use virtex_train::PretrainConfig;
use virtex_train::{model_config, optimizer_config, Optim, RunOptions, RunSummary, Trainer};

type B = Autodiff<Flex>;
type Model = CaptioningModel<B>;

static COLLECTIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    let guard = COLLECTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // A failed test may have left ranks registered.
    reset_collective::<Flex>();
    guard
}

/// `small_cpu` on 32-pixel crops at (global) batch 8, dropout 0, augmentation on (it draws
/// per sample, so it does not depend on how the batch is split).
fn tiny_config(iterations: u64, accumulation_steps: usize) -> PretrainConfig {
    let mut config = PretrainConfig::preset("small_cpu").unwrap();
    config.model.dropout = 0.0;
    config.data.image_crop_size = 32;
    config.data.num_workers = 1;
    config.optim.batch_size = 8;
    config.optim.accumulation_steps = accumulation_steps;
    config.optim.num_iterations = iterations;
    config.optim.warmup_steps = 2;
    config.train.log_every = 1;
    config.train.checkpoint_every = 1000;
    config.train.val_every = 1000;
    config.train.val_batches = Some(1);
    config
}

fn options(config: PretrainConfig, run_dir: &Path) -> RunOptions {
    RunOptions::new(config, run_dir)
}

/// Tensors of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let data = file.tensor(name).unwrap().data().to_vec();
            let values = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.to_string(), values)
        })
        .collect()
}

fn is_running_statistic(name: &str) -> bool {
    name.contains("running_mean") || name.contains("running_var")
}

/// max |a − b| / max |b| over one tensor.
fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-12);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    diff / scale
}

#[test]
fn two_devices_match_one_device_with_two_accumulation_steps() {
    let _exclusive = exclusive();
    let iterations = 4;
    let one_dir = tempfile::tempdir().unwrap();
    let two_dir = tempfile::tempdir().unwrap();
    let stop = || Arc::new(AtomicBool::new(false));

    let one: RunSummary = Trainer::<B, Model>::start(
        options(tiny_config(iterations, 2), one_dir.path()),
        vec![Default::default()],
        stop(),
    )
    .and_then(Trainer::run)
    .unwrap();
    let two: RunSummary = Trainer::<B, Model>::start(
        options(tiny_config(iterations, 1), two_dir.path()),
        vec![Default::default(); 2],
        stop(),
    )
    .and_then(Trainer::run)
    .unwrap();

    // Observed: bit-identical losses and parameters. One device sums ½·g₀ + ½·g₁ in its
    // accumulator, two devices compute (g₀ + g₁) / 2 in the all-reduce, and scaling by a power
    // of two is exact in floating point. The tolerance leaves room for reductions whose order
    // differs (three or more devices, other all-reduce strategies).
    assert_eq!(two.iteration, iterations);
    assert_eq!(one.losses.len(), two.losses.len());
    for (step, (a, b)) in one.losses.iter().zip(&two.losses).enumerate() {
        let relative = (a - b).abs() / a.abs();
        eprintln!(
            "iteration {}: loss {a:.7} vs {b:.7} (relative {relative:.1e})",
            step + 1
        );
        assert!(relative < 1e-5, "iteration {}: {a} vs {b}", step + 1);
    }

    // Final parameters agree. The BatchNorm running statistics are left out on purpose: one
    // device updates them twice per iteration (once per half-batch), while with two devices
    // rank 0's copy — the one checkpointed — is updated once, from rank 0's half only (as with
    // PyTorch DDP, whose buffers are rank 0's).
    let checkpoint = format!("checkpoint_{iterations:08}/model.safetensors");
    let one_tensors = tensors(&one_dir.path().join(&checkpoint));
    let two_tensors = tensors(&two_dir.path().join(&checkpoint));
    assert_eq!(one_tensors.len(), two_tensors.len());
    let mut worst = (0.0f64, String::new());
    let mut compared = 0;
    let mut statistics_differ = false;
    for ((name, a), (other, b)) in one_tensors.iter().zip(&two_tensors) {
        assert_eq!(name, other);
        if is_running_statistic(name) {
            statistics_differ |= a != b;
            continue;
        }
        compared += 1;
        let relative = relative_difference(b, a);
        if relative > worst.0 {
            worst = (relative, name.clone());
        }
    }
    eprintln!(
        "{compared} parameters compared, largest relative difference {:.1e} ({})",
        worst.0, worst.1
    );
    assert!(compared > 50);
    // Also proof that the two-device run really split each batch over two ranks.
    assert!(statistics_differ);
    assert!(worst.0 < 1e-5, "{} differs by {:.1e}", worst.1, worst.0);
}

/// A deterministic host batch of `size` samples on 32-pixel images, tokens below 400 (the
/// sample vocabulary), caption lengths 4…7.
fn synthetic_batch(size: usize, salt: usize) -> CollatedBatch {
    let lengths: Vec<i64> = (0..size).map(|i| 4 + ((i + salt) % 4) as i64).collect();
    let t = *lengths.iter().max().unwrap() as usize;
    let mut caption_tokens = vec![0i64; size * t];
    let mut noitpac_tokens = vec![0i64; size * t];
    for (row, &len) in lengths.iter().enumerate() {
        let len = len as usize;
        let tokens: Vec<i64> = (0..len)
            .map(|j| (1 + (row * 31 + j * 17 + salt * 7) % 398) as i64)
            .collect();
        for j in 0..len {
            caption_tokens[row * t + j] = tokens[j];
            noitpac_tokens[row * t + j] = tokens[len - 1 - j];
        }
    }
    let images = (0..size * 3 * 32 * 32)
        .map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    CollatedBatch {
        image_ids: (0..size as u64).map(ImageId::Int).collect(),
        images,
        image_size: (32, 32),
        caption_tokens,
        noitpac_tokens,
        caption_lengths: lengths,
        max_length: t,
        captions: vec![String::new(); size],
        skipped: Vec::new(),
    }
}

#[test]
fn replicas_stay_bit_identical() {
    let _exclusive = exclusive();
    let config = tiny_config(100, 1);
    let device = Default::default();
    let model: Model = model_config(&config, 400).unwrap().init(&device).unwrap();
    let optimizer_config = optimizer_config(&config).unwrap();
    let replica = replicate::<B, Model>(&model, &device);
    let replica_optimizer: Optim<Model, B> = optimizer_config.init(&replica).unwrap();
    let mut optimizer: Optim<Model, B> = optimizer_config.init(&model).unwrap();

    // Seven steps: past a Lookahead synchronisation (k = 5).
    let (model, replica) = {
        let mut group =
            ReplicaGroup::<B, Model>::start(&device, vec![(device, replica, replica_optimizer)])
                .unwrap();
        let mut model = model;
        for step in 0..7 {
            let (stepped, result) = group
                .step(
                    model,
                    &mut optimizer,
                    &[synthetic_batch(4, step)],
                    &device,
                    step as u64,
                )
                .unwrap();
            assert!(!result.report.skipped);
            assert_eq!(result.images, 4);
            model = stepped;
        }
        let mut replicas = group.finish().unwrap();
        (model, replicas.remove(0))
    };

    let dir = tempfile::tempdir().unwrap();
    let (rank0, rank1) = (
        dir.path().join("0.safetensors"),
        dir.path().join("1.safetensors"),
    );
    model.save(&rank0).unwrap();
    replica.save(&rank1).unwrap();
    let mut statistics_differ = false;
    for ((name, a), (_, b)) in tensors(&rank0).iter().zip(&tensors(&rank1)) {
        if is_running_statistic(name) {
            // Each replica keeps its own running statistics, from its own shards.
            statistics_differ |= a != b;
        } else {
            assert!(a == b, "{name} differs between the replicas");
        }
    }
    assert!(
        statistics_differ,
        "replicas share their BatchNorm statistics"
    );
}

#[test]
fn cli_accepts_device_lists_and_rejects_bad_ones() {
    let parse = |args: &[&str]| {
        Args::try_parse_from(std::iter::once("pretrain_coco").chain(args.iter().copied()))
    };
    let args = parse(&["--devices", "cpu,cpu"]).unwrap();
    assert_eq!(
        args.devices,
        Some(DeviceList(vec![DeviceSpec::Cpu, DeviceSpec::Cpu]))
    );
    assert_eq!(
        args.training_devices().unwrap(),
        vec![DeviceSpec::Cpu, DeviceSpec::Cpu]
    );
    assert_eq!(
        parse(&[]).unwrap().training_devices().unwrap(),
        vec![DeviceSpec::Cpu]
    );
    for (list, expected) in [
        ("cpu,tpu", "invalid device `tpu`"),
        (",", "at least one device"),
        ("cpu,cuda:0", "one backend"),
    ] {
        let err = parse(&["--devices", list]).unwrap_err().to_string();
        assert!(err.contains(expected), "--devices {list}: {err}");
    }
    let err = parse(&["--device", "cpu", "--devices", "cpu,cpu"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn two_device_resume_is_exact() {
    let _exclusive = exclusive();
    let straight_dir = tempfile::tempdir().unwrap();
    let split_dir = tempfile::tempdir().unwrap();
    let train = |dir: &Path, resume: bool, stop_after: Option<u64>| {
        let mut options = options(tiny_config(4, 1), dir);
        options.resume = resume;
        options.stop_after = stop_after;
        Trainer::<B, Model>::start(
            options,
            vec![Default::default(); 2],
            Arc::new(AtomicBool::new(false)),
        )
        .and_then(Trainer::run)
        .unwrap()
    };
    let straight = train(straight_dir.path(), false, None);
    let first = train(split_dir.path(), false, Some(2));
    let second = train(split_dir.path(), true, None);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, straight.losses);
    // Everything checkpointed, rank 0's BatchNorm running statistics included, is identical:
    // the replicas of the resumed run start from rank 0's, and a replica's own statistics are
    // never used (train mode normalises with batch statistics).
    let checkpoint = "checkpoint_00000004/model.safetensors";
    let a = tensors(&straight_dir.path().join(checkpoint));
    let b = tensors(&split_dir.path().join(checkpoint));
    assert_eq!(a, b);
}
