//! `cargo bench --bench collective`: the all-reduce between two training processes, as a
//! multi-node run does it (burn-collective's ring between nodes over its WebSocket data
//! service, `virtex_train::data_parallel::MultiNode`'s configuration), on this machine's
//! loopback.
//!
//! Two rows:
//! - `tensor`: one f32 tensor of 1, 16 and 64 MiB all-reduced (`burn::collective::all_reduce`,
//!   sum). Reported as the tensor's bytes per second ("algorithm bandwidth") and as the bytes
//!   each node sent per second (the ring sends `2·(N−1)/N` of the tensor per node).
//! - `gradients`: the gradient set of one `bicaptioning_R_50_L1_H2048` step (every trainable
//!   parameter's shape, zeros), all-reduced as the trainer does it
//!   (`GradientsParams::all_reduce`, mean, one collective operation per parameter in id order).
//!   This is the communication time a two-node step adds, before any overlap.
//!
//! The bench starts this binary twice more as the two nodes (node 0 also runs the coordinator)
//! and prints node 0's table; each row is the median of its repetitions after one warm-up. Not
//! a criterion bench: criterion measures one process, and the operation needs both.
//! Numbers go to `docs/performance.md` (Multi-node all-reduce).

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::collective::{all_reduce, finish_collective, register, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use virtex_train::data_parallel::{quiet_collective_logging, spawn_coordinator, MultiNode};
use virtex_train::{captioning_model, PretrainConfig};

type B = Flex;

/// Set in a node process: `NODE_RANK;COORDINATOR_PORT;DATA_PORT`.
const NODE: &str = "VIRTEX_COLLECTIVE_BENCH_NODE";
const NODES: usize = 2;
const MIB: usize = 1 << 20;

/// `count` distinct ports nobody listens on now. The probe sockets stay open until all are
/// chosen: the kernel may give a just-closed probe's port to the next `bind(0)`.
fn free_ports(count: usize) -> Vec<u16> {
    let probes: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free local port"))
        .collect();
    probes
        .iter()
        .map(|probe| probe.local_addr().expect("a bound address").port())
        .collect()
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(NODE) {
        return node(&spec);
    }
    // The coordinator's port, then each node's data-service port.
    let ports = free_ports(1 + NODES);
    let coordinator_port = ports[0];
    let exe = std::env::current_exe().expect("this bench's path");
    let nodes: Vec<_> = (0..NODES)
        .map(|rank| {
            Command::new(&exe)
                .env(
                    NODE,
                    format!("{rank};{coordinator_port};{}", ports[1 + rank]),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("starting a node")
        })
        .collect();
    let mut code = ExitCode::SUCCESS;
    for (rank, mut child) in nodes.into_iter().enumerate() {
        // Read while the node runs, so a full pipe never blocks it.
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = pipe.read_to_string(&mut stdout);
        }
        let status = child.wait().expect("waiting for a node");
        if !status.success() {
            eprintln!("node {rank} failed: {status}");
            code = ExitCode::FAILURE;
        }
        if rank == 0 {
            print!("{stdout}");
        }
    }
    code
}

/// One node: join the two-node collective, run every row, print node 0's table.
fn node(spec: &str) -> ExitCode {
    let parts: Vec<&str> = spec.split(';').collect();
    let [rank, coordinator_port, data_port] = parts[..] else {
        eprintln!("bad {NODE}: {spec}");
        return ExitCode::FAILURE;
    };
    let (rank, coordinator_port): (usize, u16) = match (rank.parse(), coordinator_port.parse()) {
        (Ok(rank), Ok(port)) => (rank, port),
        _ => {
            eprintln!("bad {NODE}: {spec}");
            return ExitCode::FAILURE;
        }
    };
    quiet_collective_logging();
    let multi_node = MultiNode {
        num_nodes: NODES,
        node_rank: rank,
        coordinator: format!("127.0.0.1:{coordinator_port}"),
        start_coordinator: rank == 0,
        node_address: format!("127.0.0.1:{data_port}"),
        timeout: Duration::from_secs(120),
    };
    if multi_node.start_coordinator {
        if let Err(err) = spawn_coordinator(coordinator_port) {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    }
    let config = match multi_node.collective_config(1) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let device = Default::default();
    let peer = PeerId::from(0);
    if let Err(err) = register::<B>(peer, device, config) {
        eprintln!("registering: {err:?}");
        return ExitCode::FAILURE;
    }
    let primary = rank == 0;
    if primary {
        println!(
            "collective: {NODES} processes on loopback, ring all-reduce (median of the repetitions)"
        );
        println!(
            "| row | payload | time | algorithm bandwidth | sent per node |\n|---|---|---|---|---|"
        );
    }
    let ring_share = 2.0 * (NODES as f64 - 1.0) / NODES as f64;
    for mib in [1, 16, 64] {
        let floats = mib * MIB / 4;
        let tensor = Tensor::<B, 1>::zeros([floats], &device);
        let time = median_time(5, || {
            let reduced = all_reduce::<B>(
                peer,
                tensor.clone().into_primitive().tensor(),
                ReduceOperation::Sum,
            )
            .expect("all-reduce");
            // Wait for the result's data: the operation is complete only then.
            let _ = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
                .slice(0..1)
                .into_data();
        });
        if primary {
            let bytes = (floats * 4) as f64;
            println!(
                "| tensor | {mib} MiB | {:.1} ms | {:.2} GB/s | {:.2} GB/s |",
                time.as_secs_f64() * 1e3,
                bytes / time.as_secs_f64() / 1e9,
                ring_share * bytes / time.as_secs_f64() / 1e9
            );
        }
    }
    // The gradients of one bicaptioning_R_50_L1_H2048 step: every parameter's shape.
    let model_config = PretrainConfig::preset("bicaptioning_R_50_L1_H2048").expect("preset");
    let model = captioning_model::<B>(&model_config, &device).expect("model");
    let mut shapes = Shapes::default();
    model.visit(&mut shapes);
    drop(model);
    let parameters: usize = shapes
        .0
        .iter()
        .map(|dims| dims.iter().product::<usize>())
        .sum();
    let time = median_time(3, || {
        let mut grads = GradientsParams::new();
        // Ids by position, the same in both processes (the trainer's
        // `deterministic_param_ids`; burn's own ids are random per process).
        for (position, dims) in shapes.0.iter().enumerate() {
            grads.register::<B, 1>(
                ParamId::from(position as u64),
                Tensor::zeros([dims.iter().product::<usize>()], &device),
            );
        }
        let _ = grads
            .all_reduce::<B>(peer, ReduceOperation::Mean)
            .expect("gradient all-reduce");
    });
    if primary {
        let bytes = (parameters * 4) as f64;
        println!(
            "| gradients (bicaptioning_R_50_L1_H2048, {} tensors) | {:.0} MiB | {:.0} ms | {:.2} GB/s | {:.2} GB/s |",
            shapes.0.len(),
            bytes / MIB as f64,
            time.as_secs_f64() * 1e3,
            bytes / time.as_secs_f64() / 1e9,
            ring_share * bytes / time.as_secs_f64() / 1e9
        );
    }
    if let Err(err) = finish_collective::<B>(peer) {
        eprintln!("finishing: {err:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The median of `repetitions` timed calls of `run`, after one untimed warm-up call.
fn median_time(repetitions: usize, mut run: impl FnMut()) -> Duration {
    run();
    let mut times: Vec<Duration> = (0..repetitions)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Every float parameter's shape, in the module's order (a parameter shared by two modules is
/// listed once).
#[derive(Default)]
struct Shapes(Vec<Vec<usize>>, HashSet<ParamId>);

impl<Bk: Backend> ModuleVisitor<Bk> for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        if self.1.insert(param.id) {
            self.0.push(param.val().dims().to_vec());
        }
    }
}
