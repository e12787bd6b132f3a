//! The command line of `pretrain_coco` (`examples/pretrain_coco`), parsed with clap.

use std::path::PathBuf;

use std::str::FromStr;

use clap::Parser;
use virtex::Precision;
use virtex_device::{DeviceError, DeviceSpec};

use crate::config::PretrainConfig;
use crate::data_parallel::MultiNode;
use crate::error::TrainError;
use crate::trainer::{ResumeOverrides, RunOptions};

/// VirTex pretraining (bicaptioning on COCO Captions).
///
/// With no arguments: the `small_cpu` preset on the embedded sample data, on the CPU.
#[derive(Debug, Clone, Parser)]
#[command(name = "pretrain_coco", version)]
pub struct Args {
    /// A preset (every name of `PretrainConfig::PRESETS`, spelt out so that each can be searched
    /// for): small_cpu, bicaptioning_R_50_L1_H512, bicaptioning_R_50_L1_H768,
    /// bicaptioning_R_50_L1_H1024, bicaptioning_R_50_L1_H2048, bicaptioning_R_50_L2_H1024,
    /// bicaptioning_R_50_L3_H1024, bicaptioning_R_50_L4_H1024, bicaptioning_R_101_L1_H1024,
    /// bicaptioning_R_50W2X_L1_H1024, captioning_R_50_L1_H2048, token_classification_R_50,
    /// multilabel_classification_R_50, masked_lm_R_50_L1_H2048.
    #[arg(long, default_value = "small_cpu")]
    pub preset: String,
    /// A JSON file with (part of) the config tree, merged over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides, `section.key=value` (value parsed as JSON), e.g. `--set optim.batch_size=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// COCO root (`annotations/`, `train2017/`, `val2017/`), or with `data.format=plain` a
    /// directory of `train.{jsonl,tsv}` / `val.{jsonl,tsv}` caption files; default: the
    /// embedded sample.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Tokenizer: a SentencePiece `.model` or our `vocab.json` (default: the sample's, or for a
    /// data root the first of `ROOT/vocab.json`, `ROOT/vocab/coco_10k.model`,
    /// `ROOT/../vocab/coco_10k.model`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Data parallel over several devices, e.g. `cuda:0,cuda:1,cuda:2,cuda:3` (replaces
    /// `--device`). `optim.batch_size` stays the global batch, split evenly over the devices;
    /// gradients are averaged with burn-collective's all-reduce (multi-GPU needs NCCL,
    /// `libnccl.so.2`). BatchNorm uses each device's own batch statistics, as PyTorch DDP
    /// without SyncBatchNorm; the running statistics checkpointed are the first device's. A
    /// device may repeat (`cpu,cpu`, `cuda:0,cuda:0`) to test the multi-device path on one.
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    pub devices: Option<DeviceList>,
    /// Run directory (config, checkpoints, metrics.jsonl, plots); default `runs/<timestamp>`.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue a run exactly from its newest checkpoint, with the checkpoint's config (only
    /// `--data-root`, `--tokenizer` and `--precision` may change it).
    #[arg(
        long,
        value_name = "RUN_DIR",
        conflicts_with_all = ["init_from", "config", "overrides", "preset", "run_dir"]
    )]
    pub resume: Option<PathBuf>,
    /// Initialise the model from a checkpoint (official VirTex `.pth` or one of ours) and start
    /// a new run (fine-tuning).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Only compute the teacher-forced validation loss of the `--resume`d or `--init-from`
    /// model and print it as one JSON line.
    #[arg(long)]
    pub eval_only: bool,
    /// Only write the CNN of the `--resume`d run's newest checkpoint, or of `--init-from`, to
    /// this file (safetensors, torchvision key names) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "eval_only")]
    pub export_backbone: Option<PathBuf>,
    /// Stop after this many iterations of this invocation (the schedule still follows
    /// `optim.num_iterations`); used to split a run for resume tests.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// f32 | bf16: bf16 convolutions and matrix products, f32 norms, softmax, losses, weights
    /// and optimizer state (for GPUs; overrides `train.precision`).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Print the resolved configuration (preset, `--config`, `--set` and the data and
    /// precision flags; with `--resume`, the checkpoint's) as JSON and exit, writing nothing.
    #[arg(long, conflicts_with_all = ["eval_only", "export_backbone"])]
    pub print_config: bool,
    /// Multi-node data parallel: the number of nodes (processes, one per machine), each
    /// training on its `--device`/`--devices`. Every node runs the same command with its own
    /// `--node-rank` and `--node-address`; `optim.batch_size` stays the global batch.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_nodes: usize,
    /// This node's rank, 0..N. Node 0 logs, validates, checkpoints and (unless
    /// `--external-coordinator`) runs the coordinator.
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub node_rank: usize,
    /// The coordinator's HOST:PORT (burn-collective's orchestrator, where the nodes meet), the
    /// same on every node: node 0's host and a free port.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// HOST:PORT at which the other nodes reach this node's tensor data service (gradients
    /// travel node to node through it); it listens on PORT on all interfaces.
    #[arg(long, value_name = "HOST:PORT")]
    pub node_address: Option<String>,
    /// Node 0 does not start the coordinator: one runs elsewhere (`--coordinator-only`).
    #[arg(long)]
    pub external_coordinator: bool,
    /// Only run the coordinator on `--coordinator`'s port until SIGINT/SIGTERM.
    #[arg(long, requires = "coordinator")]
    pub coordinator_only: bool,
    /// How long a node waits for the others (joining, one training step) before it stops with
    /// an error, e.g. `300s`, `10m`. Must exceed node 0's validation and checkpoint time.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub collective_timeout: humantime::Duration,
}

/// A `--devices` list: comma-separated, non-empty, one backend, each device available
/// ([`DeviceSpec::check_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

impl FromStr for DeviceList {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DeviceSpec::check_list(text).map(Self)
    }
}

impl Args {
    /// The configuration of a new run: `--preset`, then `--config`, then `--set`, then the
    /// data and precision flags.
    pub fn config(&self) -> Result<PretrainConfig, TrainError> {
        let mut config = PretrainConfig::preset(&self.preset)?;
        if let Some(path) = &self.config {
            config = config.merge_json_file(path)?;
        }
        config = config.apply_overrides(&self.overrides)?;
        self.resume_overrides().apply(&mut config);
        Ok(config)
    }

    /// The configuration this command line runs with: [`Args::config`] for a new run, the
    /// newest checkpoint's (with [`Args::resume_overrides`]) for `--resume`. Reads, never
    /// writes: what `--print-config` prints.
    /// `train.precision = auto` is resolved for the first training device, as the run would.
    pub fn resolved_config(&self) -> Result<PretrainConfig, TrainError> {
        let mut config = match &self.resume {
            Some(run_dir) => crate::trainer::run_config(&RunOptions {
                resume: true,
                resume_overrides: self.resume_overrides(),
                ..RunOptions::new(PretrainConfig::base(), run_dir)
            })?,
            None => self.config()?,
        };
        let cuda = self
            .training_devices()?
            .first()
            .is_some_and(|device| matches!(device, DeviceSpec::Cuda(_)));
        config.resolve_precision(cuda);
        Ok(config)
    }

    /// What the command line changes in a resumed run's configuration: the data and
    /// precision flags apply to a new run's config and to a resumed run's alike.
    pub fn resume_overrides(&self) -> ResumeOverrides {
        ResumeOverrides {
            data_root: self.data_root.clone(),
            tokenizer: self.tokenizer.clone(),
            precision: self.precision,
        }
    }

    /// The multi-node flags (`--num-nodes` above 1), checked; `None` for a one-node run.
    pub fn multi_node(&self) -> Result<Option<MultiNode>, TrainError> {
        if self.num_nodes <= 1 {
            if self.node_rank != 0 || self.node_address.is_some() {
                return Err(TrainError::Config(
                    "--node-rank and --node-address need --num-nodes above 1".into(),
                ));
            }
            return Ok(None);
        }
        let missing =
            |flag: &str| TrainError::Config(format!("--num-nodes {} needs {flag}", self.num_nodes));
        let node = MultiNode {
            num_nodes: self.num_nodes,
            node_rank: self.node_rank,
            coordinator: self
                .coordinator
                .clone()
                .ok_or_else(|| missing("--coordinator HOST:PORT"))?,
            start_coordinator: self.node_rank == 0 && !self.external_coordinator,
            node_address: self
                .node_address
                .clone()
                .ok_or_else(|| missing("--node-address HOST:PORT"))?,
            timeout: self.collective_timeout.into(),
        };
        node.check()?;
        Ok(Some(node))
    }

    /// The devices to train on: `--devices`, else `--device`, checked.
    pub fn training_devices(&self) -> Result<Vec<DeviceSpec>, DeviceError> {
        match &self.devices {
            Some(list) => Ok(list.0.clone()),
            None => Ok(vec![self.device.check()?]),
        }
    }
}
