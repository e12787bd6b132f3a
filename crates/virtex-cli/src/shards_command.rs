//! `virtex make-shards`: WebDataset shards from a COCO-layout or plain-captions directory, for
//! `data.format = webdataset`.
//!
//! ```text
//! virtex make-shards --coco /data/coco --split train --out /data/coco-shards/train
//! virtex make-shards --captions mydata/train.jsonl --out shards/train --samples-per-shard 5000
//! virtex make-shards --captions train.tsv --image-root images/ --out shards/train --max-shard-size 1G
//! ```

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use virtex_data::{
    write_shards, CaptionSource, CocoCaptions, CocoOptions, PlainCaptions, PlainOptions,
    ShardWriterOptions, Split,
};

use crate::checks::check_output;
use crate::error::CliError;

/// Write WebDataset tar shards (`KEY.jpg` + `KEY.txt` + `KEY.json`, as img2dataset writes them)
/// from COCO Captions or a plain captions file, in the dataset's order, each shard written
/// atomically; prints the brace pattern to give `data.shards_train` / `data.shards_val`.
#[derive(Debug, Clone, Args)]
pub struct MakeShardsArgs {
    /// A COCO root (`annotations/captions_{split}2017.json`, `{split}2017/`).
    #[arg(
        long,
        conflicts_with = "captions",
        required_unless_present = "captions"
    )]
    pub coco: Option<PathBuf>,
    /// With `--coco`: the split to write (`train` or `val`).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// A plain captions file (`.jsonl`, `.ndjson` or `.tsv`, as `data.format = plain` reads).
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// With `--captions`: resolve relative image paths against this directory (default: the
    /// captions file's directory).
    #[arg(long, requires = "captions")]
    pub image_root: Option<PathBuf>,
    /// The directory to write the shards into (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Most samples per shard.
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: usize,
    /// Most bytes per shard (`500M`, `1G`, or a number of bytes); a shard ends before it would
    /// pass it.
    #[arg(long, value_parser = parse_size)]
    pub max_shard_size: Option<u64>,
    /// Shard file names: `{prefix}00000.tar`, ...
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// `1234`, `500K`, `500M`, `1G` (powers of 1024) → bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let scale = match unit.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("`{text}`: the unit must be K, M, G or T")),
            };
            (&text[..at], scale)
        }
        _ => (text, 1),
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 1048576, 500M or 1G"))?;
    if value == 0 {
        return Err("the size must be above 0".into());
    }
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl MakeShardsArgs {
    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        self.run_to(&mut std::io::stderr())
    }

    /// Runs the command, writing the summary to `log`.
    pub fn run_to(self, log: &mut dyn Write) -> Result<(), CliError> {
        if self.samples_per_shard == 0 {
            return Err(CliError::InvalidArgument {
                option: "--samples-per-shard",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let (source, input): (CaptionSource, PathBuf) = match (&self.coco, &self.captions) {
            (Some(root), None) => {
                let split = match self.split.as_str() {
                    "train" => Split::Train,
                    "val" => Split::Val,
                    other => {
                        return Err(CliError::InvalidArgument {
                            option: "--split",
                            value: other.into(),
                            reason: "must be train or val".into(),
                        })
                    }
                };
                check_output(&self.out, &[root])?;
                let coco = CocoCaptions::load(root, split, &CocoOptions::default())?;
                (coco.into(), root.clone())
            }
            (None, Some(file)) => {
                let options = PlainOptions {
                    image_root: self.image_root.clone(),
                    ..PlainOptions::default()
                };
                let plain = PlainCaptions::load(file, &options)?;
                check_output(&self.out, &[file, plain.image_root()])?;
                (plain.into(), file.clone())
            }
            _ => {
                return Err(CliError::Usage(
                    "give exactly one of --coco ROOT and --captions FILE".into(),
                ))
            }
        };
        let options = ShardWriterOptions {
            samples_per_shard: self.samples_per_shard,
            max_shard_bytes: self.max_shard_size,
            prefix: self.prefix.clone(),
        };
        let written = write_shards(source.images(), &self.out, &options)?;
        // A failed progress line is not a failed command.
        let _ = writeln!(
            log,
            "wrote {} samples from `{}` into {} shards: {}",
            written.samples,
            input.display(),
            written.shards.len(),
            written.pattern
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("500m"), Ok(500 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
