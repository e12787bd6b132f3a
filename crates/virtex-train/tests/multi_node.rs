//! Multi-node data parallel on one machine: two training processes on localhost talk through
//! burn-collective's coordinator and WebSocket data service, exactly as two machines would.
//!
//! - A node that never joins ends the run with the collective-timeout error within the
//!   timeout.
//! - A node killed after the first checkpoint ends the run on the other node with that error
//!   within the timeout, and the newest checkpoint stays loadable.
//! - Two nodes train with the losses and parameters of one process with twice the
//!   accumulation steps (`two_nodes_match_one_process_with_twice_the_accumulation`).
//!
//! This test binary has its own `main` (`harness = false` in Cargo.toml): it starts this same
//! binary again as each node (selected by an environment variable), so a node is never
//! reported as a test of its own. Ports are chosen free at run time.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use virtex_data::{
    sample_data_root, write_shards, CocoCaptions, CocoOptions, ShardWriterOptions, Split,
};
use virtex_train::checkpoint::latest_checkpoint;
use virtex_train::cli::Args;
use virtex_train::config::DataFormat;
use virtex_train::data_parallel::{
    spawn_coordinator, MultiNode, Topology, COLLECTIVE_TIMEOUT_EXIT_CODE,
};
use virtex_train::{train, training_data_for_node, PretrainConfig, RunOptions, RunSummary};

type B = Autodiff<Flex>;

/// Set in a node process: `RUN_DIR;NODE_RANK;COORDINATOR_PORT;DATA_PORT;TIMEOUT_MS;ITERATIONS;
/// CHECKPOINT_EVERY;ACCUMULATION;STOP_AFTER;RESUME;SHARDS;BY_NODE` (STOP_AFTER 0: none;
/// RESUME 0/1; SHARDS: empty, or the train and val shard patterns joined by `|`; BY_NODE 0/1:
/// `data.shards_by_node`).
const NODE: &str = "VIRTEX_MULTI_NODE_TEST_NODE";

/// `small_cpu` at 32 pixels, global batch 8, dropout 0, augmentation on (drawn per sample, so
/// independent of how the batch is split).
fn config(iterations: u64, checkpoint_every: u64, accumulation_steps: usize) -> PretrainConfig {
    let mut config = common::tiny_config(iterations, checkpoint_every);
    config.model.dropout = 0.0;
    config.optim.batch_size = 8;
    config.optim.accumulation_steps = accumulation_steps;
    config.train.keep_last = 3;
    config
}

/// [`config`] reading WebDataset shards (`train|val` patterns), shuffled through a buffer.
fn shard_config(mut config: PretrainConfig, shards: &str) -> PretrainConfig {
    let (train, val) = shards.split_once('|').unwrap();
    config.data.format = DataFormat::WebDataset;
    config.data.shards_train = Some(train.into());
    config.data.shards_val = Some(val.into());
    config.data.shuffle_buffer = 4;
    config.data.tokenizer = Some(virtex_data::sample_vocab_path());
    config.validate().unwrap();
    config
}

/// The sample's train and val splits as shards of 3 samples in `dir`: `train|val` patterns.
fn write_sample_shards(dir: &Path) -> String {
    let patterns: Vec<String> = [Split::Train, Split::Val]
        .into_iter()
        .map(|split| {
            let coco =
                CocoCaptions::load(sample_data_root(), split, &CocoOptions::default()).unwrap();
            let options = ShardWriterOptions {
                samples_per_shard: 3,
                ..ShardWriterOptions::default()
            };
            write_shards(coco.images(), &dir.join(split.name()), &options)
                .unwrap()
                .pattern
        })
        .collect();
    patterns.join("|")
}

/// A port nobody listens on now, and never handed out before by this process.
///
/// The kernel may give the port of a just-closed probe socket to the next `bind(0)`, so two
/// calls in a row can return the same port (a CI run once got it for both the coordinator and
/// node 0's data service); remembering every port handed out rules that out.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

struct NodeSpec {
    run_dir: PathBuf,
    rank: usize,
    coordinator_port: u16,
    data_port: u16,
    timeout: Duration,
    iterations: u64,
    checkpoint_every: u64,
    accumulation: usize,
    /// Stop after this many iterations of this invocation (a checkpoint is written there).
    stop_after: Option<u64>,
    resume: bool,
    /// `train|val` shard patterns; `None`: the sample's COCO folder.
    shards: Option<String>,
    /// `data.shards_by_node`.
    by_node: bool,
}

impl NodeSpec {
    /// A fresh node of a run on the sample folder, without early stop.
    fn new(run_dir: PathBuf, rank: usize, coordinator_port: u16, timeout: Duration) -> Self {
        Self {
            run_dir,
            rank,
            coordinator_port,
            data_port: free_port(),
            timeout,
            iterations: 3,
            checkpoint_every: 1000,
            accumulation: 1,
            stop_after: None,
            resume: false,
            shards: None,
            by_node: false,
        }
    }

    fn config(&self) -> PretrainConfig {
        let config = config(self.iterations, self.checkpoint_every, self.accumulation);
        match &self.shards {
            Some(shards) => {
                let mut config = shard_config(config, shards);
                config.data.shards_by_node = self.by_node;
                config
            }
            None => config,
        }
    }

    fn encode(&self) -> String {
        format!(
            "{};{};{};{};{};{};{};{};{};{};{};{}",
            self.run_dir.display(),
            self.rank,
            self.coordinator_port,
            self.data_port,
            self.timeout.as_millis(),
            self.iterations,
            self.checkpoint_every,
            self.accumulation,
            self.stop_after.unwrap_or(0),
            u8::from(self.resume),
            self.shards.as_deref().unwrap_or(""),
            u8::from(self.by_node)
        )
    }

    fn decode(text: &str) -> Self {
        let parts: Vec<&str> = text.split(';').collect();
        Self {
            run_dir: PathBuf::from(parts[0]),
            rank: parts[1].parse().unwrap(),
            coordinator_port: parts[2].parse().unwrap(),
            data_port: parts[3].parse().unwrap(),
            timeout: Duration::from_millis(parts[4].parse().unwrap()),
            iterations: parts[5].parse().unwrap(),
            checkpoint_every: parts[6].parse().unwrap(),
            accumulation: parts[7].parse().unwrap(),
            stop_after: Some(parts[8].parse().unwrap()).filter(|&n| n > 0),
            resume: parts[9] == "1",
            shards: Some(parts[10].to_string()).filter(|shards| !shards.is_empty()),
            by_node: parts[11] == "1",
        }
    }

    fn spawn(&self) -> Node {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(NODE, self.encode())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        Node {
            child,
            stdout,
            stderr,
        }
    }
}

/// A running node process whose output is read as it comes: a pipe nobody reads fills up
/// (64 KiB) and blocks the node in its next write: before the nodes logged quietly, that
/// write sat inside burn-collective's runtime and hung both nodes mid-run.
struct Node {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Node {
    fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A node: what `pretrain_coco --num-nodes 2 --node-rank R …` runs. Prints its summary as JSON.
fn node_main(spec: &NodeSpec) -> ExitCode {
    let node = MultiNode {
        num_nodes: 2,
        node_rank: spec.rank,
        coordinator: format!("127.0.0.1:{}", spec.coordinator_port),
        start_coordinator: spec.rank == 0,
        node_address: format!("127.0.0.1:{}", spec.data_port),
        timeout: spec.timeout,
    };
    if node.start_coordinator {
        spawn_coordinator(spec.coordinator_port).unwrap();
    }
    let options = RunOptions {
        multi_node: Some(node),
        resume: spec.resume,
        stop_after: spec.stop_after,
        ..RunOptions::new(spec.config(), &spec.run_dir)
    };
    match train::<B>(
        options,
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    ) {
        Ok(summary) => {
            println!("SUMMARY {}", serde_json::to_string(&summary).unwrap());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(NODE) {
        return node_main(&NodeSpec::decode(&spec));
    }
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let tests: [(&str, fn()); 6] = [
        ("multi_node_flags_are_checked", multi_node_flags_are_checked),
        (
            "two_nodes_match_one_process_with_twice_the_accumulation",
            two_nodes_match_one_process_with_twice_the_accumulation,
        ),
        (
            "two_nodes_resume_from_shards_where_they_stopped",
            two_nodes_resume_from_shards_where_they_stopped,
        ),
        (
            "nodes_reading_their_own_shards_resume_exactly",
            nodes_reading_their_own_shards_resume_exactly,
        ),
        (
            "a_node_that_never_joins_ends_the_run",
            a_node_that_never_joins_ends_the_run,
        ),
        (
            "a_killed_node_ends_every_node",
            a_killed_node_ends_every_node,
        ),
    ];
    if arguments.iter().any(|a| a == "--list") {
        for (name, _) in &tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = arguments.iter().filter(|a| !a.starts_with('-')).collect();
    let mut ran = 0;
    for (name, test) in tests {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            let started = Instant::now();
            test();
            println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            ran += 1;
        }
    }
    println!("\ntest result: ok. {ran} passed; 0 failed");
    ExitCode::SUCCESS
}

/// Waits for `child` (at most `limit`), killing it past that; returns its status code, stdout
/// and stderr.
/// Waits for every node (up to 300 s each) and returns their exit codes and output; panics with
/// every node's output, not just the first failing one's, when any node failed: a node that
/// ends with the timeout error is usually waiting for another that failed first.
fn finish_all(nodes: Vec<Node>) -> Vec<(Option<i32>, String, String)> {
    let outputs: Vec<_> = nodes
        .into_iter()
        .map(|node| finish(node, Duration::from_secs(300)))
        .collect();
    if outputs.iter().any(|(code, _, _)| *code != Some(0)) {
        let report: Vec<String> = outputs
            .iter()
            .enumerate()
            .map(|(rank, (code, stdout, stderr))| {
                format!("node {rank} exited {code:?}:\n{stdout}\n{stderr}")
            })
            .collect();
        panic!("{}", report.join("\n----\n"));
    }
    outputs
}

fn finish(node: Node, limit: Duration) -> (Option<i32>, String, String) {
    let Node {
        mut child,
        stdout,
        stderr,
    } = node;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    (status.and_then(|status| status.code()), stdout, stderr)
}

fn summary_of(stdout: &str) -> RunSummary {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Tensors of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let data = file.tensor(name).unwrap().data().to_vec();
            let values = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.to_string(), values)
        })
        .collect()
}

/// max |a − b| / max |b| over one tensor.
fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-12);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    diff / scale
}

fn two_nodes_match_one_process_with_twice_the_accumulation() {
    let iterations = 3;
    let one_dir = tempfile::tempdir().unwrap();
    let node_dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let coordinator_port = free_port();
    let nodes: Vec<Node> = (0..2)
        .map(|rank| {
            NodeSpec {
                iterations,
                ..NodeSpec::new(
                    node_dirs[rank].path().join("run"),
                    rank,
                    coordinator_port,
                    Duration::from_secs(40),
                )
            }
            .spawn()
        })
        .collect();
    // The reference meanwhile, in this process: one device, two accumulation steps.
    let one = train::<B>(
        RunOptions::new(config(iterations, 1000, 2), one_dir.path()),
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let outputs = finish_all(nodes);
    // burn-communication's per-transfer INFO lines (two per all-reduce) are filtered out.
    for (_, stdout, stderr) in &outputs {
        assert!(
            !stdout.contains("Downloading tensor") && !stderr.contains("Downloading tensor"),
            "{stdout}\n{stderr}"
        );
    }
    let summaries: Vec<RunSummary> = outputs.iter().map(|(_, out, _)| summary_of(out)).collect();
    for summary in &summaries {
        assert_eq!(summary.iteration, iterations);
        assert_eq!(summary.losses.len(), one.losses.len());
        for (step, (a, b)) in one.losses.iter().zip(&summary.losses).enumerate() {
            let relative = (a - b).abs() / a.abs();
            eprintln!(
                "iteration {}: loss {a:.7} vs {b:.7} (relative {relative:.1e})",
                step + 1
            );
            assert!(relative < 1e-5, "iteration {}: {a} vs {b}", step + 1);
        }
    }
    // Only node 0 wrote a run directory; node 1 wrote nothing.
    assert!(!node_dirs[1].path().join("run").exists());
    let checkpoint = format!("checkpoint_{iterations:08}/model.safetensors");
    let reference = tensors(&one_dir.path().join(&checkpoint));
    let node0 = tensors(&node_dirs[0].path().join("run").join(&checkpoint));
    assert_parameters_match(&reference, &node0);
    // The state records the world size, so a one-process resume warns that it differs.
    let state = std::fs::read_to_string(
        node_dirs[0]
            .path()
            .join(format!("run/checkpoint_{iterations:08}/state.json")),
    )
    .unwrap();
    assert!(state.contains("\"devices\": 2"), "{state}");
}

/// Two nodes on one shared run directory read shuffled shards, stop after 2 of 3 iterations
/// (node 0 checkpoints), and both `--resume` from that checkpoint: the finished run has the
/// parameters and last loss of one uninterrupted process with twice the accumulation steps.
fn two_nodes_resume_from_shards_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_sample_shards(&dir.path().join("shards"));
    let iterations = 3;
    let one_dir = dir.path().join("one");
    let one = train::<B>(
        RunOptions::new(shard_config(config(iterations, 1000, 2), &shards), &one_dir),
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let node = |stop_after, resume| NodeSpec {
        iterations,
        stop_after,
        resume,
        shards: Some(shards.clone()),
        ..NodeSpec::new(run_dir.clone(), 0, 0, Duration::from_secs(40))
    };
    let first = run_two_nodes(&node(Some(2), false));
    assert!(first.iter().all(|summary| summary.iteration == 2));
    let (stopped_at, _) = latest_checkpoint(&run_dir).unwrap().unwrap();
    assert_eq!(stopped_at, 2);
    let resumed = run_two_nodes(&node(None, true));
    for summary in &resumed {
        assert_eq!(summary.iteration, iterations);
        let (a, b) = (one.losses.last().unwrap(), summary.losses.last().unwrap());
        assert!((a - b).abs() / a.abs() < 1e-5, "last loss {a} vs {b}");
    }
    let checkpoint = format!("checkpoint_{iterations:08}/model.safetensors");
    let reference = tensors(&one_dir.join(&checkpoint));
    let resumed = tensors(&run_dir.join(&checkpoint));
    assert_parameters_match(&reference, &resumed);
}

/// Every parameter of `other` within 1e-5 relative of `reference`'s, key by key. Left out:
/// BatchNorm running statistics (one process updates them once per micro-batch, node 0 from its
/// own rows only, as PyTorch DDP keeps rank 0's).
fn assert_parameters_match(reference: &[(String, Vec<f32>)], other: &[(String, Vec<f32>)]) {
    assert_eq!(reference.len(), other.len());
    let mut compared = 0;
    for ((name, a), (other_name, b)) in reference.iter().zip(other) {
        assert_eq!(name, other_name);
        if name.contains("running_mean") || name.contains("running_var") {
            continue;
        }
        let relative = relative_difference(b, a);
        assert!(relative < 1e-5, "{name}: relative difference {relative:e}");
        compared += 1;
    }
    assert!(compared > 10);
}

/// Runs nodes 0 and 1 of `spec` (its rank and ports replaced) to the end; returns their
/// summaries, failing with every node's output if one fails.
fn run_two_nodes(spec: &NodeSpec) -> Vec<RunSummary> {
    let coordinator_port = free_port();
    let nodes: Vec<Node> = (0..2)
        .map(|rank| {
            NodeSpec {
                rank,
                coordinator_port,
                data_port: free_port(),
                run_dir: spec.run_dir.clone(),
                shards: spec.shards.clone(),
                ..*spec
            }
            .spawn()
        })
        .collect();
    let outputs = finish_all(nodes);
    outputs.iter().map(|(_, out, _)| summary_of(out)).collect()
}

/// `data.shards_by_node`: each node reads only its own shards. Deterministic and exactly
/// resumable (stopped after 2 of 3 iterations and resumed: the uninterrupted run's parameters),
/// and really by node: the batches differ from the global-order run's.
fn nodes_reading_their_own_shards_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_sample_shards(&dir.path().join("shards"));
    let spec = |run: &str, by_node, stop_after, resume| NodeSpec {
        stop_after,
        resume,
        shards: Some(shards.clone()),
        by_node,
        ..NodeSpec::new(dir.path().join(run), 0, 0, Duration::from_secs(40))
    };
    let whole = run_two_nodes(&spec("whole", true, None, false));
    run_two_nodes(&spec("stopped", true, Some(2), false));
    let resumed = run_two_nodes(&spec("stopped", true, None, true));
    assert_eq!(
        whole[0].losses.last(),
        resumed[0].losses.last(),
        "the resumed run's last loss"
    );
    let checkpoint = "checkpoint_00000003/model.safetensors";
    let reference = tensors(&dir.path().join("whole").join(checkpoint));
    let continued = tensors(&dir.path().join("stopped").join(checkpoint));
    assert_eq!(reference, continued, "parameters after the resume");
    // Refused: shards_by_node without shards, and a micro-batch the nodes cannot share evenly.
    let mut folder = config(3, 1000, 1);
    folder.data.shards_by_node = true;
    let err = folder.validate().unwrap_err().to_string();
    assert!(err.contains("data.shards_by_node"), "{err}");
    let by_node = spec("x", true, None, false).config();
    let three_nodes = Topology {
        num_nodes: 3,
        node_rank: 0,
        local_devices: 1,
    };
    let err = training_data_for_node(&by_node, three_nodes)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("multiple of the node count"), "{err}");
    let global_order = run_two_nodes(&spec("global", false, Some(1), false));
    assert_ne!(
        global_order[0].losses[0], whole[0].losses[0],
        "reading by node should give other batches than the global order"
    );
}

fn a_node_that_never_joins_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let node0 = NodeSpec {
        iterations: 4,
        checkpoint_every: 1,
        ..NodeSpec::new(dir.path().join("run"), 0, free_port(), timeout)
    }
    .spawn();
    let (code, stdout, stderr) = finish(node0, Duration::from_secs(120));
    eprintln!(
        "node 0 ended after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        code,
        Some(COLLECTIVE_TIMEOUT_EXIT_CODE),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("joining the run"), "{stderr}");
    assert!(stderr.contains("--collective-timeout"), "{stderr}");
    // Nothing trained, nothing checkpointed.
    assert!(latest_checkpoint(&dir.path().join("run"))
        .unwrap_or(None)
        .is_none());
}

fn a_killed_node_ends_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let coordinator_port = free_port();
    let timeout = Duration::from_secs(8);
    let spec = |rank| NodeSpec {
        iterations: 1000,
        checkpoint_every: 1,
        ..NodeSpec::new(run_dir.clone(), rank, coordinator_port, timeout)
    };
    // Both nodes on the same directory, as on shared storage: only node 0 writes there (node 1
    // takes no lock, so it is not refused).
    let node0 = spec(0).spawn();
    let mut node1 = spec(1).spawn();
    // Let the run finish its first step and write its first checkpoint, then kill node 1: the
    // all-reduce of node 0's next step can never complete.
    let started = Instant::now();
    while latest_checkpoint(&run_dir).unwrap_or(None).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no checkpoint after 180 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node1.kill().unwrap();
    let killed = Instant::now();
    let _ = finish(node1, Duration::from_secs(30));
    let (code, stdout, stderr) = finish(node0, Duration::from_secs(120));
    eprintln!(
        "node 0 ended {:.1} s after node 1 was killed",
        killed.elapsed().as_secs_f64()
    );
    // The run ends with an error that says a node is gone — burn-collective's broken
    // connection, turned into our error, or, if the all-reduce just waits, the watchdog's
    // collective-timeout error — within the timeout plus one step, never a hang.
    assert!(
        code == Some(COLLECTIVE_TIMEOUT_EXIT_CODE) || code == Some(1),
        "node 0 exited {code:?}:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("a node died"),
        "node 0 exited {code:?}:\n{stderr}"
    );
    assert!(killed.elapsed() < Duration::from_secs(60), "{stderr}");
    // The newest checkpoint is complete and loadable.
    let (_, checkpoint) = latest_checkpoint(&run_dir)
        .unwrap()
        .expect("a checkpoint was written");
    let model = tensors(&checkpoint.join("model.safetensors"));
    assert!(!model.is_empty());
    assert!(model
        .iter()
        .all(|(_, values)| values.iter().all(|v| v.is_finite())));
}

fn multi_node_flags_are_checked() {
    let args = |extra: &[&str]| {
        Args::try_parse_from(std::iter::once("pretrain_coco").chain(extra.iter().copied()))
            .unwrap()
            .multi_node()
    };
    assert_eq!(args(&[]).unwrap(), None);
    let node = args(&[
        "--num-nodes",
        "2",
        "--node-rank",
        "1",
        "--coordinator",
        "10.0.0.1:29500",
        "--node-address",
        "10.0.0.2:29501",
        "--collective-timeout",
        "90s",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(node.node_rank, 1);
    assert!(
        !node.start_coordinator,
        "only node 0 starts the coordinator"
    );
    assert_eq!(node.timeout, Duration::from_secs(90));
    assert!(node.collective_config(2).is_ok());
    let message = |extra: &[&str]| args(extra).unwrap_err().to_string();
    assert!(message(&["--num-nodes", "2", "--node-address", "h:1"]).contains("--coordinator"));
    assert!(message(&["--num-nodes", "2", "--coordinator", "h:1"]).contains("--node-address"));
    assert!(message(&[
        "--num-nodes",
        "2",
        "--node-rank",
        "2",
        "--coordinator",
        "h:1",
        "--node-address",
        "h:2"
    ])
    .contains("--node-rank 2"));
    assert!(message(&[
        "--num-nodes",
        "2",
        "--coordinator",
        "h",
        "--node-address",
        "h:2"
    ])
    .contains("HOST:PORT"));
    assert!(message(&["--node-rank", "1"]).contains("--num-nodes"));
}
