//! VirTex pretraining (bicaptioning on COCO Captions): configuration and presets, the training
//! loop, atomic checkpoints with exact resume, metrics and plots.
//!
//! The binary is `src/main.rs` (`cargo run --release --example pretrain_coco`); this library
//! holds everything it calls, so tests can drive whole runs.
#![warn(missing_docs)]

pub mod args;
pub mod checkpoint;
pub mod config;
mod error;
pub mod metrics;
pub mod model;
pub mod training;

pub use error::TrainError;
