//! `virtex caption`: captions for images from a VirTex checkpoint, in the COCO results format.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::{Args, ValueEnum};
use serde::Serialize;
use virtex::{BeamSearchMode, CaptioningModel, DecodingConfig, DecodingStrategy, ImportOptions};
use virtex_backbone::WeightsFormat;
use virtex_data::{
    collect_image_files, ImageId, ImageTransforms, Normalize, SentencePieceBpeTokenizer,
};
use virtex_device::{with_backend, write_atomically, DeviceSpec};

use crate::attention_maps::{denormalize, write_figures, write_gallery, AttentionFigure};
use crate::checks::{
    apply_image_limit, check_image_sizes, check_output, check_positive, image_side_parser,
    max_image_pixels_parser, positive_count_parser,
};
use crate::error::CliError;
use crate::features::progress_bar;
use crate::model_paths::resolve_checkpoint;

/// Beam-search behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecoderCompat {
    /// Always feed the SOS-prefixed sequence (what the model was trained on).
    Correct,
    /// Upstream's quirk: SOS only at the first step (reproduces published captions).
    Upstream,
}

/// Arguments of `virtex caption`.
#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// A VirTex checkpoint: an official `.pth` (bicaptioning or captioning) or one of ours; or
    /// a checkpoint directory (`checkpoint_NNNNNNNN/`: its `model.safetensors`); or a training
    /// run directory (its newest checkpoint, as `--resume` picks it); or a released name
    /// (`virtex weights list`, e.g. `bicaptioning_R_50_L1_H2048`), taken from the weights cache
    /// and downloaded first if absent.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The tokenizer (SentencePiece `.model` or our `vocab.json`).
    #[arg(long)]
    pub vocab: PathBuf,
    /// Image files and/or directories of JPEG/PNG images.
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Beam search with this many beams (the default, 5; at least 1).
    #[arg(long, conflicts_with_all = ["nucleus", "greedy"], value_parser = positive_count_parser())]
    pub beam_size: Option<usize>,
    /// Nucleus sampling with this p (upstream: 0.9).
    #[arg(long, conflicts_with = "greedy")]
    pub nucleus: Option<f64>,
    /// Greedy decoding.
    #[arg(long)]
    pub greedy: bool,
    /// Seed of nucleus sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Beam-search compatibility mode.
    #[arg(long, value_enum, default_value_t = DecoderCompat::Correct)]
    pub decoder_compat: DecoderCompat,
    /// Shorter side after resizing (upstream's captioning evaluation: 256; 1 to 4096).
    #[arg(long, default_value_t = 256, value_parser = image_side_parser())]
    pub short_side: u32,
    /// Side of the centre crop (1 to 4096, at most --short-side).
    #[arg(long, default_value_t = 224, value_parser = image_side_parser())]
    pub crop: u32,
    /// Attention heads of an official checkpoint (not stored in it; default H / 64, as in
    /// every released model).
    #[arg(long)]
    pub attention_heads: Option<usize>,
    /// Images per forward pass (at least 1).
    #[arg(long, default_value_t = 32, value_parser = positive_count_parser())]
    pub batch_size: usize,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Largest image (width × height) the decoder accepts; default: virtex-data's limit
    /// (178 956 970 pixels, PIL's decompression-bomb threshold). A small file can claim a huge
    /// size: raise it only for genuinely huge images.
    #[arg(long, value_parser = max_image_pixels_parser())]
    pub max_image_pixels: Option<u64>,
    /// Output JSON: `[{"image_id": …, "caption": "…"}]` (never one of the inputs, nor inside
    /// one of the input directories or a training checkpoint). Without it, one JSON object
    /// `{"image_id": …, "caption": "…"}` per line on stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also draw where the textual head looked for each word: a PNG per image in this directory
    /// (the centre crop, then one heat map per word, averaged over heads and layers, upsampled
    /// from the backbone's grid). Never one of the inputs or inside them.
    #[arg(long, value_name = "DIR")]
    pub attention: Option<PathBuf>,
    /// With --attention: also one PNG per word and an `index.html` gallery (image, caption,
    /// per-word maps) in that directory.
    #[arg(long, requires = "attention")]
    pub html: bool,
}

#[derive(Debug, Serialize)]
struct CaptionResult {
    image_id: ImageId,
    caption: String,
}

impl CaptionArgs {
    fn decoding(&self) -> Result<DecodingConfig, CliError> {
        let mode = match self.decoder_compat {
            DecoderCompat::Correct => BeamSearchMode::Correct,
            DecoderCompat::Upstream => BeamSearchMode::Upstream,
        };
        let config = if self.greedy {
            DecodingConfig::greedy()
        } else if let Some(p) = self.nucleus {
            if !(p > 0.0 && p <= 1.0) {
                return Err(CliError::Usage(format!(
                    "--nucleus must be in (0, 1], got {p}"
                )));
            }
            DecodingConfig::with_strategy(DecodingStrategy::NucleusSampling {
                nucleus_size: p,
                seed: self.seed,
            })
        } else {
            let beam_size = self.beam_size.unwrap_or(5);
            check_positive("--beam-size", beam_size)?;
            DecodingConfig::with_strategy(DecodingStrategy::BeamSearch {
                beam_size,
                per_node_beam_size: 2,
                mode,
            })
        };
        Ok(config)
    }

    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        let device = self.device.check()?;
        let decoding = self.decoding()?;
        check_image_sizes(self.short_side, self.crop)?;
        check_positive("--batch-size", self.batch_size)?;
        apply_image_limit(self.max_image_pixels)?;
        let checkpoint = resolve_checkpoint(&self.checkpoint)?;
        let mut inputs = vec![checkpoint.file.as_path(), self.vocab.as_path()];
        inputs.extend(checkpoint.directory.as_deref());
        inputs.extend(self.images.iter().map(PathBuf::as_path));
        for output in [&self.out, &self.attention].into_iter().flatten() {
            check_output(output, &inputs)?;
        }
        let decoding = decoding.with_attention(self.attention.is_some());
        if checkpoint.directory.is_some() {
            eprintln!("using checkpoint {}", checkpoint.file.display());
        }
        let files = collect_image_files(&self.images)?;
        let tokenizer = SentencePieceBpeTokenizer::from_file(&self.vocab)?;
        let transforms = ImageTransforms::downstream_val(self.short_side, self.crop)?;
        let results = with_backend!(device, |B, burn_device| {
            let model = load_captioner::<B>(&checkpoint.file, self.attention_heads, &burn_device)?;
            // Before any image is read: a wrong tokenizer decodes every caption wrongly.
            let checkpoint_vocab_size = model.config.textual.vocab_size;
            if tokenizer.vocab_size() != checkpoint_vocab_size {
                return Err(CliError::VocabularyMismatch {
                    vocab: self.vocab.clone(),
                    vocab_size: tokenizer.vocab_size(),
                    checkpoint: checkpoint.file.clone(),
                    checkpoint_vocab_size,
                });
            }
            let eos = model.config.eos_index;
            let progress = progress_bar(files.len(), "captions");
            let mut results = Vec::with_capacity(files.len());
            let mut gallery = Vec::new();
            for batch in files.chunks(self.batch_size.max(1)) {
                let mut pixels = Vec::new();
                let mut crops = Vec::new();
                let mut size = (0, 0);
                for path in batch {
                    let image = virtex_data::load_image(path)?;
                    let mut rng = virtex_data::SampleRng::for_sample(0, 0, 0);
                    let transformed =
                        transforms.try_apply_image(&image, &mut rng, Some(path.as_path()))?;
                    size = (transformed.height as usize, transformed.width as usize);
                    if self.attention.is_some() {
                        crops.push(denormalize(&transformed, &Normalize::default()));
                    }
                    pixels.extend_from_slice(&transformed.data);
                }
                let images = Tensor::<B, 4>::from_data(
                    TensorData::new(pixels, [batch.len(), 3, size.0, size.1]),
                    &burn_device,
                );
                let captions = model.decode(images, &decoding)?;
                let first = results.len();
                let trimmed = captions.trimmed(eos);
                for (path, tokens) in batch.iter().zip(&trimmed) {
                    results.push(CaptionResult {
                        image_id: ImageId::from_file_stem(path),
                        caption: tokenizer.decode(tokens)?,
                    });
                }
                if let (Some(directory), Some(maps)) = (&self.attention, &captions.attention) {
                    let mut figures = Vec::with_capacity(batch.len());
                    for (index, (path, crop)) in batch.iter().zip(crops).enumerate() {
                        let map = &maps[index];
                        let words = trimmed[index]
                            .iter()
                            .enumerate()
                            .map(|(t, &token)| Ok((word(&tokenizer, token)?, map.layer_mean(t))))
                            .collect::<Result<Vec<_>, CliError>>()?;
                        figures.push(AttentionFigure {
                            source: path.clone(),
                            crop,
                            caption: results[first + index].caption.clone(),
                            words,
                            grid: (map.height, map.width),
                        });
                    }
                    gallery.extend(write_figures(directory, &figures, first, self.html)?);
                }
                if self.out.is_none() {
                    // Each batch as soon as it is decoded; the progress bar is on stderr.
                    progress.suspend(|| print_json_lines(&results[first..]))?;
                }
                progress.inc(batch.len() as u64);
            }
            progress.finish_and_clear();
            if let (Some(directory), true) = (&self.attention, self.html) {
                write_gallery(directory, &gallery)?;
            }
            if let Some(directory) = &self.attention {
                eprintln!(
                    "wrote attention maps of {} images to {}",
                    results.len(),
                    directory.display()
                );
            }
            results
        });
        let Some(out) = &self.out else {
            eprintln!("captioned {} images", results.len());
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&results).map_err(|err| CliError::Output {
            path: out.clone(),
            message: err.to_string(),
        })?;
        write_atomically(out, |temporary| std::fs::write(temporary, text + "\n")).map_err(
            |err| CliError::Output {
                path: out.clone(),
                message: err.to_string(),
            },
        )?;
        eprintln!("wrote {} captions to {}", results.len(), out.display());
        Ok(())
    }
}

/// The text of one generated token as it appears in the caption (SentencePiece's word-start
/// mark `▁` dropped), or its piece when it decodes to nothing.
fn word(tokenizer: &SentencePieceBpeTokenizer, token: u32) -> Result<String, CliError> {
    let text = tokenizer.decode(&[token])?;
    let text = text.trim();
    if text.is_empty() {
        Ok(tokenizer.id_to_piece(token).unwrap_or_default().to_string())
    } else {
        Ok(text.to_string())
    }
}

/// Writes `results` to stdout, one JSON object a line, and flushes.
fn print_json_lines(results: &[CaptionResult]) -> Result<(), CliError> {
    let stdout_error = |message: String| CliError::Output {
        path: PathBuf::from("<stdout>"),
        message,
    };
    let mut stdout = std::io::stdout().lock();
    for result in results {
        let line = serde_json::to_string(result).map_err(|err| stdout_error(err.to_string()))?;
        writeln!(stdout, "{line}").map_err(|err| stdout_error(err.to_string()))?;
    }
    stdout.flush().map_err(|err| stdout_error(err.to_string()))
}

/// The forward captioner of any checkpoint (only the forward head decodes).
fn load_captioner<B: Backend>(
    path: &Path,
    attention_heads: Option<usize>,
    device: &B::Device,
) -> Result<CaptioningModel<B>, CliError> {
    // Only the forward head decodes: a bicaptioning checkpoint's backward stack is not loaded.
    let model = if matches!(WeightsFormat::detect(path)?, WeightsFormat::Pytorch) {
        let options = ImportOptions {
            attention_heads,
            caption_backward: Some(false),
            ..ImportOptions::default()
        };
        CaptioningModel::from_official_checkpoint(path, &options, device)?.0
    } else {
        CaptioningModel::load(path, device)?.without_backward()
    };
    Ok(model)
}
