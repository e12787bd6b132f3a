//! What the run tests share.

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
