//! A deterministic multi-threaded batch loader.
//!
//! - Each epoch visits the dataset in an order drawn from `(seed, epoch)` (or in file order when
//!   `shuffle` is off) and cuts it into batches (the last partial batch is dropped when
//!   `drop_last` is set, as upstream's training loader does).
//! - Each sample's random draws come from `(seed, epoch, dataset index)`, so a batch is a pure
//!   function of its [`LoaderPosition`]: the number of workers changes speed, not results.
//! - Workers run ahead by at most `prefetch_batches` batches; batches are handed out in order.
//! - [`DataLoader::iter_from`] is infinite (epoch after epoch); [`BatchIter::position`] is the
//!   position of the next batch, which is all a checkpoint needs to resume exactly.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::coco::SkippedImage;
use crate::collate::{collate_padded, CollatedBatch};
use crate::dataset::CaptioningDataset;
use crate::error::{DataError, Result};
use crate::rng::{mix_seed, SampleRng, STREAM_SHUFFLE};

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads; 0 loads in the calling thread.
    pub num_workers: usize,
    /// How many batches the workers may prepare ahead of the consumer (at least 1).
    pub prefetch_batches: usize,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Shuffle the order every epoch.
    pub shuffle: bool,
    /// Drop the last incomplete batch of each epoch.
    pub drop_last: bool,
    /// Leave out (and count) images that cannot be read or decoded, or exceed the pixel limit
    /// ([`DataError::is_bad_image`]), instead of failing. Each batch lists them, with file and
    /// reason, in [`CollatedBatch::skipped`]; a batch whose every image is bad is returned as
    /// the error of its last one.
    pub skip_bad_images: bool,
}

impl Default for LoaderConfig {
    /// Training defaults: batch 256, 4 workers, 2 batches per worker ahead, seed 0 (upstream's
    /// `RANDOM_SEED`), shuffled, `drop_last`, failing on bad images.
    fn default() -> Self {
        Self {
            batch_size: 256,
            num_workers: 4,
            prefetch_batches: 8,
            seed: 0,
            shuffle: true,
            drop_last: true,
            skip_bad_images: false,
        }
    }
}

/// Where a loader stands: the next batch to produce.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LoaderPosition {
    /// Epoch (pass over the data), from 0.
    pub epoch: u64,
    /// Batch within the epoch, from 0.
    pub batch: usize,
}

impl LoaderPosition {
    /// The position after `steps` batches from the start, for `batches_per_epoch` batches per
    /// epoch (e.g. to resume from an iteration count).
    pub fn from_step(steps: u64, batches_per_epoch: usize) -> Self {
        let bpe = batches_per_epoch.max(1) as u64;
        Self {
            epoch: steps / bpe,
            batch: (steps % bpe) as usize,
        }
    }

    /// The global batch number (`epoch * batches_per_epoch + batch`).
    pub fn step(&self, batches_per_epoch: usize) -> u64 {
        self.epoch * batches_per_epoch as u64 + self.batch as u64
    }
}

struct Inner {
    dataset: CaptioningDataset,
    config: LoaderConfig,
    /// Shuffled order of the last epoch asked for, shared by the workers.
    order_cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
    skipped_total: AtomicUsize,
}

/// The loader. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DataLoader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("config", &self.inner.config)
            .field("len", &self.inner.dataset.len())
            .finish()
    }
}

impl DataLoader {
    /// A loader over `dataset`.
    pub fn new(dataset: CaptioningDataset, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::config(
                "LoaderConfig.batch_size",
                "must be at least 1",
            ));
        }
        if config.prefetch_batches == 0 {
            return Err(DataError::config(
                "LoaderConfig.prefetch_batches",
                "must be at least 1",
            ));
        }
        if config.drop_last && dataset.len() < config.batch_size {
            return Err(DataError::config(
                "LoaderConfig.batch_size",
                format!(
                    "{} is larger than the dataset ({} images) with drop_last: no batch would be produced",
                    config.batch_size,
                    dataset.len()
                ),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dataset,
                config,
                order_cache: Mutex::new(None),
                skipped_total: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.config
    }

    /// The dataset.
    pub fn dataset(&self) -> &CaptioningDataset {
        &self.inner.dataset
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.inner.batches_per_epoch()
    }

    /// Total images skipped as unreadable by this loader so far (all iterators), including
    /// those of batches the workers prepared ahead and not yet handed out. To log and count
    /// exactly what training saw, use each batch's [`CollatedBatch::skipped`] (file, image id
    /// and reason of every skipped image).
    pub fn skipped_images(&self) -> usize {
        self.inner.skipped_total.load(Ordering::Relaxed)
    }

    /// Dataset indices in the visiting order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Arc<Vec<usize>> {
        self.inner.epoch_order(epoch)
    }

    /// Builds the batch at `position` in the calling thread.
    pub fn load_batch(&self, position: LoaderPosition) -> Result<CollatedBatch> {
        self.inner.load_batch(position)
    }

    /// An infinite iterator starting at `start` (use [`LoaderPosition::default`] for the
    /// beginning, or a saved [`BatchIter::position`] to resume).
    pub fn iter_from(&self, start: LoaderPosition) -> BatchIter {
        BatchIter::new(self.inner.clone(), start, None)
    }

    /// The batches of one epoch, then `None`.
    pub fn iter_epoch(&self, epoch: u64) -> BatchIter {
        let count = self.batches_per_epoch() as u64;
        BatchIter::new(
            self.inner.clone(),
            LoaderPosition { epoch, batch: 0 },
            Some(count),
        )
    }
}

impl Inner {
    fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn advance(&self, start: LoaderPosition, steps: u64) -> LoaderPosition {
        let bpe = self.batches_per_epoch();
        LoaderPosition::from_step(start.step(bpe) + steps, bpe)
    }

    fn epoch_order(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = lock(&self.order_cache);
        if let Some((e, order)) = cache.as_ref() {
            if *e == epoch {
                return order.clone();
            }
        }
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let mut rng =
                SampleRng::seed_from_u64(mix_seed(&[STREAM_SHUFFLE, self.config.seed, epoch]));
            rng.shuffle(&mut order);
        }
        let order = Arc::new(order);
        *cache = Some((epoch, order.clone()));
        order
    }

    fn load_batch(&self, position: LoaderPosition) -> Result<CollatedBatch> {
        let bpe = self.batches_per_epoch();
        if position.batch >= bpe {
            return Err(DataError::config(
                "LoaderPosition.batch",
                format!(
                    "{} is past the end of the epoch ({bpe} batches)",
                    position.batch
                ),
            ));
        }
        let order = self.epoch_order(position.epoch);
        let b = self.config.batch_size;
        let indices = &order[position.batch * b..((position.batch + 1) * b).min(order.len())];
        let mut samples = Vec::with_capacity(indices.len());
        let mut skipped = Vec::new();
        let mut last_error = None;
        for &index in indices {
            match self.dataset.get(index, self.config.seed, position.epoch) {
                Ok(sample) => samples.push(sample),
                Err(err) if self.config.skip_bad_images && err.is_bad_image() => {
                    let entry = &self.dataset.coco().images()[index];
                    skipped.push(SkippedImage {
                        image_id: entry.image_id.clone(),
                        path: entry.path.clone(),
                        reason: err.to_string(),
                    });
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        self.skipped_total
            .fetch_add(skipped.len(), Ordering::Relaxed);
        if samples.is_empty() {
            if let Some(err) = last_error {
                return Err(err);
            }
        }
        collate_padded(samples, skipped, self.dataset.padding_index())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker is reported through its result; the data behind the lock stays valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct State {
    /// Next sequence number a worker may claim.
    next_claim: u64,
    /// Sequence number of the next batch the consumer takes.
    next_yield: u64,
    results: BTreeMap<u64, Result<CollatedBatch>>,
    stop: bool,
}

struct Queue {
    state: Mutex<State>,
    work: Condvar,
    ready: Condvar,
}

/// Iterator over batches (see [`DataLoader::iter_from`] and [`DataLoader::iter_epoch`]).
pub struct BatchIter {
    inner: Arc<Inner>,
    start: LoaderPosition,
    /// Batches to produce (`None`: infinite).
    count: Option<u64>,
    /// Batches already yielded.
    yielded: u64,
    queue: Arc<Queue>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchIter")
            .field("position", &self.position())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl BatchIter {
    fn new(inner: Arc<Inner>, start: LoaderPosition, count: Option<u64>) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                next_claim: 0,
                next_yield: 0,
                results: BTreeMap::new(),
                stop: false,
            }),
            work: Condvar::new(),
            ready: Condvar::new(),
        });
        let workers = (0..inner.config.num_workers)
            .map(|w| {
                let (inner, queue) = (inner.clone(), queue.clone());
                std::thread::Builder::new()
                    .name(format!("virtex-data-{w}"))
                    .spawn(move || worker(&inner, &queue, start, count))
                    .expect("spawning a data loader thread")
            })
            .collect();
        Self {
            inner,
            start,
            count,
            yielded: 0,
            queue,
            workers,
        }
    }

    /// The position of the next batch this iterator yields: save it with a checkpoint and pass
    /// it to [`DataLoader::iter_from`] to continue exactly there.
    pub fn position(&self) -> LoaderPosition {
        self.inner.advance(self.start, self.yielded)
    }

    /// Images skipped as unreadable by the loader so far (see [`DataLoader::skipped_images`]).
    pub fn skipped_images(&self) -> usize {
        self.inner.skipped_total.load(Ordering::Relaxed)
    }
}

fn worker(inner: &Inner, queue: &Queue, start: LoaderPosition, count: Option<u64>) {
    let prefetch = inner.config.prefetch_batches as u64;
    loop {
        let seq = {
            let mut state = lock(&queue.state);
            loop {
                if state.stop || count.is_some_and(|c| state.next_claim >= c) {
                    return;
                }
                if state.next_claim < state.next_yield + prefetch {
                    break;
                }
                state = queue.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.next_claim += 1;
            state.next_claim - 1
        };
        let position = inner.advance(start, seq);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| inner.load_batch(position)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(DataError::WorkerPanicked(format!(
                    "batch {position:?}: {message}"
                )))
            });
        let mut state = lock(&queue.state);
        state.results.insert(seq, result);
        queue.ready.notify_all();
    }
}

impl Iterator for BatchIter {
    type Item = Result<CollatedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.count.is_some_and(|c| self.yielded >= c) {
            return None;
        }
        let seq = self.yielded;
        let result = if self.workers.is_empty() {
            self.inner.load_batch(self.inner.advance(self.start, seq))
        } else {
            let mut state = lock(&self.queue.state);
            loop {
                if let Some(result) = state.results.remove(&seq) {
                    break result;
                }
                state = self
                    .queue
                    .ready
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        self.yielded += 1;
        if !self.workers.is_empty() {
            lock(&self.queue.state).next_yield = self.yielded;
            self.queue.work.notify_all();
        }
        Some(result)
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        lock(&self.queue.state).stop = true;
        self.queue.work.notify_all();
        for handle in self.workers.drain(..) {
            // A worker cannot panic outside `catch_unwind`; nothing to report on join.
            let _ = handle.join();
        }
    }
}
