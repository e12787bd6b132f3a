//! VirTex pretraining (bicaptioning on COCO Captions): configuration and presets, the training
//! loop (on one device, or data-parallel over several), atomic checkpoints with exact resume,
//! metrics and plots.
//!
//! The binary is `src/main.rs` (`cargo run --release --example pretrain_coco`); this library
//! holds everything it calls, so tests can drive whole runs.
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod args;
pub mod checkpoint;
pub mod config;
pub mod data_parallel;
mod error;
pub mod metrics;
pub mod model;
pub mod training;

pub use error::TrainError;
