//! The pretraining loop, in upstream's order per iteration:
//! forward (train mode) → loss → backward → global clip → grouped SGD → Lookahead → schedule.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::collective::{PeerId, ReduceOperation};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use virtex::{
    BidirectionalCaptioningModel, CaptioningModelConfig, ForwardCaptioningModel, Precision,
};
use virtex_data::{
    Batch, CaptionChoice, CaptioningDataset, CocoCaptions, CocoOptions, DataLoader, FlipCaption,
    ImageTransforms, LoaderConfig, LoaderPosition, SentencePieceBpeTokenizer, Split,
};
use virtex_lookahead::{
    GroupRule, GroupedOptimizer, GroupedOptimizerConfig, LookaheadConfig, LrDecay,
    LrScheduleConfig, ParamGroupsConfig, StepReport, TorchSgd, TorchSgdConfig,
};

use crate::checkpoint::{latest_checkpoint, write_checkpoint, write_file_atomically};
use crate::config::PretrainConfig;
use crate::data_parallel::{replicate, ReplicaGroup};
use crate::error::TrainError;
use crate::metrics::{plot_losses, MetricsLog, TrainRecord, ValRecord};
use crate::model::PretrainModel;

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
    /// Only evaluate.
    pub eval_only: bool,
    /// Stop after this many iterations of this invocation.
    pub stop_after: Option<u64>,
    /// Show a progress bar (otherwise plain log lines).
    pub progress: bool,
    /// Only write the CNN of the resumed or initial model to this file (torchvision names,
    /// safetensors) and stop.
    pub export_backbone: Option<PathBuf>,
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
            eval_only: false,
            stop_after: None,
            progress: false,
            export_backbone: None,
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
    pub last_val: Option<ValLoss>,
    /// Mean training throughput of this invocation.
    pub images_per_second: f64,
}

/// Teacher-forced validation loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValLoss {
    /// `captioning_forward + captioning_backward`.
    pub val_loss: f64,
    /// Forward component.
    pub captioning_forward: f64,
    /// Backward component.
    pub captioning_backward: f64,
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

/// The optimizer [`run`] trains with: [`optimizer_config`]'s groups, torch-exact SGD, Lookahead,
/// schedule and global clipping.
pub type Optim<M, B> = GroupedOptimizer<TorchSgd<M, B>, M, B>;

/// What one [`train_step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// `[loss, captioning_forward, captioning_backward]` of the step's batch, computed before
    /// the update (the mean over the micro-batches when the step accumulates several).
    pub losses: [f64; 3],
    /// The optimizer's report: LRs, gradient norm and clip factor, skipped, Lookahead sync.
    pub report: StepReport,
    /// Images the step trained on.
    pub images: usize,
}

/// One training iteration, in upstream's order: for each micro-batch, forward in train mode →
/// loss (`captioning_forward + captioning_backward`) → backward, the gradients summed (each
/// loss scaled by 1 / micro-batches); then [`GroupedOptimizer::step`]: non-finite check →
/// global gradient-norm clip → grouped SGD at `base LR × schedule` → Lookahead → schedule step.
///
/// `batches` holds the iteration's micro-batches (one without gradient accumulation); they are
/// consumed one at a time, so only one needs to be on the device at once. Seeding the backend
/// RNG (dropout) is the caller's business. A non-finite loss gives non-finite gradients, which
/// the optimizer detects: the step is skipped (`report.skipped`) while the schedule advances,
/// as upstream's `GradScaler` does.
pub fn train_step<B, M, I>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
{
    step_with(model, optimizer, batches, Ok)
}

/// One training iteration of one replica in data-parallel training: [`train_step`] with the
/// accumulated gradients averaged over every replica between the backward passes and the
/// optimizer step, by burn-collective's all-reduce (`GradientsParams::all_reduce`,
/// [`ReduceOperation::Mean`]). Every rank of the collective must call this once per iteration
/// (it blocks until all have contributed); as all ranks then step with identical gradients,
/// replicas that start identical stay identical (weights, momentum, Lookahead, skipped steps).
///
/// `peer` is this rank's id in the collective, registered beforehand with
/// [`burn::collective::register`] on `B::InnerBackend` (see [`crate::data_parallel`]). The
/// returned losses are this rank's own (the mean over its micro-batches).
pub fn data_parallel_step<B, M, I>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
    peer: PeerId,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
{
    step_with(model, optimizer, batches, |grads| {
        grads
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)
            .map_err(|err| {
                TrainError::DataParallel(format!(
                    "all-reduce of the gradients on rank {peer}: {err:?}"
                ))
            })
    })
}

/// [`train_step`] with `reduce` applied to the accumulated gradients before the optimizer step.
fn step_with<B, M, I, F>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
    reduce: F,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
    F: FnOnce(GradientsParams) -> Result<GradientsParams, TrainError>,
{
    let batches = batches.into_iter();
    let micro_batches = batches.len();
    if micro_batches == 0 {
        return Err(TrainError::Config(
            "a training step needs at least one batch".into(),
        ));
    }
    let scale = 1.0 / micro_batches as f64;
    let mut accumulator = GradientsAccumulator::<M>::new();
    // `[loss, forward, backward]` of each micro-batch, read only after the optimizer step:
    // reading a value waits for the device, and three reads here would stall a GPU before the
    // backward pass is even queued.
    let mut pending_losses = Vec::with_capacity(micro_batches);
    let mut images = 0;
    for batch in batches {
        images += batch.images.dims()[0];
        let objective = model.objective(&batch);
        pending_losses.push(Tensor::cat(
            vec![
                objective.loss.clone().inner(),
                objective.forward.inner(),
                objective.backward.inner(),
            ],
            0,
        ));
        let loss = if micro_batches > 1 {
            objective.loss.mul_scalar(scale)
        } else {
            objective.loss
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    let grads = reduce(accumulator.grads())?;
    let (model, report) = optimizer.step(model, grads);
    let mut losses = [0.0f64; 3];
    for pending in pending_losses {
        for (total, value) in losses.iter_mut().zip(pending.into_data().iter::<f64>()) {
            *total += value * scale;
        }
    }
    Ok((
        model,
        StepResult {
            losses,
            report,
            images,
        },
    ))
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

/// The model's configuration from the pretraining config and the tokenizer.
pub fn model_config(
    config: &PretrainConfig,
    vocab_size: usize,
) -> Result<CaptioningModelConfig, TrainError> {
    CaptioningModelConfig::from_names(
        &config.model.visual,
        &config.model.textual,
        vocab_size,
        config.data.max_caption_length,
        config.model.dropout,
    )
    .map_err(|err| TrainError::Config(format!("model: {err}")))
}

/// The optimizer configuration of a pretraining config (upstream `OptimizerFactory` and
/// `LRSchedulerFactory`): LR group "visual" (`cnn_lr`) for every parameter whose path contains
/// "cnn", the common `lr` for the rest, no weight decay where `optim.no_decay` matches, SGD
/// momentum/Nesterov, Lookahead, warmup + decay schedule and the global gradient-norm clip.
pub fn optimizer_config(config: &PretrainConfig) -> Result<GroupedOptimizerConfig, TrainError> {
    let optim = &config.optim;
    let decay = LrDecay::from_name(&optim.lr_decay_name)
        .map_err(|err| TrainError::Config(format!("optim.lr_decay_name: {err}")))?;
    let no_decay = if optim.no_decay.is_empty() {
        None
    } else {
        Some(optim.no_decay.clone())
    };
    Ok(GroupedOptimizerConfig::new()
        .with_groups(
            ParamGroupsConfig::new()
                .with_rules(vec![GroupRule::new(
                    "visual".to_string(),
                    "cnn".to_string(),
                    optim.cnn_lr,
                )])
                .with_lr(optim.lr)
                .with_weight_decay(optim.weight_decay)
                .with_no_decay(no_decay),
        )
        .with_sgd(
            TorchSgdConfig::new()
                .with_momentum(optim.sgd_momentum)
                .with_nesterov(optim.sgd_nesterov),
        )
        .with_lookahead(optim.lookahead.enabled.then(|| {
            LookaheadConfig::new()
                .with_alpha(optim.lookahead.alpha)
                .with_steps(optim.lookahead.steps as usize)
        }))
        .with_schedule(
            LrScheduleConfig::new()
                .with_total_steps(optim.num_iterations as usize)
                .with_warmup_steps(optim.warmup_steps as usize)
                .with_milestones(optim.lr_steps.iter().map(|&s| s as usize).collect())
                .with_gamma(optim.lr_gamma)
                .with_decay(decay),
        )
        .with_clip_grad_norm((optim.clip_grad_norm > 0.0).then_some(optim.clip_grad_norm)))
}

/// The data root and tokenizer file this config points to (sample data by default).
///
/// Without `data.tokenizer`, a data root's tokenizer is the first that exists of
/// [`default_tokenizer_candidates`]; an error lists them when none does.
pub fn data_paths(config: &PretrainConfig) -> Result<(PathBuf, PathBuf), TrainError> {
    let Some(root) = config.data.root.clone() else {
        let tokenizer = config
            .data
            .tokenizer
            .clone()
            .unwrap_or_else(virtex_data::sample_vocab_path);
        return Ok((virtex_data::sample_data_root(), tokenizer));
    };
    if !root.is_dir() {
        return Err(TrainError::Config(format!(
            "the data root `{}` is not a directory (expected COCO's `annotations/`, \
             `train2017/` and `val2017/`)",
            root.display()
        )));
    }
    if let Some(tokenizer) = &config.data.tokenizer {
        return Ok((root, tokenizer.clone()));
    }
    let candidates = default_tokenizer_candidates(&root);
    match candidates.iter().find(|path| path.is_file()) {
        Some(tokenizer) => Ok((root.clone(), tokenizer.clone())),
        None => {
            let tried: Vec<String> = candidates
                .iter()
                .map(|path| format!("`{}`", path.display()))
                .collect();
            Err(TrainError::Config(format!(
                "no tokenizer found for the data root (tried {}); pass --tokenizer \
                 (upstream's is datasets/vocab/coco_10k.model)",
                tried.join(", ")
            )))
        }
    }
}

/// Where a data root's tokenizer is looked for: `vocab.json` (ours) or upstream's
/// `coco_10k.model`, in `vocab/` inside the root or next to it (upstream's `datasets/coco` and
/// `datasets/vocab`).
pub fn default_tokenizer_candidates(root: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![
        root.join("vocab.json"),
        root.join("vocab").join("coco_10k.model"),
    ];
    if let Some(parent) = root.parent() {
        candidates.push(parent.join("vocab").join("coco_10k.model"));
    }
    candidates
}

struct Data {
    train: DataLoader,
    val: DataLoader,
}

fn load_data(config: &PretrainConfig) -> Result<Data, TrainError> {
    let (root, tokenizer_path) = data_paths(config)?;
    let tokenizer =
        Arc::new(SentencePieceBpeTokenizer::from_file(&tokenizer_path).map_err(TrainError::Data)?);
    if tokenizer.vocab_size() != config.data.vocab_size {
        return Err(TrainError::Config(format!(
            "data.vocab_size is {} but the tokenizer `{}` has {} pieces; set data.vocab_size \
             to match (the model's vocabulary is the tokenizer's)",
            config.data.vocab_size,
            tokenizer_path.display(),
            tokenizer.vocab_size()
        )));
    }
    let options = CocoOptions {
        skip_bad_images: config.data.skip_bad_images,
        ..CocoOptions::default()
    };
    let flip = if config.data.upstream_flip_substring_swap {
        FlipCaption::Substring
    } else {
        FlipCaption::WholeWord
    };
    let crop = config.data.image_crop_size;
    let train_transforms = if config.data.image_transform_train.is_empty() {
        ImageTransforms::no_augmentation(crop)
    } else {
        ImageTransforms::from_names(&config.data.image_transform_train, crop, flip)
    }
    .map_err(TrainError::Data)?;
    let choice = match config.data.caption_choice.as_str() {
        "first" => CaptionChoice::First,
        _ => CaptionChoice::Random,
    };
    let micro_batch = config.optim.batch_size / config.optim.accumulation_steps;
    let loader = |split: Split, transforms: ImageTransforms, shuffle: bool, drop_last: bool| {
        let coco = CocoCaptions::load(&root, split, &options).map_err(TrainError::Data)?;
        let dataset = CaptioningDataset::new(coco, tokenizer.clone(), transforms)
            .map_err(TrainError::Data)?
            .with_caption_choice(choice)
            .with_max_caption_length(config.data.max_caption_length)
            .map_err(TrainError::Data)?;
        DataLoader::new(
            dataset,
            LoaderConfig {
                batch_size: micro_batch,
                num_workers: config.data.num_workers,
                prefetch_batches: 2 * config.data.num_workers.max(1),
                seed: config.random_seed,
                shuffle,
                drop_last,
                skip_bad_images: config.data.skip_bad_images,
            },
        )
        .map_err(TrainError::Data)
    };
    let train = loader(Split::Train, train_transforms, config.data.shuffle, true)?;
    let val_transforms = ImageTransforms::pretrain_val(crop).map_err(TrainError::Data)?;
    let val = loader(Split::Val, val_transforms, false, false)?;
    Ok(Data { train, val })
}

/// Teacher-forced loss over the validation split, in evaluation mode (running BatchNorm
/// statistics, no dropout), averaged over batches as upstream does.
pub fn validate<B, M>(
    model: &M,
    loader: &DataLoader,
    max_batches: Option<usize>,
    device: &B::Device,
) -> Result<ValLoss, TrainError>
where
    B: Backend,
    M: PretrainModel<B>,
{
    let mut totals = [0.0f64; 3];
    let mut batches = 0usize;
    for batch in loader.iter_epoch(0) {
        if max_batches.is_some_and(|max| batches >= max) {
            break;
        }
        let batch = batch.map_err(TrainError::Data)?.to_device::<B>(device);
        let objective = model.objective(&batch);
        let values = Tensor::cat(
            vec![objective.loss, objective.forward, objective.backward],
            0,
        )
        .into_data();
        for (total, value) in totals.iter_mut().zip(values.iter::<f64>()) {
            *total += value;
        }
        batches += 1;
    }
    let n = batches.max(1) as f64;
    Ok(ValLoss {
        val_loss: totals[0] / n,
        captioning_forward: totals[1] / n,
        captioning_backward: totals[2] / n,
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
    /// else [`RunOptions::config`]. A new training run refuses a run directory that already
    /// holds checkpoints: its first checkpoint would mix with (and prune) the other run's.
    fn of(options: &RunOptions) -> Result<Self, TrainError> {
        let only_reads_a_model = options.eval_only || options.export_backbone.is_some();
        if only_reads_a_model && !options.resume && options.init_from.is_none() {
            return Err(TrainError::Config(
                "--eval-only and --export-backbone need a model: --init-from FILE or --resume \
                 RUN_DIR"
                    .into(),
            ));
        }
        if !options.resume {
            let existing = if options.run_dir.is_dir() {
                latest_checkpoint(&options.run_dir)?
            } else {
                None
            };
            if let Some((iteration, _)) = existing.filter(|_| !only_reads_a_model) {
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
        let (iteration, path) =
            latest_checkpoint(&options.run_dir)?.ok_or_else(|| TrainError::Checkpoint {
                path: options.run_dir.clone(),
                message: "no checkpoint to resume from (expected checkpoint_*/state.json)".into(),
            })?;
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

/// Runs a pretraining job with the model its configuration names (`model.name`: bicaptioning
/// or forward-only captioning; when resuming, the checkpoint's): [`run_data_parallel`] with
/// the right model type. What `pretrain_coco`'s `main` calls.
pub fn train<B>(
    options: RunOptions,
    devices: Vec<B::Device>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    Optim<BidirectionalCaptioningModel<B>, B>: Send,
    Optim<ForwardCaptioningModel<B>, B>: Send,
{
    let start = RunStart::of(&options)?;
    if start.config.model.name == "captioning" {
        run_from::<B, ForwardCaptioningModel<B>>(options, start, devices, interrupted)
    } else {
        run_from::<B, BidirectionalCaptioningModel<B>>(options, start, devices, interrupted)
    }
}

/// Runs (or resumes, or evaluates) a pretraining job on backend `B`.
pub fn run<B, M>(
    options: RunOptions,
    device: B::Device,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    M::InnerModule: PretrainModel<B::InnerBackend>,
    Optim<M, B>: Send,
{
    run_data_parallel::<B, M>(options, vec![device], interrupted)
}

/// [`run`] data-parallel over `devices` (one replica per entry; an entry may repeat, e.g. two
/// replicas on one GPU to test the multi-device path), with burn-collective's all-reduce (see
/// [`crate::data_parallel`]). `optim.batch_size` stays the global batch: each device trains on
/// `batch_size / (accumulation_steps · devices)` images per micro-batch, so `N` devices give
/// the updates of one device with `N`× the accumulation steps, up to floating-point summation
/// order and BatchNorm (each device normalises its own shard). Rank 0 (`devices[0]`) validates,
/// logs, checkpoints and exports. One device is exactly [`run`].
pub fn run_data_parallel<B, M>(
    options: RunOptions,
    devices: Vec<B::Device>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    M::InnerModule: PretrainModel<B::InnerBackend>,
    Optim<M, B>: Send,
{
    let start = RunStart::of(&options)?;
    run_from::<B, M>(options, start, devices, interrupted)
}

/// [`run_data_parallel`] from a resolved [`RunStart`].
fn run_from<B, M>(
    options: RunOptions,
    start: RunStart,
    devices: Vec<B::Device>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
    M::InnerModule: PretrainModel<B::InnerBackend>,
    Optim<M, B>: Send,
{
    let Some(device) = devices.first().cloned() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    let RunStart {
        config,
        resume_from,
        state,
    } = start;
    let run_dir = options.run_dir.clone();
    let only_reads_a_model = options.eval_only || options.export_backbone.is_some();
    if !only_reads_a_model {
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
    }

    // `data.vocab_size` is checked against the tokenizer when the data loads (below the export,
    // which needs no data).
    let model_config = model_config(&config, config.data.vocab_size)?;

    B::seed(&device, config.random_seed);
    let mut model: M = match (&resume_from, &options.init_from) {
        (Some((_, path)), _) => {
            let file = path.join("model.safetensors");
            M::load_ours(&file, &device).map_err(TrainError::Model)?
        }
        (None, Some(init)) => load_initial(init, &model_config, &device)?,
        (None, None) => M::init(&model_config, &device).map_err(TrainError::Model)?,
    };
    model = model.with_precision(config.train.precision);

    if let Some(path) = &options.export_backbone {
        model.export_backbone(path).map_err(TrainError::Model)?;
        return Ok(RunSummary {
            iteration: state.map_or(0, |s| s.iteration),
            losses: Vec::new(),
            skipped_steps: 0,
            last_val: None,
            images_per_second: 0.0,
        });
    }

    let data = load_data(&config)?;

    if options.eval_only {
        let val = validate::<B::InnerBackend, _>(
            &model.valid(),
            &data.val,
            config.train.val_batches,
            &device_inner::<B>(&device),
        )?;
        return Ok(RunSummary {
            iteration: state.map_or(0, |s| s.iteration),
            losses: Vec::new(),
            skipped_steps: 0,
            last_val: Some(val),
            images_per_second: 0.0,
        });
    }

    let optimizer_config = optimizer_config(&config)?;
    let checkpoint = resume_from.as_ref().map(|(_, path)| path.as_path());
    let (mut model, mut optimizer) =
        build_optimizer(&optimizer_config, model, checkpoint, &device)?;
    let mut iteration = 0u64;
    let mut skipped_steps = 0u64;
    if let Some(state) = &state {
        iteration = state.iteration;
        skipped_steps = state.skipped_steps;
        if state.devices != devices.len() {
            eprintln!(
                "warning: the checkpoint was written by a run on {} device(s), this one uses {}: \
                 training continues, but not exactly as the original run would have",
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
            let replica =
                replicate::<B, M>(&model, replica_device).with_precision(config.train.precision);
            let (replica, optimizer) =
                build_optimizer(&optimizer_config, replica, checkpoint, replica_device)?;
            Ok((replica_device.clone(), replica, optimizer))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let mut metrics = MetricsLog::open(&run_dir)?;

    let accumulation = config.optim.accumulation_steps as u64;
    let total = config.optim.num_iterations;
    let last = options
        .stop_after
        .map_or(total, |n| (iteration + n).min(total));
    let start_position =
        LoaderPosition::from_step(iteration * accumulation, data.train.batches_per_epoch());
    if let Some(state) = state
        .as_ref()
        .filter(|s| s.loader_position != start_position)
    {
        eprintln!(
            "warning: the checkpoint stopped the data loader at {:?}, but the training set now \
             gives {:?} ({} batches per epoch): the data changed, resuming is not exact",
            state.loader_position,
            start_position,
            data.train.batches_per_epoch()
        );
    }
    let mut batches = data.train.iter_from(start_position);

    let progress = if options.progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} it {msg} ETA {eta}") {
            bar.set_style(style);
        }
        bar.set_position(iteration);
        // The ETA is estimated from this invocation's rate, not from the resumed position.
        bar.reset_eta();
        bar
    } else {
        ProgressBar::hidden()
    };
    // A line above the bar, or on stdout without one (a hidden bar drops its lines).
    let say = |line: String| {
        if options.progress {
            progress.println(line);
        } else {
            println!("{line}");
        }
    };

    let started = Instant::now();
    let mut window = (Instant::now(), 0usize);
    let mut images_seen = 0usize;
    let mut losses = Vec::new();
    let mut consecutive_skips = 0u64;
    let mut last_val = None;
    let ranks = devices.len();
    // A checkpoint, then the loss plot (a convenience: failing to draw it must not stop
    // training).
    let checkpoint = |model: &M, optimizer: &Optim<M, B>, iteration: u64, skipped_steps: u64| {
        let path = save_checkpoint(
            &run_dir,
            &config,
            iteration,
            skipped_steps,
            model,
            optimizer,
            &data,
            accumulation,
            ranks,
        )?;
        if let Err(err) = plot_losses(&run_dir, &run_dir.join("loss.png")) {
            say(format!("warning: could not draw the loss plot: {err}"));
        }
        Ok::<_, TrainError>(path)
    };

    std::thread::scope(|scope| {
        let mut group = if replicas.is_empty() {
            None
        } else {
            Some(ReplicaGroup::<B, M>::start(scope, &device, replicas)?)
        };
        while iteration < last {
            iteration += 1;
            // Dropout draws from the backend RNG: seeding it per iteration makes a resumed run
            // draw exactly the masks an uninterrupted run would.
            let seed = config
                .random_seed
                .wrapping_mul(1_000_003)
                .wrapping_add(iteration);
            B::seed(&device, seed);

            // The micro-batches wait on the host; each moves to the device only for its own
            // forward/backward, so device memory holds one at a time.
            let host_batches = (0..accumulation)
                .map(|_| {
                    batches
                        .next()
                        .ok_or_else(|| TrainError::Config("the training loader ended".into()))?
                        .map_err(TrainError::Data)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (stepped, step) = match &mut group {
                Some(group) => group.step(model, &mut optimizer, &host_batches, &device, seed)?,
                None => train_step(
                    model,
                    &mut optimizer,
                    host_batches
                        .iter()
                        .map(|batch| batch.to_device::<B>(&device)),
                )?,
            };
            model = stepped;
            images_seen += step.images;
            window.1 += step.images;
            let StepResult {
                losses: step_losses,
                report,
                ..
            } = step;
            let skipped = report.skipped;
            if skipped {
                skipped_steps += 1;
                consecutive_skips += 1;
                say(format!(
                    "iteration {iteration}: non-finite loss or gradient, step skipped \
                     ({skipped_steps} so far)"
                ));
            } else {
                consecutive_skips = 0;
            }
            losses.push(step_losses[0]);
            progress.set_position(iteration);

            let stopping = skipped && consecutive_skips >= config.train.max_consecutive_skips;
            if iteration.is_multiple_of(config.train.log_every) || iteration == last || stopping {
                let elapsed = window.0.elapsed().as_secs_f64().max(1e-9);
                let images_per_second = window.1 as f64 / elapsed;
                window = (Instant::now(), 0);
                let learning_rates: Vec<(String, f64)> = optimizer
                    .learning_rates()
                    .into_iter()
                    .map(|g| (g.name, g.lr))
                    .collect();
                let record = TrainRecord {
                    kind: "train".into(),
                    iteration,
                    loss: step_losses[0],
                    captioning_forward: step_losses[1],
                    captioning_backward: step_losses[2],
                    grad_norm: report.grad_norm,
                    learning_rates: learning_rates.clone(),
                    images_per_second,
                    skipped_steps,
                };
                metrics.append(&record)?;
                let lrs: Vec<String> = learning_rates
                    .iter()
                    .map(|(name, lr)| format!("lr[{name}] {lr:.3e}"))
                    .collect();
                let line = format!(
                    "loss {:.4} (fwd {:.4}, bwd {:.4}) {} {:.1} img/s",
                    step_losses[0],
                    step_losses[1],
                    step_losses[2],
                    lrs.join(" "),
                    images_per_second
                );
                if options.progress {
                    progress.set_message(line);
                } else {
                    println!("iteration {iteration}/{total}: {line}");
                }
            }

            // After the log line, so the stopping iteration is in metrics.jsonl.
            if stopping {
                let checkpoint = checkpoint(&model, &optimizer, iteration, skipped_steps)?;
                return Err(TrainError::Diverged {
                    count: consecutive_skips,
                    iteration,
                    checkpoint,
                });
            }

            if iteration.is_multiple_of(config.train.val_every) || iteration == total {
                let val = validate::<B::InnerBackend, _>(
                    &model.valid(),
                    &data.val,
                    config.train.val_batches,
                    &device_inner::<B>(&device),
                )?;
                metrics.append(&ValRecord {
                    kind: "val".into(),
                    iteration,
                    val_loss: val.val_loss,
                    captioning_forward: val.captioning_forward,
                    captioning_backward: val.captioning_backward,
                })?;
                let line = format!(
                    "iteration {iteration}: val loss {:.4} (fwd {:.4}, bwd {:.4})",
                    val.val_loss, val.captioning_forward, val.captioning_backward
                );
                say(line);
                last_val = Some(val);
            }

            let interrupt = interrupted.load(Ordering::SeqCst);
            if iteration.is_multiple_of(config.train.checkpoint_every)
                || iteration == last
                || interrupt
            {
                let path = checkpoint(&model, &optimizer, iteration, skipped_steps)?;
                if interrupt {
                    say(format!(
                        "interrupted: checkpoint written to {}",
                        path.display()
                    ));
                    break;
                }
            }
        }
        if let Some(group) = group {
            group.finish()?;
        }
        progress.finish_and_clear();
        if iteration == total {
            model
                .export_backbone(&run_dir.join("backbone.safetensors"))
                .map_err(TrainError::Model)?;
        }
        Ok(RunSummary {
            iteration,
            losses,
            skipped_steps,
            last_val,
            images_per_second: images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    })
}

fn device_inner<B: AutodiffBackend>(
    device: &B::Device,
) -> <B::InnerBackend as burn::tensor::backend::BackendTypes>::Device {
    device.clone()
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
    M: PretrainModel<B> + AutodiffModule<B>,
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

/// The configured model (its dropout and architecture from the config) with the weights of
/// `path`: an official `.pth` or one of our safetensors, whose architecture must match.
fn load_initial<B: Backend, M: PretrainModel<B>>(
    path: &Path,
    config: &CaptioningModelConfig,
    device: &B::Device,
) -> Result<M, TrainError> {
    let is_pytorch = matches!(
        virtex_backbone::WeightsFormat::detect(path),
        Ok(virtex_backbone::WeightsFormat::Pytorch)
    );
    let mut model = M::init(config, device).map_err(TrainError::Model)?;
    if is_pytorch {
        model.load_official(path).map_err(TrainError::Model)?;
    } else {
        model.load_weights(path).map_err(TrainError::Model)?;
    }
    Ok(model)
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint<B, M>(
    run_dir: &Path,
    config: &PretrainConfig,
    iteration: u64,
    skipped_steps: u64,
    model: &M,
    optimizer: &Optim<M, B>,
    data: &Data,
    accumulation: u64,
    devices: usize,
) -> Result<PathBuf, TrainError>
where
    B: AutodiffBackend,
    M: PretrainModel<B> + AutodiffModule<B>,
{
    let state = TrainState {
        iteration,
        loader_position: LoaderPosition::from_step(
            iteration * accumulation,
            data.train.batches_per_epoch(),
        ),
        skipped_steps,
        config: config.clone(),
        devices,
    };
    write_checkpoint(run_dir, iteration, config.train.keep_last, |dir| {
        let model_file = dir.join("model.safetensors");
        model.save_ours(&model_file).map_err(TrainError::Model)?;
        let optimizer_file = dir.join("optimizer.mpk");
        NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .record(optimizer.to_record(), optimizer_file.clone())
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
    })
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
