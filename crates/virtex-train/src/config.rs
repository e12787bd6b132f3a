//! The pretraining configuration: upstream's config tree (`virtex/config.py`) in serde structs,
//! presets for every released model, and overrides from JSON files and `--set key=value`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use virtex::Precision;
use virtex_data::ResizeMode;
use virtex_optim::OptimizerName;

use crate::error::TrainError;

/// The whole configuration (upstream `_C`), lower-cased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Seed of every random stream (upstream `RANDOM_SEED`).
    pub random_seed: u64,
    /// Data (upstream `DATA`).
    pub data: DataConfig,
    /// Model (upstream `MODEL`).
    pub model: ModelConfig,
    /// Optimisation (upstream `OPTIM`).
    pub optim: OptimConfig,
    /// Our training-loop knobs (logging, checkpoints, precision, ...).
    pub train: TrainLoopConfig,
}

/// Upstream `DATA`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// How the captions are stored: `coco` (the default) or `plain` (JSON lines or TSV files of
    /// image paths and captions; see [`DataFormat`]).
    #[serde(default)]
    pub format: DataFormat,
    /// COCO root (`annotations/captions_{train,val}2017.json`, `{train,val}2017/`), or with
    /// `format = plain` a directory holding `train.{jsonl,ndjson,tsv}` and
    /// `val.{jsonl,ndjson,tsv}`. `None` means the embedded sample data (COCO), or with `plain`
    /// that `captions_train` and `captions_val` name the files.
    pub root: Option<PathBuf>,
    /// `format = plain`: the training captions file (`.jsonl`, `.ndjson` or `.tsv`); `None` =
    /// the `train.*` file in `root`.
    #[serde(default)]
    pub captions_train: Option<PathBuf>,
    /// `format = plain`: the validation captions file; `None` = the `val.*` file in `root`.
    #[serde(default)]
    pub captions_val: Option<PathBuf>,
    /// `format = plain`: the directory relative image paths are resolved against; `None` = the
    /// directory of each captions file.
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// `format = webdataset`: the training shards, a brace pattern such as
    /// `/data/cc3m/{00000..00331}.tar` (`virtex_data::expand_braces`; relative paths are
    /// relative to the working directory).
    #[serde(default)]
    pub shards_train: Option<String>,
    /// `format = webdataset`: the validation shards (read in order, without shuffling).
    #[serde(default)]
    pub shards_val: Option<String>,
    /// `format = webdataset`: samples in the training stream's shuffle buffer (0 = none; the
    /// shard order is still shuffled every epoch when `shuffle` is set). Larger mixes better,
    /// holds more encoded images in memory and makes a resume re-read more of the epoch.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// `format = webdataset`, multi-node runs: each node reads only its own training shards
    /// (shard `i` goes to node `i % num_nodes`, WebDataset's split by node) and batches its
    /// share of every global micro-batch from them. Off (default): every node reads the one
    /// global stream and decodes only its part of each micro-batch, so the run sees exactly
    /// the batches of one process, at the cost of every node reading every shard's bytes. On,
    /// each node reads `1/num_nodes` of the bytes; the run is still deterministic and resumes
    /// exactly, but its batches differ from a one-process run's.
    #[serde(default)]
    pub shards_by_node: bool,
    /// Tokenizer / vocabulary file; `None` means the one next to the data
    /// (`vocab.json` in the root, or the sample's vocabulary).
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size (upstream `VOCAB_SIZE`).
    pub vocab_size: usize,
    /// Maximum caption length including SOS/EOS (upstream `MAX_CAPTION_LENGTH`).
    pub max_caption_length: usize,
    /// Training crop size (upstream `IMAGE_CROP_SIZE`).
    pub image_crop_size: u32,
    /// Train transforms, in order (upstream `IMAGE_TRANSFORM_TRAIN`); empty = no augmentation.
    /// Each is a name, optionally with upstream's keyword arguments:
    /// `random_resized_crop::{'scale': (0.08, 1.0)}` (see `virtex_data::ImageTransforms`).
    pub image_transform_train: Vec<String>,
    /// Validation transforms, in order (upstream `IMAGE_TRANSFORM_VAL`), in the same syntax;
    /// default `smallest_resize`, `center_crop`, `normalize` at `image_crop_size`.
    #[serde(default = "default_val_transforms")]
    pub image_transform_val: Vec<String>,
    /// How resizes and centre crops compute, in both pipelines: `torchvision` (default:
    /// antialiased bilinear, truncated long side, rounded crop offset, as torchvision on PIL
    /// images) or `upstream` (albumentations on OpenCV: `INTER_LINEAR` without antialiasing,
    /// rounded long side, floored crop offset, bit for bit).
    #[serde(default)]
    pub resize_mode: ResizeMode,
    /// Swap "left"/"right" by plain substring as upstream does ("bright" → "bleft") instead of
    /// by whole word.
    pub upstream_flip_substring_swap: bool,
    /// Which caption of an image a visit uses: "random" (upstream) or "first".
    pub caption_choice: String,
    /// Shuffle the training set every epoch.
    pub shuffle: bool,
    /// Decoding/augmentation worker threads.
    pub num_workers: usize,
    /// Skip unreadable images instead of stopping (each is logged, and counted in
    /// `metrics.jsonl` as `skipped_images`).
    pub skip_bad_images: bool,
    /// Largest image (width × height) the decoder accepts; `null` = the default of
    /// `virtex_data::ImageLimits` (PIL's decompression-bomb limit). Raise it only for genuinely
    /// huge images: a small file can claim a huge size.
    #[serde(default)]
    pub max_image_pixels: Option<u64>,
    /// Token id of padding, ignored by the loss and zeroed in the embedding (upstream
    /// `DATA.UNK_INDEX`: `<unk>`, 0). It must be the tokenizer's `<unk>` id: the run checks it
    /// against the tokenizer, pads captions with it and builds the model with it.
    #[serde(default)]
    pub padding_index: u32,
    /// Data efficiency (the paper's "fewer images" runs): train on this fraction of the
    /// training images, `0 < f ≤ 1`; `null` = every image. At most one of this and
    /// `image_count`. The images are `virtex_data::ImageSubset::select`'s: ordered by image id,
    /// shuffled with `subset_seed`, the first `round(f · N)` (at least one) kept, in their
    /// original order. Validation always uses the whole validation split.
    #[serde(default)]
    pub image_fraction: Option<f64>,
    /// Data efficiency: train on this many training images (the same rule as
    /// `image_fraction`); `null` = every image.
    #[serde(default)]
    pub image_count: Option<usize>,
    /// Data efficiency ("one caption vs five"): keep the first `k` captions of each training
    /// image in annotation-file order, 1 to 5 (images with fewer keep all); `null` = all.
    #[serde(default)]
    pub captions_per_image: Option<usize>,
    /// Seed of the image subset, separate from `random_seed` so that runs with different
    /// seeds can train on the same images.
    #[serde(default)]
    pub subset_seed: u64,
}

/// Where [`DataConfig`] reads captions from (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// COCO Captions in its official layout under `data.root` (or the embedded sample).
    #[default]
    Coco,
    /// Plain captions files, one per split (`virtex_data::PlainCaptions`): JSON lines
    /// `{"image": PATH, "caption": TEXT}` or TSV `PATH<TAB>CAPTION`, from `data.captions_train`
    /// / `data.captions_val` or `train.*` / `val.*` in `data.root`.
    Plain,
    /// WebDataset tar shards (`KEY.jpg` + `KEY.txt` / `KEY.json`, as img2dataset writes CC3M,
    /// CC12M, LAION), from the brace patterns `data.shards_train` / `data.shards_val`; the
    /// tokenizer is `data.tokenizer` (or the one in `data.root`, or the sample's).
    #[serde(rename = "webdataset")]
    WebDataset,
}

fn default_shuffle_buffer() -> usize {
    1000
}

fn default_val_transforms() -> Vec<String> {
    vec![
        "smallest_resize".into(),
        "center_crop".into(),
        "normalize".into(),
    ]
}

impl DataConfig {
    /// Checks that the keys of `data.format` are set, and only those: `plain` needs `root`
    /// or both captions files; `coco` reads none of the plain keys.
    pub fn validate_format(&self) -> Result<(), TrainError> {
        let plain_keys = [
            ("data.captions_train", &self.captions_train),
            ("data.captions_val", &self.captions_val),
            ("data.image_root", &self.image_root),
        ];
        let shard_keys = [
            ("data.shards_train", &self.shards_train),
            ("data.shards_val", &self.shards_val),
        ];
        if self.format != DataFormat::WebDataset {
            if self.shards_by_node {
                return Err(TrainError::Config(
                    "data.shards_by_node is only read with data.format=webdataset".into(),
                ));
            }
            if let Some((key, _)) = shard_keys.iter().find(|(_, value)| value.is_some()) {
                return Err(TrainError::Config(format!(
                    "{key} is only read with data.format=webdataset"
                )));
            }
        }
        match self.format {
            DataFormat::WebDataset => {
                if let Some((key, _)) = plain_keys.iter().find(|(_, value)| value.is_some()) {
                    return Err(TrainError::Config(format!(
                        "{key} is only read with data.format=plain (data.format is webdataset)"
                    )));
                }
                // Subsets pick images by id from the whole list, which a stream does not have:
                // write the subset's shards instead.
                if self.image_fraction.is_some()
                    || self.image_count.is_some()
                    || self.captions_per_image.is_some()
                {
                    return Err(TrainError::Config(
                        "data.image_fraction, data.image_count and data.captions_per_image are \
                         not supported with data.format=webdataset: write shards of the subset \
                         instead"
                            .into(),
                    ));
                }
                match shard_keys.iter().find(|(_, value)| value.is_none()) {
                    Some((key, _)) => Err(TrainError::Config(format!(
                        "data.format is webdataset but {key} is not set: name the shards with \
                         a brace pattern, e.g. {key}=/data/shards/{{00000..00099}}.tar \
                         (`virtex make-shards` writes them)"
                    ))),
                    None => Ok(()),
                }
            }
            DataFormat::Coco => match plain_keys.iter().find(|(_, value)| value.is_some()) {
                Some((key, _)) => Err(TrainError::Config(format!(
                    "{key} is only read with data.format=plain (data.format is coco)"
                ))),
                None => Ok(()),
            },
            DataFormat::Plain if self.root.is_some() => Ok(()),
            DataFormat::Plain => match plain_keys[..2].iter().find(|(_, value)| value.is_none()) {
                Some((key, _)) => Err(TrainError::Config(format!(
                    "data.format is plain but {key} is not set: name the captions file \
                     (.jsonl, .ndjson or .tsv), or set data.root to a directory holding \
                     train.jsonl / val.jsonl (or .tsv)"
                ))),
                None => Ok(()),
            },
        }
    }

    /// Checks the data-efficiency keys: at most one of `data.image_fraction` and
    /// `data.image_count`, a fraction in `(0, 1]`, a count of at least 1, and
    /// `data.captions_per_image` from 1 to 5. (A count above the number of training images is
    /// refused when the split is read.)
    pub fn validate_subset(&self) -> Result<(), TrainError> {
        let fail = |message: String| Err(TrainError::Config(message));
        if let (Some(fraction), Some(count)) = (self.image_fraction, self.image_count) {
            return fail(format!(
                "data.image_fraction ({fraction}) and data.image_count ({count}) are both set: \
                 set at most one (a fraction of the training images, or a number of them)"
            ));
        }
        if let Some(fraction) = self.image_fraction {
            if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
                return fail(format!(
                    "data.image_fraction must be in (0, 1], e.g. 0.1 for 10 % of the training \
                     images (or null for all); it is {fraction}"
                ));
            }
        }
        if self.image_count == Some(0) {
            return fail(
                "data.image_count must be at least 1 (or null for every training image); it is 0"
                    .into(),
            );
        }
        if let Some(k) = self.captions_per_image {
            let most = virtex_data::MAX_CAPTIONS_PER_IMAGE;
            if !(1..=most).contains(&k) {
                return fail(format!(
                    "data.captions_per_image must be 1 to {most} (or null for every caption); \
                     it is {k}"
                ));
            }
        }
        Ok(())
    }

    /// The training images `data.image_fraction` / `data.image_count` keep (unchecked: see
    /// [`DataConfig::validate_subset`]).
    pub fn image_subset(&self) -> virtex_data::ImageSubset {
        match (self.image_fraction, self.image_count) {
            (Some(fraction), _) => virtex_data::ImageSubset::Fraction(fraction),
            (None, Some(count)) => virtex_data::ImageSubset::Count(count),
            (None, None) => virtex_data::ImageSubset::All,
        }
    }

    /// Makes [`DataConfig::max_image_pixels`] the limit of every image decoder in this process.
    pub fn apply_image_limit(&self) {
        let mut limits = virtex_data::ImageLimits::default();
        if let Some(max_pixels) = self.max_image_pixels {
            limits.max_pixels = max_pixels;
        }
        virtex_data::set_image_limits(limits);
    }
}

/// Upstream `MODEL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// "bicaptioning" (= "virtex") or "captioning" (forward only).
    pub name: String,
    /// Visual backbone, e.g. `torchvision::resnet50`.
    pub visual: String,
    /// Textual head, e.g. `transdec_postnorm::L1_H2048_A32_F8192`.
    pub textual: String,
    /// Dropout of the textual head.
    pub dropout: f64,
    /// Initialise the visual backbone from these weights (upstream `MODEL.VISUAL.PRETRAINED`,
    /// which downloads torchvision's ImageNet weights: here a torchvision `.pth` or
    /// safetensors file, e.g. `resnet50-0676ba61.pth`); `null` = random initialisation. Only a
    /// new run reads it (`--resume` continues from the checkpoint).
    #[serde(default)]
    pub visual_pretrained: Option<PathBuf>,
    /// Freeze the visual backbone (upstream `MODEL.VISUAL.FROZEN`): its weights get no
    /// gradient and stay fixed, and its BatchNorm normalises with the running statistics and
    /// never updates them (evaluation mode for the whole run), while the textual head trains.
    /// `model.freeze_visual` is accepted as another name for it.
    #[serde(default, alias = "freeze_visual")]
    pub visual_frozen: bool,
}

/// Upstream `OPTIM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Images per optimizer step (upstream `BATCH_SIZE`).
    pub batch_size: usize,
    /// Split each step into this many micro-batches whose gradients are averaged
    /// (batch 256 on smaller memory). `batch_size` must be divisible by it. Set from
    /// [`OptimConfig::batch_norm_batch`] when that is given.
    pub accumulation_steps: usize,
    /// Images each BatchNorm normalises over, on each device: upstream trains with DDP on 8
    /// GPUs × 32 images, so its BatchNorm statistics are over 32 images while the gradients
    /// are averaged over all 256. When set, a run on `D` devices takes
    /// `accumulation_steps = batch_size / (batch_norm_batch × D)` (which must divide
    /// exactly), giving upstream's semantics on any number of devices; `null` leaves
    /// `accumulation_steps` as written (BatchNorm over `batch_size / (accumulation_steps × D)`).
    /// The released presets set 32. One difference remains: upstream's checkpointed running
    /// statistics are rank 0's, updated once per iteration from its 32 images; accumulation
    /// updates them once per micro-batch.
    #[serde(default)]
    pub batch_norm_batch: Option<usize>,
    /// Optimizer inside every parameter group (upstream `OPTIM.OPTIMIZER_NAME`): `sgd` (every
    /// released config) or `adamw` (torch's AdamW, betas 0.9/0.999, ε 1e-8, decoupled weight
    /// decay `weight_decay`; the momentum keys are then unused).
    #[serde(default)]
    pub optimizer_name: OptimizerName,
    /// SGD momentum.
    pub sgd_momentum: f64,
    /// Nesterov momentum (upstream: false).
    pub sgd_nesterov: bool,
    /// L2 weight decay (coupled, torch-style).
    pub weight_decay: f64,
    /// Parameters matching this regex get no weight decay.
    pub no_decay: String,
    /// Global gradient-norm clip.
    pub clip_grad_norm: f64,
    /// LR of parameters whose name contains "cnn".
    pub cnn_lr: f64,
    /// LR of every other parameter.
    pub lr: f64,
    /// Lookahead on/off, α and k.
    pub lookahead: LookaheadConfig,
    /// Total iterations (optimizer steps).
    pub num_iterations: u64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// "cosine", "linear", "multistep" or "none".
    pub lr_decay_name: String,
    /// Milestones of "multistep".
    pub lr_steps: Vec<u64>,
    /// Factor of "multistep".
    pub lr_gamma: f64,
}

/// Upstream `OPTIM.LOOKAHEAD`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookaheadConfig {
    /// Use Lookahead.
    #[serde(rename = "use")]
    pub enabled: bool,
    /// Interpolation factor α.
    pub alpha: f64,
    /// Synchronisation period k.
    pub steps: u64,
}

/// Training-loop settings that upstream keeps on its command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainLoopConfig {
    /// Log (progress line + metrics.jsonl) every N iterations (upstream: 20).
    pub log_every: u64,
    /// Save a checkpoint every N iterations (upstream `--checkpoint-every 2000`).
    pub checkpoint_every: u64,
    /// Run validation every N iterations (upstream: with every checkpoint).
    pub val_every: u64,
    /// Keep the newest K checkpoints (upstream's `CheckpointManager` keeps 200, the released
    /// presets too: upstream picks the best checkpoint by VOC07 mAP among them).
    pub keep_last: usize,
    /// Batches of the validation split to evaluate (`None` = all).
    pub val_batches: Option<usize>,
    /// Stop after this many consecutive skipped (non-finite) steps.
    pub max_consecutive_skips: u64,
    /// `auto`, `f32` or `bf16`: bf16 convolutions and matrix products with f32 norms, softmax,
    /// losses, master weights and optimizer state (see `virtex::Precision`). `auto` (the
    /// released presets) is bf16 on CUDA and f32 elsewhere, upstream's mixed precision where
    /// it pays: on the CPU bf16 is correct but slower than f32.
    pub precision: PrecisionChoice,
    /// Validation images captioned at every validation (the first N of the validation split,
    /// greedy decoding), recorded as `"kind":"samples"` lines of `metrics.jsonl` and in
    /// `samples.html`; 0 turns them off. Absent in configs written before it: 8.
    #[serde(default = "default_sample_captions")]
    pub sample_captions: usize,
}

/// `train.sample_captions` of configs that do not name it.
fn default_sample_captions() -> usize {
    8
}

/// `train.precision`: a precision, or `auto`, which the run resolves for its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// bf16 on CUDA, f32 elsewhere.
    Auto,
    /// Full precision.
    F32,
    /// bf16 convolutions and matrix products.
    Bf16,
}

impl PrecisionChoice {
    /// The precision on a device that is (`cuda = true`) or is not a CUDA GPU.
    pub fn resolve(self, cuda: bool) -> Precision {
        match self {
            Self::Auto if cuda => Precision::Bf16,
            Self::Auto | Self::F32 => Precision::F32,
            Self::Bf16 => Precision::Bf16,
        }
    }

    /// The precision when it does not depend on the device (`None` for `auto`).
    pub fn fixed(self) -> Option<Precision> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(Precision::F32),
            Self::Bf16 => Some(Precision::Bf16),
        }
    }
}

impl From<Precision> for PrecisionChoice {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32,
            Precision::Bf16 => Self::Bf16,
        }
    }
}

impl PartialEq<Precision> for PrecisionChoice {
    fn eq(&self, other: &Precision) -> bool {
        self.fixed() == Some(*other)
    }
}

impl PretrainConfig {
    /// Upstream's base config (`_base_bicaptioning_R_50_L1_H1024.yaml`).
    pub fn base() -> Self {
        Self {
            random_seed: 0,
            data: DataConfig {
                root: None,
                tokenizer: None,
                vocab_size: 10_000,
                max_caption_length: 30,
                image_crop_size: 224,
                image_transform_train: vec![
                    "random_resized_crop".into(),
                    "horizontal_flip".into(),
                    "color_jitter".into(),
                    "normalize".into(),
                ],
                image_transform_val: default_val_transforms(),
                resize_mode: ResizeMode::Torchvision,
                upstream_flip_substring_swap: false,
                caption_choice: "random".into(),
                shuffle: true,
                num_workers: 4,
                skip_bad_images: false,
                max_image_pixels: None,
                padding_index: 0,
                format: DataFormat::Coco,
                captions_train: None,
                captions_val: None,
                image_root: None,
                shards_train: None,
                shards_val: None,
                shuffle_buffer: default_shuffle_buffer(),
                shards_by_node: false,
                image_fraction: None,
                image_count: None,
                captions_per_image: None,
                subset_seed: 0,
            },
            model: ModelConfig {
                name: "bicaptioning".into(),
                visual: "torchvision::resnet50".into(),
                textual: "transdec_postnorm::L1_H1024_A16_F4096".into(),
                dropout: 0.1,
                visual_pretrained: None,
                visual_frozen: false,
            },
            optim: OptimConfig {
                batch_size: 256,
                accumulation_steps: 1,
                batch_norm_batch: Some(32),
                optimizer_name: OptimizerName::Sgd,
                sgd_momentum: 0.9,
                sgd_nesterov: false,
                weight_decay: 1e-4,
                no_decay: ".*textual.(embedding|transformer).*(norm.*|bias)".into(),
                clip_grad_norm: 10.0,
                cnn_lr: 0.2,
                lr: 0.001,
                lookahead: LookaheadConfig {
                    enabled: true,
                    alpha: 0.5,
                    steps: 5,
                },
                num_iterations: 500_000,
                warmup_steps: 10_000,
                lr_decay_name: "cosine".into(),
                lr_steps: Vec::new(),
                lr_gamma: 0.1,
            },
            train: TrainLoopConfig {
                log_every: 20,
                checkpoint_every: 2000,
                val_every: 2000,
                keep_last: 200,
                val_batches: None,
                max_consecutive_skips: 100,
                precision: PrecisionChoice::Auto,
                sample_captions: default_sample_captions(),
            },
        }
    }

    /// The pretext tasks `model.name` accepts: captioning in both directions (`bicaptioning`,
    /// also called `virtex`), forward `captioning`, `token_classification` (the bag of a
    /// caption's tokens as labels of the pooled CNN features), `multilabel_classification`
    /// (the image's COCO object categories, from `annotations/instances_{train,val}2017.json`,
    /// as labels of the same) and `masked_lm` (the head without its causal mask fills in masked
    /// tokens).
    pub const MODEL_NAMES: [&'static str; 6] = [
        "bicaptioning",
        "virtex",
        "captioning",
        "token_classification",
        "multilabel_classification",
        "masked_lm",
    ];

    /// The names accepted by [`PretrainConfig::preset`].
    pub const PRESETS: [&'static str; 14] = [
        "small_cpu",
        "bicaptioning_R_50_L1_H512",
        "bicaptioning_R_50_L1_H768",
        "bicaptioning_R_50_L1_H1024",
        "bicaptioning_R_50_L1_H2048",
        "bicaptioning_R_50_L2_H1024",
        "bicaptioning_R_50_L3_H1024",
        "bicaptioning_R_50_L4_H1024",
        "bicaptioning_R_101_L1_H1024",
        "bicaptioning_R_50W2X_L1_H1024",
        "captioning_R_50_L1_H2048",
        "token_classification_R_50",
        "multilabel_classification_R_50",
        "masked_lm_R_50_L1_H2048",
    ];

    /// A released model's config (upstream `configs/*_ablations/*.yaml`), or `small_cpu`: a
    /// ResNet-18 with a one-layer H=64 head on 64-pixel crops, which trains on the embedded
    /// sample data in a few minutes on 2 CPU cores.
    pub fn preset(name: &str) -> Result<Self, TrainError> {
        let mut config = Self::base();
        let head = |layers: usize, hidden: usize| {
            format!(
                "transdec_postnorm::L{layers}_H{hidden}_A{}_F{}",
                hidden / 64,
                hidden * 4
            )
        };
        match name {
            "small_cpu" => {
                config.model.visual = "torchvision::resnet18".into();
                config.model.textual = "transdec_postnorm::L1_H64_A1_F256".into();
                config.data.image_crop_size = 64;
                config.data.num_workers = 2;
                // The sample's SentencePiece vocabulary (`coco_sample.model`).
                config.data.vocab_size = 400;
                config.optim.batch_size = 8;
                config.optim.batch_norm_batch = None;
                config.optim.num_iterations = 150;
                config.optim.warmup_steps = 10;
                config.optim.cnn_lr = 0.05;
                config.optim.lr = 0.01;
                config.train.log_every = 10;
                config.train.checkpoint_every = 50;
                config.train.val_every = 50;
                config.train.keep_last = 2;
                // A CPU preset: f32 also on a GPU, so its numbers compare across devices.
                config.train.precision = PrecisionChoice::F32;
            }
            "bicaptioning_R_50_L1_H512" => config.model.textual = head(1, 512),
            "bicaptioning_R_50_L1_H768" => config.model.textual = head(1, 768),
            "bicaptioning_R_50_L1_H1024" => {}
            "bicaptioning_R_50_L1_H2048" => config.model.textual = head(1, 2048),
            "bicaptioning_R_50_L2_H1024" => config.model.textual = head(2, 1024),
            "bicaptioning_R_50_L3_H1024" => config.model.textual = head(3, 1024),
            "bicaptioning_R_50_L4_H1024" => config.model.textual = head(4, 1024),
            "bicaptioning_R_101_L1_H1024" => config.model.visual = "torchvision::resnet101".into(),
            "bicaptioning_R_50W2X_L1_H1024" => {
                config.model.visual = "torchvision::wide_resnet50_2".into()
            }
            "captioning_R_50_L1_H2048" => {
                config.model.name = "captioning".into();
                config.model.textual = head(1, 2048);
            }
            // `configs/task_ablations/token_classification_R_50.yaml`: the CNN, pooled, into a
            // linear layer over the vocabulary (`TEXTUAL.NAME: none`), no NO_DECAY exclusions.
            "token_classification_R_50" => {
                config.model.name = "token_classification".into();
                config.model.textual = "none".into();
                config.optim.no_decay = String::new();
            }
            // `configs/task_ablations/multilabel_classification_R_50.yaml` (as released, before
            // its HEAD dropped these two keys): COCO's 80 object categories + background as the
            // classes of the same linear head, no NO_DECAY exclusions.
            "multilabel_classification_R_50" => {
                config.model.name = "multilabel_classification".into();
                config.model.textual = "none".into();
                config.data.vocab_size = 81;
                config.optim.no_decay = String::new();
            }
            // `configs/task_ablations/masked_lm_R_50_L1_H2048.yaml`.
            "masked_lm_R_50_L1_H2048" => {
                config.model.name = "masked_lm".into();
                config.model.textual = head(1, 2048);
            }
            other => {
                return Err(TrainError::Config(format!(
                    "unknown preset `{other}`; expected one of: {}",
                    Self::PRESETS.join(", ")
                )))
            }
        }
        Ok(config)
    }

    /// Merges a JSON file (a full or partial config tree) over this config.
    pub fn merge_json_file(self, path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let patch: Value = serde_json::from_str(&text).map_err(|err| {
            TrainError::Config(format!(
                "{}: line {}, column {}: {err}",
                path.display(),
                err.line(),
                err.column()
            ))
        })?;
        let mut tree =
            serde_json::to_value(&self).map_err(|e| TrainError::Config(e.to_string()))?;
        merge(&mut tree, patch);
        Self::from_tree(tree, &format!("config file {}", path.display()))
    }

    /// Applies `key.path=value` overrides; the value is parsed as JSON, or taken as a string.
    pub fn apply_overrides(self, overrides: &[String]) -> Result<Self, TrainError> {
        let mut tree =
            serde_json::to_value(&self).map_err(|e| TrainError::Config(e.to_string()))?;
        for item in overrides {
            let (key, raw) = item.split_once('=').ok_or_else(|| {
                TrainError::Config(format!("--set expects key=value, got `{item}`"))
            })?;
            let value: Value =
                serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
            let key = KEY_ALIASES
                .iter()
                .find(|(alias, _)| *alias == key.trim())
                .map_or(key.trim(), |(_, name)| *name);
            let mut node = &mut tree;
            let parts: Vec<&str> = key.split('.').collect();
            for (depth, part) in parts.iter().enumerate() {
                let object = node.as_object_mut().ok_or_else(|| {
                    TrainError::Config(format!(
                        "--set {key}: `{}` is not a section",
                        parts[..depth].join(".")
                    ))
                })?;
                if !object.contains_key(*part) {
                    let known: Vec<&String> = object.keys().collect();
                    return Err(TrainError::Config(format!(
                        "--set {key}: unknown key `{part}` (known here: {known:?})"
                    )));
                }
                node = object.get_mut(*part).expect("checked above");
            }
            let expected = expected_type(node);
            *node = value;
            // Checked one override at a time, so the error names this key and what it takes.
            if let Err(err) = serde_path_to_error::deserialize::<_, Self>(tree.clone()) {
                return Err(TrainError::Config(format!(
                    "--set {key}={raw}: expected {expected} ({})",
                    err.inner()
                )));
            }
        }
        Self::from_tree(tree, "--set overrides")
    }

    fn from_tree(tree: Value, source: &str) -> Result<Self, TrainError> {
        // serde_path_to_error names the key at fault (`optim.batch_size: invalid type: string
        // "abc", expected usize`), which serde_json alone does not.
        let config: Self = serde_path_to_error::deserialize(tree).map_err(|err| {
            TrainError::Config(format!("{source}: {}: {}", err.path(), err.inner()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Sets `optim.accumulation_steps` from `optim.batch_norm_batch` for a run on `devices`
    /// devices (nothing when it is `null`): `batch_size / (batch_norm_batch × devices)`
    /// micro-batches, each device normalising `batch_norm_batch` images.
    pub fn resolve_batch_norm_batch(&mut self, devices: usize) -> Result<(), TrainError> {
        let Some(per_device) = self.optim.batch_norm_batch else {
            return Ok(());
        };
        let per_micro_batch = per_device * devices.max(1);
        if per_micro_batch == 0 || !self.optim.batch_size.is_multiple_of(per_micro_batch) {
            return Err(TrainError::Config(format!(
                "optim.batch_size {} is not a multiple of optim.batch_norm_batch {per_device} × \
                 {devices} device(s): choose a batch size or device count that divides, or set \
                 optim.batch_norm_batch=null to use optim.accumulation_steps",
                self.optim.batch_size
            )));
        }
        self.optim.accumulation_steps = self.optim.batch_size / per_micro_batch;
        Ok(())
    }

    /// Resolves `train.precision = auto` for a run whose device is (`cuda = true`) or is not a
    /// CUDA GPU; a fixed precision is left as it is.
    pub fn resolve_precision(&mut self, cuda: bool) {
        self.train.precision = self.train.precision.resolve(cuda).into();
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), TrainError> {
        let fail = |message: String| Err(TrainError::Config(message));
        if !Self::MODEL_NAMES.contains(&self.model.name.as_str()) {
            return fail(format!(
                "model.name `{}`: expected one of {}",
                self.model.name,
                Self::MODEL_NAMES.join(", ")
            ));
        }
        let at_least_one = [
            ("optim.batch_size", self.optim.batch_size as u64),
            (
                "optim.accumulation_steps",
                self.optim.accumulation_steps as u64,
            ),
            ("optim.num_iterations", self.optim.num_iterations),
            ("data.vocab_size", self.data.vocab_size as u64),
            ("data.image_crop_size", u64::from(self.data.image_crop_size)),
            ("train.log_every", self.train.log_every),
            ("train.checkpoint_every", self.train.checkpoint_every),
            ("train.val_every", self.train.val_every),
            ("train.keep_last", self.train.keep_last as u64),
            (
                "train.max_consecutive_skips",
                self.train.max_consecutive_skips,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return fail(format!("{key} must be at least 1 (it is 0)"));
            }
        }
        if self.data.max_caption_length < 3 {
            return fail(format!(
                "data.max_caption_length must be at least 3 (SOS, one token, EOS); it is {}",
                self.data.max_caption_length
            ));
        }
        if self.optim.batch_norm_batch == Some(0) {
            return fail(
                "optim.batch_norm_batch must be at least 1 (or null to keep \
                 optim.accumulation_steps)"
                    .into(),
            );
        }
        if self.data.max_image_pixels == Some(0) {
            return fail(
                "data.max_image_pixels must be at least 1 (or null for the default)".into(),
            );
        }
        if self.optim.warmup_steps >= self.optim.num_iterations {
            return fail(format!(
                "optim.warmup_steps ({}) must be smaller than optim.num_iterations ({})",
                self.optim.warmup_steps, self.optim.num_iterations
            ));
        }
        if self.optim.lr_steps.windows(2).any(|pair| pair[0] > pair[1]) {
            return fail(format!(
                "optim.lr_steps must be increasing; it is {:?}",
                self.optim.lr_steps
            ));
        }
        for (key, value) in [
            ("optim.lr", self.optim.lr),
            ("optim.cnn_lr", self.optim.cnn_lr),
            ("optim.lr_gamma", self.optim.lr_gamma),
            ("optim.weight_decay", self.optim.weight_decay),
            ("optim.sgd_momentum", self.optim.sgd_momentum),
            ("optim.clip_grad_norm", self.optim.clip_grad_norm),
            ("model.dropout", self.model.dropout),
        ] {
            if !value.is_finite() || value < 0.0 {
                return fail(format!("{key} must be a finite number ≥ 0; it is {value}"));
            }
        }
        if !self
            .optim
            .batch_size
            .is_multiple_of(self.optim.accumulation_steps)
        {
            return fail(format!(
                "optim.batch_size {} is not divisible by optim.accumulation_steps {}",
                self.optim.batch_size, self.optim.accumulation_steps
            ));
        }
        if self.data.padding_index as usize >= self.data.vocab_size {
            return fail(format!(
                "data.padding_index {} is outside the vocabulary of data.vocab_size {}",
                self.data.padding_index, self.data.vocab_size
            ));
        }
        if self.data.image_transform_val.is_empty() {
            return fail(
                "data.image_transform_val is empty: validation needs a fixed-size crop (upstream: \
                 smallest_resize, center_crop, normalize)"
                    .into(),
            );
        }
        self.data.validate_format()?;
        self.data.validate_subset()?;
        if self.model.name == "multilabel_classification" && self.data.format != DataFormat::Coco {
            return fail(format!(
                "model.name multilabel_classification reads COCO object labels \
                 (annotations/instances_{{train,val}}2017.json under data.root), which \
                 data.format={} does not have: use data.format=coco",
                serde_json::to_value(self.data.format)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{:?}", self.data.format))
            ));
        }
        if !["random", "first"].contains(&self.data.caption_choice.as_str()) {
            return fail(format!(
                "data.caption_choice `{}`: expected random or first",
                self.data.caption_choice
            ));
        }
        if !["cosine", "linear", "multistep", "none"].contains(&self.optim.lr_decay_name.as_str()) {
            return fail(format!(
                "optim.lr_decay_name `{}`: expected cosine, linear, multistep or none",
                self.optim.lr_decay_name
            ));
        }
        regex::Regex::new(&self.optim.no_decay)
            .map_err(|err| TrainError::Config(format!("optim.no_decay: {err}")))?;
        Ok(())
    }
}

/// What a `--set` value must look like, from the value it replaces.
fn expected_type(current: &Value) -> String {
    match current {
        Value::Bool(_) => "true or false".into(),
        Value::Number(number) if number.is_u64() => {
            format!("a non-negative integer, like {number}")
        }
        Value::Number(number) => format!("a number, like {number}"),
        Value::String(text) => format!("a string, like \"{text}\""),
        Value::Array(_) => format!("a JSON list, like {current}"),
        Value::Object(_) => "a section (set its keys one by one)".into(),
        Value::Null => "a value of this key's type, or null".into(),
    }
}

/// Other names `--set` accepts for a key (the issue tracker's and upstream users' names).
const KEY_ALIASES: [(&str, &str); 1] = [("model.freeze_visual", "model.visual_frozen")];

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_and_validates() {
        for name in PretrainConfig::PRESETS {
            let config = PretrainConfig::preset(name).unwrap();
            config.validate().unwrap();
        }
        let h2048 = PretrainConfig::preset("bicaptioning_R_50_L1_H2048").unwrap();
        // Upstream's checkpoint cadence and retention.
        assert_eq!(
            (h2048.train.checkpoint_every, h2048.train.keep_last),
            (2000, 200)
        );
        assert_eq!(h2048.model.textual, "transdec_postnorm::L1_H2048_A32_F8192");
        let forward = PretrainConfig::preset("captioning_R_50_L1_H2048").unwrap();
        assert_eq!(forward.model.name, "captioning");
        assert!(PretrainConfig::preset("bicaptioning_R_18").is_err());
    }

    #[test]
    fn overrides_parse_json_values_and_reject_unknown_keys() {
        let config = PretrainConfig::base()
            .apply_overrides(&[
                "optim.batch_size=64".into(),
                "optim.lookahead.use=false".into(),
                "data.image_transform_train=[]".into(),
                "model.visual=torchvision::resnet101".into(),
            ])
            .unwrap();
        assert_eq!(config.optim.batch_size, 64);
        assert!(!config.optim.lookahead.enabled);
        assert!(config.data.image_transform_train.is_empty());
        assert_eq!(config.model.visual, "torchvision::resnet101");

        let err = PretrainConfig::base()
            .apply_overrides(&["optim.batchsize=64".into()])
            .unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let err = PretrainConfig::base()
            .apply_overrides(&["optim.batch_size=\"many\"".into()])
            .unwrap_err();
        assert!(err.to_string().contains("--set"), "{err}");
        assert!(PretrainConfig::base()
            .apply_overrides(&[
                "optim.batch_size=10".into(),
                "optim.accumulation_steps=3".into()
            ])
            .is_err());
    }

    #[test]
    fn freeze_visual_is_another_name_for_visual_frozen() {
        let config = PretrainConfig::preset("small_cpu")
            .unwrap()
            .apply_overrides(&["model.freeze_visual=true".into()])
            .unwrap();
        assert!(config.model.visual_frozen);
        let from_json: ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "virtex", "visual": "torchvision::resnet18",
            "textual": "transdec_postnorm::L1_H64_A1_F256", "dropout": 0.1,
            "freeze_visual": true
        }))
        .unwrap();
        assert!(from_json.visual_frozen);
    }

    #[test]
    fn json_files_merge_partially_and_report_positions() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("override.json");
        std::fs::write(&path, r#"{"optim": {"cnn_lr": 0.1}, "random_seed": 7}"#).unwrap();
        let config = PretrainConfig::base().merge_json_file(&path).unwrap();
        assert_eq!(config.optim.cnn_lr, 0.1);
        assert_eq!(config.random_seed, 7);
        assert_eq!(config.optim.lr, 0.001);

        std::fs::write(&path, "{\n  \"optim\": {\"cnn_lr\": }\n}").unwrap();
        let err = PretrainConfig::base()
            .merge_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("override.json") && err.contains("line 2"),
            "{err}"
        );
    }
}
