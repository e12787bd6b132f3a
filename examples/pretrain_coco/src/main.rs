//! `cargo run --release --example pretrain_coco [-- --preset … --device cuda …]`
//!
//! VirTex pretraining (upstream's `scripts/pretrain_virtex.py`): the command line of
//! [`virtex_train::cli::Args`] handed to the `virtex-train` library. With no arguments: the
//! `small_cpu` preset on the embedded sample data, on the CPU. Several GPUs: `--devices
//! cuda:0,cuda:1` (data parallel). See this example's README.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::backend::Autodiff;
use clap::Parser;
use virtex::{CaptioningModel, ClassificationModel, MaskedLmModel};
use virtex_device::{with_backend, with_backend_devices, DeviceSpec};
use virtex_train::cli::Args;
use virtex_train::run_dir::default_run_dir;
use virtex_train::{
    evaluate, install_interrupt_flag, interrupt_signal, load_model, run_config, signal_name, train,
    ModelSource, PretextModel, RunOptions, TrainError,
};

fn main() -> ExitCode {
    match try_main(Args::parse()) {
        Ok(code) => ExitCode::from(code),
        // Not a failure: the run has nothing left to do.
        Err(err @ TrainError::AlreadyComplete { .. }) => {
            eprintln!("{err}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A weights argument as a file: an existing path as given, else a released name
/// (`virtex weights list`) from the weights cache, downloaded first if absent.
fn weights_file(path: &Path) -> Result<PathBuf, TrainError> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    virtex_cli::resolve_weights(path).map_err(|err| TrainError::Config(err.to_string()))
}

/// Runs the command; returns the exit status (0, or `128 + signal` after an interrupt).
fn try_main(mut args: Args) -> Result<u8, TrainError> {
    // `--init-from bicaptioning_R_50_L1_H2048` works as `virtex caption --checkpoint` does.
    args.init_from = args.init_from.as_deref().map(weights_file).transpose()?;
    if args.print_config {
        let config = args.resolved_config()?;
        let text = serde_json::to_string_pretty(&config)
            .map_err(|err| TrainError::Config(err.to_string()))?;
        println!("{text}");
        return Ok(0);
    }
    if args.coordinator_only {
        let address = args.coordinator.as_deref().unwrap_or_default();
        let port = virtex_train::data_parallel::port_of("--coordinator", address)?;
        eprintln!("coordinator listening on port {port} (stop with Ctrl-C)");
        virtex_train::data_parallel::run_coordinator(port)?;
        return Ok(0);
    }
    // Multi-node: checked before anything is read; node 0 starts the coordinator the other
    // nodes meet at.
    let multi_node = args.multi_node()?;
    let devices = args.training_devices()?;
    let mut config = args.config()?;
    config.model.visual_pretrained = config
        .model
        .visual_pretrained
        .as_deref()
        .map(weights_file)
        .transpose()?;
    // Evaluation and export read a model and write nothing into a run directory.
    let source = match (&args.resume, &args.init_from) {
        (Some(run_dir), _) => Some(ModelSource::Run(run_dir.clone())),
        (None, Some(file)) => Some(ModelSource::File(file.clone())),
        (None, None) => None,
    };
    if args.eval_only || args.export_backbone.is_some() {
        let source = source.ok_or_else(|| {
            TrainError::Config(
                "--eval-only and --export-backbone need a model: --init-from FILE or \
                 --resume RUN_DIR"
                    .into(),
            )
        })?;
        if let Some(output) = &args.export_backbone {
            // Before loading anything: an export onto its own checkpoint would destroy it.
            source.check_output(output)?;
        }
        read_model(&args, &devices[0], &source, config)?;
        return Ok(0);
    }

    let (run_dir, resume) = match (&args.resume, &args.run_dir) {
        (Some(dir), _) => (dir.clone(), true),
        (None, Some(dir)) => (dir.clone(), false),
        (None, None) => (default_run_dir()?, false),
    };
    eprintln!("run directory: {}", run_dir.display());
    if let Some(node) = multi_node.as_ref().filter(|node| node.start_coordinator) {
        virtex_train::data_parallel::spawn_coordinator(node.coordinator_port()?)?;
    }
    let options = RunOptions {
        multi_node,
        resume,
        init_from: args.init_from.clone(),
        stop_after: args.stop_after,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        resume_overrides: args.resume_overrides(),
        ..RunOptions::new(config, run_dir.clone())
    };
    let interrupted = install_interrupt_flag();
    let result = with_backend_devices!(&devices, |B, burn_devices| {
        train::<Autodiff<B>>(options, burn_devices, interrupted)
    });
    let summary = result.inspect_err(|err| say_what_is_left(err, &run_dir))?;
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    let skipped_images = if summary.skipped_images > 0 {
        format!(", {} skipped images", summary.skipped_images)
    } else {
        String::new()
    };
    let numbers = format!(
        "iteration {}, loss {first:.4} → {last:.4}, {:.1} img/s, {} skipped steps{skipped_images}",
        summary.iteration, summary.images_per_second, summary.skipped_steps
    );
    if summary.interrupted {
        let signal = interrupt_signal().map_or("a signal", signal_name);
        eprintln!(
            "stopped by {signal}: {numbers}; checkpoint {}\ncontinue with: cargo run --release \
             --example pretrain_coco -- --resume {}",
            summary
                .checkpoint
                .as_deref()
                .map_or_else(|| "none".into(), |path| path.display().to_string()),
            run_dir.display()
        );
    } else {
        eprintln!("done: {numbers}");
    }
    Ok(summary.exit_code())
}

/// `--eval-only` (the validation loss as one JSON line) or `--export-backbone FILE`.
fn read_model(
    args: &Args,
    device: &DeviceSpec,
    source: &ModelSource,
    config: virtex_train::PretrainConfig,
) -> Result<(), TrainError> {
    // The model of a run directory is its checkpoint's `model.name`; of a file, the config's.
    let name = match source {
        ModelSource::Run(run_dir) => {
            run_config(&RunOptions {
                resume: true,
                ..RunOptions::new(config.clone(), run_dir.clone())
            })?
            .model
            .name
        }
        ModelSource::File(_) => config.model.name.clone(),
    };
    with_backend!(*device, |B, device| {
        match name.as_str() {
            "token_classification" | "multilabel_classification" => {
                use_model::<B, ClassificationModel<B>>(args, source, config, &device)?
            }
            "masked_lm" => use_model::<B, MaskedLmModel<B>>(args, source, config, &device)?,
            _ => use_model::<B, CaptioningModel<B>>(args, source, config, &device)?,
        }
    });
    Ok(())
}

/// [`read_model`] for one model type.
fn use_model<B: burn::tensor::backend::Backend, M: PretextModel<B>>(
    args: &Args,
    source: &ModelSource,
    config: virtex_train::PretrainConfig,
    device: &B::Device,
) -> Result<(), TrainError> {
    let (model, config, _) = load_model::<B, M>(source, config, &args.resume_overrides(), device)?;
    if let Some(path) = &args.export_backbone {
        model.export_backbone(path)?;
        eprintln!("backbone written to {}", path.display());
    } else {
        let val = evaluate(&model, &config, device)?;
        let mut line = serde_json::json!({ "val_loss": val.loss });
        for (name, value) in &val.components {
            line[name] = (*value).into();
        }
        println!("{line}");
    }
    Ok(())
}

/// After a training error that does not say it itself: what the run directory keeps.
fn say_what_is_left(err: &TrainError, run_dir: &std::path::Path) {
    if matches!(
        err,
        TrainError::Stopped { .. }
            | TrainError::Diverged { .. }
            | TrainError::RunDirLocked { .. }
            | TrainError::RunDirHoldsResults { .. }
            | TrainError::AlreadyComplete { .. }
    ) || !run_dir.is_dir()
    {
        return;
    }
    match virtex_train::checkpoint::latest_checkpoint(run_dir) {
        Ok(Some((iteration, path))) => eprintln!(
            "the run directory keeps its newest checkpoint, iteration {iteration}: {} (continue \
             with --resume {})",
            path.display(),
            run_dir.display()
        ),
        _ => eprintln!(
            "the run directory {} holds no checkpoint",
            run_dir.display()
        ),
    }
}
