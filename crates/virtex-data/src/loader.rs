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
//! - Over WebDataset shards ([`DataLoader::from_shards`]) the samples come from one sequential
//!   [`ShardStream`] per epoch instead of an index order: the workers take turns reading a
//!   batch's samples from it (encoded bytes, in order) and decode and transform them in parallel.
//!   Stream sample `k` of an epoch is processed as dataset index `k` would be
//!   ([`ShardDataset::sample_index`]), so shards written in the folder's order and read without
//!   shuffling give the folder loader's batches. A position is still a [`LoaderPosition`];
//!   [`BatchIter::shard_position`] adds the reader's place in the shards, for the checkpoint.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::coco::SkippedImage;
use crate::collate::{collate_padded, CollatedBatch};
use crate::dataset::{CaptioningDataset, CaptioningSample};
use crate::error::{DataError, Result};
use crate::rng::{mix_seed, SampleRng, STREAM_SHUFFLE};
use crate::tokenizer::SentencePieceBpeTokenizer;
use crate::webdataset::{ShardDataset, ShardPosition, ShardSample, ShardStream};

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
    /// Decode only these rows of every batch (`None`: all of them). One node of a multi-node
    /// run reads the same global batches as every other node, in the same order, but decodes
    /// and transforms only the samples its own devices train on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<BatchPart>,
}

/// A contiguous part of every batch: the batch is cut into `parts` consecutive pieces whose
/// sizes differ by at most one (the first pieces are the larger, as a data-parallel split of
/// the batch cuts it), and the part is pieces `first .. first + count`.
///
/// In a multi-node run: `parts` = the global world size, `first` = this node's first global
/// rank, `count` = its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchPart {
    /// The first piece taken.
    pub first: usize,
    /// Pieces taken (at least 1).
    pub count: usize,
    /// Pieces the batch is cut into (at least 1).
    pub parts: usize,
}

impl BatchPart {
    /// The rows of a batch of `len` samples this part takes.
    pub fn rows(&self, len: usize) -> std::ops::Range<usize> {
        let start = |piece: usize| piece * (len / self.parts) + piece.min(len % self.parts);
        start(self.first)..start(self.first + self.count)
    }

    fn check(&self, batch_size: usize) -> Result<()> {
        if self.parts == 0 || self.count == 0 || self.first + self.count > self.parts {
            return Err(DataError::config(
                "LoaderConfig.part",
                format!(
                    "pieces {}..{} of {} do not exist (at least one piece, within the batch's)",
                    self.first,
                    self.first + self.count,
                    self.parts
                ),
            ));
        }
        if batch_size < self.parts {
            return Err(DataError::config(
                "LoaderConfig.part",
                format!(
                    "a batch of {batch_size} samples cannot be cut into {} non-empty pieces",
                    self.parts
                ),
            ));
        }
        Ok(())
    }
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
            part: None,
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

/// What a loader reads: an indexed dataset (COCO, plain captions) or a stream of shards.
enum Source {
    Indexed(CaptioningDataset),
    Shards(ShardDataset),
}

struct Inner {
    source: Source,
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
            .field("len", &self.inner.len())
            .finish()
    }
}

impl DataLoader {
    /// A loader over `dataset`.
    pub fn new(dataset: CaptioningDataset, config: LoaderConfig) -> Result<Self> {
        Self::with_source(Source::Indexed(dataset), config)
    }

    /// A loader over WebDataset shards: each epoch is one [`ShardStream`] of the process's
    /// shards (`shards.split`: its global rank and world size), shuffled (shard order and
    /// shuffle buffer) when `config.shuffle` is set, decoded on `config.num_workers` threads.
    /// Batches do not depend on the number of workers.
    pub fn from_shards(shards: ShardDataset, config: LoaderConfig) -> Result<Self> {
        if shards.split.num_workers != 1 || shards.split.worker != 0 {
            return Err(DataError::config(
                "ShardDataset.split",
                "the loader reads its rank's shards as one stream (worker 0 of 1) and decodes \
                 on its own worker threads",
            ));
        }
        shards.split.assign(shards.list.shards().len())?;
        Self::with_source(Source::Shards(shards), config)
    }

    fn with_source(source: Source, config: LoaderConfig) -> Result<Self> {
        let len = match &source {
            Source::Indexed(dataset) => dataset.len(),
            Source::Shards(shards) => shards.len(),
        };
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
        if let Some(part) = &config.part {
            part.check(config.batch_size)?;
        }
        if config.drop_last && len < config.batch_size {
            return Err(DataError::config(
                "LoaderConfig.batch_size",
                format!(
                    "{} is larger than the dataset ({} images) with drop_last: no batch would be produced",
                    config.batch_size,
                    len
                ),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                source,
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
    ///
    /// # Panics
    ///
    /// On a loader over shards ([`DataLoader::from_shards`]), which has no indexed dataset: use
    /// [`DataLoader::try_dataset`] where either may come.
    pub fn dataset(&self) -> &CaptioningDataset {
        self.try_dataset()
            .expect("DataLoader::dataset on a loader over shards (use try_dataset or shards)")
    }

    /// The indexed dataset, `None` for a loader over shards.
    pub fn try_dataset(&self) -> Option<&CaptioningDataset> {
        match &self.inner.source {
            Source::Indexed(dataset) => Some(dataset),
            Source::Shards(_) => None,
        }
    }

    /// The shards, `None` for a loader over an indexed dataset.
    pub fn shards(&self) -> Option<&ShardDataset> {
        match &self.inner.source {
            Source::Indexed(_) => None,
            Source::Shards(shards) => Some(shards),
        }
    }

    /// The tokenizer of either kind of loader.
    pub fn tokenizer(&self) -> &SentencePieceBpeTokenizer {
        match &self.inner.source {
            Source::Indexed(dataset) => dataset.tokenizer(),
            Source::Shards(shards) => shards.captioning.tokenizer(),
        }
    }

    /// Samples per epoch: images of the dataset, or samples of this rank's shards.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether an epoch has no sample (never true for a constructed loader with `drop_last`).
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
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

    /// Dataset indices in the visiting order of `epoch` (for shards: stream positions, in order).
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
        let start = self.inner.advance(start, 0);
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
    fn len(&self) -> usize {
        match &self.source {
            Source::Indexed(dataset) => dataset.len(),
            Source::Shards(shards) => shards.len(),
        }
    }

    fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.len(), self.config.batch_size);
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
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.config.shuffle && matches!(self.source, Source::Indexed(_)) {
            let mut rng =
                SampleRng::seed_from_u64(mix_seed(&[STREAM_SHUFFLE, self.config.seed, epoch]));
            rng.shuffle(&mut order);
        }
        let order = Arc::new(order);
        *cache = Some((epoch, order.clone()));
        order
    }

    /// Samples in batch `position.batch` of an epoch.
    fn batch_len(&self, position: LoaderPosition) -> usize {
        let b = self.config.batch_size;
        b.min(self.len().saturating_sub(position.batch * b))
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
        let dataset = match &self.source {
            Source::Indexed(dataset) => dataset,
            Source::Shards(shards) => {
                // Random access into a stream: rebuild the epoch's stream at the batch.
                let options = shards.stream_options(self.config.seed, self.config.shuffle);
                let b = self.config.batch_size as u64;
                let mut stream = ShardStream::resume(
                    shards.list.clone(),
                    options,
                    position.epoch,
                    position.batch as u64 * b,
                )?;
                let raw = read_raw(&mut stream, self.batch_len(position))?;
                return self.process_shard_batch(position, raw);
            }
        };
        let order = self.epoch_order(position.epoch);
        let b = self.config.batch_size;
        let mut indices = &order[position.batch * b..((position.batch + 1) * b).min(order.len())];
        if let Some(part) = &self.config.part {
            indices = &indices[part.rows(indices.len())];
        }
        let mut samples = Vec::with_capacity(indices.len());
        let mut skipped = Vec::new();
        let mut last_error = None;
        for &index in indices {
            match dataset.get(index, self.config.seed, position.epoch) {
                Ok(sample) => samples.push(sample),
                Err(err) if self.config.skip_bad_images && err.is_bad_image() => {
                    let entry = &dataset.coco().images()[index];
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
        self.finish_batch(samples, skipped, last_error, dataset.padding_index())
    }

    /// Decodes and batches samples read from shards (`(stream index, sample)` pairs).
    fn process_shard_batch(
        &self,
        position: LoaderPosition,
        raw: Vec<(u64, ShardSample)>,
    ) -> Result<CollatedBatch> {
        let Source::Shards(shards) = &self.source else {
            return Err(DataError::config("DataLoader", "not a loader over shards"));
        };
        // Every sample of the batch was read (the stream's position moves past them all);
        // only this loader's part of them is decoded.
        let rows = match &self.config.part {
            Some(part) => part.rows(raw.len()),
            None => 0..raw.len(),
        };
        let mut samples = Vec::with_capacity(rows.len());
        let mut skipped = Vec::new();
        let mut last_error = None;
        for (index, sample) in &raw[rows] {
            let index = shards.sample_index(*index);
            match shards
                .captioning
                .process(sample, self.config.seed, position.epoch, index)
            {
                Ok(processed) => samples.push(processed),
                Err(err) if self.config.skip_bad_images && err.is_bad_image() => {
                    skipped.push(SkippedImage {
                        image_id: sample.image_id.clone(),
                        path: sample.image_path(),
                        reason: err.to_string(),
                    });
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        self.finish_batch(
            samples,
            skipped,
            last_error,
            shards.captioning.padding_index(),
        )
    }

    /// Counts the skipped images and batches the samples; a batch whose every image was bad
    /// fails with the error of its last one.
    fn finish_batch(
        &self,
        samples: Vec<CaptioningSample>,
        skipped: Vec<SkippedImage>,
        last_error: Option<DataError>,
        padding_index: u32,
    ) -> Result<CollatedBatch> {
        self.skipped_total
            .fetch_add(skipped.len(), Ordering::Relaxed);
        if samples.is_empty() {
            if let Some(err) = last_error {
                return Err(err);
            }
        }
        collate_padded(samples, skipped, padding_index)
    }
}

/// The next `n` samples of `stream`, each with its stream index.
fn read_raw(stream: &mut ShardStream, n: usize) -> Result<Vec<(u64, ShardSample)>> {
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        let index = stream.shard_position().sample;
        match stream.next() {
            Some(sample) => raw.push((index, sample?)),
            None => {
                return Err(DataError::config(
                    "shards",
                    format!(
                        "the shards ended after {index} samples, before the epoch did: they \
                         changed while being read"
                    ),
                ))
            }
        }
    }
    Ok(raw)
}

/// The sequential reader of a [`BatchIter`] over shards: the stream of the current epoch and
/// the batch it reads next.
struct ShardCursor {
    stream: Option<ShardStream>,
    next: LoaderPosition,
    /// Open the next epoch's stream as soon as an epoch's last batch is read (infinite
    /// iterators), so that the position after it is the next epoch's start.
    eager: bool,
    /// An error opening the stream, returned with the next batch.
    error: Option<DataError>,
}

impl ShardCursor {
    fn new(inner: &Inner, start: LoaderPosition, eager: bool) -> Self {
        let mut cursor = Self {
            stream: None,
            next: start,
            eager,
            error: None,
        };
        if let Err(err) = cursor.open(inner) {
            cursor.error = Some(err);
        }
        cursor
    }

    /// Opens the stream at `self.next`.
    fn open(&mut self, inner: &Inner) -> Result<()> {
        self.stream = None;
        let Source::Shards(shards) = &inner.source else {
            return Err(DataError::config("DataLoader", "not a loader over shards"));
        };
        let options = shards.stream_options(inner.config.seed, inner.config.shuffle);
        let sample = (self.next.batch * inner.config.batch_size) as u64;
        self.stream = Some(ShardStream::resume(
            shards.list.clone(),
            options,
            self.next.epoch,
            sample,
        )?);
        Ok(())
    }

    fn position(&self) -> Option<ShardPosition> {
        self.stream.as_ref().map(ShardStream::shard_position)
    }

    /// Reads the samples of the next batch: its position, the samples, and the reader's
    /// position after them.
    #[allow(clippy::type_complexity)]
    fn read_batch(
        &mut self,
        inner: &Inner,
    ) -> (
        LoaderPosition,
        Result<Vec<(u64, ShardSample)>>,
        Option<ShardPosition>,
    ) {
        let position = self.next;
        self.next = inner.advance(position, 1);
        if let Some(err) = self.error.take() {
            return (position, Err(err), None);
        }
        let raw = match self.stream.as_mut() {
            Some(stream) if stream.shard_position().epoch == position.epoch => {
                read_raw(stream, inner.batch_len(position))
            }
            _ => match self.open_at(inner, position) {
                Ok(stream) => read_raw(stream, inner.batch_len(position)),
                Err(err) => Err(err),
            },
        };
        if self.next.epoch != position.epoch {
            self.stream = None;
            if self.eager {
                if let Err(err) = self.open(inner) {
                    self.error = Some(err);
                }
            }
        }
        (position, raw, self.position())
    }

    fn open_at(&mut self, inner: &Inner, position: LoaderPosition) -> Result<&mut ShardStream> {
        let next = std::mem::replace(&mut self.next, position);
        let opened = self.open(inner);
        self.next = next;
        opened?;
        Ok(self.stream.as_mut().expect("opened above"))
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
    results: BTreeMap<u64, (Result<CollatedBatch>, Option<ShardPosition>)>,
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
    /// The shard reader (loaders over shards).
    cursor: Option<Arc<Mutex<ShardCursor>>>,
    /// The shard reader's position after the last batch yielded.
    shard_position: Option<ShardPosition>,
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
        let cursor = matches!(inner.source, Source::Shards(_))
            .then(|| Arc::new(Mutex::new(ShardCursor::new(&inner, start, count.is_none()))));
        let shard_position = cursor.as_ref().and_then(|c| lock(c).position());
        let workers = (0..inner.config.num_workers)
            .map(|w| {
                let (inner, queue, cursor) = (inner.clone(), queue.clone(), cursor.clone());
                std::thread::Builder::new()
                    .name(format!("virtex-data-{w}"))
                    .spawn(move || match cursor {
                        Some(cursor) => shard_worker(&inner, &queue, &cursor, count),
                        None => worker(&inner, &queue, start, count),
                    })
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
            cursor,
            shard_position,
        }
    }

    /// For a loader over shards, the shard reader's position after the batches yielded so far
    /// (epoch, samples yielded in it, shard and offset being read): store it with the
    /// checkpoint next to [`BatchIter::position`]; a resumed iterator at the same position
    /// reports the same value unless the shards changed. `None` for indexed data.
    pub fn shard_position(&self) -> Option<ShardPosition> {
        self.shard_position.clone()
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

/// Claims the next batch for a worker: waits while the workers are `prefetch` batches ahead;
/// `None` when the iterator stops or has handed out its `count`.
fn claim(queue: &Queue, prefetch: u64, count: Option<u64>) -> Option<u64> {
    let mut state = lock(&queue.state);
    loop {
        if state.stop || count.is_some_and(|c| state.next_claim >= c) {
            return None;
        }
        if state.next_claim < state.next_yield + prefetch {
            break;
        }
        state = queue.work.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    state.next_claim += 1;
    Some(state.next_claim - 1)
}

/// Runs `load` for the batch at `position`, turning a panic into an error.
fn guarded(
    position: LoaderPosition,
    load: impl FnOnce() -> Result<CollatedBatch>,
) -> Result<CollatedBatch> {
    std::panic::catch_unwind(AssertUnwindSafe(load)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(DataError::WorkerPanicked(format!(
            "batch {position:?}: {message}"
        )))
    })
}

fn worker(inner: &Inner, queue: &Queue, start: LoaderPosition, count: Option<u64>) {
    let prefetch = inner.config.prefetch_batches as u64;
    while let Some(seq) = claim(queue, prefetch, count) {
        let position = inner.advance(start, seq);
        let result = guarded(position, || inner.load_batch(position));
        let mut state = lock(&queue.state);
        state.results.insert(seq, (result, None));
        queue.ready.notify_all();
    }
}

/// A worker over shards: claims a batch and reads its samples under the cursor's lock (so
/// batches are read in order), then decodes them in parallel with the other workers.
fn shard_worker(inner: &Inner, queue: &Queue, cursor: &Mutex<ShardCursor>, count: Option<u64>) {
    let prefetch = inner.config.prefetch_batches as u64;
    loop {
        let (seq, (position, raw, shard_position)) = {
            let mut cursor = lock(cursor);
            let Some(seq) = claim(queue, prefetch, count) else {
                return;
            };
            (seq, cursor.read_batch(inner))
        };
        let result = guarded(position, || inner.process_shard_batch(position, raw?));
        let mut state = lock(&queue.state);
        state.results.insert(seq, (result, shard_position));
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
        let (result, shard_position) = if self.workers.is_empty() {
            match &self.cursor {
                Some(cursor) => {
                    let (position, raw, shard_position) = lock(cursor).read_batch(&self.inner);
                    let result = raw.and_then(|raw| self.inner.process_shard_batch(position, raw));
                    (result, shard_position)
                }
                None => (
                    self.inner.load_batch(self.inner.advance(self.start, seq)),
                    None,
                ),
            }
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
        if shard_position.is_some() {
            self.shard_position = shard_position;
        }
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
