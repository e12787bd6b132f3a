//! `virtex`: the VirTex command-line tool.
//!
//! ```text
//! virtex features --weights resnet50.pth --images photos/ --pooled --out feats.safetensors
//! ```

mod caption;
mod error;
mod eval_commands;
mod features;
mod images;
mod tokenizer_commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// VirTex in Rust: feature extraction, captioning, tokenizers and evaluation.
#[derive(Debug, Parser)]
#[command(name = "virtex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Extract backbone features (layer4 grid, pooled, or L2-normalised) for images.
    Features(features::FeaturesArgs),
    /// Caption images with a VirTex checkpoint (COCO results format).
    Caption(caption::CaptionArgs),
    /// Train a SentencePiece-compatible BPE vocabulary from COCO captions.
    TrainTokenizer(tokenizer_commands::TrainTokenizerArgs),
    /// Encode a caption to ids (JSON), or decode ids with --decode.
    Tokenize(tokenizer_commands::TokenizeArgs),
    /// PASCAL VOC2007 linear-SVM evaluation of a backbone (mAP).
    EvalVoc07(eval_commands::EvalVoc07Args),
    /// CIDEr-D and BLEU of predicted captions against COCO annotations.
    EvalCaptions(eval_commands::EvalCaptionsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Features(args) => args.run(),
        Command::Caption(args) => args.run(),
        Command::TrainTokenizer(args) => args.run().map_err(CliError::from),
        Command::Tokenize(args) => args.run().map_err(CliError::from),
        Command::EvalVoc07(args) => args.run(),
        Command::EvalCaptions(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
