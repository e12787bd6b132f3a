//! `virtex`: the VirTex command-line tool.
//!
//! ```text
//! virtex features --weights resnet50.pth --images photos/ --pooled --out feats.safetensors
//! ```

mod error;
mod features;
mod images;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Features(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
