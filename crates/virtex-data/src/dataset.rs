//! The captioning dataset: one image visit → transformed image, caption and tokens (upstream
//! `CaptioningDataset.__getitem__`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::coco::{ImageDirectory, ImageId};
use crate::error::{DataError, Result};
use crate::image_io::load_image;
use crate::plain_captions::CaptionSource;
use crate::rng::SampleRng;
use crate::tokenizer::{CaptionTokens, SentencePieceBpeTokenizer, MAX_CAPTION_LENGTH};
use crate::transforms::{ImageTransforms, TransformedImage};

/// Which caption of an image a visit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionChoice {
    /// A uniformly random caption per visit (upstream's `random.choice`).
    #[default]
    Random,
    /// Always the first caption (deterministic evaluation).
    First,
}

/// One processed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptioningSample {
    /// The image id.
    pub image_id: ImageId,
    /// The transformed image, `[3, H, W]`.
    pub image: TransformedImage,
    /// The caption as tokenised (normalised, and left/right-swapped if the image was flipped).
    pub caption: String,
    /// Its tokens in both directions.
    pub tokens: CaptionTokens,
}

/// Captioned images (COCO or a plain captions file, [`CaptionSource`]) + tokenizer + transforms:
/// everything needed to produce training samples.
#[derive(Debug, Clone)]
pub struct CaptioningDataset {
    source: Arc<CaptionSource>,
    tokenizer: Arc<SentencePieceBpeTokenizer>,
    transforms: ImageTransforms,
    caption_choice: CaptionChoice,
    max_caption_length: usize,
    padding_index: u32,
}

impl CaptioningDataset {
    /// A dataset with upstream's defaults: random caption per visit, at most 30 tokens.
    /// `source` is a [`crate::CocoCaptions`], a [`crate::PlainCaptions`] or a
    /// [`CaptionSource`].
    pub fn new(
        source: impl Into<Arc<CaptionSource>>,
        tokenizer: impl Into<Arc<SentencePieceBpeTokenizer>>,
        transforms: ImageTransforms,
    ) -> Result<Self> {
        if transforms.output_size().is_none() {
            return Err(DataError::config(
                "CaptioningDataset transforms",
                "the pipeline must end in a fixed-size crop or resize (random_resized_crop, center_crop or global_resize) so images can be batched",
            ));
        }
        let tokenizer = tokenizer.into();
        Ok(Self {
            source: source.into(),
            padding_index: tokenizer.special_ids().unk,
            tokenizer,
            transforms,
            caption_choice: CaptionChoice::Random,
            max_caption_length: MAX_CAPTION_LENGTH,
        })
    }

    /// Sets the caption choice.
    pub fn with_caption_choice(mut self, choice: CaptionChoice) -> Self {
        self.caption_choice = choice;
        self
    }

    /// Sets the maximum caption length in tokens, `[SOS]`/`[EOS]` included (at least 2).
    pub fn with_max_caption_length(mut self, max: usize) -> Result<Self> {
        if max < 2 {
            return Err(DataError::config(
                "max_caption_length",
                format!("{max} is below 2"),
            ));
        }
        self.max_caption_length = max;
        Ok(self)
    }

    /// Sets the token id that pads captions in a batch (default: the tokenizer's `<unk>`,
    /// upstream's `DATA.UNK_INDEX`, which is what upstream's model ignores).
    pub fn with_padding_index(mut self, padding_index: u32) -> Self {
        self.padding_index = padding_index;
        self
    }

    /// The token id that pads captions in a batch.
    pub fn padding_index(&self) -> u32 {
        self.padding_index
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether the dataset is empty (never true once loaded).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// The captioned images (COCO or plain).
    pub fn source(&self) -> &CaptionSource {
        &self.source
    }

    /// The captioned images: the same as [`CaptioningDataset::source`], under the name it had
    /// when COCO was the only source.
    pub fn coco(&self) -> &CaptionSource {
        &self.source
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &SentencePieceBpeTokenizer {
        &self.tokenizer
    }

    /// The transforms.
    pub fn transforms(&self) -> &ImageTransforms {
        &self.transforms
    }

    /// The maximum caption length.
    pub fn max_caption_length(&self) -> usize {
        self.max_caption_length
    }

    /// Processes dataset image `index` for visit `(seed, epoch)`. The result is a pure function
    /// of `(seed, epoch, index)` and the files.
    pub fn get(&self, index: usize, seed: u64, epoch: u64) -> Result<CaptioningSample> {
        let entry = self.source.get(index).ok_or_else(|| {
            DataError::config(
                "dataset index",
                format!("{index} is out of range (len {})", self.source.len()),
            )
        })?;
        let mut rng = SampleRng::for_sample(seed, epoch, index as u64);
        let caption = match self.caption_choice {
            CaptionChoice::First => &entry.captions[0],
            CaptionChoice::Random => {
                &entry.captions[rng.below(entry.captions.len() as u64) as usize]
            }
        };
        let image = load_image(&entry.path)?;
        let (image, caption) =
            self.transforms
                .try_apply(&image, caption, &mut rng, Some(&entry.path))?;
        let tokens = self
            .tokenizer
            .encode_caption(&caption, self.max_caption_length);
        Ok(CaptioningSample {
            image_id: entry.image_id.clone(),
            image,
            caption,
            tokens,
        })
    }
}

/// Loads and transforms image `index` of an [`ImageDirectory`] (for inference; the transforms
/// should not be random, and get a fixed generator if they are).
pub fn load_directory_image(
    directory: &ImageDirectory,
    index: usize,
    transforms: &ImageTransforms,
) -> Result<(ImageId, TransformedImage)> {
    let (id, path) = directory.entries().get(index).ok_or_else(|| {
        DataError::config(
            "image index",
            format!("{index} is out of range (len {})", directory.len()),
        )
    })?;
    let image = load_image(path)?;
    let mut rng = SampleRng::for_sample(0, 0, index as u64);
    let image = transforms.try_apply_image(&image, &mut rng, Some(path))?;
    Ok((id.clone(), image))
}
