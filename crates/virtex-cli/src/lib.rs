//! # virtex-cli
//!
//! The commands of the `virtex` tool as a library; the binary (`src/main.rs`) only parses the
//! command line ([`Cli`]) and runs the [`Command`]. Programs and tests call the same code:
//!
//! - [`FeaturesArgs`]: backbone features (layer4 grid, pooled or L2-normalised) of image files,
//!   written as safetensors; [`load_backbone`] and [`extract_features`] are its parts.
//! - [`CaptionArgs`]: captions of image files from a VirTex checkpoint (a file, a checkpoint
//!   directory, or a training run's newest checkpoint), in the COCO results format (beam search,
//!   nucleus sampling or greedy decoding), to a file or as JSON lines on stdout; with
//!   `--attention DIR [--html]`, each word's cross-attention map over the image as PNGs and an
//!   HTML gallery.
//! - [`TrainTokenizerArgs`], [`TokenizeArgs`]: a SentencePiece-compatible BPE vocabulary from
//!   COCO captions; encoding and decoding with it.
//! - [`EvalLinearArgs`]: `virtex eval-linear`, upstream's linear probe (frozen CNN, new `fc`,
//!   SGD 0.3 cosine; or `--fine-tune`, or `--quick` on features extracted once) on ImageNet,
//!   iNaturalist 2018 or an image folder, with checkpoints and exact `--resume`
//!   ([`virtex_train::linear_probe`]).
//! - [`EvalVoc07Args`], [`EvalCaptionsArgs`]: PASCAL VOC07 linear-SVM mAP of a backbone, and
//!   CIDEr-D / BLEU (and SPICE, with Java and Stanford's jar) of predicted captions.
//!   `eval-voc07 --run RUN [--watch]` evaluates every checkpoint of a training run, resumably,
//!   into `RUN/voc07.jsonl` ([`Voc07Record`] per line) and marks the best in
//!   `RUN/voc07_best.json` ([`Voc07Best`]), to choose the checkpoint as upstream does.
//! - [`WeightsArgs`]: `virtex weights list` and `virtex weights fetch NAME [--sha256 HEX]
//!   [--force]`: upstream's released checkpoints ([`RELEASED_WEIGHTS`]) in a local cache
//!   ([`WeightsCache`]: `$VIRTEX_CACHE_DIR`, else XDG), downloads that resume and show progress,
//!   a mirror (`$VIRTEX_WEIGHTS_MIRROR`), SHA-256 recorded at the first download and verified on
//!   every use. Wherever `--weights` takes a file, a released name is accepted too
//!   ([`resolve_weights`]).
//! - [`ExportArgs`]: `virtex export --weights W --format torchvision|detectron2 --out F.pth`: a
//!   backbone back to PyTorch, as torchvision's `state_dict` or as the Detectron2 checkpoint of
//!   upstream's `detectron2_backbone_state_dict()` (`torch.load(..., weights_only=True)` reads
//!   both).
//! - [`MakeShardsArgs`]: `virtex make-shards --coco ROOT --split train --out DIR` (or
//!   `--captions FILE`): WebDataset tar shards for `data.format = webdataset`
//!   ([`virtex_data::write_shards`]), each written atomically.
//!
//! Every command reads images with `virtex-data`'s one loader ([`virtex_data::load_image_batch`]
//! or [`virtex_data::load_image`]: any colour type, EXIF orientation applied, truncated or corrupt
//! files refused with an error naming them) and its evaluation transform
//! ([`virtex_data::ImageTransforms::downstream_val`]: shorter side resized with antialiased
//! bilinear, centre crop, ImageNet normalisation), and writes every output file atomically
//! ([`virtex_device::write_atomically`]).
//!
//! Before any expensive work every command refuses an output path that is one of its inputs, lies
//! inside an input directory or inside a training checkpoint
//! ([`virtex_device::check_output_path`]), and sizes that cannot work (`--crop 0`,
//! `--batch-size 0`, a side above [`MAX_IMAGE_SIDE`]); `caption` refuses a tokenizer whose size
//! is not the checkpoint's vocabulary ([`CliError::VocabularyMismatch`]) before reading any image.
//!
//! ```no_run
//! use clap::Parser;
//! use virtex_cli::Cli;
//!
//! let cli = Cli::parse_from([
//!     "virtex", "features", "--weights", "resnet50.pth", "--images", "photos/",
//!     "--l2-normalize", "--out", "features.safetensors",
//! ]);
//! cli.command.run()?;
//! # Ok::<(), virtex_cli::CliError>(())
//! ```
#![warn(missing_docs)]

mod attention_maps;
mod caption;
mod checks;
mod error;
mod eval_commands;
mod export_command;
mod features;
mod linear_command;
mod model_paths;
mod shards_command;
mod tokenizer_commands;
mod voc07_sweep;
mod weights;

use clap::{Parser, Subcommand};

pub use caption::{CaptionArgs, DecoderCompat};
pub use checks::MAX_IMAGE_SIDE;
pub use error::CliError;
pub use eval_commands::{EvalCaptionsArgs, EvalVoc07Args, DEFAULT_IMAGE_CACHE_MIB};
pub use export_command::{ExportArgs, ExportFormat};
pub use features::{
    extract_features, load_backbone, progress_bar, write_features, FeatureKind, FeatureMatrix,
    FeaturesArgs,
};
pub use linear_command::{EvalLinearArgs, ProbeDataset};
pub use shards_command::MakeShardsArgs;
pub use tokenizer_commands::{CaptionsFormat, TokenizeArgs, TrainTokenizerArgs};
pub use voc07_sweep::{Voc07Best, Voc07Record, Voc07Settings, BEST_FILE, RECORDS_FILE};
pub use weights::{
    format_list, released_weights, resolve_weights, sha256_file, CacheEntry, FetchOptions,
    ReleasedKind, ReleasedWeights, WeightsArgs, WeightsCache, WeightsCommand, WeightsFetchArgs,
    CACHE_DIR_ENV, MIRROR_ENV, RELEASED_WEIGHTS,
};

/// The `virtex` command line.
#[derive(Debug, Parser)]
#[command(
    name = "virtex",
    version,
    about = "VirTex in Rust: backbone features, image captioning, tokenizers and evaluation \
             (VOC07 linear SVMs, CIDEr-D, BLEU)",
    long_about = None
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `virtex`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Extract backbone features (layer4 grid, pooled, or L2-normalised) for images.
    Features(FeaturesArgs),
    /// Caption images with a VirTex checkpoint (COCO results format).
    Caption(CaptionArgs),
    /// Train a SentencePiece-compatible BPE vocabulary from COCO captions.
    TrainTokenizer(TrainTokenizerArgs),
    /// Encode a caption to ids (JSON), or decode ids with --decode.
    Tokenize(TokenizeArgs),
    /// PASCAL VOC2007 linear-SVM evaluation (mAP) of a backbone, or of every checkpoint of a
    /// training run (--run), marking the best.
    EvalVoc07(EvalVoc07Args),
    /// CIDEr-D and BLEU of predicted captions against COCO annotations.
    EvalCaptions(EvalCaptionsArgs),
    /// Linear classification (ImageNet, iNaturalist 2018, any image folder) of a frozen
    /// backbone as upstream's clf_linear.py trains it, or fine-tuning with --fine-tune.
    EvalLinear(EvalLinearArgs),
    /// Released VirTex checkpoints: list them, or download one into the cache (resumable,
    /// SHA-256 recorded and verified; mirror with VIRTEX_WEIGHTS_MIRROR).
    Weights(WeightsArgs),
    /// Write a backbone back to PyTorch: a torchvision state_dict, or the Detectron2 backbone
    /// of upstream's detectron2_backbone_state_dict() for MODEL.WEIGHTS.
    Export(ExportArgs),
    /// Write WebDataset tar shards (KEY.jpg + KEY.txt + KEY.json) from a COCO root or a plain
    /// captions file, for data.format=webdataset.
    MakeShards(MakeShardsArgs),
}

impl Command {
    /// Runs the command; progress and summaries go to stderr, results of `tokenize` and the
    /// evaluation tables to stdout.
    pub fn run(self) -> Result<(), CliError> {
        match self {
            Command::Features(args) => args.run(),
            Command::Caption(args) => args.run(),
            Command::TrainTokenizer(args) => args.run(),
            Command::Tokenize(args) => args.run().map_err(CliError::from),
            Command::EvalVoc07(args) => args.run(),
            Command::EvalCaptions(args) => args.run(),
            Command::EvalLinear(args) => args.run(),
            Command::Weights(args) => args.run(),
            Command::Export(args) => args.run(),
            Command::MakeShards(args) => args.run(),
        }
    }
}
