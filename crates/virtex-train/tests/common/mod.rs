//! What the run tests share.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use virtex_train::PretrainConfig;

/// The `small_cpu` preset shrunk further so a whole run takes seconds: 32-pixel crops, batch 4,
/// dropout and augmentation left on (both must replay exactly on resume).
pub fn tiny_config(iterations: u64, checkpoint_every: u64) -> PretrainConfig {
    let mut config = PretrainConfig::preset("small_cpu").unwrap();
    config.data.image_crop_size = 32;
    config.data.num_workers = 1;
    config.optim.batch_size = 4;
    config.optim.num_iterations = iterations;
    config.optim.warmup_steps = 2;
    config.train.log_every = 1;
    config.train.checkpoint_every = checkpoint_every;
    config.train.val_every = 1000;
    config.train.val_batches = Some(1);
    config.train.keep_last = 2;
    config
}

/// burn's CPU backend has one process-wide RNG (initialisation and dropout draw from it): the
/// tests of a binary run in parallel threads and would interleave their draws, so each test
/// holds this for its whole body.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the backend's RNG for the calling test (a panicking test does not poison it for the
/// others).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    BACKEND_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
