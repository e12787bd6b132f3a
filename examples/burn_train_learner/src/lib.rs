//! VirTex's captioning model trained by burn-train's `Learner` (`SupervisedTraining` in burn
//! 0.21) instead of our own loop (`virtex-train`, `examples/pretrain_coco`).
//!
//! What comes from where:
//! - the model, optimizer and schedule: the `small_cpu` preset of `virtex-train`
//!   (ResNet-18 + `transdec_postnorm::L1_H64_A1_F256`, 64-px crops, batch 8, the sample's
//!   400-piece vocabulary; SGD with the visual/common LR groups, Lookahead, global clipping),
//!   with the warmup + cosine schedule compressed to the requested number of iterations;
//! - the model as burn-train's `TrainStep` / `InferenceStep`: `virtex`'s `burn-train` feature;
//! - the optimizer as burn's `Optimizer` (the LR it is given multiplies each group's base LR)
//!   and the schedule as burn's `LrScheduler`: `virtex-optim`;
//! - the samples: `virtex-data`'s `CaptioningDataset` behind burn's [`Dataset`], batched by
//!   `virtex_data::collate` in a burn [`Batcher`], loaded by burn's `DataLoaderBuilder`;
//! - everything else (the epoch loop, the loss metric, logs, checkpoints, the dashboard):
//!   burn-train.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::prelude::*;
use burn::record::CompactRecorder;
use burn::train::metric::{IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::renderer::CliMetricsRenderer;
use burn::train::{Learner, LearnerSummary, SupervisedTraining};
use virtex::CaptionBatch;
use virtex_data::{collate, CaptioningDataset, CaptioningSample};
use virtex_train::{captioning_model, optimizer_config, training_data, PretrainConfig, TrainError};

/// The training backend: burn's CPU backend with autodiff.
pub type TrainBackend = Autodiff<Flex>;

/// Errors of [`train`].
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    /// The preset, data, model or optimizer could not be set up.
    #[error(transparent)]
    Setup(#[from] TrainError),
    /// `--iterations 0`.
    #[error("--iterations must be at least 1")]
    NoIterations,
    /// The artifact directory holds files from another run (burn-train would mix its logs in).
    #[error("the artifact directory `{0}` is not empty: choose a new one or remove it")]
    ArtifactDirNotEmpty(PathBuf),
    /// burn-train's metric logs could not be read back after training.
    #[error("reading burn-train's metric logs in `{path}`: {message}")]
    Metrics {
        /// The artifact directory.
        path: PathBuf,
        /// burn-train's message.
        message: String,
    },
}

/// How burn-train shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressDisplay {
    /// burn-train's default: the terminal dashboard when stdout is a terminal, plain lines
    /// otherwise.
    Dashboard,
    /// Plain lines (`CliMetricsRenderer`) even on a terminal (for tests).
    Plain,
}

/// The mean training and validation losses burn-train logged for the (single) epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnerReport {
    /// Mean training loss (forward + backward captioning) over the iterations.
    pub train_loss: f64,
    /// Mean validation loss on the sample's `val2017` split, after training.
    pub valid_loss: f64,
}

/// Trains the `small_cpu` model for `iterations` batches (one burn-train epoch) on the
/// embedded sample data, then validates once. burn-train writes its logs, metrics
/// (`train/epoch-1/Loss.log`, `valid/…`) and checkpoints (`checkpoint/model-1.mpk`,
/// `optim-1.mpk`, `scheduler-1.mpk`) under `artifact_dir`, which must be empty or absent.
pub fn train(
    iterations: usize,
    artifact_dir: &Path,
    display: ProgressDisplay,
) -> Result<LearnerReport, LearnerError> {
    if iterations == 0 {
        return Err(LearnerError::NoIterations);
    }
    if std::fs::read_dir(artifact_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(LearnerError::ArtifactDirNotEmpty(
            artifact_dir.to_path_buf(),
        ));
    }

    let mut config = PretrainConfig::preset("small_cpu")?;
    // The preset's schedule (warmup 10 of 150 iterations, then cosine), scaled to this run.
    let preset_iterations = config.optim.num_iterations;
    config.optim.num_iterations = iterations as u64;
    config.optim.warmup_steps = config.optim.warmup_steps * iterations as u64 / preset_iterations;

    let device = Default::default();
    // Model initialisation and dropout; the data's randomness is seeded per sample.
    TrainBackend::seed(&device, config.random_seed);
    // The preset's datasets (sample data, tokenizer, transforms, caption choice), taken out of
    // our loaders to be served by burn's.
    let data = training_data(&config)?;
    // burn's DataLoaderBuilder serves an indexed `Dataset`; WebDataset shards are a stream.
    let (Some(train_set), Some(valid_set)) = (data.train.try_dataset(), data.val.try_dataset())
    else {
        return Err(LearnerError::from(TrainError::Config(
            "data.format=webdataset: burn-train's Learner needs an indexed dataset; train from \
             shards with pretrain_coco"
                .to_string(),
        )));
    };
    let batch_size = config.optim.batch_size;
    let train_loader: Arc<dyn DataLoader<TrainBackend, CaptionBatch<TrainBackend>>> =
        DataLoaderBuilder::new(CaptionBatcher)
            .batch_size(batch_size)
            .shuffle(config.random_seed)
            .num_workers(config.data.num_workers)
            .build(RepeatedCaptions::new(
                train_set.clone(),
                config.random_seed,
                iterations * batch_size,
            ));
    let valid_set = valid_set.clone();
    let valid_len = valid_set.len();
    let valid_loader: Arc<dyn DataLoader<Flex, CaptionBatch<Flex>>> =
        DataLoaderBuilder::new(CaptionBatcher)
            .batch_size(batch_size)
            .build(RepeatedCaptions::new(
                valid_set,
                config.random_seed,
                valid_len,
            ));

    let model = captioning_model::<TrainBackend>(&config, &device)?;
    let optimizer = optimizer_config(&config)?
        .init(&model)
        .map_err(|err| TrainError::Config(format!("optimizer: {err}")))?;
    // Our schedule as burn's `LrScheduler`: it yields the multiplier the optimizer applies to
    // every group's base LR.
    let schedule = optimizer.schedule().clone();

    let training = SupervisedTraining::new(artifact_dir, train_loader, valid_loader)
        .metrics((LossMetric::new(),))
        // The LR burn-train reports is the schedule multiplier (see above).
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(IterationSpeedMetric::new())
        .with_file_checkpointer(CompactRecorder::new())
        .num_epochs(1);
    let training = match display {
        ProgressDisplay::Dashboard => training,
        ProgressDisplay::Plain => training.renderer(CliMetricsRenderer::new()),
    };
    let _result = training.launch(Learner::new(model, optimizer, schedule));

    let metrics_error = |message: String| LearnerError::Metrics {
        path: artifact_dir.to_path_buf(),
        message,
    };
    let summary = LearnerSummary::new(artifact_dir, &["Loss"]).map_err(metrics_error)?;
    let last_loss = |summaries: &[burn::train::MetricSummary], split: &str| {
        summaries
            .iter()
            .find(|summary| summary.name == "Loss")
            .and_then(|summary| summary.entries.last())
            .map(|entry| entry.value)
            .ok_or_else(|| metrics_error(format!("no {split} loss was logged")))
    };
    Ok(LearnerReport {
        train_loss: last_loss(&summary.metrics.train, "training")?,
        valid_loss: last_loss(&summary.metrics.valid, "validation")?,
    })
}

/// A [`CaptioningDataset`] as burn's [`Dataset`] of `len` samples: sample `i` is image
/// `i mod n` processed for visit `(seed, i div n)`, so each pass over the images gets fresh
/// augmentation and caption choice (as `virtex-data`'s loader gives each epoch). One
/// burn-train epoch of `iterations × batch` samples is then `iterations` batches.
struct RepeatedCaptions {
    dataset: CaptioningDataset,
    seed: u64,
    len: usize,
}

impl RepeatedCaptions {
    fn new(dataset: CaptioningDataset, seed: u64, len: usize) -> Self {
        Self { dataset, seed, len }
    }
}

impl Dataset<CaptioningSample> for RepeatedCaptions {
    fn get(&self, index: usize) -> Option<CaptioningSample> {
        if index >= self.len {
            return None;
        }
        let images = self.dataset.len();
        let (visit, image) = (index / images, index % images);
        // burn's `Dataset::get` has no error: an image that exists (checked at load) but does
        // not decode stops the run with the file's name.
        let sample = self.dataset.get(image, self.seed, visit as u64);
        Some(sample.unwrap_or_else(|err| panic!("sample {image}: {err}")))
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// `virtex_data::collate` (padding to the longest caption) as burn's [`Batcher`].
#[derive(Debug, Clone, Copy)]
struct CaptionBatcher;

impl<B: Backend> Batcher<B, CaptioningSample, CaptionBatch<B>> for CaptionBatcher {
    fn batch(&self, samples: Vec<CaptioningSample>, device: &B::Device) -> CaptionBatch<B> {
        let batch = collate(samples, Vec::new())
            .unwrap_or_else(|err| panic!("the preset's transforms end in a fixed crop: {err}"))
            .to_device::<B>(device);
        CaptionBatch {
            images: batch.images,
            caption_tokens: batch.caption_tokens,
            noitpac_tokens: batch.noitpac_tokens,
            caption_lengths: batch.caption_lengths,
        }
    }
}
