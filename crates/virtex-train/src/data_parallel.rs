//! Data-parallel training over several devices (`--devices cuda:0,cuda:1,…`) with burn's own
//! collective operations (`burn::collective`, the burn-collective crate).
//!
//! How one iteration maps onto burn-collective:
//! - One replica per device, each in its own thread: rank 0 is the calling thread (it also logs,
//!   validates, checkpoints and exports), ranks 1… are worker threads. Every rank registers with
//!   [`burn::collective::register`] on the *inner* backend (gradients live there).
//! - The calling thread reads the loader and splits each micro-batch along the batch dimension
//!   into one shard per rank, in rank order ([`shard_batch`]). With `N` devices and
//!   `optim.accumulation_steps = A`, rank `r` trains on shard `r` of each of the `A` micro-batches,
//!   so an `N`-device run sees the samples a one-device run with `A·N` accumulation steps sees,
//!   in the same order.
//! - Each rank accumulates its micro-batches' gradients, then
//!   [`crate::data_parallel_step`] averages them over the ranks with
//!   `GradientsParams::all_reduce(…, ReduceOperation::Mean)` and steps its own optimizer.
//!   Identical gradients and identical optimizer state keep the replicas identical (weights,
//!   momentum, Lookahead slow weights, skipped non-finite steps) without broadcasting weights.
//!
//! BatchNorm, as upstream's `DistributedDataParallel` without `SyncBatchNorm`: each replica
//! normalises with the statistics of its own shard, and each keeps its own running statistics
//! (replicas are built through `valid()`/`from_inner`, which gives every `RunningState` its own
//! storage; a plain `clone`/`fork` would share one between threads). Rank 0's running statistics
//! are the ones validated and checkpointed — PyTorch DDP broadcasts rank 0's buffers to every
//! rank before each forward, so there too the running statistics are rank 0's.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;

use burn::collective::{
    finish_collective, register, reset_collective, CollectiveConfig, CollectiveError, PeerId,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use virtex_data::CollatedBatch;

use crate::error::TrainError;
use crate::pretext::PretextModel;
use crate::step::{data_parallel_step, Optim, StepResult};

/// Splits `batch` along the batch dimension into `parts` consecutive shards, in order; sizes
/// differ by at most one (the first shards are the larger). Each shard's token tensors are
/// padded to its own longest caption, exactly as the loader would have collated those samples.
///
/// Fails when the batch has fewer samples than `parts` (a rank would have nothing to train on).
pub fn shard_batch(batch: &CollatedBatch, parts: usize) -> Result<Vec<CollatedBatch>, TrainError> {
    let size = batch.image_ids.len();
    if parts == 0 || size < parts {
        return Err(TrainError::DataParallel(format!(
            "a batch of {size} images cannot be split over {parts} devices"
        )));
    }
    let (height, width) = batch.image_size;
    let pixels = 3 * height * width;
    let t = batch.max_length;
    let mut shards = Vec::with_capacity(parts);
    let mut start = 0;
    for part in 0..parts {
        let len = size / parts + usize::from(part < size % parts);
        let rows = start..start + len;
        let lengths = batch.caption_lengths[rows.clone()].to_vec();
        let shard_t = lengths.iter().copied().max().unwrap_or(0).max(0) as usize;
        let tokens = |all: &[i64]| -> Vec<i64> {
            rows.clone()
                .flat_map(|row| all[row * t..row * t + shard_t].iter().copied())
                .collect()
        };
        shards.push(CollatedBatch {
            image_ids: batch.image_ids[rows.clone()].to_vec(),
            images: batch.images[rows.start * pixels..rows.end * pixels].to_vec(),
            image_size: batch.image_size,
            caption_tokens: tokens(&batch.caption_tokens),
            noitpac_tokens: tokens(&batch.noitpac_tokens),
            caption_lengths: lengths,
            max_length: shard_t,
            captions: batch.captions[rows.clone()].to_vec(),
            skipped: if part == 0 {
                batch.skipped.clone()
            } else {
                Vec::new()
            },
        });
        start += len;
    }
    Ok(shards)
}

/// A replica for `device`: `model`'s parameters (same `ParamId`s, so gradients all-reduce
/// parameter by parameter) with fresh autodiff leaves and BatchNorm running statistics of its
/// own, in `model`'s precision.
pub fn replicate<B, M>(model: &M, device: &B::Device) -> M
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    // `valid()` copies every `RunningState` into new storage and `from_inner` makes new
    // autodiff leaves; `fork` then moves the copy (and detaches it again on the same device).
    M::from_inner(model.valid()).fork(device)
}

/// One rank's share of an iteration.
struct Job {
    /// Seed of the rank's backend RNG for this iteration (dropout).
    seed: u64,
    /// The rank's shard of each micro-batch.
    batches: Vec<CollatedBatch>,
}

type RankResult = (usize, Result<StepResult, TrainError>);

/// Ranks 1… of a data-parallel run, each a thread holding a replica and its optimizer; rank 0
/// is the thread that owns this value.
///
/// Dropping it without [`ReplicaGroup::finish`] (an error or a panic on rank 0) resets the
/// collective, which releases ranks waiting in an all-reduce.
pub struct ReplicaGroup<B: AutodiffBackend, M> {
    jobs: Vec<mpsc::Sender<Job>>,
    results: mpsc::Receiver<RankResult>,
    handles: Vec<JoinHandle<Option<M>>>,
    finished: bool,
    _backend: PhantomData<B>,
}

fn collective_error(what: &str, err: CollectiveError) -> TrainError {
    TrainError::DataParallel(format!("{what}: {err:?}"))
}

impl<B, M> ReplicaGroup<B, M>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B> + 'static,
    Optim<M, B>: Send + 'static,
{
    /// Starts one thread per entry of `replicas` (ranks 1, 2, … in order) and registers every
    /// rank, rank 0 on `device` (this thread), with burn-collective. Blocks until all ranks are
    /// registered.
    pub fn start(
        device: &B::Device,
        replicas: Vec<(B::Device, M, Optim<M, B>)>,
    ) -> Result<Self, TrainError> {
        let config = CollectiveConfig::default().with_num_devices(replicas.len() + 1);
        // Forget whatever an earlier run in this process left behind (one data-parallel run
        // per backend at a time: the collective server is process-wide).
        reset_collective::<B::InnerBackend>();
        let (result_sender, results) = mpsc::channel();
        let mut jobs = Vec::with_capacity(replicas.len());
        let mut handles = Vec::with_capacity(replicas.len());
        for (index, (replica_device, model, optimizer)) in replicas.into_iter().enumerate() {
            let rank = index + 1;
            let (job_sender, job_receiver) = mpsc::channel();
            jobs.push(job_sender);
            let results = result_sender.clone();
            let config = config.clone();
            handles.push(std::thread::spawn(move || {
                worker::<B, M>(
                    rank,
                    replica_device,
                    model,
                    optimizer,
                    config,
                    job_receiver,
                    results,
                )
            }));
        }
        let group = Self {
            jobs,
            results,
            handles,
            finished: false,
            _backend: PhantomData,
        };
        register::<B::InnerBackend>(PeerId::from(0), device.clone(), config)
            .map_err(|err| collective_error("registering rank 0", err))?;
        Ok(group)
    }

    /// Number of ranks, rank 0 included.
    pub fn ranks(&self) -> usize {
        self.jobs.len() + 1
    }

    /// One iteration on every rank: splits each micro-batch of `batches` into one shard per
    /// rank, hands ranks 1… theirs, runs rank 0's share here, and waits for all. The result
    /// has the mean of the ranks' losses, the images of all ranks and rank 0's optimizer
    /// report (the same on every rank: the reduced gradients are identical).
    pub fn step(
        &mut self,
        model: M,
        optimizer: &mut Optim<M, B>,
        batches: &[CollatedBatch],
        device: &B::Device,
        seed: u64,
    ) -> Result<(M, StepResult), TrainError> {
        let ranks = self.ranks();
        let mut shards: Vec<Vec<CollatedBatch>> = vec![Vec::with_capacity(batches.len()); ranks];
        for batch in batches {
            for (rank, shard) in shard_batch(batch, ranks)?.into_iter().enumerate() {
                shards[rank].push(shard);
            }
        }
        let mut shards = shards.into_iter();
        let own = shards.next().unwrap_or_default();
        for ((rank, jobs), batches) in (1..).zip(&self.jobs).zip(shards) {
            jobs.send(Job {
                seed: rank_seed(seed, rank),
                batches,
            })
            .map_err(|_| TrainError::DataParallel(format!("rank {rank} has stopped")))?;
        }
        let own = data_parallel_step(
            model,
            optimizer,
            own.iter().map(|batch| batch.to_device::<B>(device)),
            PeerId::from(0),
        );
        let mut others = Vec::with_capacity(ranks - 1);
        for _ in 1..ranks {
            match self.results.recv() {
                Ok(result) => others.push(result),
                Err(_) => break,
            }
        }
        // A failing rank releases the others from the all-reduce with `LocalServerMissing`
        // (see `worker`): report the cause, not the consequence.
        let released = |err: &TrainError| err.to_string().contains("LocalServerMissing");
        let failures: Vec<(usize, &TrainError)> = own
            .as_ref()
            .err()
            .map(|err| (0, err))
            .into_iter()
            .chain(
                others
                    .iter()
                    .filter_map(|(rank, result)| result.as_ref().err().map(|err| (*rank, err))),
            )
            .collect();
        if let Some((rank, err)) = failures
            .iter()
            .find(|(_, err)| !released(err))
            .or(failures.first())
        {
            return Err(TrainError::DataParallel(format!("rank {rank}: {err}")));
        }
        let (model, mut step) = own?;
        if others.len() + 1 != ranks {
            return Err(TrainError::DataParallel(
                "a rank stopped without reporting".into(),
            ));
        }
        let scale = 1.0 / ranks as f64;
        let mut losses = step.losses.scaled(scale);
        for (_, result) in &others {
            let other = result.as_ref().expect("errors were returned above");
            losses.add_scaled(&other.losses, scale);
            step.images += other.images;
        }
        step.losses = losses;
        Ok((model, step))
    }

    /// Stops the worker threads, unregisters every rank and hands back the replicas of ranks
    /// 1… as they are after the last step.
    pub fn finish(mut self) -> Result<Vec<M>, TrainError> {
        self.jobs.clear();
        let mut replicas = Vec::with_capacity(self.handles.len());
        for (rank, handle) in (1..).zip(std::mem::take(&mut self.handles)) {
            let replica = handle
                .join()
                .map_err(|_| TrainError::DataParallel(format!("rank {rank} panicked")))?
                .ok_or_else(|| TrainError::DataParallel(format!("rank {rank} failed")))?;
            replicas.push(replica);
        }
        self.finished = true;
        finish_collective::<B::InnerBackend>(PeerId::from(0))
            .map_err(|err| collective_error("unregistering rank 0", err))?;
        Ok(replicas)
    }
}

impl<B: AutodiffBackend, M> Drop for ReplicaGroup<B, M> {
    fn drop(&mut self) {
        if !self.finished {
            self.jobs.clear();
            reset_collective::<B::InnerBackend>();
        }
    }
}

/// Rank 0 keeps the one-device seed, other ranks get their own. Burn 0.21's RNG is one per
/// process on flex and on CUDA (`B::seed` ignores the device), so with dropout the ranks' draws
/// interleave in thread order: random, but not reproducible (docs/architecture.md).
fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed.wrapping_add((rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The loop of rank `rank`: register, then one [`data_parallel_step`] per job until the job
/// channel closes, then unregister. Returns the replica, or `None` after a failure.
fn worker<B, M>(
    rank: usize,
    device: B::Device,
    mut model: M,
    mut optimizer: Optim<M, B>,
    config: CollectiveConfig,
    jobs: mpsc::Receiver<Job>,
    results: mpsc::Sender<RankResult>,
) -> Option<M>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B>,
{
    let peer = PeerId::from(rank as u32);
    if let Err(err) = register::<B::InnerBackend>(peer, device.clone(), config) {
        let _ = results.send((rank, Err(collective_error("registering", err))));
        return None;
    }
    while let Ok(job) = jobs.recv() {
        B::seed(&device, job.seed);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            data_parallel_step(
                model,
                &mut optimizer,
                job.batches
                    .iter()
                    .map(|batch| batch.to_device::<B>(&device)),
                peer,
            )
        }));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                // Release the ranks waiting for this one in the all-reduce.
                reset_collective::<B::InnerBackend>();
                Err(TrainError::DataParallel(format!("panicked: {message}")))
            }
        };
        match outcome {
            Ok((stepped, step)) => {
                model = stepped;
                if results.send((rank, Ok(step))).is_err() {
                    break;
                }
            }
            Err(err) => {
                let _ = results.send((rank, Err(err)));
                return None;
            }
        }
    }
    let _ = finish_collective::<B::InnerBackend>(peer);
    Some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lengths: &[i64]) -> CollatedBatch {
        let b = lengths.len();
        let t = *lengths.iter().max().unwrap() as usize;
        let mut caption_tokens = vec![0i64; b * t];
        for (row, &len) in lengths.iter().enumerate() {
            for j in 0..len as usize {
                caption_tokens[row * t + j] = (row * 10 + j + 1) as i64;
            }
        }
        CollatedBatch {
            image_ids: (0..b as u64).map(virtex_data::ImageId::Int).collect(),
            images: (0..b * 3 * 2 * 2).map(|v| v as f32).collect(),
            image_size: (2, 2),
            noitpac_tokens: caption_tokens.iter().map(|v| -v).collect(),
            caption_tokens,
            caption_lengths: lengths.to_vec(),
            max_length: t,
            captions: (0..b).map(|i| format!("caption {i}")).collect(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn shards_split_in_order_and_trim_padding() {
        let shards = shard_batch(&batch(&[3, 5, 2, 4, 2]), 2).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].caption_lengths, vec![3, 5, 2]);
        assert_eq!(shards[1].caption_lengths, vec![4, 2]);
        assert_eq!(shards[1].max_length, 4);
        assert_eq!(shards[1].caption_tokens, vec![31, 32, 33, 34, 41, 42, 0, 0]);
        assert_eq!(shards[1].noitpac_tokens[..2], [-31, -32]);
        assert_eq!(shards[1].images.len(), 2 * 12);
        assert_eq!(shards[1].images[0], 36.0);
        assert_eq!(shards[1].captions, vec!["caption 3", "caption 4"]);
        assert!(shard_batch(&batch(&[2]), 2).is_err());
    }
}
