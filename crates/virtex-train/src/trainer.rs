//! The [`Trainer`]: one pretraining loop for every pretext model, with visible seams.
//!
//! - **start** ([`Trainer::start`]): a new run, a `--resume`d one (the newest checkpoint: model,
//!   optimizer, data position, config) or a new run `--init-from` a checkpoint;
//! - **step** ([`Trainer::step`]): one iteration on one device ([`crate::train_step`]) or on
//!   every replica of a data-parallel run ([`crate::data_parallel`]);
//! - **end of iteration** ([`Trainer::end_of_iteration`]): log, validate, checkpoint, and stop on
//!   an interrupt or on divergence.
//!
//! [`Trainer::run`] is those three in a loop. The model is any [`PretextModel`]; evaluation
//! ([`evaluate`]) and backbone export ([`PretextModel::export_backbone`]) are functions over a
//! model from [`load_model`], not modes of a run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use virtex::{CaptioningModel, Precision};
use virtex_data::{BatchIter, DataLoader, LoaderPosition};
use virtex_optim::GroupedOptimizerConfig;

use crate::checkpoint::{latest_checkpoint, write_checkpoint, write_file_atomically};
use crate::config::PretrainConfig;
use crate::data_parallel::{replicate, ReplicaGroup};
use crate::error::TrainError;
use crate::factories::{optimizer_config, training_data, validation_data, TrainingData};
use crate::metrics::{plot_losses, MetricsLog, TrainRecord, ValRecord};
use crate::pretext::PretextModel;
use crate::step::{
    component_names, read_losses, stacked, train_step, LossValues, Optim, StepResult,
};

/// Everything a run needs besides the backend.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The resolved configuration.
    pub config: PretrainConfig,
    /// The run directory (created if needed).
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    /// Initialise the model from this checkpoint (official `.pth` or ours).
    pub init_from: Option<PathBuf>,
    /// Stop after this many iterations of this invocation.
    pub stop_after: Option<u64>,
    /// Show a progress bar (otherwise plain log lines).
    pub progress: bool,
    /// What a resumed run takes from the command line instead of the checkpoint's config.
    pub resume_overrides: ResumeOverrides,
}

/// Settings a resumed run may change from its checkpoint's config: where the data lives (a run
/// moved to another machine) and the compute precision. Everything else comes from the
/// checkpoint, so the run continues as it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeOverrides {
    /// `data.root`.
    pub data_root: Option<PathBuf>,
    /// `data.tokenizer`.
    pub tokenizer: Option<PathBuf>,
    /// `train.precision` (a change makes the continuation inexact, as any precision change).
    pub precision: Option<Precision>,
}

impl ResumeOverrides {
    /// Applies the overrides to `config`; returns a line per changed setting.
    pub fn apply(&self, config: &mut PretrainConfig) -> Vec<String> {
        let mut changed = Vec::new();
        if let Some(root) = &self.data_root {
            if config.data.root.as_ref() != Some(root) {
                changed.push(format!("data.root = {}", root.display()));
                config.data.root = Some(root.clone());
            }
        }
        if let Some(tokenizer) = &self.tokenizer {
            if config.data.tokenizer.as_ref() != Some(tokenizer) {
                changed.push(format!("data.tokenizer = {}", tokenizer.display()));
                config.data.tokenizer = Some(tokenizer.clone());
            }
        }
        if let Some(precision) = self.precision {
            if config.train.precision != precision {
                changed.push(format!("train.precision = {precision:?}"));
                config.train.precision = precision;
            }
        }
        changed
    }
}

impl RunOptions {
    /// A fresh training run of `config` in `run_dir`: no resume, no initial checkpoint, no early
    /// stop, plain log lines. Override fields with struct-update syntax.
    pub fn new(config: PretrainConfig, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            config,
            run_dir: run_dir.into(),
            resume: false,
            init_from: None,
            stop_after: None,
            progress: false,
            resume_overrides: ResumeOverrides::default(),
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Last completed iteration.
    pub iteration: u64,
    /// Loss of every iteration this invocation ran (for tests and plots).
    pub losses: Vec<f64>,
    /// Steps skipped for non-finite values.
    pub skipped_steps: u64,
    /// The last validation result, if any ran.
    pub last_val: Option<LossValues>,
    /// Mean training throughput of this invocation.
    pub images_per_second: f64,
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    iteration: u64,
    loader_position: LoaderPosition,
    skipped_steps: u64,
    config: PretrainConfig,
    /// Devices of the run that wrote it (absent before data parallelism: one).
    #[serde(default = "one_device")]
    devices: usize,
}

fn one_device() -> usize {
    1
}

/// Set by Ctrl-C (or SIGTERM/SIGHUP); the loop checkpoints and stops at the end of the current
/// iteration. A second signal exits at once with status 130, for phases that do not poll the
/// flag (data loading, validation) or an iteration that takes too long.
pub fn install_interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    // A second handler (tests call `run` several times) is refused: the first flag stays active.
    let _ = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("interrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: checkpointing at the end of this iteration (again to exit now)");
    });
    flag
}

/// Teacher-forced loss over the validation split, in evaluation mode (running BatchNorm
/// statistics, no dropout), averaged over batches as upstream does; at most `max_batches`.
pub fn validate<B, M>(
    model: &M,
    loader: &DataLoader,
    max_batches: Option<usize>,
    device: &B::Device,
) -> Result<LossValues, TrainError>
where
    B: Backend,
    M: PretextModel<B>,
{
    let mut pending = Vec::new();
    let mut names = Vec::new();
    for batch in loader.iter_epoch(0) {
        if max_batches.is_some_and(|max| pending.len() >= max) {
            break;
        }
        let batch = batch?.to_device::<B>(device);
        let objective = model.objective(&batch);
        names = component_names(&objective);
        pending.push(stacked(&objective));
    }
    let scale = 1.0 / pending.len().max(1) as f64;
    Ok(read_losses(pending, &names, scale))
}

/// The validation loss of `model` on `config`'s validation split (`train.val_batches`
/// batches): what `pretrain_coco --eval-only` prints. Reads no training data.
pub fn evaluate<B, M>(
    model: &M,
    config: &PretrainConfig,
    device: &B::Device,
) -> Result<LossValues, TrainError>
where
    B: Backend,
    M: PretextModel<B>,
{
    let loader = validation_data(config)?;
    validate(model, &loader, config.train.val_batches, device)
}

/// Where [`load_model`] takes a trained model from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The newest checkpoint of a run directory, with the configuration it was trained with.
    Run(PathBuf),
    /// A checkpoint file (an official `.pth` or our safetensors) loaded into the model the
    /// given configuration describes (whose architecture it must match).
    File(PathBuf),
}

/// A trained model and the configuration that goes with it, for [`evaluate`] and
/// [`PretextModel::export_backbone`]: from [`ModelSource::Run`] the checkpoint's config with
/// `overrides` applied (`config` is not used), from [`ModelSource::File`] `config`. The
/// model's precision is the config's `train.precision`. Returns the checkpoint's iteration too
/// (0 for a file).
pub fn load_model<B, M>(
    source: &ModelSource,
    config: PretrainConfig,
    overrides: &ResumeOverrides,
    device: &B::Device,
) -> Result<(M, PretrainConfig, u64), TrainError>
where
    B: Backend,
    M: PretextModel<B>,
{
    let (model, config, iteration) = match source {
        ModelSource::Run(run_dir) => {
            let (iteration, checkpoint) = newest_checkpoint(run_dir)?;
            let mut config = read_state(&checkpoint)?.config;
            overrides.apply(&mut config);
            config.validate()?;
            let model = M::load(&checkpoint.join("model.safetensors"), device)?;
            (model, config, iteration)
        }
        ModelSource::File(path) => {
            config.validate()?;
            let mut model = M::from_config(&config, device)?;
            model.load_weights(path)?;
            (model, config, 0)
        }
    };
    let model = model.with_precision(config.train.precision);
    Ok((model, config, iteration))
}

fn newest_checkpoint(run_dir: &Path) -> Result<(u64, PathBuf), TrainError> {
    latest_checkpoint(run_dir)?.ok_or_else(|| TrainError::Checkpoint {
        path: run_dir.to_path_buf(),
        message: "no checkpoint to resume from (expected checkpoint_*/state.json)".into(),
    })
}

/// Where a run starts: its configuration and, when resuming, the checkpoint and its state.
struct RunStart {
    config: PretrainConfig,
    resume_from: Option<(u64, PathBuf)>,
    state: Option<TrainState>,
}

impl RunStart {
    /// The newest checkpoint's config with [`RunOptions::resume_overrides`] when resuming,
    /// else [`RunOptions::config`]. A new run refuses a run directory that already holds
    /// checkpoints: its first checkpoint would mix with (and prune) the other run's.
    fn of(options: &RunOptions) -> Result<Self, TrainError> {
        if !options.resume {
            let existing = if options.run_dir.is_dir() {
                latest_checkpoint(&options.run_dir)?
            } else {
                None
            };
            if let Some((iteration, _)) = existing {
                return Err(TrainError::Config(format!(
                    "the run directory `{dir}` already holds checkpoints (newest: iteration \
                     {iteration}): continue that run with --resume {dir}, or choose another \
                     --run-dir",
                    dir = options.run_dir.display()
                )));
            }
            options.config.validate()?;
            return Ok(Self {
                config: options.config.clone(),
                resume_from: None,
                state: None,
            });
        }
        let (iteration, path) = newest_checkpoint(&options.run_dir)?;
        let state = read_state(&path)?;
        let mut config = state.config.clone();
        for change in options.resume_overrides.apply(&mut config) {
            eprintln!("resuming with {change} (from the command line)");
        }
        config.validate()?;
        Ok(Self {
            config,
            resume_from: Some((iteration, path)),
            state: Some(state),
        })
    }
}

/// The configuration a run will use: the newest checkpoint's when resuming (with
/// [`RunOptions::resume_overrides`]), else [`RunOptions::config`].
pub fn run_config(options: &RunOptions) -> Result<PretrainConfig, TrainError> {
    RunStart::of(options).map(|start| start.config)
}

/// Trains (or resumes) the captioning model `model.name` names, data-parallel when `devices`
/// has several entries: what `pretrain_coco` runs.
pub fn train<B>(
    options: RunOptions,
    devices: Vec<B::Device>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    Optim<CaptioningModel<B>, B>: Send,
{
    Trainer::<B, CaptioningModel<B>>::start(options, devices, interrupted)?.run()
}

/// What [`Trainer::end_of_iteration`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next iteration.
    Continue,
    /// Stop here (an interrupt; a checkpoint has been written).
    Stop,
}

/// The pretraining loop over a [`PretextModel`] `M` on backend `B` (see the module docs).
///
/// Data parallel when started on several devices: rank 0 (`devices[0]`, this thread) reads the
/// data, validates, logs and checkpoints; ranks 1… are threads of a [`ReplicaGroup`].
/// `optim.batch_size` stays the global batch: each device trains on `batch_size /
/// (accumulation_steps · devices)` images per micro-batch, so `N` devices give the updates of
/// one device with `N`× the accumulation steps, up to floating-point summation order and
/// BatchNorm (each device normalises its own shard).
pub struct Trainer<B: AutodiffBackend, M: PretextModel<B> + AutodiffModule<B>> {
    config: PretrainConfig,
    run_dir: PathBuf,
    device: B::Device,
    ranks: usize,
    /// Taken out for the duration of a step (the optimizer consumes and returns it).
    model: Option<M>,
    optimizer: Optim<M, B>,
    replicas: Option<ReplicaGroup<B, M>>,
    data: TrainingData,
    batches: BatchIter,
    metrics: MetricsLog,
    interrupted: Arc<AtomicBool>,
    progress: Progress,
    /// Last completed iteration.
    iteration: u64,
    /// Where this invocation stops (`--stop-after`, else `optim.num_iterations`).
    last: u64,
    skipped_steps: u64,
    consecutive_skips: u64,
    started: Instant,
    /// Start of the current logging window and the images trained in it.
    window: (Instant, usize),
    images_seen: usize,
    losses: Vec<f64>,
    last_val: Option<LossValues>,
}

impl<B, M> Trainer<B, M>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B> + 'static,
    M::InnerModule: PretextModel<B::InnerBackend>,
    Optim<M, B>: Send + 'static,
{
    /// Starts a run: a new one (a fresh model, or `init_from`'s weights), or the continuation
    /// of `run_dir`'s newest checkpoint (`resume`: model, optimizer, data position and config).
    /// Creates the run directory and writes its `config.json`.
    pub fn start(
        options: RunOptions,
        devices: Vec<B::Device>,
        interrupted: Arc<AtomicBool>,
    ) -> Result<Self, TrainError> {
        let Some(device) = devices.first().cloned() else {
            return Err(TrainError::Config("no device to train on".into()));
        };
        let RunStart {
            config,
            resume_from,
            state,
        } = RunStart::of(&options)?;
        let run_dir = options.run_dir.clone();
        std::fs::create_dir_all(&run_dir).map_err(|source| TrainError::Io {
            path: run_dir.clone(),
            source,
        })?;
        write_resolved_config(&run_dir, &config)?;
        if resume_from.is_none() {
            // A new run in a directory that an earlier run left without a checkpoint (killed
            // early): its log and plot must not mix with this run's.
            MetricsLog::truncate_after(&run_dir, 0)?;
            let _ = std::fs::remove_file(run_dir.join("loss.png"));
        }

        B::seed(&device, config.random_seed);
        let model: M = match (&resume_from, &options.init_from) {
            (Some((_, path)), _) => M::load(&path.join("model.safetensors"), &device)?,
            (None, Some(init)) => {
                let mut model = M::from_config(&config, &device)?;
                model.load_weights(init)?;
                model
            }
            (None, None) => M::from_config(&config, &device)?,
        };
        let model = model.with_precision(config.train.precision);
        let data = training_data(&config)?;

        let optimizer_config = optimizer_config(&config)?;
        let checkpoint = resume_from.as_ref().map(|(_, path)| path.as_path());
        let (model, optimizer) = build_optimizer(&optimizer_config, model, checkpoint, &device)?;
        let (iteration, skipped_steps) = state
            .as_ref()
            .map_or((0, 0), |state| (state.iteration, state.skipped_steps));
        if let Some(state) = &state {
            if state.devices != devices.len() {
                eprintln!(
                    "warning: the checkpoint was written by a run on {} device(s), this one \
                     uses {}: training continues, but not exactly as the original run would have",
                    state.devices,
                    devices.len()
                );
            }
            MetricsLog::truncate_after(&run_dir, iteration)?;
        }
        // Ranks 1…: replicas of the (restored) model, each with its own optimizer built and
        // restored the same way, so every rank starts from identical state.
        let replicas = devices[1..]
            .iter()
            .map(|replica_device| {
                let replica = replicate::<B, M>(&model, replica_device)
                    .with_precision(config.train.precision);
                let (replica, optimizer) =
                    build_optimizer(&optimizer_config, replica, checkpoint, replica_device)?;
                Ok((replica_device.clone(), replica, optimizer))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let replicas = if replicas.is_empty() {
            None
        } else {
            Some(ReplicaGroup::<B, M>::start(&device, replicas)?)
        };
        let metrics = MetricsLog::open(&run_dir)?;

        let total = config.optim.num_iterations;
        let last = options
            .stop_after
            .map_or(total, |n| (iteration + n).min(total));
        let start_position = LoaderPosition::from_step(
            iteration * config.optim.accumulation_steps as u64,
            data.train.batches_per_epoch(),
        );
        if let Some(state) = state
            .as_ref()
            .filter(|s| s.loader_position != start_position)
        {
            eprintln!(
                "warning: the checkpoint stopped the data loader at {:?}, but the training set \
                 now gives {:?} ({} batches per epoch): the data changed, resuming is not exact",
                state.loader_position,
                start_position,
                data.train.batches_per_epoch()
            );
        }
        let batches = data.train.iter_from(start_position);
        Ok(Self {
            progress: Progress::new(options.progress, total, iteration),
            config,
            run_dir,
            device,
            ranks: devices.len(),
            model: Some(model),
            optimizer,
            replicas,
            data,
            batches,
            metrics,
            interrupted,
            iteration,
            last,
            skipped_steps,
            consecutive_skips: 0,
            started: Instant::now(),
            window: (Instant::now(), 0),
            images_seen: 0,
            losses: Vec::new(),
            last_val: None,
        })
    }

    /// The resolved configuration of the run.
    pub fn config(&self) -> &PretrainConfig {
        &self.config
    }

    /// The last completed iteration.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The model (rank 0's replica).
    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("the model is back after every step")
    }

    /// Whether this invocation has run all its iterations.
    pub fn is_done(&self) -> bool {
        self.iteration >= self.last
    }

    /// Runs the next iteration: seeds the RNG, reads `optim.accumulation_steps` micro-batches
    /// and trains on them (on every replica in a data-parallel run). An error leaves the trainer
    /// without its model (the step consumed it): drop the trainer and resume from the last
    /// checkpoint.
    pub fn step(&mut self) -> Result<StepResult, TrainError> {
        self.iteration += 1;
        // Dropout draws from the backend RNG: seeding it per iteration makes a resumed run
        // draw exactly the masks an uninterrupted run would.
        let seed = self
            .config
            .random_seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.iteration);
        B::seed(&self.device, seed);

        // The micro-batches wait on the host; each moves to the device only for its own
        // forward/backward, so device memory holds one at a time.
        let host_batches = (0..self.config.optim.accumulation_steps)
            .map(|_| {
                self.batches
                    .next()
                    .ok_or_else(|| TrainError::Config("the training loader ended".into()))?
                    .map_err(TrainError::Data)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let device = &self.device;
        let (model, step) = match &mut self.replicas {
            Some(group) => group.step(model, &mut self.optimizer, &host_batches, device, seed)?,
            None => train_step(
                model,
                &mut self.optimizer,
                host_batches
                    .iter()
                    .map(|batch| batch.to_device::<B>(device)),
            )?,
        };
        self.model = Some(model);
        self.images_seen += step.images;
        self.window.1 += step.images;
        self.losses.push(step.losses.loss);
        Ok(step)
    }

    /// After [`Trainer::step`]: counts a skipped step, logs (every `train.log_every`), stops
    /// with a checkpoint after `train.max_consecutive_skips` skipped steps in a row (an error),
    /// validates (every `train.val_every`), checkpoints (every `train.checkpoint_every`, at the
    /// last iteration, on an interrupt) and stops on an interrupt.
    pub fn end_of_iteration(&mut self, step: &StepResult) -> Result<Flow, TrainError> {
        let iteration = self.iteration;
        let skipped = step.report.skipped;
        if skipped {
            self.skipped_steps += 1;
            self.consecutive_skips += 1;
            self.progress.say(format!(
                "iteration {iteration}: non-finite loss or gradient, step skipped ({} so far)",
                self.skipped_steps
            ));
        } else {
            self.consecutive_skips = 0;
        }
        self.progress.bar.set_position(iteration);

        let train = &self.config.train;
        let stopping = skipped && self.consecutive_skips >= train.max_consecutive_skips;
        if iteration.is_multiple_of(train.log_every) || iteration == self.last || stopping {
            self.log(step)?;
        }
        // After the log line, so the stopping iteration is in metrics.jsonl.
        if stopping {
            let checkpoint = self.checkpoint()?;
            return Err(TrainError::Diverged {
                count: self.consecutive_skips,
                iteration,
                checkpoint,
            });
        }
        let train = &self.config.train;
        if iteration.is_multiple_of(train.val_every)
            || iteration == self.config.optim.num_iterations
        {
            self.validate()?;
        }
        let interrupt = self.interrupted.load(Ordering::SeqCst);
        let train = &self.config.train;
        if iteration.is_multiple_of(train.checkpoint_every) || iteration == self.last || interrupt {
            let path = self.checkpoint()?;
            if interrupt {
                self.progress.say(format!(
                    "interrupted: checkpoint written to {}",
                    path.display()
                ));
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// [`Trainer::step`] and [`Trainer::end_of_iteration`] until the run ends or stops, then
    /// [`Trainer::finish`].
    pub fn run(mut self) -> Result<RunSummary, TrainError> {
        while !self.is_done() {
            let step = self.step()?;
            if self.end_of_iteration(&step)? == Flow::Stop {
                break;
            }
        }
        self.finish()
    }

    /// Stops the replicas and, when the run reached `optim.num_iterations`, writes the
    /// backbone (`backbone.safetensors`, torchvision names) into the run directory.
    pub fn finish(mut self) -> Result<RunSummary, TrainError> {
        if let Some(group) = self.replicas.take() {
            group.finish()?;
        }
        self.progress.bar.finish_and_clear();
        if self.iteration == self.config.optim.num_iterations {
            self.model()
                .export_backbone(&self.run_dir.join("backbone.safetensors"))?;
        }
        Ok(RunSummary {
            iteration: self.iteration,
            losses: std::mem::take(&mut self.losses),
            skipped_steps: self.skipped_steps,
            last_val: self.last_val.take(),
            images_per_second: self.images_seen as f64
                / self.started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    fn log(&mut self, step: &StepResult) -> Result<(), TrainError> {
        let elapsed = self.window.0.elapsed().as_secs_f64().max(1e-9);
        let images_per_second = self.window.1 as f64 / elapsed;
        self.window = (Instant::now(), 0);
        let learning_rates: Vec<(String, f64)> = self
            .optimizer
            .learning_rates()
            .into_iter()
            .map(|group| (group.name, group.lr))
            .collect();
        let components = step.losses.components_line();
        let lrs: Vec<String> = learning_rates
            .iter()
            .map(|(name, lr)| format!("lr[{name}] {lr:.3e}"))
            .collect();
        self.metrics.append(&TrainRecord::new(
            self.iteration,
            &step.losses,
            step.report.grad_norm,
            learning_rates,
            images_per_second,
            self.skipped_steps,
        ))?;
        let line = format!(
            "loss {:.4} ({components}) {} {images_per_second:.1} img/s",
            step.losses.loss,
            lrs.join(" "),
        );
        if self.progress.visible {
            self.progress.bar.set_message(line);
        } else {
            println!(
                "iteration {}/{}: {line}",
                self.iteration, self.config.optim.num_iterations
            );
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<(), TrainError> {
        let val = validate::<B::InnerBackend, _>(
            &self.model().valid(),
            &self.data.val,
            self.config.train.val_batches,
            &self.device,
        )?;
        self.metrics.append(&ValRecord::new(self.iteration, &val))?;
        let components = val.components_line();
        self.progress.say(format!(
            "iteration {}: val loss {:.4} ({components})",
            self.iteration, val.loss
        ));
        self.last_val = Some(val);
        Ok(())
    }

    /// A checkpoint, then the loss plot (a convenience: failing to draw it must not stop
    /// training).
    fn checkpoint(&self) -> Result<PathBuf, TrainError> {
        let accumulation = self.config.optim.accumulation_steps as u64;
        let state = TrainState {
            iteration: self.iteration,
            loader_position: LoaderPosition::from_step(
                self.iteration * accumulation,
                self.data.train.batches_per_epoch(),
            ),
            skipped_steps: self.skipped_steps,
            config: self.config.clone(),
            devices: self.ranks,
        };
        let model = self.model();
        let path = write_checkpoint(
            &self.run_dir,
            self.iteration,
            self.config.train.keep_last,
            |dir| {
                model.save(&dir.join("model.safetensors"))?;
                let optimizer_file = dir.join("optimizer.mpk");
                NamedMpkFileRecorder::<FullPrecisionSettings>::new()
                    .record(self.optimizer.to_record(), optimizer_file.clone())
                    .map_err(|err| TrainError::Checkpoint {
                        path: optimizer_file.clone(),
                        message: err.to_string(),
                    })?;
                let state_file = dir.join("state.json");
                let text = serde_json::to_string_pretty(&state).map_err(|err| TrainError::Io {
                    path: state_file.clone(),
                    source: std::io::Error::other(err),
                })?;
                std::fs::write(&state_file, text).map_err(|source| TrainError::Io {
                    path: state_file,
                    source,
                })
            },
        )?;
        if let Err(err) = plot_losses(&self.run_dir, &self.run_dir.join("loss.png")) {
            self.progress
                .say(format!("warning: could not draw the loss plot: {err}"));
        }
        Ok(path)
    }
}

/// The progress bar, or plain lines without one.
struct Progress {
    bar: ProgressBar,
    visible: bool,
}

impl Progress {
    fn new(visible: bool, total: u64, position: u64) -> Self {
        let bar = if visible {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30} {pos}/{len} it {msg} ETA {eta}")
            {
                bar.set_style(style);
            }
            bar.set_position(position);
            // The ETA is estimated from this invocation's rate, not from the resumed position.
            bar.reset_eta();
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar, visible }
    }

    /// A line above the bar, or on stdout without one (a hidden bar drops its lines).
    fn say(&self, line: String) {
        if self.visible {
            self.bar.println(line);
        } else {
            println!("{line}");
        }
    }
}

/// The optimizer for `model` on `device`, restored from `checkpoint`'s `optimizer.mpk` when
/// resuming (which may also update the module).
fn build_optimizer<B, M>(
    config: &GroupedOptimizerConfig,
    model: M,
    checkpoint: Option<&Path>,
    device: &B::Device,
) -> Result<(M, Optim<M, B>), TrainError>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B>,
{
    let optimizer: Optim<M, B> = config
        .init(&model)
        .map_err(|err| TrainError::Config(format!("optimizer: {err}")))?;
    let Some(checkpoint) = checkpoint else {
        return Ok((model, optimizer));
    };
    let file = checkpoint.join("optimizer.mpk");
    let checkpoint_error = |message: String| TrainError::Checkpoint {
        path: file.clone(),
        message,
    };
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(file.clone(), device)
        .map_err(|err| checkpoint_error(err.to_string()))?;
    let (optimizer, model) = optimizer
        .load_record(record, model)
        .map_err(|err| checkpoint_error(err.to_string()))?;
    Ok((model, optimizer))
}

fn read_state(checkpoint: &Path) -> Result<TrainState, TrainError> {
    let path = checkpoint.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| TrainError::Checkpoint {
        path,
        message: err.to_string(),
    })
}

fn write_resolved_config(run_dir: &Path, config: &PretrainConfig) -> Result<(), TrainError> {
    let path = run_dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|err| TrainError::Io {
        path: path.clone(),
        source: std::io::Error::other(err),
    })?;
    write_file_atomically(&path, text.as_bytes())
}
