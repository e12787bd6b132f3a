//! `cargo run --release --example pretrain_coco [-- --preset … --device cuda …]`
//!
//! With no arguments: the `small_cpu` preset on the embedded sample data, on the CPU.
//! Several GPUs: `--devices cuda:0,cuda:1` (data parallel, see `pretrain_coco::data_parallel`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use burn::backend::Autodiff;
use clap::Parser;
use pretrain_coco::args::Args;
use pretrain_coco::config::PretrainConfig;
use pretrain_coco::training::{install_interrupt_flag, train, ResumeOverrides, RunOptions};
use pretrain_coco::TrainError;
use virtex_device::with_backend_devices;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), TrainError> {
    let args = Args::parse();
    let devices = args.training_devices()?;

    // The data and precision flags apply to a new run's config and to a resumed run's alike.
    let command_line = ResumeOverrides {
        data_root: args.data_root.clone(),
        tokenizer: args.tokenizer.clone(),
        precision: args.precision,
    };
    let mut config = PretrainConfig::preset(&args.preset)?;
    if let Some(path) = &args.config {
        config = config.merge_json_file(path)?;
    }
    config = config.apply_overrides(&args.overrides)?;
    command_line.apply(&mut config);

    let (run_dir, resume) = match (&args.resume, &args.run_dir) {
        (Some(dir), _) => (dir.clone(), true),
        (None, Some(dir)) => (dir.clone(), false),
        (None, None) => (default_run_dir(), false),
    };
    let trains = !args.eval_only && args.export_backbone.is_none();
    if trains {
        eprintln!("run directory: {}", run_dir.display());
    }

    let options = RunOptions {
        config,
        run_dir,
        resume,
        init_from: args.init_from.clone(),
        eval_only: args.eval_only,
        stop_after: args.stop_after,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        export_backbone: args.export_backbone.clone(),
        resume_overrides: command_line,
    };
    let interrupted = install_interrupt_flag();
    let summary = with_backend_devices!(&devices, |B, burn_devices| {
        train::<Autodiff<B>>(options, burn_devices, interrupted)?
    });
    if let Some(path) = &args.export_backbone {
        eprintln!("backbone written to {}", path.display());
        return Ok(());
    }

    if args.eval_only {
        if let Some(val) = summary.last_val {
            println!(
                "{}",
                serde_json::json!({
                    "val_loss": val.val_loss,
                    "captioning_forward": val.captioning_forward,
                    "captioning_backward": val.captioning_backward,
                })
            );
        }
        return Ok(());
    }
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "done: iteration {}, loss {first:.4} → {last:.4}, {:.1} img/s, {} skipped steps",
        summary.iteration, summary.images_per_second, summary.skipped_steps
    );
    Ok(())
}

/// `runs/<UTC timestamp>`.
fn default_run_dir() -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "-");
    PathBuf::from("runs").join(stamp)
}
