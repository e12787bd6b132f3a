//! # virtex-train
//!
//! VirTex pretraining ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)) as a
//! library: upstream's `scripts/pretrain_virtex.py`, `virtex/config.py` and
//! `virtex/factories.py` in Burn.
//!
//! - [`config`]: the config tree ([`PretrainConfig`]) with every default, presets for the
//!   released models, JSON and `--set key=value` overrides.
//! - Factories ([`captioning_model`], [`optimizer_config`], [`training_data`]): what a config
//!   names, built.
//! - [`Trainer`]: the loop, with its seams visible — [`Trainer::start`] (a new run,
//!   `--resume`, `--init-from`), [`Trainer::step`] (one device or [`data_parallel`]),
//!   [`Trainer::end_of_iteration`] (log, validate, checkpoint, interrupt, divergence). It is
//!   generic over the model through [`PretextModel`], so a new pretext task is a model and a
//!   loss, not a new loop.
//! - Functions, not modes of a run: [`evaluate`] (the validation loss of a model from
//!   [`load_model`]) and [`PretextModel::export_backbone`].
//! - [`checkpoint`]: atomic checkpoint directories and retention; [`metrics`]: `metrics.jsonl`
//!   and the loss plot; [`tensorboard`]: TensorBoard event files; [`samples`]: sample captions
//!   at every validation (`samples.html`); [`cli`]: the `pretrain_coco` command line.
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data_parallel;
mod error;
mod factories;
pub mod linear_probe;
pub mod metrics;
mod pretext;
pub mod run_dir;
pub mod samples;
mod step;
pub mod tensorboard;
mod trainer;

pub use config::PretrainConfig;
pub use error::TrainError;
pub use factories::{
    captioning_model, data_paths, default_tokenizer_candidates, model_config, optimizer_config,
    shard_dataset, training_data, training_data_for_node, validation_data, TrainingData,
};
pub use pretext::{Objective, PretextModel};
pub use samples::SampleCaptioner;
pub use step::{data_parallel_step, train_step, LossValues, Optim, StepResult};
pub use trainer::{
    evaluate, install_interrupt_flag, interrupt_signal, load_model, run_config, signal_name, train,
    validate, Flow, ModelSource, ResumeOverrides, RunOptions, RunSummary, Trainer, INIT_FROM_FILE,
};
