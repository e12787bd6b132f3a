//! `virtex`: the VirTex command-line tool (the commands live in the `virtex_cli` library).
//!
//! ```text
//! virtex features --weights resnet50.pth --images photos/ --pooled --out feats.safetensors
//! ```

use std::process::ExitCode;

use clap::Parser;
use virtex_cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
