//! `cargo run --release --example burn_train_learner [-- --iterations N --artifact-dir DIR]`
//!
//! VirTex's `small_cpu` model trained on the embedded sample data by burn-train's `Learner`,
//! with its terminal dashboard (plain lines when stdout is not a terminal).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use burn_train_learner::{train, ProgressDisplay};
use clap::Parser;

/// VirTex bicaptioning trained with burn-train's Learner (CPU, embedded sample data).
#[derive(Debug, Parser)]
#[command(name = "burn_train_learner")]
struct Args {
    /// Training iterations (batches of 8), all in one burn-train epoch, then one validation.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Where burn-train writes its logs, metrics and checkpoints (must be empty or absent);
    /// default `runs/burn-train-<timestamp>`.
    #[arg(long)]
    artifact_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let artifact_dir = args.artifact_dir.unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "-");
        PathBuf::from("runs").join(format!("burn-train-{stamp}"))
    });
    match train(args.iterations, &artifact_dir, ProgressDisplay::Dashboard) {
        Ok(report) => {
            println!(
                "done: {} iterations, mean training loss {:.4}, validation loss {:.4}; \
                 burn-train's artifacts are in {}",
                args.iterations,
                report.train_loss,
                report.valid_loss,
                artifact_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
