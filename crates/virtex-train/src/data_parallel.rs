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
//!
//! Multi-node ([`MultiNode`], [`Topology`]): the same group, registered with burn-collective's
//! multi-node configuration (a coordinator, each node's data service, with the two fixes in
//! `vendor/`); each node trains on its own shards of every global micro-batch (its loader
//! decodes only those, [`Topology::batch_part`]), the loss values are all-reduced too, and a
//! [`Watchdog`] ends the process when a collective call outlives `--collective-timeout`. Nodes
//! log quietly ([`quiet_collective_logging`]): burn-communication's own INFO logging to stdout
//! can block a node (docs/architecture.md § Multi-node).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, AllReduceStrategy, CollectiveConfig,
    CollectiveError, PeerId, ReduceOperation,
};
use burn::module::{AutodiffModule, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
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

/// Exit status of a process whose collective watchdog fired ([`Watchdog`]): the status
/// coreutils' `timeout` uses, so job scripts can tell "a peer is gone" from other failures.
pub const COLLECTIVE_TIMEOUT_EXIT_CODE: i32 = 124;

/// How long a node waits for the others by default (`--collective-timeout`): long enough for
/// node 0 to validate and checkpoint while the others wait in the next all-reduce.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where this process sits in a multi-node run (`pretrain_coco --num-nodes N --node-rank R
/// --coordinator HOST:PORT --node-address HOST:PORT`), and how long it waits for the others.
///
/// burn-collective's multi-node mode: the devices of a node all-reduce among themselves
/// (tree), then one peer per node all-reduces with the other nodes (ring, over WebSockets),
/// then the result goes back to every device. Nodes find each other through the coordinator
/// (burn-collective's global orchestrator), which node 0 runs unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiNode {
    /// Number of nodes (processes) in the run, at least 2.
    pub num_nodes: usize,
    /// This node's rank, `0..num_nodes`; node 0 holds global rank 0 (logs, validates,
    /// checkpoints).
    pub node_rank: usize,
    /// The coordinator's `HOST:PORT`, the same on every node.
    pub coordinator: String,
    /// Whether this process runs the coordinator itself (on the coordinator's port).
    pub start_coordinator: bool,
    /// `HOST:PORT` at which the other nodes reach this node's tensor data service; the service
    /// listens on this port on all interfaces.
    pub node_address: String,
    /// How long any collective operation (joining, one training step) may wait for the other
    /// nodes before this process gives up ([`Watchdog`]).
    pub timeout: Duration,
}

/// The port of `address` (`HOST:PORT`); `what` names the flag in the error.
pub fn port_of(what: &str, address: &str) -> Result<u16, TrainError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| TrainError::Config(format!("{what} `{address}`: expected HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| TrainError::Config(format!("{what} `{address}`: `{port}` is not a port")))?;
    if host.is_empty() || port == 0 {
        return Err(TrainError::Config(format!(
            "{what} `{address}`: expected HOST:PORT with a host and a port above 0"
        )));
    }
    Ok(port)
}

/// burn-communication's address for `HOST:PORT` (its WebSocket client needs the `ws://`).
fn ws_address<A: FromStr>(address: &str) -> Result<A, TrainError>
where
    A::Err: std::fmt::Debug,
{
    let url = if address.starts_with("ws://") {
        address.to_string()
    } else {
        format!("ws://{address}")
    };
    url.parse()
        .map_err(|err| TrainError::Config(format!("address `{address}`: {err:?}")))
}

impl MultiNode {
    /// Checks the ranks and addresses.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.num_nodes < 2 {
            return Err(TrainError::Config(format!(
                "--num-nodes {}: a multi-node run needs at least 2 nodes",
                self.num_nodes
            )));
        }
        if self.node_rank >= self.num_nodes {
            return Err(TrainError::Config(format!(
                "--node-rank {} is not below --num-nodes {}",
                self.node_rank, self.num_nodes
            )));
        }
        let coordinator = port_of("--coordinator", &self.coordinator)?;
        let data = port_of("--node-address", &self.node_address)?;
        if self.start_coordinator && coordinator == data {
            return Err(TrainError::Config(format!(
                "--node-address and --coordinator both use port {data} on this node"
            )));
        }
        if self.timeout.is_zero() {
            return Err(TrainError::Config(
                "--collective-timeout must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// Whether this node holds global rank 0.
    pub fn is_primary(&self) -> bool {
        self.node_rank == 0
    }

    /// The coordinator's port.
    pub fn coordinator_port(&self) -> Result<u16, TrainError> {
        port_of("--coordinator", &self.coordinator)
    }

    /// burn-collective's configuration for `local_devices` devices on this node.
    pub fn collective_config(&self, local_devices: usize) -> Result<CollectiveConfig, TrainError> {
        self.check()?;
        Ok(CollectiveConfig::default()
            .with_num_devices(local_devices)
            .with_num_nodes(self.num_nodes as u32)
            .with_global_address(ws_address(&self.coordinator)?)
            .with_node_address(ws_address(&self.node_address)?)
            .with_data_service_port(port_of("--node-address", &self.node_address)?)
            // burn-collective's recommendation: tree inside a node, ring between nodes (each
            // node sends and receives 2·(N−1)/N of the gradients per step).
            .with_global_all_reduce_strategy(AllReduceStrategy::Ring))
    }
}

/// The ranks of a (possibly multi-node) data-parallel run: `num_nodes` nodes with
/// `local_devices` devices each. Global rank = `node_rank · local_devices + local rank`.
///
/// This is what a data source needs to read its part of the data: each node's loader goes
/// through the global micro-batches in the one deterministic order and decodes only
/// [`Topology::batch_part`] of each (its devices' shards); a stream that assigns files per rank
/// instead would take [`Topology::node_rank`] / [`Topology::num_nodes`] (one reader per node
/// feeding its local devices) or [`Topology::global_rank`] / [`Topology::world_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Number of nodes.
    pub num_nodes: usize,
    /// This node's rank.
    pub node_rank: usize,
    /// Devices (replicas) on each node.
    pub local_devices: usize,
}

impl Topology {
    /// One node with `local_devices` devices.
    pub fn single_node(local_devices: usize) -> Self {
        Self {
            num_nodes: 1,
            node_rank: 0,
            local_devices,
        }
    }

    /// `multi_node`'s ranks (one node when `None`) with `local_devices` devices per node.
    pub fn new(multi_node: Option<&MultiNode>, local_devices: usize) -> Self {
        multi_node.map_or(Self::single_node(local_devices), |node| Self {
            num_nodes: node.num_nodes,
            node_rank: node.node_rank,
            local_devices,
        })
    }

    /// Number of replicas over all nodes.
    pub fn world_size(&self) -> usize {
        self.num_nodes * self.local_devices
    }

    /// The global rank of local device `local_rank` of this node.
    pub fn global_rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.local_devices + local_rank
    }

    /// The shards (of [`Topology::world_size`]) of a global micro-batch that this node's
    /// devices train on, in local-rank order.
    pub fn node_shards(&self) -> Range<usize> {
        self.global_rank(0)..self.global_rank(self.local_devices)
    }

    /// The part of every global micro-batch this node decodes (its devices' shards of
    /// [`Topology::world_size`]), or `None` on a single node (every sample).
    pub fn batch_part(&self) -> Option<virtex_data::BatchPart> {
        (self.num_nodes > 1).then_some(virtex_data::BatchPart {
            first: self.global_rank(0),
            count: self.local_devices,
            parts: self.world_size(),
        })
    }

    /// Whether this node holds global rank 0 (logs, validates, checkpoints).
    pub fn is_primary(&self) -> bool {
        self.node_rank == 0
    }
}

/// Runs burn-collective's coordinator (its global orchestrator, a WebSocket server on all
/// interfaces) on `port` in a thread of its own, for as long as the process lives.
///
/// The port is checked first, so a port in use is an error here rather than nodes waiting for
/// a coordinator that never started. The orchestrator stops on SIGINT/SIGTERM (its own
/// handler); by then the nodes have registered and need it only to unregister.
pub fn spawn_coordinator(port: u16) -> Result<JoinHandle<()>, TrainError> {
    quiet_collective_logging();
    let runtime = coordinator_runtime(port)?;
    std::thread::Builder::new()
        .name("collective-coordinator".into())
        .spawn(move || {
            runtime.block_on(burn_collective::start_global_orchestrator(port));
        })
        .map_err(|err| TrainError::DataParallel(format!("starting the coordinator: {err}")))
}

/// Runs the coordinator on `port` in this thread until SIGINT/SIGTERM
/// (`pretrain_coco --coordinator-only`).
pub fn run_coordinator(port: u16) -> Result<(), TrainError> {
    quiet_collective_logging();
    coordinator_runtime(port)?.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

fn coordinator_runtime(port: u16) -> Result<tokio::runtime::Runtime, TrainError> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|err| {
        TrainError::DataParallel(format!(
            "the coordinator cannot listen on port {port}: {err}"
        ))
    })?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|err| TrainError::DataParallel(format!("the coordinator's runtime: {err}")))
}

/// Installs a process-wide `tracing` subscriber that prints warnings and errors to stderr
/// (`RUST_LOG` overrides the filter, e.g. `RUST_LOG=burn_collective=info`), unless the program
/// already installed one, which is then kept.
///
/// Why: burn-communication 0.21 installs its own subscriber when its server starts, at INFO and
/// on stdout, and logs two lines per all-reduce ("Downloading tensor from …"), about 200 per
/// training step. Besides burying the progress lines, a node whose stdout is a pipe that nobody
/// reads fast enough blocks in that write inside the collective's runtime, and every node of the
/// run then waits on it. burn-communication's `try_init` gives way to a subscriber that is
/// already there, so installing this one first is enough.
pub fn quiet_collective_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    // An error only means a subscriber is already installed (ours or the program's).
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Ends the process when a collective operation outlives its timeout.
///
/// burn-collective 0.21 has no timeouts: a node that never joins leaves the others waiting
/// in `register` forever (its client retries the coordinator every second without limit), and
/// a node that dies mid-step leaves its peers waiting for tensors or a sync message, or makes a
/// task of the collective server panic so that the waiting caller never hears back. Such a
/// call cannot be cancelled from outside, so the watchdog, a thread of its own, prints
/// [`TrainError::CollectiveTimeout`] and exits the process with
/// [`COLLECTIVE_TIMEOUT_EXIT_CODE`]. Every node runs one, so every node ends within its
/// timeout of the failure. Checkpoints are written outside the watched calls, through a
/// temporary directory and a rename, so the newest one stays loadable.
pub struct Watchdog {
    shared: Arc<WatchShared>,
    timeout: Duration,
}

struct WatchShared {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchState {
    /// The watched call and its deadline.
    armed: Option<(Instant, String)>,
    stop: bool,
}

/// A watched call ([`Watchdog::arm`]); dropping it disarms the watchdog.
#[must_use = "the watchdog is disarmed when the guard is dropped"]
pub struct WatchGuard<'a> {
    watchdog: &'a Watchdog,
}

impl Watchdog {
    /// Starts the watchdog's thread.
    pub fn start(timeout: Duration) -> Self {
        let shared = Arc::new(WatchShared {
            state: Mutex::new(WatchState::default()),
            changed: Condvar::new(),
        });
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || watch(&watched, timeout))
            .expect("spawning the collective watchdog thread");
        Self { shared, timeout }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Watches `what` from now until the guard is dropped.
    pub fn arm(&self, what: impl Into<String>) -> WatchGuard<'_> {
        let mut state = lock(&self.shared.state);
        state.armed = Some((Instant::now() + self.timeout, what.into()));
        self.shared.changed.notify_all();
        WatchGuard { watchdog: self }
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        lock(&self.watchdog.shared.state).armed = None;
        self.watchdog.shared.changed.notify_all();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.changed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn watch(shared: &WatchShared, timeout: Duration) {
    let mut state = lock(&shared.state);
    loop {
        if state.stop {
            return;
        }
        let wait = match &state.armed {
            None => None,
            Some((deadline, what)) => {
                let now = Instant::now();
                if now >= *deadline {
                    let err = TrainError::CollectiveTimeout {
                        what: what.clone(),
                        timeout,
                    };
                    eprintln!("error: {err}");
                    std::process::exit(COLLECTIVE_TIMEOUT_EXIT_CODE);
                }
                Some(*deadline - now)
            }
        };
        state = match wait {
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(wait) => {
                shared
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        };
    }
}

/// Gives every parameter of `model` an id that depends only on the model's structure (its
/// position in the module tree), the same in every process.
///
/// `GradientsParams::all_reduce` reduces the gradients in the order of their parameter ids;
/// burn draws fresh ids at random, so the processes of a multi-node run would pair different
/// parameters. A resumed run needs nothing: the optimizer record restores the saved ids,
/// identical on every node. Tied parameters keep sharing one id.
pub fn deterministic_param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(model: M) -> M {
    struct Renumber {
        next: u64,
        assigned: HashMap<ParamId, ParamId>,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let next = &mut self.next;
            let id = *self.assigned.entry(id).or_insert_with(|| {
                *next += 1;
                ParamId::from(*next)
            });
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    // A fixed, unlikely base keeps these ids apart from any random ones still around.
    model.map(&mut Renumber {
        next: 0x5649_5254_4558_0000,
        assigned: HashMap::new(),
    })
}

/// Sums one rank's loss values and image count over every rank of every node (an all-reduce on
/// a small tensor) and returns the global means and the global image count, as a single
/// process with all the micro-batches would report them. Each f64 travels as two f32s (value
/// and remainder) so the means keep about f64's precision.
fn reduce_step_values<B: AutodiffBackend>(
    peer: PeerId,
    device: &B::Device,
    step: &mut StepResult,
    world: usize,
) -> Result<(), TrainError> {
    let mut exact: Vec<f64> = vec![step.losses.loss];
    exact.extend(step.losses.components.iter().map(|(_, value)| *value));
    exact.push(step.images as f64);
    let mut values: Vec<f32> = exact
        .iter()
        .flat_map(|&value| {
            let high = value as f32;
            [high, (value - high as f64) as f32]
        })
        .collect();
    // The ring all-reduce splits the longest dimension into one slice per node.
    values.resize(values.len().max(world), 0.0);
    let len = values.len();
    let tensor = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(values, [len]), device);
    let reduced =
        all_reduce::<B::InnerBackend>(peer, tensor.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|err| collective_error("all-reduce of the losses", err))?;
    let reduced = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(reduced))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|err| TrainError::DataParallel(format!("reading the losses: {err:?}")))?;
    let total = |index: usize| reduced[2 * index] as f64 + reduced[2 * index + 1] as f64;
    let scale = 1.0 / world as f64;
    step.losses.loss = total(0) * scale;
    for (index, (_, value)) in step.losses.components.iter_mut().enumerate() {
        *value = total(index + 1) * scale;
    }
    step.images = total(exact.len() - 1).round() as usize;
    Ok(())
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
    /// This node's place among all ranks.
    topology: Topology,
    /// Multi-node: the global world size the losses are averaged over (every rank all-reduces
    /// them after its step).
    reduce_world: Option<usize>,
    /// Multi-node: ends the process when the other nodes stop answering.
    watchdog: Option<Watchdog>,
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
        Self::start_nodes(device, replicas, None)
    }

    /// [`ReplicaGroup::start`], as one node of `multi_node` when given: registers this node's
    /// ranks with the other nodes through the coordinator (blocking until every node has
    /// joined, or ending the process after `multi_node.timeout`, see [`Watchdog`]).
    pub fn start_nodes(
        device: &B::Device,
        replicas: Vec<(B::Device, M, Optim<M, B>)>,
        multi_node: Option<&MultiNode>,
    ) -> Result<Self, TrainError> {
        let local = replicas.len() + 1;
        let topology = Topology::new(multi_node, local);
        let config = match multi_node {
            Some(node) => node.collective_config(local)?,
            None => CollectiveConfig::default().with_num_devices(local),
        };
        let reduce_world = multi_node.map(|_| topology.world_size());
        if multi_node.is_some() {
            quiet_collective_logging();
        }
        let watchdog = multi_node.map(|node| Watchdog::start(node.timeout));
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
                    (config, reduce_world),
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
            topology,
            reduce_world,
            watchdog,
            _backend: PhantomData,
        };
        {
            let _watched = group.watch(|| match multi_node {
                Some(node) => format!(
                    "joining the run: node {} of {} waited for the other nodes to register \
                     with the coordinator {} (a node never started, or cannot reach it)",
                    node.node_rank, node.num_nodes, node.coordinator
                ),
                None => String::new(),
            });
            register::<B::InnerBackend>(PeerId::from(0), device.clone(), config)
                .map_err(|err| collective_error("registering rank 0", err))?;
        }
        Ok(group)
    }

    /// Number of ranks on this node, rank 0 included.
    pub fn ranks(&self) -> usize {
        self.jobs.len() + 1
    }

    /// This node's place among all ranks.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Arms the watchdog (multi-node runs only) for the call `what` describes.
    fn watch(&self, what: impl FnOnce() -> String) -> Option<WatchGuard<'_>> {
        self.watchdog.as_ref().map(|watchdog| watchdog.arm(what()))
    }

    /// One iteration on every rank: splits each micro-batch of `batches` into one shard per
    /// rank, hands ranks 1… theirs, runs rank 0's share here, and waits for all. In a
    /// multi-node run `batches` are this node's part of the global micro-batches (loaded with
    /// [`Topology::batch_part`]); on one node, the whole micro-batches. The result
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
        let topology = self.topology;
        // Each node's loader decoded its devices' consecutive shards of every global
        // micro-batch (`Topology::batch_part`); cutting that part into one shard per local
        // device gives each rank its global shard, so `N` nodes × `D` devices see the samples
        // of one device with `N·D`× the accumulation steps, in the same order.
        let mut shards: Vec<Vec<CollatedBatch>> = vec![Vec::with_capacity(batches.len()); ranks];
        for batch in batches {
            for (rank, shard) in shard_batch(batch, ranks)?.into_iter().enumerate() {
                shards[rank].push(shard);
            }
        }
        let _watched = self.watch(|| {
            "a training step (forward, backward and the all-reduce of the gradients with the \
             other nodes): a node died or stopped answering"
                .into()
        });
        if topology.global_rank(0) != 0 {
            // Rank 0 of node 0 keeps the iteration's seed; the other nodes draw their own.
            B::seed(device, rank_seed(seed, topology.global_rank(0)));
        }
        let mut shards = shards.into_iter();
        let own = shards.next().unwrap_or_default();
        for ((rank, jobs), batches) in (1..).zip(&self.jobs).zip(shards) {
            jobs.send(Job {
                seed: rank_seed(seed, topology.global_rank(rank)),
                batches,
            })
            .map_err(|_| TrainError::DataParallel(format!("rank {rank} has stopped")))?;
        }
        let reduce_world = self.reduce_world;
        // burn-collective 0.21 panics (instead of returning an error) when a peer node's
        // connection breaks mid-all-reduce, e.g. because that node died: turn the panic into
        // an error that says so, rather than a bare panic from inside burn.
        let own = catch_unwind(AssertUnwindSafe(|| {
            data_parallel_step(
                model,
                optimizer,
                own.iter().map(|batch| batch.to_device::<B>(device)),
                PeerId::from(0),
            )
            .and_then(|(model, mut step)| {
                if let Some(world) = reduce_world {
                    reduce_step_values::<B>(PeerId::from(0), device, &mut step, world)?;
                }
                Ok((model, step))
            })
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(TrainError::DataParallel(if reduce_world.is_some() {
                format!(
                    "the all-reduce with the other nodes broke off ({message}): a node died or \
                     its connection closed; resume every node with --resume from node 0's run \
                     directory"
                )
            } else {
                format!("rank 0 panicked: {message}")
            }))
        });
        // When a peer node's connection breaks, burn-collective's local server task dies and
        // every later call fails with `LocalServerMissing`: say what that means here.
        let own = own.map_err(|err| {
            if reduce_world.is_some() && err.to_string().contains("LocalServerMissing") {
                TrainError::DataParallel(format!(
                    "{err}: the all-reduce with the other nodes broke off (a node died or its \
                     connection closed); resume every node with --resume from node 0's run \
                     directory"
                ))
            } else {
                err
            }
        });
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
        if self.reduce_world.is_some() {
            // Already the means over every rank of every node.
            return Ok((model, step));
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
        let _watched = self.watch(|| "unregistering from the coordinator".into());
        finish_collective::<B::InnerBackend>(PeerId::from(0))
            .map_err(|err| collective_error("unregistering rank 0", err))?;
        Ok(replicas)
    }
}

impl<B: AutodiffBackend, M> Drop for ReplicaGroup<B, M> {
    fn drop(&mut self) {
        if !self.finished {
            self.jobs.clear();
            reset_collective_quietly::<B>();
        }
    }
}

/// Resets burn-collective's state after a failure. burn-collective 0.21 panics here when its
/// server task is already gone (a peer node's connection broke and took it down); the run is
/// ending with the error that caused it, so that second panic is swallowed.
fn reset_collective_quietly<B: AutodiffBackend>() {
    let _ = catch_unwind(AssertUnwindSafe(reset_collective::<B::InnerBackend>));
}

/// Global rank 0 keeps the one-device seed, other ranks get their own. Burn 0.21's RNG is one per
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
    // The collective configuration, and the world size to average the losses over
    // (multi-node).
    (config, reduce_world): (CollectiveConfig, Option<usize>),
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
            .and_then(|(model, mut step)| {
                if let Some(world) = reduce_world {
                    reduce_step_values::<B>(peer, &device, &mut step, world)?;
                }
                Ok((model, step))
            })
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
                reset_collective_quietly::<B>();
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
