//! Whole training processes, killed and interrupted: a checkpoint survives `kill -9` at any
//! moment, and SIGINT or SIGTERM makes the loop checkpoint the iteration it finishes, stop and exit
//! with 128 + the signal (130, 143), as a process stopped by that signal.
//!
//! This test binary has its own `main` (`harness = false` in Cargo.toml): it runs the two
//! scenarios, each of which starts this same binary again as the training process (selected by
//! an environment variable). So a child run is never reported as a test of its own.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use virtex::CaptioningModel;
use virtex_train::checkpoint::{latest_checkpoint, list_checkpoints};
use virtex_train::metrics::MetricsLog;
use virtex_train::{install_interrupt_flag, train, PretrainConfig, RunOptions, RunSummary};

use common::tiny_config;

type B = Autodiff<Flex>;
type Model = CaptioningModel<B>;

const KILL_CHILD: &str = "VIRTEX_KILL_TEST_RUN_DIR";
const INTERRUPT_CHILD: &str = "VIRTEX_INTERRUPT_TEST_RUN_DIR";

fn run(
    config: PretrainConfig,
    run_dir: &Path,
    resume: bool,
    stop_after: Option<u64>,
    interrupted: Arc<AtomicBool>,
) -> RunSummary {
    let options = RunOptions {
        resume,
        stop_after,
        ..RunOptions::new(config, run_dir)
    };
    train::<B>(options, vec![Default::default()], interrupted).unwrap()
}

fn main() -> ExitCode {
    if let Ok(run_dir) = std::env::var(KILL_CHILD) {
        // Trains with a checkpoint every iteration until killed; later rounds continue the
        // run (a new run over its checkpoints is refused).
        let run_dir = Path::new(&run_dir);
        let resume = latest_checkpoint(run_dir).unwrap().is_some();
        run(
            tiny_config(10_000, 1),
            run_dir,
            resume,
            None,
            Arc::default(),
        );
        return ExitCode::SUCCESS;
    }
    if let Ok(run_dir) = std::env::var(INTERRUPT_CHILD) {
        // The real signal handler, no periodic checkpoints, until interrupted.
        let summary = run(
            tiny_config(10_000, 10_000),
            Path::new(&run_dir),
            false,
            None,
            install_interrupt_flag(),
        );
        assert!(summary.iteration < 10_000);
        assert!(summary.interrupted);
        // What pretrain_coco exits with: 128 + the signal.
        return ExitCode::from(summary.exit_code());
    }
    // `cargo test -- --list` and filters: this binary runs both scenarios or nothing.
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.iter().any(|a| a == "--list") {
        println!(
            "checkpoint_survives_kill_9: test\nctrl_c_checkpoints_and_stops: test\n\
             sigterm_checkpoints_and_stops: test"
        );
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = arguments.iter().filter(|a| !a.starts_with('-')).collect();
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(*f));
    let mut ran = 0;
    if selected("checkpoint_survives_kill_9") {
        checkpoint_survives_kill_9();
        println!("test checkpoint_survives_kill_9 ... ok");
        ran += 1;
    }
    #[cfg(unix)]
    if selected("ctrl_c_checkpoints_and_stops") {
        interrupt_checkpoints_and_stops("INT", 130);
        println!("test ctrl_c_checkpoints_and_stops ... ok");
        ran += 1;
    }
    #[cfg(unix)]
    if selected("sigterm_checkpoints_and_stops") {
        interrupt_checkpoints_and_stops("TERM", 143);
        println!("test sigterm_checkpoints_and_stops ... ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed; 0 failed");
    ExitCode::SUCCESS
}

/// This binary again, as the training process of `variable` = `run_dir`.
fn spawn_child(variable: &str, run_dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(variable, run_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn checkpoint_survives_kill_9() {
    let run_dir = tempfile::tempdir().unwrap();
    let mut kills = 0;
    let mut seen_checkpoints = 0;
    // Kill the writer at different moments: after 0.2 s … 1.6 s past the first checkpoint,
    // which lands kills both between and inside checkpoint writes (one per iteration).
    for round in 0..4u64 {
        let mut child = spawn_child(KILL_CHILD, run_dir.path());
        let start = Instant::now();
        let before = list_checkpoints(run_dir.path()).unwrap().len();
        while list_checkpoints(run_dir.path()).unwrap().len() <= before.min(1)
            && start.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200 + 470 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        let (iteration, path) = latest_checkpoint(run_dir.path())
            .unwrap()
            .expect("a checkpoint");
        seen_checkpoints = seen_checkpoints.max(iteration);
        // The newest checkpoint loads completely.
        Model::load(path.join("model.safetensors"), &Default::default()).unwrap();
        assert!(path.join("optimizer.mpk").is_file() && path.join("state.json").is_file());
    }
    assert_eq!(kills, 4);
    assert!(seen_checkpoints >= 1);

    // And the run resumes from it.
    let mut config = tiny_config(10_000, 1);
    config.optim.num_iterations = seen_checkpoints.max(1) + 1;
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            latest_checkpoint(run_dir.path())
                .unwrap()
                .unwrap()
                .1
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let saved_total = state["config"]["optim"]["num_iterations"].as_u64().unwrap();
    assert_eq!(saved_total, 10_000);
    let resumed = run(config, run_dir.path(), true, Some(1), Arc::default());
    assert_eq!(
        resumed.iteration,
        latest_checkpoint(run_dir.path()).unwrap().unwrap().0
    );
}

/// Sends `signal` (`INT`, `TERM`) to a training child: it checkpoints the iteration it
/// finishes, stops, and exits with `expected_status` (128 + the signal), not 0.
#[cfg(unix)]
fn interrupt_checkpoints_and_stops(signal: &str, expected_status: i32) {
    let run_dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(INTERRUPT_CHILD, run_dir.path());
    let metrics = run_dir.path().join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |text| text.lines().count()) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the child never trained"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let signal = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(180) {
            child.kill().unwrap();
            panic!("the child did not stop after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(expected_status), "{status:?}");
    // The checkpoint is of the last iteration the child logged (it logs every iteration).
    let (iteration, path) = latest_checkpoint(run_dir.path())
        .unwrap()
        .expect("a checkpoint");
    let (records, _) = MetricsLog::read(run_dir.path()).unwrap();
    assert!(iteration >= 2);
    assert_eq!(records.last().unwrap().iteration, iteration);
    Model::load(path.join("model.safetensors"), &Default::default()).unwrap();
}
