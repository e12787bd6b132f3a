//! The captioning dataset: one image visit → transformed image, caption and tokens (upstream
//! `CaptioningDataset.__getitem__`).
//!
//! Also the data-efficiency subsets of a [`CaptionSource`] ([`ImageSubset`], captions per
//! image): the paper's "fewer images" and "one caption vs five" runs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::coco::{CaptionedImage, ImageDirectory, ImageId};
use crate::error::{DataError, Result};
use crate::image_io::load_image;
use crate::instances::CocoInstances;
use crate::plain_captions::CaptionSource;
use crate::rng::{mix_seed, SampleRng};
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
    object_labels: Option<Arc<CocoInstances>>,
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
            object_labels: None,
        })
    }

    /// Attaches COCO object labels (multilabel classification): keeps only the images with at
    /// least one label ([`CaptionSource::with_labelled_images`], as upstream's
    /// `MultiLabelClassificationDataset`), and the loader's batches can then carry them
    /// ([`crate::CollatedBatch::to_device_labelled`] with [`CaptioningDataset::object_labels`]).
    pub fn with_object_labels(mut self, labels: impl Into<Arc<CocoInstances>>) -> Result<Self> {
        let labels = labels.into();
        let source = Arc::unwrap_or_clone(self.source);
        self.source = Arc::new(source.with_labelled_images(&labels)?);
        self.object_labels = Some(labels);
        Ok(self)
    }

    /// The object-label table attached with [`CaptioningDataset::with_object_labels`].
    pub fn object_labels(&self) -> Option<&Arc<CocoInstances>> {
        self.object_labels.as_ref()
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

    /// Keeps only the training images `subset` selects, drawn with `seed` (the rule is
    /// [`CaptionSource::with_image_subset`]'s).
    pub fn with_image_subset(mut self, subset: ImageSubset, seed: u64) -> Result<Self> {
        let source = Arc::unwrap_or_clone(self.source);
        self.source = Arc::new(source.with_image_subset(subset, seed)?);
        Ok(self)
    }

    /// Keeps the first `k` captions of every image ([`CaptionSource::with_captions_per_image`]).
    pub fn with_captions_per_image(mut self, k: usize) -> Result<Self> {
        let source = Arc::unwrap_or_clone(self.source);
        self.source = Arc::new(source.with_captions_per_image(k)?);
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

/// Most captions per image [`CaptionSource::with_captions_per_image`] keeps: COCO gives every
/// image five (a few have six or seven), and the paper's experiments range over one to five.
pub const MAX_CAPTIONS_PER_IMAGE: usize = 5;

/// Domain separator of the subset draw, so it shares no stream with the loader's shuffles and
/// per-sample draws even when `subset_seed` equals the run's seed.
const STREAM_SUBSET: u64 = 0x5355_4253; // "SUBS"

/// Which training images a data-efficiency run keeps (the paper's "fewer images" runs).
///
/// The selection ([`ImageSubset::select`]) is nested: for one seed, the images of a smaller
/// fraction or count are all among those of a larger one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ImageSubset {
    /// Every image (the default).
    #[default]
    All,
    /// `round(f · N)` of the `N` images (halves round up), at least one; `0 < f ≤ 1`.
    Fraction(f64),
    /// This many images; at least 1 and at most `N`.
    Count(usize),
}

impl ImageSubset {
    /// A fraction of the images, checked: finite and in `(0, 1]`.
    pub fn fraction(fraction: f64) -> Result<Self> {
        if fraction.is_finite() && fraction > 0.0 && fraction <= 1.0 {
            Ok(Self::Fraction(fraction))
        } else {
            Err(DataError::config(
                "image_fraction",
                format!("{fraction} is not in (0, 1] (e.g. 0.1 keeps 10 % of the images)"),
            ))
        }
    }

    /// A number of images, checked: at least 1 (the upper bound is the source's size, checked
    /// by [`ImageSubset::kept`]).
    pub fn count(count: usize) -> Result<Self> {
        if count == 0 {
            return Err(DataError::config(
                "image_count",
                "0 images: keep at least 1",
            ));
        }
        Ok(Self::Count(count))
    }

    /// How many of `total` images the subset keeps.
    pub fn kept(self, total: usize) -> Result<usize> {
        match self {
            Self::All => Ok(total),
            Self::Fraction(fraction) => {
                Self::fraction(fraction)?;
                // `f64::round` rounds halves away from zero: up, for these positive values.
                let kept = (fraction * total as f64).round() as usize;
                Ok(kept.max(1).min(total))
            }
            Self::Count(count) => {
                Self::count(count)?;
                if count > total {
                    return Err(DataError::config(
                        "image_count",
                        format!("{count} images requested, but there are only {total}"),
                    ));
                }
                Ok(count)
            }
        }
    }

    /// The dataset indices the subset keeps, ascending, of images with these `ids` (in dataset
    /// order):
    ///
    /// 1. order the images by image id ([`ImageId`]'s order; ties, which loaded sources do not
    ///    have, by dataset index);
    /// 2. shuffle that list (Fisher–Yates, [`SampleRng::shuffle`]) with the generator
    ///    `SampleRng::seed_from_u64(mix(STREAM_SUBSET, seed))`;
    /// 3. keep its first [`ImageSubset::kept`] images;
    /// 4. return them in dataset order.
    ///
    /// Sorting first makes the choice a function of the set of ids and the seed, not of the
    /// order of the annotation file; taking a prefix of one permutation makes subsets nested.
    pub fn select(self, ids: &[ImageId], seed: u64) -> Result<Vec<usize>> {
        let kept = self.kept(ids.len())?;
        if kept == ids.len() {
            return Ok((0..ids.len()).collect());
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| ids[a].cmp(&ids[b]).then(a.cmp(&b)));
        SampleRng::seed_from_u64(mix_seed(&[STREAM_SUBSET, seed])).shuffle(&mut order);
        order.truncate(kept);
        order.sort_unstable();
        Ok(order)
    }
}

impl CaptionSource {
    /// Keeps only the images `subset` selects with `seed` ([`ImageSubset::select`]: by image
    /// id, a seeded permutation, its first `round(f · N)` or `count` images), in their original
    /// order, so that [`ImageSubset::All`] or a fraction of 1 leaves the dataset, and the
    /// loader's stream over it, exactly as it was. Meant for the training split.
    pub fn with_image_subset(mut self, subset: ImageSubset, seed: u64) -> Result<Self> {
        let images = self.images_mut();
        let ids: Vec<ImageId> = images.iter().map(|image| image.image_id.clone()).collect();
        let keep = subset.select(&ids, seed)?;
        if keep.len() < images.len() {
            let mut keep = keep.into_iter().peekable();
            let mut index = 0;
            images.retain(|_| {
                let kept = keep.next_if_eq(&index).is_some();
                index += 1;
                kept
            });
        }
        Ok(self)
    }

    /// Keeps the first `k` captions of every image, in annotation-file (or line) order; an
    /// image with fewer keeps all of its captions. `k` is 1 to [`MAX_CAPTIONS_PER_IMAGE`].
    ///
    /// The first `k` rather than a seeded draw: the choice is then a property of the annotation
    /// file alone, the same whatever the seeds, and nested in `k` (the one-caption set is inside
    /// the two-caption set), so "one caption vs five" differ only in the number of captions.
    pub fn with_captions_per_image(mut self, k: usize) -> Result<Self> {
        if !(1..=MAX_CAPTIONS_PER_IMAGE).contains(&k) {
            return Err(DataError::config(
                "captions_per_image",
                format!("{k} is not in 1 to {MAX_CAPTIONS_PER_IMAGE}"),
            ));
        }
        for image in self.images_mut() {
            image.captions.truncate(k);
        }
        Ok(self)
    }

    /// Keeps only the images that have at least one object label in `labels`, in their order:
    /// upstream's `MultiLabelClassificationDataset` drops the images without a COCO instance
    /// (about 1 % of train2017). Fails when no image is left.
    pub fn with_labelled_images(mut self, labels: &CocoInstances) -> Result<Self> {
        let images = self.images_mut();
        images.retain(|image| labels.is_labelled(&image.image_id));
        if images.is_empty() {
            return Err(DataError::Classes {
                path: labels.path().to_path_buf(),
                message: format!(
                    "no image of `{}` has an object label here (multilabel classification \
                     trains only on images with at least one instance)",
                    self.annotations_path().display()
                ),
            });
        }
        Ok(self)
    }

    /// The images, to drop images or captions in place.
    fn images_mut(&mut self) -> &mut Vec<CaptionedImage> {
        match self {
            Self::Coco(coco) => coco.images_mut(),
            Self::Plain(plain) => plain.images_mut(),
        }
    }
}
