//! Linear classification on a pretrained backbone (upstream `scripts/clf_linear.py` with
//! `configs/downstream/{imagenet,inaturalist}_clf.yaml`): the paper's ImageNet linear-probe and
//! iNaturalist fine-tuning tables.
//!
//! Upstream's protocol, which [`LinearProbeConfig::imagenet`] reproduces:
//! - the CNN is frozen and in evaluation mode for the whole run (BatchNorm statistics never
//!   change: upstream's fix for its issue #16); `fc = Linear(2048, C)` is re-initialised with
//!   weight N(0, 0.01) and bias 0 and takes the global-average-pooled features;
//! - cross-entropy, SGD momentum 0.9, LR 0.3, no weight decay, batch 256, no warmup, cosine
//!   decay to 0 over 100 epochs' worth of iterations (`ceil(N / batch)` per epoch: 5,005 for
//!   ImageNet);
//! - train transform RandomResizedCrop(224, scale 0.08–1) → flip → normalise; validation
//!   shorter side 256 → centre crop 224; top-1 (and top-5) on the validation split.
//!
//! [`LinearProbeConfig::inaturalist`] is upstream's end-to-end fine-tuning (`fine_tune`: the
//! CNN trains, BatchNorm in training mode; LR 0.025, weight decay 1e-4, ×0.1 at epochs 70 and
//! 90). Upstream trains that one with AMP; this loop runs in f32.
//!
//! Runs are run directories like pretraining's: `metrics.jsonl` (`"kind": "train"` and
//! `"val"` lines), `checkpoint_<iteration>/` (`model.mpk`, `optimizer.mpk`, `state.json`,
//! written atomically; each checkpoint also evaluates), `result.json` at the end. The data
//! order and every augmentation draw depend only on (seed, epoch, image index), so a resumed
//! run continues exactly as an uninterrupted one.
//!
//! **Quick mode** ([`LinearProbeConfig::quick`], a documented deviation from upstream): the
//! pooled features of every training image are extracted once, without augmentation (the
//! validation transform), and the linear layer trains on them; the schedule, optimizer and
//! evaluation are the same. Orders of magnitude faster for short probes (one backbone pass per
//! image instead of one per epoch) and usually a few points lower than the full protocol, since
//! it sees no augmentation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use virtex::backbone::ResNet;
use virtex_data::{ClassificationDataset, ImageTransforms, SampleRng};
use virtex_optim::{LrDecay, LrScheduleConfig, TorchSgdConfig};

use crate::checkpoint::{latest_checkpoint, write_checkpoint, write_file_atomically};
use crate::error::TrainError;
use crate::metrics::MetricsLog;
use crate::run_dir::RunLock;

/// Settings of a linear probe (or of fine-tuning with `fine_tune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearProbeConfig {
    /// Images per iteration (256 upstream).
    pub batch_size: usize,
    /// Epochs; the run takes `epochs × ceil(train images / batch_size)` iterations.
    pub epochs: u64,
    /// Iterations instead of `epochs` (short probes, tests).
    #[serde(default)]
    pub num_iterations: Option<u64>,
    /// Base learning rate (0.3 for the linear probe).
    pub lr: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// Weight decay (0 for the linear probe).
    pub weight_decay: f64,
    /// `cosine` (to 0) or `multistep` (× `lr_gamma` at each of `lr_milestone_epochs`).
    pub lr_decay: String,
    /// Epochs at which `multistep` decays.
    #[serde(default)]
    pub lr_milestone_epochs: Vec<u64>,
    /// Factor of each `multistep` decay.
    #[serde(default = "default_gamma")]
    pub lr_gamma: f64,
    /// Train the whole network (upstream `MODEL.VISUAL.FROZEN: false`) instead of the linear
    /// layer on a frozen, evaluation-mode CNN.
    pub fine_tune: bool,
    /// Extract features once without augmentation and train on them (see the module docs).
    #[serde(default)]
    pub quick: bool,
    /// Side of the training crop (224).
    pub crop_size: u32,
    /// Shorter side before the validation centre crop (256).
    pub val_resize: u32,
    /// Seed of the data order, the augmentations and the `fc` initialisation.
    pub seed: u64,
    /// Log every this many iterations.
    pub log_every: u64,
    /// Checkpoint and evaluate every this many iterations (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Images per evaluation (and feature-extraction) forward pass.
    pub eval_batch_size: usize,
}

fn default_gamma() -> f64 {
    0.1
}

impl LinearProbeConfig {
    /// `configs/downstream/imagenet_clf.yaml`: the frozen-CNN linear probe.
    pub fn imagenet() -> Self {
        Self {
            batch_size: 256,
            epochs: 100,
            num_iterations: None,
            lr: 0.3,
            momentum: 0.9,
            weight_decay: 0.0,
            lr_decay: "cosine".into(),
            lr_milestone_epochs: Vec::new(),
            lr_gamma: 0.1,
            fine_tune: false,
            quick: false,
            crop_size: 224,
            val_resize: 256,
            seed: 0,
            log_every: 20,
            checkpoint_every: 5005,
            keep_last: 2,
            eval_batch_size: 64,
        }
    }

    /// `configs/downstream/inaturalist_clf.yaml`: end-to-end fine-tuning.
    pub fn inaturalist() -> Self {
        Self {
            lr: 0.025,
            weight_decay: 1e-4,
            lr_decay: "multistep".into(),
            lr_milestone_epochs: vec![70, 90],
            fine_tune: true,
            checkpoint_every: 1710,
            ..Self::imagenet()
        }
    }

    /// A preset by name: `imagenet` (also for any image folder) or `inaturalist`.
    pub fn preset(name: &str) -> Result<Self, TrainError> {
        match name {
            "imagenet" => Ok(Self::imagenet()),
            "inaturalist" => Ok(Self::inaturalist()),
            other => Err(TrainError::Config(format!(
                "unknown linear-probe preset `{other}` (imagenet, inaturalist)"
            ))),
        }
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |message: String| Err(TrainError::Config(message));
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size and eval_batch_size must be at least 1".into());
        }
        if self.num_iterations.unwrap_or(self.epochs) == 0 {
            return bad("the probe needs at least one epoch or iteration".into());
        }
        if self.log_every == 0 || self.checkpoint_every == 0 {
            return bad("log_every and checkpoint_every must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if self.crop_size == 0 || self.val_resize < self.crop_size {
            return bad(format!(
                "crop_size ({}) must be positive and at most val_resize ({})",
                self.crop_size, self.val_resize
            ));
        }
        if self.quick && self.fine_tune {
            return bad("quick mode trains on fixed features: it cannot fine-tune".into());
        }
        Ok(())
    }
}

/// A CNN and the linear layer on its pooled features.
#[derive(Module, Debug)]
pub struct LinearClassifier<B: Backend> {
    /// The backbone (frozen unless fine-tuning).
    pub backbone: ResNet<B>,
    /// `[C_features, classes]`.
    pub fc: Linear<B>,
}

impl<B: Backend> LinearClassifier<B> {
    /// Logits of a batch of normalised images.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`
    /// - returns: `[N, classes]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.backbone.forward_pooled(images))
    }
}

/// `Linear(features, classes)` with upstream's re-initialisation: weight N(0, 0.01), bias 0.
pub fn probe_layer<B: Backend>(features: usize, classes: usize, device: &B::Device) -> Linear<B> {
    let mut fc = LinearConfig::new(features, classes).init(device);
    fc.weight = Param::from_tensor(Tensor::random(
        [features, classes],
        Distribution::Normal(0.0, 0.01),
        device,
    ));
    fc.bias = Some(Param::from_tensor(Tensor::zeros([classes], device)));
    fc
}

/// What a probe reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Iterations trained.
    pub iteration: u64,
    /// Top-1 accuracy on the validation split, in percent.
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = classes when there are fewer than 5), in percent.
    pub top5: f64,
    /// Validation images.
    pub val_images: usize,
    /// Training images.
    pub train_images: usize,
    /// Classes.
    pub classes: usize,
    /// Whether the CNN was trained too.
    pub fine_tune: bool,
    /// Whether features were extracted once (quick mode).
    pub quick: bool,
    /// Seconds of this invocation.
    pub seconds: f64,
}

/// Where and how to run a probe.
#[derive(Debug, Clone)]
pub struct ProbeRunOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    /// Stop after this many iterations of this invocation (the schedule still spans the run).
    pub stop_after: Option<u64>,
}

/// The file a finished probe writes its [`ProbeResult`] to.
pub const PROBE_RESULT_FILE: &str = "result.json";

#[derive(Debug, Serialize, Deserialize)]
struct ProbeState {
    iteration: u64,
    config: LinearProbeConfig,
    classes: Vec<String>,
}

#[derive(Serialize)]
struct ProbeTrainRecord {
    kind: &'static str,
    iteration: u64,
    loss: f64,
    lr: f64,
    images_per_second: f64,
}

#[derive(Serialize)]
struct ProbeValRecord {
    kind: &'static str,
    iteration: u64,
    top1: f64,
    top5: f64,
}

/// Trains a linear probe (or fine-tunes) `backbone` on `train` and evaluates on `val`, in a
/// run directory; returns the final validation accuracy (also in `RUN/result.json`).
pub fn run_linear_probe<B: AutodiffBackend>(
    backbone: ResNet<B>,
    train: &ClassificationDataset,
    val: &ClassificationDataset,
    config: &LinearProbeConfig,
    options: &ProbeRunOptions,
    device: &B::Device,
) -> Result<ProbeResult, TrainError> {
    config.validate()?;
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Config(format!(
            "the probe needs images: {} for training, {} for validation",
            train.len(),
            val.len()
        )));
    }
    if val.classes != train.classes {
        return Err(TrainError::Config(
            "the validation split must use the training split's class list".into(),
        ));
    }
    let run_dir = &options.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
        path: run_dir.clone(),
        source,
    })?;
    let _lock = RunLock::acquire(run_dir)?;
    let started = Instant::now();
    let classes = train.classes.len();
    let per_epoch = train.len().div_ceil(config.batch_size) as u64;
    let overflow = || TrainError::Config("epochs × iterations per epoch overflows".into());
    let total = match config.num_iterations {
        Some(iterations) => iterations,
        None => config.epochs.checked_mul(per_epoch).ok_or_else(overflow)?,
    };
    let milestones = config
        .lr_milestone_epochs
        .iter()
        .map(|epoch| {
            epoch
                .checked_mul(per_epoch)
                .and_then(|step| usize::try_from(step).ok())
                .ok_or_else(overflow)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schedule = LrScheduleConfig {
        decay: LrDecay::from_name(&config.lr_decay)
            .map_err(|err| TrainError::Config(err.to_string()))?,
        warmup_steps: 0,
        total_steps: total as usize,
        milestones,
        gamma: config.lr_gamma,
    }
    .init()
    .map_err(|err| TrainError::Config(err.to_string()))?;

    let resume_from = if options.resume {
        latest_checkpoint(run_dir)?
    } else {
        let found = crate::run_dir::results_in(run_dir)?;
        if !found.is_empty() || run_dir.join(PROBE_RESULT_FILE).exists() {
            return Err(TrainError::Config(format!(
                "`{}` already holds the results of a run ({}): resume it or choose another \
                 directory",
                run_dir.display(),
                found.join(", ")
            )));
        }
        None
    };
    if let Some((_, checkpoint)) = &resume_from {
        let state: ProbeState = read_json(&checkpoint.join("state.json"))?;
        if state.config != *config || state.classes != train.classes {
            return Err(TrainError::Config(format!(
                "`{}` was written with another configuration or class list; resume with the \
                 same settings",
                checkpoint.display()
            )));
        }
    }
    let start = resume_from.as_ref().map_or(0, |(iteration, _)| *iteration);
    let end = options
        .stop_after
        .map_or(total, |stop| (start + stop).min(total));
    B::seed(device, config.seed);
    let feature_size = backbone.feature_size();
    let transforms = Transforms {
        train: ImageTransforms::downstream_train(config.crop_size)?,
        val: ImageTransforms::downstream_val(config.val_resize, config.crop_size)?,
    };
    // A run killed between checkpoints logged iterations it will now replay: drop them.
    if start > 0 {
        MetricsLog::truncate_after(run_dir, start)?;
    }
    let mut log = MetricsLog::open(run_dir)?;
    let run = Run {
        config,
        train,
        per_epoch,
        total,
        start,
        end,
        log: &mut log,
        run_dir,
        schedule: &schedule,
        device,
    };

    let (top1, top5) = if config.quick {
        let frozen = backbone.frozen();
        let extract = |dataset: &ClassificationDataset| {
            extract_features::<B>(
                &frozen.valid(),
                dataset,
                &transforms.val,
                config.eval_batch_size,
                device,
            )
        };
        let train_features = extract(train)?;
        let val_features = extract(val)?;
        eprintln!(
            "quick probe: features of {} training and {} validation images extracted",
            train.len(),
            val.len()
        );
        let fc = probe_layer::<B>(feature_size, classes, device);
        let fc = match &resume_from {
            Some((_, checkpoint)) => load_module(fc, &checkpoint.join("model.mpk"), device)?,
            None => fc,
        };
        let load = |indices: &[usize], _epoch: u64| {
            Ok((
                train_features
                    .clone()
                    .select(0, index_tensor::<B>(indices, device)),
                labels::<B>(train, indices, device),
            ))
        };
        let evaluate = |fc: &Linear<B>| {
            let logits = fc.valid().forward(val_features.clone().inner());
            Ok(accuracy(
                logits,
                &val.images.iter().map(|i| i.label).collect::<Vec<_>>(),
            ))
        };
        run.fit(
            fc,
            |fc, x| fc.forward(x),
            load,
            evaluate,
            resume_from.as_ref(),
        )?
    } else {
        let backbone = if config.fine_tune {
            backbone
        } else {
            backbone.frozen()
        };
        let model = LinearClassifier {
            backbone,
            fc: probe_layer::<B>(feature_size, classes, device),
        };
        let model = match &resume_from {
            Some((_, checkpoint)) => {
                let model = load_module(model, &checkpoint.join("model.mpk"), device)?;
                // The frozen flag is a setting, not a weight: re-applied after loading.
                if config.fine_tune {
                    model
                } else {
                    LinearClassifier {
                        backbone: model.backbone.frozen(),
                        fc: model.fc,
                    }
                }
            }
            None => model,
        };
        let load = |indices: &[usize], epoch: u64| {
            let images = load_images::<B>(
                train,
                indices,
                &transforms.train,
                config.seed,
                epoch,
                device,
            )?;
            Ok((images, labels::<B>(train, indices, device)))
        };
        let evaluate = |model: &LinearClassifier<B>| {
            evaluate_images(
                &model.valid(),
                val,
                &transforms.val,
                config.eval_batch_size,
                device,
            )
        };
        let fine_tune = config.fine_tune;
        let forward = move |model: &LinearClassifier<B>, images: Tensor<B, 4>| {
            if fine_tune {
                model.forward(images)
            } else {
                // A frozen CNN needs no autodiff at all: run it on the inner backend (its
                // fused CPU kernels, no graph), as upstream's `torch.no_grad()` feature pass.
                let features = model.backbone.valid().forward_pooled(images.inner());
                model.fc.forward(Tensor::from_inner(features))
            }
        };
        run.fit(model, forward, load, evaluate, resume_from.as_ref())?
    };

    let result = ProbeResult {
        iteration: end,
        top1,
        top5,
        val_images: val.len(),
        train_images: train.len(),
        classes,
        fine_tune: config.fine_tune,
        quick: config.quick,
        seconds: started.elapsed().as_secs_f64(),
    };
    if end == total {
        let text = serde_json::to_string_pretty(&result).map_err(|err| TrainError::Io {
            path: run_dir.join(PROBE_RESULT_FILE),
            source: std::io::Error::other(err),
        })?;
        write_file_atomically(&run_dir.join(PROBE_RESULT_FILE), text.as_bytes())?;
    }
    Ok(result)
}

struct Transforms {
    train: ImageTransforms,
    val: ImageTransforms,
}

/// The shared state of one invocation of the loop.
struct Run<'a, B: AutodiffBackend> {
    config: &'a LinearProbeConfig,
    train: &'a ClassificationDataset,
    per_epoch: u64,
    total: u64,
    start: u64,
    end: u64,
    log: &'a mut MetricsLog,
    run_dir: &'a Path,
    schedule: &'a virtex_optim::LrSchedule,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// The loop: iterations `start + 1 ..= end`, checkpoints (with an evaluation) every
    /// `checkpoint_every` and at `end`. Returns the last evaluation.
    fn fit<M, I>(
        mut self,
        mut model: M,
        forward: impl Fn(&M, I) -> Tensor<B, 2>,
        load: impl Fn(&[usize], u64) -> Result<(I, Tensor<B, 1, Int>), TrainError>,
        evaluate: impl Fn(&M) -> Result<(f64, f64), TrainError>,
        resume_from: Option<&(u64, PathBuf)>,
    ) -> Result<(f64, f64), TrainError>
    where
        M: AutodiffModule<B>,
    {
        let sgd = TorchSgdConfig::new().with_momentum(self.config.momentum);
        let mut optimizer = sgd
            .init::<B, M>(self.config.weight_decay)
            .map_err(|err| TrainError::Config(err.to_string()))?;
        if let Some((_, checkpoint)) = resume_from {
            let file = checkpoint.join("optimizer.mpk");
            let bytes = std::fs::read(&file).map_err(|source| TrainError::Io {
                path: file.clone(),
                source,
            })?;
            let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
                .load(bytes, self.device)
                .map_err(|err| TrainError::Checkpoint {
                    path: file.clone(),
                    message: err.to_string(),
                })?;
            optimizer = optimizer.load_record(record);
        }
        let loss_fn = CrossEntropyLossConfig::new().init(self.device);
        let mut accuracy = (f64::NAN, f64::NAN);
        let mut window = (Instant::now(), 0usize);
        let n = self.train.len();
        for iteration in self.start + 1..=self.end {
            let step = iteration - 1;
            let (epoch, position) = (step / self.per_epoch, (step % self.per_epoch) as usize);
            let order = epoch_order(n, self.config.seed, epoch);
            let first = position * self.config.batch_size;
            let indices = &order[first..(first + self.config.batch_size).min(n)];
            let (inputs, targets) = load(indices, epoch)?;
            let logits = forward(&model, inputs);
            let loss = loss_fn.forward(logits, targets);
            let loss_value: f64 = loss.clone().into_scalar().elem();
            let gradients = GradientsParams::from_grads(loss.backward(), &model);
            let lr = self.config.lr * self.schedule.multiplier(step as usize);
            model = optimizer.step(lr, model, gradients);
            window.1 += indices.len();
            if iteration % self.config.log_every == 0 || iteration == self.end {
                let seconds = window.0.elapsed().as_secs_f64().max(1e-9);
                let images_per_second = window.1 as f64 / seconds;
                self.log.append(&ProbeTrainRecord {
                    kind: "train",
                    iteration,
                    loss: loss_value,
                    lr,
                    images_per_second,
                })?;
                eprintln!(
                    "iteration {iteration}/{}: loss {loss_value:.4} lr {lr:.3e} \
                     {images_per_second:.1} img/s",
                    self.total
                );
                window = (Instant::now(), 0);
            }
            if iteration % self.config.checkpoint_every == 0 || iteration == self.end {
                // The evaluation first (its `valid()` also brings BatchNorm statistics up to
                // date for the checkpoint), but the checkpoint is written even if it fails
                // (an unreadable validation image), so the interval is never lost.
                let evaluated = evaluate(&model);
                self.checkpoint(iteration, &model, &optimizer)?;
                accuracy = evaluated?;
                self.log.append(&ProbeValRecord {
                    kind: "val",
                    iteration,
                    top1: accuracy.0,
                    top5: accuracy.1,
                })?;
                eprintln!(
                    "iteration {iteration}: top-1 {:.2} %, top-5 {:.2} %",
                    accuracy.0, accuracy.1
                );
            }
        }
        if self.start == self.end {
            accuracy = evaluate(&model)?;
        }
        Ok(accuracy)
    }

    fn checkpoint<M: AutodiffModule<B>, O: Optimizer<M, B>>(
        &mut self,
        iteration: u64,
        model: &M,
        optimizer: &O,
    ) -> Result<(), TrainError> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let record_error = |path: &Path, err: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: err,
        };
        let model_bytes = recorder
            .record(model.clone().into_record(), ())
            .map_err(|err| record_error(self.run_dir, err.to_string()))?;
        let optimizer_bytes = recorder
            .record(optimizer.to_record(), ())
            .map_err(|err| record_error(self.run_dir, err.to_string()))?;
        let state = ProbeState {
            iteration,
            config: self.config.clone(),
            classes: self.train.classes.clone(),
        };
        let state = serde_json::to_vec_pretty(&state)
            .map_err(|err| record_error(self.run_dir, err.to_string()))?;
        write_checkpoint(self.run_dir, iteration, self.config.keep_last, |dir| {
            for (name, bytes) in [
                ("model.mpk", &model_bytes),
                ("optimizer.mpk", &optimizer_bytes),
                ("state.json", &state),
            ] {
                std::fs::write(dir.join(name), bytes).map_err(|source| TrainError::Io {
                    path: dir.join(name),
                    source,
                })?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// The training images of `epoch` in their order: a shuffle seeded by (seed, epoch) only, so a
/// resumed run sees the same batches.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SampleRng::for_sample(seed, epoch, u64::MAX).shuffle(&mut order);
    order
}

fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}

fn labels<B: Backend>(
    dataset: &ClassificationDataset,
    indices: &[usize],
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices
        .iter()
        .map(|&i| dataset.images[i].label as i64)
        .collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}

/// Decodes and transforms `indices` in parallel; image `i` of `epoch` always draws the same
/// augmentation.
fn load_images<B: Backend>(
    dataset: &ClassificationDataset,
    indices: &[usize],
    transforms: &ImageTransforms,
    seed: u64,
    epoch: u64,
    device: &B::Device,
) -> Result<Tensor<B, 4>, TrainError> {
    let images = indices
        .par_iter()
        .map(|&index| {
            let path = &dataset.images[index].path;
            let image = virtex_data::load_image(path)?;
            let mut rng = SampleRng::for_sample(seed, epoch, index as u64);
            transforms.try_apply_image(&image, &mut rng, Some(path))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (height, width) = (images[0].height as usize, images[0].width as usize);
    let pixels: Vec<f32> = images.into_iter().flat_map(|image| image.data).collect();
    Ok(Tensor::from_data(
        TensorData::new(pixels, [indices.len(), 3, height, width]),
        device,
    ))
}

/// Pooled features of every image of `dataset` (validation transform), `[N, C]`.
fn extract_features<B: AutodiffBackend>(
    backbone: &ResNet<B::InnerBackend>,
    dataset: &ClassificationDataset,
    transforms: &ImageTransforms,
    batch_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>, TrainError> {
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let mut parts = Vec::new();
    for chunk in indices.chunks(batch_size) {
        let images = load_images::<B::InnerBackend>(dataset, chunk, transforms, 0, 0, device)?;
        parts.push(backbone.forward_pooled(images));
    }
    Ok(Tensor::from_inner(Tensor::cat(parts, 0)))
}

/// Top-1 and top-5 accuracy of the model on `dataset` (validation transform), in percent.
fn evaluate_images<B: Backend>(
    model: &LinearClassifier<B>,
    dataset: &ClassificationDataset,
    transforms: &ImageTransforms,
    batch_size: usize,
    device: &B::Device,
) -> Result<(f64, f64), TrainError> {
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let mut logits = Vec::new();
    for chunk in indices.chunks(batch_size) {
        let images = load_images::<B>(dataset, chunk, transforms, 0, 0, device)?;
        logits.push(model.forward(images));
    }
    let targets: Vec<u32> = dataset.images.iter().map(|image| image.label).collect();
    Ok(accuracy(Tensor::cat(logits, 0), &targets))
}

/// Top-1 and top-k (k = min(5, classes)) accuracy of `[N, C]` logits, in percent. A tie at
/// the k-th place counts for the lower class index, as `torch.topk` resolves it.
pub fn accuracy<B: Backend>(logits: Tensor<B, 2>, targets: &[u32]) -> (f64, f64) {
    let [n, classes] = logits.dims();
    let k = classes.min(5);
    let (_, top) = logits.topk_with_indices(k, 1);
    let top: Vec<i64> = top
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("converted to i64");
    let (mut top1, mut topk) = (0usize, 0usize);
    for (row, &target) in targets.iter().enumerate().take(n) {
        let predictions = &top[row * k..(row + 1) * k];
        top1 += usize::from(predictions[0] == target as i64);
        topk += usize::from(predictions.contains(&(target as i64)));
    }
    let percent = |count: usize| 100.0 * count as f64 / n.max(1) as f64;
    (percent(top1), percent(topk))
}

fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|err| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
    Ok(module.load_record(record))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}
