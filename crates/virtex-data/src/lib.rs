//! # virtex-data
//!
//! The data pipeline of VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)):
//! COCO Captions reading, the SentencePiece BPE tokenizer, image transforms, batching into Burn
//! tensors and a deterministic multi-threaded loader. It yields tensors and knows no model.
//!
//! - Reading: [`CocoCaptions`] (`ROOT/annotations/captions_{split}2017.json` + images, captions
//!   grouped per image and normalised with [`normalize_caption`]), [`ImageDirectory`] for
//!   inference, [`load_image`] (any colour type → RGB8, typed errors for missing, empty,
//!   truncated and corrupt files); [`collect_image_files`] and [`load_image_batch`] for image
//!   files and directories given on a command line.
//! - Your own data: [`PlainCaptions`] reads JSON lines (`{"image": PATH, "caption": TEXT}`) or
//!   TSV (`PATH<TAB>CAPTION`) files, one per split, into the same records; a
//!   [`CaptionSource`] is either, and [`read_plain_captions`] feeds vocabulary training.
//! - Limits: one pixel limit, [`ImageLimits`] (PIL's decompression-bomb threshold by default,
//!   process-wide through [`set_image_limits`]), bounds every decode, file read and resize;
//!   annotation `file_name`s must stay inside the image directory.
//! - Tokenizer: [`SentencePieceBpeTokenizer`] loads an official SentencePiece `.model` and encodes
//!   to exactly sentencepiece's ids; trains and saves new vocabularies.
//! - Transforms: [`ImageTransforms`] presets for pretraining (train/val), downstream and no
//!   augmentation, or upstream's config names with keyword arguments
//!   ([`ImageTransforms::from_names`], `random_resized_crop::{'scale': (0.08, 1.0)}`); the flip
//!   swaps "left"/"right" in the caption ([`FlipCaption`]); [`ResizeMode`] chooses torchvision's
//!   anti-aliased resizing (default) or upstream's OpenCV resizing, bit for bit.
//! - Data efficiency: [`CaptionSource::with_image_subset`] keeps a seeded, nested subset of the
//!   images ([`ImageSubset`]: a fraction or a count), [`CaptionSource::with_captions_per_image`]
//!   the first `k` captions of each.
//! - Batches: [`CaptioningDataset`] → [`DataLoader`] → [`CollatedBatch`] →
//!   [`Batch`] `{ images [B,3,H,W], caption_tokens [B,T], noitpac_tokens [B,T], caption_lengths [B] }`.
//! - Web-scale shards: WebDataset tar files (`KEY.jpg` + `KEY.txt` / `KEY.json`, as
//!   img2dataset writes CC3M, CC12M, LAION) from a brace pattern ([`expand_braces`],
//!   [`ShardList`]), streamed through a seeded shuffle buffer ([`ShardStream`]), split per rank
//!   and worker ([`ShardSplit`]), resumable exactly ([`ShardPosition`]), batched by
//!   [`DataLoader::from_shards`]; [`write_shards`] writes them from COCO or plain captions.
//! - Sample data: [`sample_data_root`], [`sample_vocab_path`].
//!
//! ```
//! use burn::backend::Flex;
//! use virtex_data::*;
//!
//! let coco = CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default())?;
//! let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path())?;
//! let transforms = ImageTransforms::pretrain_train(64, FlipCaption::WholeWord)?;
//! let dataset = CaptioningDataset::new(coco, tokenizer, transforms)?;
//! let config = LoaderConfig { batch_size: 4, num_workers: 2, ..LoaderConfig::default() };
//! let loader = DataLoader::new(dataset, config)?;
//! let mut batches = loader.iter_from(LoaderPosition::default());
//! let batch = batches.next().expect("infinite")?.to_device::<Flex>(&Default::default());
//! assert_eq!(batch.images.dims(), [4, 3, 64, 64]);
//! assert_eq!(batch.caption_tokens.dims()[0], 4);
//! let resume_at = batches.position(); // save with the checkpoint
//! assert_eq!(resume_at, LoaderPosition { epoch: 0, batch: 1 });
//! # Ok::<(), virtex_data::DataError>(())
//! ```
#![warn(missing_docs)]

mod caption;
mod classification;
mod coco;
mod collate;
mod dataset;
mod error;
mod image_files;
mod image_io;
mod instances;
mod loader;
mod opencv_resize;
mod plain_captions;
mod planar;
mod rng;
mod sample;
mod tokenizer;
pub mod transform_spec;
pub mod transforms;
mod webdataset;

pub use caption::{normalize_caption, swap_left_right, FlipCaption};
pub use classification::{ClassificationDataset, LabelledImage};
pub use coco::{
    read_caption_file, CaptionedImage, CocoCaptions, CocoOptions, ImageDirectory, ImageId,
    SkippedImage, Split, IMAGE_EXTENSIONS,
};
pub use collate::{collate, collate_images, collate_padded, Batch, CollatedBatch, ImageBatch};
pub use dataset::{
    load_directory_image, CaptionChoice, CaptioningDataset, CaptioningSample, ImageSubset,
    MAX_CAPTIONS_PER_IMAGE,
};
pub use error::{CaptionLineProblem, DataError, Result};
pub use image_files::{collect_image_files, load_image_batch};
pub use image_io::{
    decode_image, decode_image_with_limits, image_limits, load_image, set_image_limits, ImageLimits,
};
pub use instances::CocoInstances;
pub use loader::{BatchIter, BatchPart, DataLoader, LoaderConfig, LoaderPosition};
pub use plain_captions::{
    read_plain_captions, CaptionSource, PlainCaptions, PlainFormat, PlainOptions,
};
pub use rng::SampleRng;
pub use sample::{sample_data_root, sample_vocab_path};
pub use tokenizer::{
    CaptionTokens, Piece, PieceKind, SentencePieceBpeTokenizer, SpecialIds, TrainerConfig,
    EOS_PIECE, MASK_PIECE, MAX_CAPTION_LENGTH, SOS_PIECE, UNK_PIECE,
};
pub use transform_spec::{PyValue, TransformSpec};
pub use transforms::{
    ColorJitter, ImageTransforms, Normalize, ResizeMode, TransformStep, TransformedImage,
};
pub use webdataset::{
    expand_braces, write_shards, ShardCaptioning, ShardDataset, ShardList, ShardPosition,
    ShardSample, ShardSplit, ShardStream, ShardWriterOptions, StreamOptions, WrittenShards,
    SHARD_IMAGE_EXTENSIONS,
};
