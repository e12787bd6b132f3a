//! A careful but unlucky user: run directories shared by accident, results that must not be
//! overwritten, data that breaks mid-run, settings that cannot work, and failed starts that
//! must leave nothing behind. Each test reproduces one case of the "hostile and careless
//! inputs" issue.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex::CaptioningModel;
use virtex_train::checkpoint::{latest_checkpoint, list_checkpoints};
use virtex_train::metrics::MetricsLog;
use virtex_train::{ModelSource, PretrainConfig, RunOptions, RunSummary, TrainError, Trainer};

use common::{exclusive, tiny_config};

type B = Autodiff<Flex>;
type Model = CaptioningModel<B>;

fn start(options: RunOptions) -> Result<Trainer<B, Model>, TrainError> {
    Trainer::<B, Model>::start(options, vec![Default::default()], Arc::default())
}

fn run(options: RunOptions) -> Result<RunSummary, TrainError> {
    start(options)?.run()
}

fn resume(config: PretrainConfig, run_dir: &Path) -> RunOptions {
    RunOptions {
        resume: true,
        ..RunOptions::new(config, run_dir)
    }
}

/// A copy of the embedded sample data (COCO layout) that a test may damage, and a config that
/// reads it.
fn sample_copy(config: &mut PretrainConfig) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&virtex_data::sample_data_root(), dir.path());
    config.data.root = Some(dir.path().to_path_buf());
    config.data.tokenizer = Some(virtex_data::sample_vocab_path());
    dir
}

fn train_images(root: &Path) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(root.join("train2017"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    images.sort();
    images
}

/// Cuts a JPEG in half: it no longer decodes (no end-of-image marker).
fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// Every file of a directory tree with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn a_second_process_on_a_run_directory_is_refused() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 3);
    let first = start(RunOptions::new(config.clone(), run_dir.path())).unwrap();
    // Another run into the same directory, new or resumed, while the first one holds it.
    for options in [
        RunOptions::new(config.clone(), run_dir.path()),
        resume(config.clone(), run_dir.path()),
    ] {
        let err = start(options).err().expect("the directory is locked");
        assert!(matches!(err, TrainError::RunDirLocked { .. }), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }
    drop(first);
    // Released with the trainer.
    virtex_train::run_dir::RunLock::acquire(run_dir.path()).unwrap();
}

#[test]
fn a_new_run_refuses_a_directory_holding_results() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 3);
    run(RunOptions::new(config.clone(), run_dir.path())).unwrap();
    assert!(run_dir.path().join("backbone.safetensors").exists());

    // With checkpoints: refused (it would mix with and prune them).
    let before = snapshot(run_dir.path());
    let err = run(RunOptions::new(config.clone(), run_dir.path())).unwrap_err();
    assert!(
        matches!(err, TrainError::RunDirHoldsResults { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--resume"), "{err}");
    assert_eq!(snapshot(run_dir.path()), before, "nothing may change");

    // A finished run whose checkpoints were deleted still holds its backbone, metrics,
    // config and plot: refused as well, and nothing is overwritten.
    for (_, checkpoint) in list_checkpoints(run_dir.path()).unwrap() {
        std::fs::remove_dir_all(checkpoint).unwrap();
    }
    let before = snapshot(run_dir.path());
    let err = run(RunOptions::new(config, run_dir.path())).unwrap_err();
    let message = err.to_string();
    for name in ["backbone.safetensors", "metrics.jsonl", "config.json"] {
        assert!(message.contains(name), "{message}");
    }
    assert_eq!(snapshot(run_dir.path()), before, "nothing may change");
}

#[test]
fn resuming_a_finished_run_says_it_is_complete() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 3);
    run(RunOptions::new(config.clone(), run_dir.path())).unwrap();
    let before = snapshot(run_dir.path());
    let err = run(resume(config, run_dir.path())).unwrap_err();
    assert!(
        matches!(err, TrainError::AlreadyComplete { iteration: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("already complete"), "{err}");
    assert_eq!(snapshot(run_dir.path()), before, "nothing may change");
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let _exclusive = exclusive();
    let parent = tempfile::tempdir().unwrap();
    let run_dir = parent.path().join("run");
    let mut config = tiny_config(3, 3);
    config.data.tokenizer = Some(parent.path().join("missing.model"));
    let err = run(RunOptions::new(config, &run_dir)).unwrap_err();
    assert!(err.to_string().contains("missing.model"), "{err}");
    assert!(
        !run_dir.exists(),
        "a failed start must not leave a directory"
    );

    // Also in a directory the user made: no config.json, no empty metrics.jsonl.
    std::fs::create_dir(&run_dir).unwrap();
    let mut config = tiny_config(3, 3);
    config.optim.batch_size = 64; // more than the sample's 10 training images
    let err = run(RunOptions::new(config, &run_dir)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("optim.batch_size"), "{message}");
    assert!(!message.contains("LoaderConfig"), "{message}");
    assert!(
        !run_dir.join("config.json").exists() && !run_dir.join("metrics.jsonl").exists(),
        "a failed start must not leave files"
    );
}

#[test]
fn an_unreadable_image_mid_run_is_checkpointed_before_stopping() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(40, 1000);
    let data = sample_copy(&mut config);
    let mut trainer = start(RunOptions::new(config.clone(), run_dir.path())).unwrap();
    for _ in 0..2 {
        let step = trainer.step().unwrap();
        trainer.end_of_iteration(&step).unwrap();
    }
    assert!(latest_checkpoint(run_dir.path()).unwrap().is_none());
    // The images go bad during training (a disk error, a sync job rewriting them).
    for image in train_images(data.path()) {
        truncate(&image);
    }
    let err = trainer.run().unwrap_err();
    let TrainError::Stopped {
        cause,
        iteration,
        checkpoint,
        ..
    } = &err
    else {
        panic!("expected a checkpoint before stopping, got: {err}");
    };
    assert!(matches!(**cause, TrainError::Data(_)), "{cause}");
    assert!(*iteration >= 2, "{err}");
    let (saved, path) = latest_checkpoint(run_dir.path()).unwrap().unwrap();
    assert_eq!((saved, &path), (*iteration, checkpoint));
    let message = err.to_string();
    assert!(message.contains("--resume"), "{message}");

    // Fixed data: the run continues from that checkpoint.
    let mut fixed = config.clone();
    let fixed_data = sample_copy(&mut fixed);
    let options = RunOptions {
        stop_after: Some(1),
        resume_overrides: virtex_train::ResumeOverrides {
            data_root: Some(fixed_data.path().to_path_buf()),
            ..Default::default()
        },
        ..resume(config, run_dir.path())
    };
    let summary = run(options).unwrap();
    assert_eq!(summary.iteration, iteration + 1);
}

#[test]
fn skipped_images_are_logged_and_counted() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(4, 4);
    config.data.skip_bad_images = true;
    let data = sample_copy(&mut config);
    truncate(&train_images(data.path())[0]);
    let summary = run(RunOptions::new(config, run_dir.path())).unwrap();
    assert!(summary.skipped_images >= 1, "{summary:?}");
    let (records, _) = MetricsLog::read(run_dir.path()).unwrap();
    let last = records.last().unwrap();
    assert_eq!(last.skipped_images, summary.skipped_images);
}

#[test]
fn leftovers_of_a_killed_write_are_removed_when_the_run_resumes() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 1);
    run(RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(config.clone(), run_dir.path())
    })
    .unwrap();
    // What `kill -9` during a checkpoint write leaves.
    let partial = run_dir.path().join(".partial-checkpoint_abc");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), vec![0u8; 1024]).unwrap();
    let trainer = start(resume(config, run_dir.path())).unwrap();
    assert!(!partial.exists());
    drop(trainer);
}

#[test]
fn a_damaged_optimizer_state_is_one_clear_sentence() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 1);
    run(RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(config.clone(), run_dir.path())
    })
    .unwrap();
    let (_, checkpoint) = latest_checkpoint(run_dir.path()).unwrap().unwrap();
    let file = checkpoint.join("optimizer.mpk");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    let message = run(resume(config, run_dir.path())).unwrap_err().to_string();
    assert!(message.contains("optimizer.mpk"), "{message}");
    assert!(message.contains("damaged"), "{message}");
    for dump in ["Unknown(", "feature", "\n"] {
        assert!(!message.contains(dump), "{message}");
    }
}

#[test]
fn settings_that_cannot_work_name_the_config_key() {
    let base = tiny_config(3, 3);
    let message = |overrides: &[&str]| {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        base.clone()
            .apply_overrides(&overrides)
            .unwrap_err()
            .to_string()
    };
    let wrong_type = message(&["optim.batch_size=many"]);
    assert!(wrong_type.contains("optim.batch_size"), "{wrong_type}");
    assert!(wrong_type.contains("non-negative integer"), "{wrong_type}");
    let wrong_type = message(&["data.shuffle=3"]);
    assert!(wrong_type.contains("true or false"), "{wrong_type}");

    let zero = message(&["optim.num_iterations=0"]);
    assert!(
        zero.contains("optim.num_iterations must be at least 1"),
        "{zero}"
    );
    let warmup = message(&["optim.warmup_steps=5"]);
    assert!(
        warmup.contains("optim.warmup_steps") && warmup.contains("optim.num_iterations"),
        "{warmup}"
    );
    assert!(!warmup.contains("schedule."), "{warmup}");

    // The same from a JSON file: the error names the key and the file's position.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, r#"{"optim": {"lr": "fast"}}"#).unwrap();
    let from_file = base.merge_json_file(&file).unwrap_err().to_string();
    assert!(from_file.contains("optim.lr"), "{from_file}");
}

#[test]
fn an_export_never_overwrites_its_own_checkpoint() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 1);
    run(RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(config, run_dir.path())
    })
    .unwrap();
    let (_, checkpoint) = latest_checkpoint(run_dir.path()).unwrap().unwrap();
    let weights = checkpoint.join("model.safetensors");
    let run_source = ModelSource::Run(run_dir.path().to_path_buf());
    let file_source = ModelSource::File(weights.clone());
    for (source, output) in [
        // `--resume RUN --export-backbone RUN/checkpoint_N/model.safetensors`
        (&run_source, weights.clone()),
        // Anywhere in the run directory.
        (
            &run_source,
            run_dir.path().join("backbone-export.safetensors"),
        ),
        // `--init-from W --export-backbone W`
        (&file_source, weights.clone()),
        // Next to the weights inside their checkpoint.
        (&file_source, checkpoint.join("backbone.safetensors")),
    ] {
        let err = source.check_output(&output).unwrap_err();
        assert!(matches!(err, TrainError::Output(_)), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
    }
    let elsewhere = tempfile::tempdir().unwrap();
    run_source
        .check_output(&elsewhere.path().join("backbone.safetensors"))
        .unwrap();
}

#[test]
fn the_pixel_limit_comes_from_the_config() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(3, 3);
    // Far below the sample's photographs: every image is refused, naming the limit's key.
    config.data.max_image_pixels = Some(2_000);
    let err = run(RunOptions::new(config.clone(), run_dir.path())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("2000"), "{message}");
    assert!(message.contains("max_image_pixels"), "{message}");
    // The next run's default applies again (the limit is set by every start).
    config.data.max_image_pixels = None;
    let other = tempfile::tempdir().unwrap();
    run(RunOptions::new(config, other.path())).unwrap();
}

#[test]
fn print_config_resolves_the_command_line_and_writes_nothing() {
    use clap::Parser;
    use virtex_train::cli::Args;
    let args = Args::try_parse_from([
        "pretrain_coco",
        "--preset",
        "bicaptioning_R_50_L1_H2048",
        "--set",
        "optim.batch_size=64",
        "--print-config",
    ])
    .unwrap();
    assert!(args.print_config);
    let config = args.resolved_config().unwrap();
    assert_eq!(config.optim.batch_size, 64);
    assert_eq!(
        config.model.textual,
        PretrainConfig::preset("bicaptioning_R_50_L1_H2048")
            .unwrap()
            .model
            .textual
    );

    // With --resume: the checkpoint's config, with the flags a resume may change.
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    run(RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(tiny_config(3, 1), run_dir.path())
    })
    .unwrap();
    let before = snapshot(run_dir.path());
    let dir = run_dir.path().to_str().unwrap();
    let args = Args::try_parse_from([
        "pretrain_coco",
        "--resume",
        dir,
        "--precision",
        "bf16",
        "--print-config",
    ])
    .unwrap();
    let config = args.resolved_config().unwrap();
    assert_eq!(config.optim.num_iterations, 3);
    assert_eq!(config.train.precision, virtex::Precision::Bf16);
    assert_eq!(snapshot(run_dir.path()), before, "nothing may change");
    assert!(Args::try_parse_from(["pretrain_coco", "--print-config", "--eval-only"]).is_err());
}
