//! Random damage to a real checkpoint (`model.safetensors`, `optimizer.mpk`, `state.json`):
//! resuming from it returns an error or a trainer, and never panics or aborts. Runs for a fixed
//! time (`VIRTEX_FUZZ_SECONDS`, default 10) with a new deterministic seed per round.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use virtex::CaptioningModel;
use virtex_train::checkpoint::latest_checkpoint;
use virtex_train::{RunOptions, Trainer};

use common::tiny_config;

type B = Autodiff<Flex>;

/// One change to a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip bit `bit` of the byte at `at` (a fraction of the length).
    FlipBit { at: f64, bit: u8 },
    /// Keep only this fraction of the file.
    Truncate { keep: f64 },
    /// Overwrite bytes from `at` with `bytes`.
    Overwrite { at: f64, bytes: Vec<u8> },
    /// Replace the whole file with random bytes.
    Random { bytes: Vec<u8> },
}

impl Mutation {
    fn apply(&self, data: &mut Vec<u8>) {
        let index = |at: f64, len: usize| ((at * len as f64) as usize).min(len.saturating_sub(1));
        match self {
            Self::FlipBit { at, bit } if !data.is_empty() => {
                let i = index(*at, data.len());
                data[i] ^= 1 << (bit % 8);
            }
            Self::Truncate { keep } => data.truncate((keep * data.len() as f64) as usize),
            Self::Overwrite { at, bytes } if !data.is_empty() => {
                let start = index(*at, data.len());
                for (offset, byte) in bytes.iter().enumerate() {
                    if let Some(slot) = data.get_mut(start + offset) {
                        *slot = *byte;
                    }
                }
            }
            Self::Random { bytes } => *data = bytes.clone(),
            _ => {}
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // The headers (safetensors' JSON, MessagePack's first markers) are where structure lives:
    // half of the positions fall in the first 1 %.
    let position = prop_oneof![0.0..0.01f64, 0.0..1.0f64];
    prop_oneof![
        (position.clone(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (0.0..1.0f64).prop_map(|keep| Mutation::Truncate { keep }),
        (position, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|bytes| Mutation::Random { bytes }),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn damaged_checkpoints_never_panic() {
    let seconds: u64 = std::env::var("VIRTEX_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let config = tiny_config(3, 1);
    let original = tempfile::tempdir().unwrap();
    Trainer::<B, CaptioningModel<B>>::start(
        RunOptions {
            stop_after: Some(1),
            ..RunOptions::new(config.clone(), original.path())
        },
        vec![Default::default()],
        Arc::default(),
    )
    .unwrap()
    .run()
    .unwrap();
    let (_, checkpoint) = latest_checkpoint(original.path()).unwrap().unwrap();
    let checkpoint_name = checkpoint.file_name().unwrap().to_owned();
    let files = ["model.safetensors", "optimizer.mpk", "state.json"];

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (cases, refused) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 4,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        let strategy = (0..files.len(), proptest::collection::vec(mutation(), 1..4));
        runner
            .run(&strategy, |(file, mutations)| {
                let run = tempfile::tempdir().unwrap();
                copy_dir(original.path(), run.path());
                let target = run.path().join(&checkpoint_name).join(files[file]);
                let mut bytes = std::fs::read(&target).unwrap();
                for mutation in &mutations {
                    mutation.apply(&mut bytes);
                }
                std::fs::write(&target, &bytes).unwrap();
                let started = Trainer::<B, CaptioningModel<B>>::start(
                    RunOptions {
                        resume: true,
                        ..RunOptions::new(config.clone(), run.path())
                    },
                    vec![Default::default()],
                    Arc::default(),
                );
                cases.set(cases.get() + 1);
                refused.set(refused.get() + u64::from(started.is_err()));
                Ok(())
            })
            .unwrap();
    }
    println!(
        "{} damaged checkpoints in {seconds} s: {} refused, none panicked",
        cases.get(),
        refused.get()
    );
    assert!(cases.get() > 0);
}
