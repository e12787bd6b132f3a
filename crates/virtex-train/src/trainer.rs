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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use virtex::{CaptioningModel, ClassificationModel, InitReport, MaskedLmModel, Precision};
use virtex_data::{BatchIter, DataLoader, LoaderPosition, ShardPosition};
use virtex_optim::GroupedOptimizerConfig;

use crate::checkpoint::{
    latest_checkpoint, remove_stale_temporaries, write_checkpoint, write_file_atomically,
};
use crate::config::PretrainConfig;
use crate::data_parallel::{deterministic_param_ids, replicate, MultiNode, ReplicaGroup, Topology};
use crate::error::TrainError;
use crate::factories::{optimizer_config, training_data_for_node, validation_data, TrainingData};
use crate::metrics::{device_memory_bytes, plot_losses, MetricsLog, TrainRecord, ValRecord};
use crate::pretext::PretextModel;
use crate::run_dir::{results_in, RunLock, LOCK_FILE};
use crate::samples::{write_samples_page, SampleCaptioner, SampleImages};
use crate::step::{
    component_names, read_losses, stacked, train_step, LossValues, Optim, StepResult,
};
use crate::tensorboard::{self, EventWriter};

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
    /// One node of a multi-node run (`--num-nodes`); `None`: this process is the whole run.
    /// Only node 0 writes into `run_dir`; the others read a resumed run's checkpoint from
    /// theirs (node 0's, shared or copied) and write nothing.
    pub multi_node: Option<MultiNode>,
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
                config.train.precision = precision.into();
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
            multi_node: None,
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
    /// Images skipped as unreadable (`data.skip_bad_images`) since the run began.
    #[serde(default)]
    pub skipped_images: u64,
    /// Whether the run stopped early on an interrupt (SIGINT, SIGTERM, SIGHUP) after writing a
    /// checkpoint; [`interrupt_signal`] says which.
    #[serde(default)]
    pub interrupted: bool,
    /// The newest checkpoint of the run, if any.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
}

impl RunSummary {
    /// The process exit status a command should end with: 0 for a run that ran its iterations,
    /// `128 + signal` (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP) for an interrupted one,
    /// as shells report a process stopped by that signal.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            128 + interrupt_signal().map_or(2, |signal| signal as u8)
        } else {
            0
        }
    }
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    iteration: u64,
    loader_position: LoaderPosition,
    skipped_steps: u64,
    /// Images skipped as unreadable so far (absent in older checkpoints: 0).
    #[serde(default)]
    skipped_images: u64,
    config: PretrainConfig,
    /// Devices of the run that wrote it (absent before data parallelism: one).
    #[serde(default = "one_device")]
    devices: usize,
    /// With `data.format = webdataset`: where the training shard stream stood (epoch, samples
    /// yielded, shard and offset being read). `loader_position` is what resumes (the stream is
    /// rebuilt from it); this is compared on resume to tell that the shards did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard_position: Option<ShardPosition>,
}

fn one_device() -> usize {
    1
}

/// The signal that set the flag of [`install_interrupt_flag`] (0 = none yet).
static INTERRUPT_SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Set by SIGINT (Ctrl-C), SIGTERM or SIGHUP: the loop checkpoints and stops at the end of the
/// current iteration ([`RunSummary::interrupted`]; [`interrupt_signal`] names the signal). A
/// second signal exits at once with status `128 + signal`, for phases that do not poll the flag (data
/// loading, validation) or an iteration that takes too long. Installed once per process; later
/// calls return the same flag.
pub fn install_interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = INTERRUPT_SIGNAL.get_or_init(Arc::default).clone();
        for number in interrupt_signals() {
            // Registered first, so it sees the flag before this signal sets it: a second
            // signal finds it set and exits.
            let _ = signal_hook::flag::register_conditional_shutdown(
                number,
                128 + number,
                flag.clone(),
            );
            let _ = signal_hook::flag::register_usize(number, signal.clone(), number as usize);
            let _ = signal_hook::flag::register(number, flag.clone());
        }
        flag
    })
    .clone()
}

/// The signals that interrupt a run.
fn interrupt_signals() -> Vec<std::ffi::c_int> {
    #[cfg(unix)]
    let signals = vec![
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ];
    #[cfg(not(unix))]
    let signals = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    signals
}

/// The signal number that interrupted the run (2 = SIGINT, 15 = SIGTERM, 1 = SIGHUP), if one
/// arrived since [`install_interrupt_flag`].
pub fn interrupt_signal() -> Option<i32> {
    INTERRUPT_SIGNAL
        .get()
        .map(|signal| signal.load(Ordering::SeqCst))
        .filter(|&signal| signal != 0)
        .map(|signal| signal as i32)
}

/// The name of a signal number, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
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
        let labels = loader
            .try_dataset()
            .and_then(|dataset| dataset.object_labels())
            .map(Arc::as_ref);
        let batch = batch?.to_device_labelled::<B>(device, labels);
        let objective = model.objective(&batch);
        names = component_names(&objective);
        pending.push(stacked(&objective));
    }
    let scale = 1.0 / pending.len().max(1) as f64;
    Ok(read_losses(pending, &names, scale))
}

/// The validation loss of `model` on `config`'s validation split (`train.val_batches`
/// batches): what `pretrain_coco --eval-only` prints. Reads no training data; reseeds the
/// backend RNG with `random_seed` (masked LM draws its masks from it).
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
    // Masked LM draws its masks from the backend RNG: seeded, the same model evaluates to the
    // same loss every time (the other models draw nothing in evaluation mode).
    B::seed(device, config.random_seed);
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

impl ModelSource {
    /// Refuses an output path (of `--export-backbone`, say) that is this source, lies inside it
    /// (the run directory, whose checkpoints it would corrupt) or inside any training
    /// checkpoint. Call it before loading the model.
    pub fn check_output(&self, output: &Path) -> Result<(), TrainError> {
        let input = match self {
            Self::Run(run_dir) => run_dir,
            Self::File(file) => file,
        };
        Ok(virtex_device::check_output_path(output, &[input])?)
    }
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
    let model = with_run_settings(model, &config);
    Ok((model, config, iteration))
}

/// What a model of a run takes from its config after being built or loaded (and is not saved
/// with the weights): the precision (`auto` resolved for backend `B`) and a frozen backbone.
fn with_run_settings<B: Backend, M: PretextModel<B>>(model: M, config: &PretrainConfig) -> M {
    let precision = config
        .train
        .precision
        .resolve(virtex_device::runs_on_cuda::<B>());
    let model = model.with_precision(precision);
    if config.model.visual_frozen {
        model.with_frozen_visual()
    } else {
        model
    }
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
    /// else [`RunOptions::config`]. A new run refuses a run directory that holds another run's
    /// results (config, metrics, plot, backbone or checkpoints): it would overwrite them, or
    /// mix its checkpoints with (and prune) the other run's.
    fn of(options: &RunOptions) -> Result<Self, TrainError> {
        if !options.resume {
            let found = results_in(&options.run_dir)?;
            if !found.is_empty() {
                return Err(TrainError::RunDirHoldsResults {
                    path: options.run_dir.clone(),
                    found,
                });
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

/// Trains (or resumes) the model `model.name` names (a [`CaptioningModel`], or a
/// [`ClassificationModel`] for `token_classification` and `multilabel_classification`, a
/// [`MaskedLmModel`] for `masked_lm`),
/// data-parallel when `devices` has
/// several entries: what `pretrain_coco` runs.
pub fn train<B>(
    options: RunOptions,
    devices: Vec<B::Device>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    Optim<CaptioningModel<B>, B>: Send,
    Optim<ClassificationModel<B>, B>: Send,
    Optim<MaskedLmModel<B>, B>: Send,
{
    match run_config(&options)?.model.name.as_str() {
        "token_classification" | "multilabel_classification" => {
            Trainer::<B, ClassificationModel<B>>::start(options, devices, interrupted)?.run()
        }
        "masked_lm" => Trainer::<B, MaskedLmModel<B>>::start(options, devices, interrupted)?.run(),
        _ => Trainer::<B, CaptioningModel<B>>::start(options, devices, interrupted)?.run(),
    }
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
    /// Held for the trainer's life: one process per run directory (node 0 of a multi-node run
    /// only; the other nodes write nothing there).
    _lock: Option<RunLock>,
    device: B::Device,
    /// Replicas over all nodes (what `state.json` records as `devices`).
    ranks: usize,
    /// This node's place in the run.
    topology: Topology,
    /// Taken out for the duration of a step (the optimizer consumes and returns it).
    model: Option<M>,
    optimizer: Optim<M, B>,
    replicas: Option<ReplicaGroup<B, M>>,
    data: TrainingData,
    batches: BatchIter,
    /// `None` on nodes other than node 0.
    metrics: Option<MetricsLog>,
    /// TensorBoard scalars of this invocation (its own event file); `None` on nodes other than
    /// node 0.
    events: Option<EventWriter>,
    /// The validation images captioned at every validation (`train.sample_captions`).
    samples: Option<SampleImages>,
    interrupted: Arc<AtomicBool>,
    /// Whether [`Trainer::end_of_iteration`] stopped the run on an interrupt.
    stopped_by_interrupt: bool,
    progress: Progress,
    /// Last completed iteration.
    iteration: u64,
    /// The newest checkpoint of this run (iteration, directory).
    last_checkpoint: Option<(u64, PathBuf)>,
    /// Where this invocation stops (`--stop-after`, else `optim.num_iterations`).
    last: u64,
    skipped_steps: u64,
    /// Images skipped as unreadable (`data.skip_bad_images`) since the run began.
    skipped_images: u64,
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
    M::InnerModule: PretextModel<B::InnerBackend> + SampleCaptioner<B::InnerBackend>,
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
        let run_dir = options.run_dir.clone();
        if let Some(node) = &options.multi_node {
            node.check()?;
            if !node.is_primary() {
                // Writes nothing, so takes no lock: node 0 may hold this very directory.
                return Self::start_locked(options, devices, interrupted, None);
            }
        }
        std::fs::create_dir_all(&run_dir).map_err(|source| TrainError::Io {
            path: run_dir.clone(),
            source,
        })?;
        // Held until the trainer is dropped: a second process on this directory is refused.
        let lock = Some(RunLock::acquire(&run_dir)?);
        let resume = options.resume;
        Self::start_locked(options, devices, interrupted, lock).inspect_err(|_| {
            // A failed start leaves nothing behind: it writes into the directory only once
            // everything is built, so a new run's directory holds just the lock file.
            if !resume && results_in(&run_dir).is_ok_and(|found| found.is_empty()) {
                let _ = std::fs::remove_file(run_dir.join(LOCK_FILE));
                let _ = std::fs::remove_dir(&run_dir);
            }
        })
    }

    fn start_locked(
        options: RunOptions,
        devices: Vec<B::Device>,
        interrupted: Arc<AtomicBool>,
        lock: Option<RunLock>,
    ) -> Result<Self, TrainError> {
        let Some(device) = devices.first().cloned() else {
            return Err(TrainError::Config("no device to train on".into()));
        };
        let topology = Topology::new(options.multi_node.as_ref(), devices.len());
        let primary = topology.is_primary();
        let RunStart {
            mut config,
            resume_from,
            state,
        } = RunStart::of(&options)?;
        if (devices.len() > 1 || options.multi_node.is_some())
            && crate::factories::is_multilabel(&config)
        {
            // The replica group moves its shards to their devices without the object labels.
            return Err(TrainError::Config(
                "model.name multilabel_classification trains on one device of one node only \
                 (its object labels do not reach data-parallel replicas yet)"
                    .into(),
            ));
        }
        // Upstream's BatchNorm batch on this many devices (the micro-batches of a step).
        config.resolve_batch_norm_batch(topology.world_size())?;
        // `train.precision = auto`: bf16 on CUDA, f32 elsewhere (recorded resolved).
        config.resolve_precision(virtex_device::runs_on_cuda::<B>());
        let run_dir = options.run_dir.clone();
        // This process holds the lock, so every `.partial-*` here is left by a process killed
        // while writing: remove them now rather than at the first checkpoint, and say so.
        for path in remove_stale_temporaries(&run_dir, std::time::SystemTime::now()) {
            eprintln!(
                "removed {}, an unfinished write left by a process that was killed",
                path.display()
            );
        }
        if let Some((iteration, _)) = &resume_from {
            if *iteration >= config.optim.num_iterations {
                return Err(TrainError::AlreadyComplete {
                    path: run_dir,
                    iteration: *iteration,
                });
            }
        }
        config.data.apply_image_limit();

        B::seed(&device, config.random_seed);
        let mut init_report = None;
        let model: M = match (&resume_from, &options.init_from) {
            (Some((_, path)), _) => M::load(&path.join("model.safetensors"), &device)?,
            (None, init) => {
                let mut model = M::from_config(&config, &device)?;
                if let Some(weights) = &config.model.visual_pretrained {
                    model.load_visual_weights(weights)?;
                }
                if let Some(init) = init {
                    let report = model.init_from(init)?;
                    print_init_report(init, &report);
                    init_report = Some(InitFromRecord::new(init, report));
                }
                model
            }
        };
        let model = with_run_settings(model, &config);
        // The nodes of a multi-node run all-reduce gradients by parameter id: the same ids
        // everywhere (a resumed run gets the saved ones from its optimizer record instead).
        let model = if options.multi_node.is_some() && resume_from.is_none() {
            deterministic_param_ids(model)
        } else {
            model
        };
        // The training data in its deterministic order: this node's part of every global
        // micro-batch (its devices' shards; `ReplicaGroup::step` hands them to the devices).
        let data = training_data_for_node(&config, topology)?;
        let listed_skips = data
            .train
            .try_dataset()
            .map(|dataset| dataset.coco().skipped());
        for skipped in listed_skips.into_iter().flatten() {
            eprintln!(
                "skipped image {}: {} (data.skip_bad_images)",
                skipped.path.display(),
                skipped.reason
            );
        }

        let optimizer_config = optimizer_config(&config)?;
        let checkpoint = resume_from.as_ref().map(|(_, path)| path.as_path());
        let (model, optimizer) = build_optimizer(&optimizer_config, model, checkpoint, &device)?;
        let (iteration, skipped_steps, skipped_images) =
            state.as_ref().map_or((0, 0, 0), |state| {
                (state.iteration, state.skipped_steps, state.skipped_images)
            });
        if let Some(state) = &state {
            if state.devices != topology.world_size() && primary {
                eprintln!(
                    "warning: the checkpoint was written by a run on {} device(s), this one \
                     uses {}: training continues, but not exactly as the original run would have",
                    state.devices,
                    topology.world_size()
                );
            }
        }
        // Ranks 1…: replicas of the (restored) model, each with its own optimizer built and
        // restored the same way, so every rank starts from identical state.
        let replicas = devices[1..]
            .iter()
            .map(|replica_device| {
                let replica = with_run_settings(replicate::<B, M>(&model, replica_device), &config);
                let (replica, optimizer) =
                    build_optimizer(&optimizer_config, replica, checkpoint, replica_device)?;
                Ok((replica_device.clone(), replica, optimizer))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let replicas = if replicas.is_empty() && options.multi_node.is_none() {
            None
        } else {
            Some(ReplicaGroup::<B, M>::start_nodes(
                &device,
                replicas,
                options.multi_node.as_ref(),
            )?)
        };

        // Everything is built: only now does the run write into its directory (node 0 only).
        if primary {
            write_resolved_config(&run_dir, &config)?;
        }
        if let Some(record) = init_report.as_ref().filter(|_| primary) {
            record.write(&run_dir)?;
        }
        if state.is_some() && primary {
            MetricsLog::truncate_after(&run_dir, iteration)?;
            // The same for TensorBoard, whose events of those iterations would be drawn twice.
            tensorboard::truncate_after(&run_dir, iteration)?;
            // And the samples page, rebuilt from the truncated log, so it never shows
            // captions of iterations this run replays.
            if run_dir.join(crate::samples::SAMPLES_PAGE).exists() {
                write_samples_page(&run_dir)?;
            }
        }
        let (metrics, events, samples) = if primary {
            (
                Some(MetricsLog::open(&run_dir)?),
                Some(EventWriter::create(&run_dir)?),
                sample_images(&data, &config, &run_dir),
            )
        } else {
            (None, None, None)
        };

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
            .filter(|s| s.loader_position != start_position && primary)
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
        if let Some(saved) = state
            .as_ref()
            .and_then(|s| s.shard_position.as_ref())
            .filter(|_| primary)
        {
            if batches.shard_position().as_ref() != Some(saved) {
                eprintln!(
                    "warning: the checkpoint's shard stream stood at {saved:?}, but the shards \
                     now give {:?} at the same batch: the shards changed, resuming is not exact",
                    batches.shard_position()
                );
            }
        }
        Ok(Self {
            progress: Progress::new(options.progress, total, iteration),
            config,
            last_checkpoint: resume_from,
            run_dir,
            _lock: lock,
            device,
            ranks: topology.world_size(),
            topology,
            model: Some(model),
            optimizer,
            replicas,
            data,
            batches,
            metrics,
            events,
            samples,
            interrupted,
            stopped_by_interrupt: false,
            iteration,
            last,
            skipped_steps,
            skipped_images,
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
    /// and trains on them (on every replica in a data-parallel run).
    ///
    /// An error while reading the data (a file that became unreadable) leaves the trainer as
    /// it was, at the last completed iteration; [`Trainer::run`] then writes a checkpoint
    /// before stopping. An error in the step itself leaves the trainer without its model (the
    /// optimizer consumed it): drop the trainer and resume from the last checkpoint.
    pub fn step(&mut self) -> Result<StepResult, TrainError> {
        let iteration = self.iteration + 1;
        // Dropout draws from the backend RNG: seeding it per iteration makes a resumed run
        // draw exactly the masks an uninterrupted run would.
        let seed = self
            .config
            .random_seed
            .wrapping_mul(1_000_003)
            .wrapping_add(iteration);
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
        for skipped in host_batches.iter().flat_map(|batch| &batch.skipped) {
            self.skipped_images += 1;
            self.progress.say(format!(
                "iteration {iteration}: skipped image {}: {} ({} skipped so far)",
                skipped.path.display(),
                skipped.reason,
                self.skipped_images
            ));
        }
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let device = &self.device;
        let labels = self
            .data
            .train
            .try_dataset()
            .and_then(|dataset| dataset.object_labels())
            .map(Arc::as_ref);
        let (model, step) = match &mut self.replicas {
            Some(group) => group.step(model, &mut self.optimizer, &host_batches, device, seed)?,
            None => train_step(
                model,
                &mut self.optimizer,
                host_batches
                    .iter()
                    .map(|batch| batch.to_device_labelled::<B>(device, labels)),
            )?,
        };
        self.model = Some(model);
        self.iteration = iteration;
        self.images_seen += step.images;
        self.window.1 += step.images;
        self.losses.push(step.losses.loss);
        Ok(step)
    }

    /// After [`Trainer::step`]: counts a skipped step, logs (every `train.log_every`), stops
    /// with a checkpoint after `train.max_consecutive_skips` skipped steps in a row (an error),
    /// validates (every `train.val_every`, with the sample captions of
    /// `train.sample_captions`), checkpoints (every `train.checkpoint_every`, at the
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
        if !self.topology.is_primary() {
            // Node 0 logs, validates and checkpoints; the others only follow the same
            // decisions (they see the same all-reduced gradients, so the same skips).
            if stopping {
                return Err(TrainError::Diverged {
                    count: self.consecutive_skips,
                    iteration,
                    checkpoint: self.run_dir.clone(),
                });
            }
            if self.interrupted.load(Ordering::SeqCst) {
                self.stopped_by_interrupt = true;
                return Ok(Flow::Stop);
            }
            return Ok(Flow::Continue);
        }
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
                self.stopped_by_interrupt = true;
                self.progress.say(format!(
                    "interrupted{}: checkpoint written to {}",
                    interrupt_signal()
                        .map_or_else(String::new, |signal| format!(" by {}", signal_name(signal))),
                    path.display()
                ));
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// [`Trainer::step`] and [`Trainer::end_of_iteration`] until the run ends or stops, then
    /// [`Trainer::finish`].
    ///
    /// An error that leaves the model valid (unreadable data, a failed validation) first
    /// writes a checkpoint of the last completed iteration, so no finished work is lost:
    /// [`TrainError::Stopped`] names it.
    pub fn run(mut self) -> Result<RunSummary, TrainError> {
        while !self.is_done() {
            let flow = match self.step() {
                Ok(step) => self.end_of_iteration(&step),
                Err(err) => Err(err),
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(err) => return Err(self.save_before_stopping(err)),
            }
        }
        self.finish()
    }

    /// After an error: a checkpoint of the last completed iteration when the model is intact
    /// and that iteration has none yet; the error, wrapped to name it.
    fn save_before_stopping(&mut self, cause: TrainError) -> TrainError {
        if matches!(cause, TrainError::Diverged { .. })
            || self.model.is_none()
            || !self.topology.is_primary()
        {
            return cause;
        }
        if let Some(group) = self.replicas.take() {
            // The replicas hold no state rank 0 lacks; stop their threads.
            let _ = group.finish();
        }
        let saved = match &self.last_checkpoint {
            Some((iteration, path)) if *iteration == self.iteration => Ok(path.clone()),
            _ if self.iteration == 0 => return cause,
            _ => self.checkpoint(),
        };
        self.progress.bar.finish_and_clear();
        match saved {
            Ok(checkpoint) => TrainError::Stopped {
                cause: Box::new(cause),
                iteration: self.iteration,
                checkpoint,
                run_dir: self.run_dir.clone(),
            },
            Err(err) => {
                eprintln!("could not write a checkpoint after the error: {err}");
                cause
            }
        }
    }

    /// Stops the replicas and, when the run reached `optim.num_iterations`, writes the
    /// backbone (`backbone.safetensors`, torchvision names) into the run directory.
    pub fn finish(mut self) -> Result<RunSummary, TrainError> {
        if let Some(group) = self.replicas.take() {
            group.finish()?;
        }
        self.progress.bar.finish_and_clear();
        if self.iteration == self.config.optim.num_iterations && self.topology.is_primary() {
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
            skipped_images: self.skipped_images,
            interrupted: self.stopped_by_interrupt,
            checkpoint: self.last_checkpoint.take().map(|(_, path)| path),
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
        let record = TrainRecord {
            skipped_images: self.skipped_images,
            device_memory_bytes: device_memory_bytes::<B>(&self.device),
            ..TrainRecord::new(
                self.iteration,
                &step.losses,
                step.report.grad_norm,
                learning_rates,
                images_per_second,
                self.skipped_steps,
            )
        };
        primary_only(&mut self.metrics)?.append(&record)?;
        let mut scalars = vec![("train/loss".to_string(), record.loss)];
        scalars.extend(
            record
                .components
                .iter()
                .map(|(name, value)| (format!("train/{name}"), value.0)),
        );
        scalars.extend(
            record
                .learning_rates
                .iter()
                .map(|(group, lr)| (format!("lr/{group}"), *lr)),
        );
        scalars.push(("train/grad_norm".into(), record.grad_norm));
        scalars.push(("train/images_per_second".into(), record.images_per_second));
        if let Some(bytes) = record.device_memory_bytes {
            scalars.push(("train/device_memory_bytes".into(), bytes as f64));
        }
        primary_only(&mut self.events)?.scalars(self.iteration, &scalars)?;
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
        let model = self.model().valid();
        let val = validate::<B::InnerBackend, _>(
            &model,
            &self.data.val,
            self.config.train.val_batches,
            &self.device,
        )?;
        let record = ValRecord::new(self.iteration, &val);
        primary_only(&mut self.metrics)?.append(&record)?;
        let mut scalars = vec![("val/loss".to_string(), record.val_loss)];
        scalars.extend(
            record
                .components
                .iter()
                .map(|(name, value)| (format!("val/{name}"), value.0)),
        );
        primary_only(&mut self.events)?.scalars(self.iteration, &scalars)?;
        let components = val.components_line();
        self.progress.say(format!(
            "iteration {}: val loss {:.4} ({components})",
            self.iteration, val.loss
        ));
        self.last_val = Some(val);
        if let Some(samples) = &self.samples {
            let record = samples.caption::<B::InnerBackend, _>(
                &model,
                self.data.val.tokenizer(),
                self.iteration,
                &self.device,
            )?;
            if let Some(record) = record {
                primary_only(&mut self.metrics)?.append(&record)?;
                // The page is a view of metrics.jsonl: failing to write it must not stop
                // training.
                if let Err(err) = write_samples_page(&self.run_dir) {
                    self.progress
                        .say(format!("warning: could not write samples.html: {err}"));
                }
            }
        }
        Ok(())
    }

    /// A checkpoint, then the loss plot (a convenience: failing to draw it must not stop
    /// training).
    fn checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let accumulation = self.config.optim.accumulation_steps as u64;
        let state = TrainState {
            iteration: self.iteration,
            loader_position: LoaderPosition::from_step(
                self.iteration * accumulation,
                self.data.train.batches_per_epoch(),
            ),
            skipped_steps: self.skipped_steps,
            skipped_images: self.skipped_images,
            config: self.config.clone(),
            devices: self.ranks,
            shard_position: self.batches.shard_position(),
        };
        let model = self.model();
        let path = write_checkpoint(
            &self.run_dir,
            self.iteration,
            self.config.train.keep_last,
            |dir| {
                model.save(&dir.join("model.safetensors"))?;
                let optimizer_file = dir.join("optimizer.mpk");
                write_record::<B, _>(self.optimizer.to_record(), &optimizer_file)?;
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
        self.last_checkpoint = Some((self.iteration, path.clone()));
        if let Err(err) = plot_losses(&self.run_dir, &self.run_dir.join("loss.png")) {
            self.progress
                .say(format!("warning: could not draw the loss plot: {err}"));
        }
        Ok(path)
    }
}

/// The metrics or event writer, which only node 0 of a multi-node run has.
fn primary_only<T>(writer: &mut Option<T>) -> Result<&mut T, TrainError> {
    writer.as_mut().ok_or_else(|| {
        TrainError::DataParallel("only node 0 of a multi-node run writes metrics".into())
    })
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
    let bytes = std::fs::read(&file).map_err(|source| TrainError::Io {
        path: file.clone(),
        source,
    })?;
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|err| {
            checkpoint_error(format!(
                "the optimizer state cannot be read: the file is damaged, or was written for \
                 another model or optimizer configuration ({})",
                recorder_message(&err)
            ))
        })?;
    let (optimizer, model) = optimizer.load_record(record, model).map_err(|err| {
        checkpoint_error(format!(
            "the optimizer state does not fit this model and optimizer: {err}"
        ))
    })?;
    Ok((model, optimizer))
}

/// Writes a burn record as named MessagePack (what `NamedMpkFileRecorder` writes), encoded in
/// memory and then written with std, so that a full disk is reported as the I/O error it is
/// ("No space left on device") instead of as an encoder error.
pub(crate) fn write_record<B: Backend, R: burn::record::Record<B>>(
    record: R,
    path: &Path,
) -> Result<(), TrainError> {
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(record, ())
        .map_err(|err| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot encode the state: {}", recorder_message(&err)),
        })?;
    std::fs::write(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A burn recorder error as one readable line. Its `Display` is a `Debug` dump over several
/// lines, with advice about burn's cargo features that does not apply to users of this crate.
fn recorder_message(err: &burn::record::RecorderError) -> String {
    let (burn::record::RecorderError::FileNotFound(text)
    | burn::record::RecorderError::DeserializeError(text)
    | burn::record::RecorderError::Unknown(text)) = err;
    let detail = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.contains("feature")
                && !line.starts_with("Unable to load record")
        })
        .map(|line| line.trim_start_matches("Error: "))
        .collect::<Vec<_>>()
        .join("; ");
    let mut detail: String = detail.chars().take(300).collect();
    if detail.is_empty() {
        detail = "no details".into();
    }
    detail
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

/// The sample images of a run (`train.sample_captions`), their thumbnails written into the run
/// directory. Sample captions are a convenience: an image that cannot be read turns them off
/// with a warning instead of stopping the run.
fn sample_images(
    data: &TrainingData,
    config: &PretrainConfig,
    run_dir: &Path,
) -> Option<SampleImages> {
    if config.train.sample_captions > 0 && data.val.shards().is_some() {
        // The samples page shows validation image files; shard members have none.
        eprintln!("note: no sample captions (train.sample_captions) with data.format=webdataset");
        return None;
    }
    let samples =
        SampleImages::from_loader(&data.val, config.train.sample_captions).and_then(|samples| {
            if let Some(samples) = &samples {
                samples.write_thumbnails(run_dir)?;
            }
            Ok(samples)
        });
    match samples {
        Ok(samples) => samples,
        Err(err) => {
            eprintln!("warning: no sample captions (train.sample_captions): {err}");
            None
        }
    }
}

/// `RUN/init_from.json`: what `--init-from` loaded, initialised and left unused.
#[derive(Debug, Serialize)]
struct InitFromRecord {
    checkpoint: PathBuf,
    cnn_tensors: usize,
    loaded: Vec<String>,
    initialised: Vec<String>,
    unused: Vec<String>,
}

impl InitFromRecord {
    fn new(checkpoint: &Path, report: InitReport) -> Self {
        Self {
            checkpoint: checkpoint.to_path_buf(),
            cnn_tensors: report.cnn_tensors,
            loaded: report.loaded,
            initialised: report.initialised,
            unused: report.unused,
        }
    }

    fn write(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join(INIT_FROM_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|err| TrainError::Io {
            path: path.clone(),
            source: std::io::Error::other(err),
        })?;
        write_file_atomically(&path, text.as_bytes())
    }
}

/// The file a run started with `--init-from` records its [`InitReport`] in.
pub const INIT_FROM_FILE: &str = "init_from.json";

/// Names, on stderr, what `--init-from` did: the CNN as a count, the heads' keys in full when
/// some were initialised or left unused (fine-tuning into another depth), else as a count.
fn print_init_report(checkpoint: &Path, report: &InitReport) {
    eprintln!(
        "initialised from {}: {} CNN tensors and {} textual tensors loaded",
        checkpoint.display(),
        report.cnn_tensors,
        report.loaded.len()
    );
    if report.initialised.is_empty() && report.unused.is_empty() {
        return;
    }
    eprintln!("  loaded from the file ({}):", report.loaded.len());
    for key in &report.loaded {
        eprintln!("    {key}");
    }
    eprintln!(
        "  not in the file, freshly initialised ({}):",
        report.initialised.len()
    );
    for key in &report.initialised {
        eprintln!("    {key}");
    }
    eprintln!(
        "  in the file, unused by this model ({}):",
        report.unused.len()
    );
    for key in &report.unused {
        eprintln!("    {key}");
    }
}

fn write_resolved_config(run_dir: &Path, config: &PretrainConfig) -> Result<(), TrainError> {
    let path = run_dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|err| TrainError::Io {
        path: path.clone(),
        source: std::io::Error::other(err),
    })?;
    write_file_atomically(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_reported_as_such() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let record = burn::nn::LinearConfig::new(4, 4)
            .init::<Flex>(&Default::default())
            .into_record();
        let message = write_record::<Flex, _>(record, Path::new("/dev/full"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("No space left on device"), "{message}");
        assert!(!message.contains("MessagePack"), "{message}");
    }

    #[test]
    fn recorder_errors_read_as_one_line_without_feature_advice() {
        let err = burn::record::RecorderError::Unknown(
            "Unable to load record.\nMetadata has a different Burn version: Actual \"0.1\", \
             Expected \"0.21.0\"\nError: Unknown(\"invalid marker\")\nEnable the \
             `record-item-custom-serde` feature"
                .into(),
        );
        let line = recorder_message(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains("feature"), "{line}");
        assert!(line.contains("different Burn version"), "{line}");
    }
}
