//! `virtex train-tokenizer` and `virtex tokenize`.
//!
//! ```text
//! virtex train-tokenizer --captions captions_train2017.json [--vocab-size 10000] --out vocab.json
//! virtex train-tokenizer --captions train.jsonl --out vocab.json   # or train.tsv, --format tsv
//! virtex tokenize --vocab vocab.json "a dog on a couch"          # → [12, 7, 99, 4] (JSON)
//! virtex tokenize --vocab coco_10k.model --decode "[45, 9, 310]"  # → "a dog on a couch"
//! ```

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use virtex_data::{
    normalize_caption, read_caption_file, read_plain_captions, DataError, PlainFormat,
    SentencePieceBpeTokenizer, TrainerConfig,
};

use crate::checks::check_output;
use crate::error::CliError;

/// The syntax of `train-tokenizer --captions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptionsFormat {
    /// A COCO captions file (`{"annotations": [{"caption": ...}, ...]}`).
    Coco,
    /// JSON lines: `{"image": PATH, "caption": TEXT}` or `"captions": [TEXT, ...]` per line.
    Jsonl,
    /// `PATH<TAB>CAPTION` per line, with an optional `image<TAB>caption` header.
    Tsv,
}

impl CaptionsFormat {
    /// The format a file's extension names: `.jsonl` / `.ndjson` and `.tsv` are plain
    /// captions files, anything else is read as COCO JSON (as before plain files existed).
    pub fn from_path(path: &std::path::Path) -> Self {
        match PlainFormat::from_path(path) {
            Ok(PlainFormat::JsonLines) => Self::Jsonl,
            Ok(PlainFormat::Tsv) => Self::Tsv,
            Err(_) => Self::Coco,
        }
    }
}

/// Train a SentencePiece-compatible BPE vocabulary on COCO captions or a plain captions file
/// (JSON lines or TSV, as `data.format = plain` reads them) (upstream
/// `scripts/build_vocabulary.py`: captions lower-cased and accent-stripped, special ids
/// `<unk>` 0, `[SOS]` 1, `[EOS]` 2, `[MASK]` 3).
#[derive(Debug, Clone, Args)]
pub struct TrainTokenizerArgs {
    /// A COCO captions file (`captions_train2017.json`) or a plain captions file (`.jsonl`,
    /// `.ndjson`, `.tsv`); the images are not read.
    #[arg(long)]
    pub captions: PathBuf,
    /// The captions file's syntax; by default from its extension (`.jsonl` / `.ndjson` → jsonl,
    /// `.tsv` → tsv, anything else → coco).
    #[arg(long, value_enum)]
    pub format: Option<CaptionsFormat>,
    /// Vocabulary size, special pieces included.
    #[arg(long, default_value_t = 10_000)]
    pub vocab_size: usize,
    /// Output: `.json` (our format) or `.model` (a SentencePiece model that the `sentencepiece`
    /// library also loads). Never the captions file.
    #[arg(long)]
    pub out: PathBuf,
}

impl TrainTokenizerArgs {
    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        self.run_to(&mut std::io::stderr())
    }

    /// Runs the command, writing the summary line to `log`.
    pub fn run_to(self, log: &mut dyn Write) -> Result<(), CliError> {
        check_output(&self.out, &[&self.captions])?;
        let format = self
            .format
            .unwrap_or_else(|| CaptionsFormat::from_path(&self.captions));
        let captions = match format {
            CaptionsFormat::Coco => read_caption_file(&self.captions)?,
            CaptionsFormat::Jsonl => {
                read_plain_captions(&self.captions, Some(PlainFormat::JsonLines))?
            }
            CaptionsFormat::Tsv => read_plain_captions(&self.captions, Some(PlainFormat::Tsv))?,
        };
        let config = TrainerConfig {
            vocab_size: self.vocab_size,
            ..TrainerConfig::default()
        };
        let tokenizer = SentencePieceBpeTokenizer::train(&captions, &config)?;
        if self.out.extension().is_some_and(|e| e == "model") {
            tokenizer.save_sentencepiece_model(&self.out)?;
        } else {
            tokenizer.save(&self.out)?;
        }
        // A failed progress line is not a failed command.
        let _ = writeln!(
            log,
            "trained a vocabulary of {} pieces on {} captions from `{}` → `{}`",
            tokenizer.vocab_size(),
            captions.len(),
            self.captions.display(),
            self.out.display()
        );
        Ok(())
    }
}

/// Encode a caption to token ids (JSON), or decode ids back to text with `--decode`.
#[derive(Debug, Clone, Args)]
pub struct TokenizeArgs {
    /// Vocabulary: a SentencePiece `.model` or a JSON vocabulary from `train-tokenizer`.
    #[arg(long)]
    pub vocab: PathBuf,
    /// Treat the input as a JSON list of ids and print the decoded text.
    #[arg(long)]
    pub decode: bool,
    /// Encode the caption as the training pipeline does: upstream's caption normalisation, then
    /// `[SOS] + ids + [EOS]` truncated to 30 tokens.
    #[arg(long)]
    pub caption: bool,
    /// The text to encode, or with `--decode` the ids (`"[12, 7, 99]"` or `12 7 99`).
    #[arg(required = true, num_args = 1..)]
    pub input: Vec<String>,
}

impl TokenizeArgs {
    /// Runs the command, printing to stdout.
    pub fn run(self) -> Result<(), DataError> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        self.run_to(&mut out)
    }

    /// Runs the command, writing the result to `out`.
    pub fn run_to(self, out: &mut dyn Write) -> Result<(), DataError> {
        let tokenizer = SentencePieceBpeTokenizer::from_file(&self.vocab)?;
        let joined = self.input.join(" ");
        let line = if self.decode {
            let ids = parse_ids(&joined)?;
            serde_json::to_string(&tokenizer.decode(&ids)?).map_err(|e| json_error(&e))?
        } else if self.caption {
            let tokens = tokenizer
                .encode_caption(&normalize_caption(&joined), virtex_data::MAX_CAPTION_LENGTH);
            serde_json::to_string(&tokens.caption_tokens).map_err(|e| json_error(&e))?
        } else {
            serde_json::to_string(&tokenizer.encode(&joined)).map_err(|e| json_error(&e))?
        };
        writeln!(out, "{line}").map_err(|e| DataError::Io {
            path: PathBuf::from("<stdout>"),
            source: e,
        })
    }
}

fn json_error(e: &serde_json::Error) -> DataError {
    DataError::Json {
        path: PathBuf::from("<output>"),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

/// Parses `[1, 2, 3]` (JSON) or `1 2 3` / `1,2,3`.
fn parse_ids(text: &str) -> Result<Vec<u32>, DataError> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|e| DataError::Json {
            path: PathBuf::from("<ids argument>"),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        });
    }
    trimmed
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| DataError::InvalidConfig {
                what: "token id".into(),
                message: format!("`{s}` is not a non-negative integer"),
            })
        })
        .collect()
}
