//! The pretext presets through the `pretrain_coco` binary on the embedded sample data: each
//! trains from the README-style command (its preset, shrunk with `--set`), then `--eval-only`
//! prints its validation loss as one JSON line, the same from the run (`--resume`) and from
//! its checkpoint file (`--init-from`), and `--export-backbone` writes its CNN.
//!
//! The binary is the example `cargo test -p pretrain-coco` builds next to this test
//! (`target/<profile>/examples/pretrain_coco`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The example binary of this build.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/examples/pretrain_coco
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("pretrain_coco{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run the tests with `cargo test -p pretrain-coco`, which builds the example",
        binary.display()
    );
    binary
}

fn run(arguments: &[String]) -> Output {
    let output = Command::new(binary())
        .args(arguments)
        .output()
        .expect("pretrain_coco starts");
    assert!(
        output.status.success(),
        "pretrain_coco {arguments:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `--preset NAME` and the overrides that make it a run of seconds on the sample: a ResNet-18 on
/// 32-pixel crops, batch 4 (the sample has object labels for 4 training images), 2 iterations.
fn preset_arguments(preset: &str, extra: &[&str]) -> Vec<String> {
    let mut arguments = vec!["--preset".to_string(), preset.to_string()];
    let overrides = [
        "model.visual=torchvision::resnet18",
        "data.image_crop_size=32",
        "data.num_workers=1",
        "optim.batch_size=4",
        "optim.batch_norm_batch=null",
        "optim.num_iterations=2",
        "optim.warmup_steps=1",
        "train.checkpoint_every=2",
        "train.val_every=100",
        "train.val_batches=1",
    ];
    for item in overrides.iter().chain(extra) {
        arguments.push("--set".into());
        arguments.push(item.to_string());
    }
    arguments
}

/// The one JSON line `--eval-only` prints: its `val_loss` and its loss component.
fn eval_line(output: &Output, component: &str) -> f64 {
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout:?}");
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    let loss = value["val_loss"].as_f64().expect("a numeric val_loss");
    assert!(loss.is_finite() && loss > 0.0, "{value}");
    assert_eq!(value[component].as_f64(), Some(loss), "{value}");
    loss
}

fn check(preset: &str, component: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let run_dir_text = run_dir.display().to_string();

    let mut train = preset_arguments(preset, extra);
    train.extend(["--run-dir".into(), run_dir_text.clone()]);
    let trained = run(&train);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(stderr.contains("done: iteration 2"), "{stderr}");

    let from_run = eval_line(
        &run(&[
            "--resume".into(),
            run_dir_text.clone(),
            "--eval-only".into(),
        ]),
        component,
    );
    let checkpoint = run_dir.join("checkpoint_00000002/model.safetensors");
    let mut from_file = preset_arguments(preset, extra);
    from_file.extend([
        "--init-from".into(),
        checkpoint.display().to_string(),
        "--eval-only".into(),
    ]);
    let from_file = eval_line(&run(&from_file), component);
    assert_eq!(
        from_run, from_file,
        "{preset}: the run and its checkpoint file"
    );

    let backbone = dir.path().join("backbone.safetensors");
    run(&[
        "--resume".into(),
        run_dir_text,
        "--export-backbone".into(),
        backbone.display().to_string(),
    ]);
    assert_eq!(
        std::fs::read(&backbone).unwrap(),
        std::fs::read(run_dir.join("backbone.safetensors")).unwrap(),
        "{preset}: the exported CNN is the run's"
    );
}

#[test]
fn token_classification_runs_evaluates_and_exports() {
    check(
        "token_classification_R_50",
        "token_classification",
        &["data.vocab_size=400"],
    );
}

#[test]
fn multilabel_classification_runs_evaluates_and_exports() {
    // The preset's 81 classes are the sample instances files' 80 categories + background.
    check(
        "multilabel_classification_R_50",
        "multilabel_classification",
        &[],
    );
}

#[test]
fn masked_lm_runs_evaluates_and_exports() {
    check(
        "masked_lm_R_50_L1_H2048",
        "masked_lm",
        &[
            "data.vocab_size=400",
            "model.textual=transdec_postnorm::L1_H64_A1_F256",
        ],
    );
}

/// `--help` names every preset `--preset` accepts (its list is written out by hand in
/// `virtex_train::cli::Args`: this keeps it in step with `PretrainConfig::PRESETS`).
#[test]
fn help_lists_every_preset() {
    let output = run(&["--help".into()]);
    let help = String::from_utf8_lossy(&output.stdout);
    for preset in virtex_train::PretrainConfig::PRESETS {
        assert!(help.contains(preset), "--help lacks {preset}:\n{help}");
    }
}
