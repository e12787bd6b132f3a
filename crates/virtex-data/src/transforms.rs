//! Paired image/caption transforms (upstream `virtex/data/transforms.py` and the albumentations
//! pipeline built by `ImageTransformsFactory`).
//!
//! A pipeline is a list of [`TransformStep`]s applied to an RGB8 image; the result is a `[3, H, W]`
//! `f32` array (channel-major), normalised when the pipeline ends with
//! [`TransformStep::Normalize`] and in `0..=255` otherwise. Presets:
//!
//! | preset | steps |
//! |---|---|
//! | [`ImageTransforms::pretrain_train`] | RandomResizedCrop(224, scale 0.2–1, ratio 3/4–4/3) → HorizontalFlip(0.5, caption swap) → ColorJitter(0.4, 0.4, 0.4, 0.1, p 0.8) → Normalize |
//! | [`ImageTransforms::pretrain_val`] | SmallestMaxSize(224) → CenterCrop(224) → Normalize |
//! | [`ImageTransforms::downstream_val`] | SmallestMaxSize(256) → CenterCrop(224) → Normalize (captioning eval, VOC07) |
//! | [`ImageTransforms::downstream_train`] | RandomResizedCrop(224, scale 0.08–1) → HorizontalFlip(0.5) → Normalize (ImageNet linear) |
//! | [`ImageTransforms::no_augmentation`] | SmallestMaxSize(size) → CenterCrop(size) → Normalize |
//!
//! Resizing uses `fast_image_resize`'s convolution with the bilinear filter, which equals Pillow's
//! (anti-aliased) bilinear resize; upstream's albumentations calls OpenCV's `INTER_LINEAR`, which
//! does not anti-alias when shrinking. Colour jitter follows torchvision's tensor ops on `uint8`
//! images, truncations included.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::caption::{swap_left_right, FlipCaption};
use crate::error::{DataError, Result};
use crate::image_io::{image_limits, ImageLimits};
use crate::planar::{chw_scale_shift, Planes};
use crate::rng::SampleRng;

/// ImageNet mean, RGB, on the `[0, 1]` scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation, RGB, on the `[0, 1]` scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(x / 255 − mean) / std` per channel (albumentations `Normalize(max_pixel_value=255)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Per-channel mean on the `[0, 1]` scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the `[0, 1]` scale.
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Self {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// torchvision `ColorJitter` applied with probability `p` (albumentations' wrapper).
///
/// Factors: brightness, contrast and saturation are drawn from `[max(0, 1 − x), 1 + x]`, hue from
/// `[−hue, hue]`; the four adjustments run in a random order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    /// Brightness strength (0 disables).
    pub brightness: f32,
    /// Contrast strength (0 disables).
    pub contrast: f32,
    /// Saturation strength (0 disables).
    pub saturation: f32,
    /// Hue strength, at most 0.5 (0 disables).
    pub hue: f32,
    /// Probability of applying the jitter at all.
    pub p: f64,
}

impl Default for ColorJitter {
    /// Upstream's `color_jitter`: `ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)`.
    fn default() -> Self {
        Self {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            p: 0.8,
        }
    }
}

/// The factors of one colour-jitter draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// Order of the adjustments: 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [u8; 4],
    /// Brightness factor (`None` when disabled).
    pub brightness: Option<f64>,
    /// Contrast factor.
    pub contrast: Option<f64>,
    /// Saturation factor.
    pub saturation: Option<f64>,
    /// Hue shift in turns.
    pub hue: Option<f64>,
}

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransformStep {
    /// torchvision/albumentations `RandomResizedCrop`: a random area fraction in `scale` and
    /// aspect ratio (log-uniform) in `ratio`, 10 tries, then a centre crop fallback; resized to
    /// `size × size`.
    RandomResizedCrop {
        /// Output side.
        size: u32,
        /// Area fraction range.
        scale: (f64, f64),
        /// Aspect-ratio (width / height) range.
        ratio: (f64, f64),
    },
    /// Mirror left–right with probability `p`, rewriting the caption per `caption`.
    HorizontalFlip {
        /// Probability.
        p: f64,
        /// How the caption's "left"/"right" are rewritten.
        caption: FlipCaption,
    },
    /// Colour jitter.
    ColorJitter(ColorJitter),
    /// Resize so the shorter side is `size` (the longer side is `⌊size · long / short⌋`, as
    /// torchvision's `Resize(size)`).
    SmallestMaxSize {
        /// Target shorter side.
        size: u32,
    },
    /// Central `size × size` crop (torchvision's `CenterCrop` offsets; zero-padded if smaller).
    CenterCrop {
        /// Output side.
        size: u32,
    },
    /// Normalisation; must be the last step.
    Normalize(Normalize),
}

/// A transformed image: `[3, height, width]` `f32`, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformedImage {
    /// Pixel values, `data[c * height * width + y * width + x]`.
    pub data: Vec<f32>,
    /// Height.
    pub height: u32,
    /// Width.
    pub width: u32,
}

/// A validated transform pipeline (deserialising validates too, as [`ImageTransforms::new`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageTransforms {
    steps: Vec<TransformStep>,
}

impl<'de> Deserialize<'de> for ImageTransforms {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through `new`, so a config file cannot smuggle in a size 0 or a probability of 2.
        #[derive(Deserialize)]
        struct Steps {
            steps: Vec<TransformStep>,
        }
        let Steps { steps } = Steps::deserialize(deserializer)?;
        Self::new(steps).map_err(serde::de::Error::custom)
    }
}

/// Checks a fixed output side: positive, and `size × size` within the pixel limit (a resize or
/// crop to it allocates that much whatever the input).
fn check_side(size: u32, what: &str) -> Result<()> {
    if size == 0 {
        return Err(DataError::config(what, "must be positive"));
    }
    let limits = image_limits();
    let side = u64::from(size);
    if !limits.allows(side, side) {
        return Err(DataError::config(
            what,
            format!(
                "{size} gives {size}x{size} = {} pixels, above the image pixel limit of {} \
                 (virtex_data::set_image_limits)",
                side * side,
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

fn check_prob(p: f64, what: &str) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(DataError::config(
            what,
            format!("probability {p} is outside [0, 1]"),
        ))
    }
}

impl ImageTransforms {
    /// A pipeline from steps, validated: sizes positive with `size × size` within the pixel
    /// limit ([`crate::image_limits`]), probabilities in `[0, 1]`, ranges ordered and positive,
    /// hue ≤ 0.5, standard deviations non-zero, `Normalize` only last.
    pub fn new(steps: Vec<TransformStep>) -> Result<Self> {
        for (i, step) in steps.iter().enumerate() {
            match step {
                TransformStep::RandomResizedCrop { size, scale, ratio } => {
                    check_side(*size, "RandomResizedCrop.size")?;
                    if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                        return Err(DataError::config(
                            "RandomResizedCrop.scale",
                            format!("{scale:?} must satisfy 0 < min <= max <= 1"),
                        ));
                    }
                    if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                        return Err(DataError::config(
                            "RandomResizedCrop.ratio",
                            format!("{ratio:?} must satisfy 0 < min <= max"),
                        ));
                    }
                }
                TransformStep::HorizontalFlip { p, .. } => check_prob(*p, "HorizontalFlip.p")?,
                TransformStep::ColorJitter(j) => {
                    check_prob(j.p, "ColorJitter.p")?;
                    for (name, v) in [
                        ("brightness", j.brightness),
                        ("contrast", j.contrast),
                        ("saturation", j.saturation),
                    ] {
                        if !(v >= 0.0 && v.is_finite()) {
                            return Err(DataError::config(
                                format!("ColorJitter.{name}"),
                                format!("{v} must be >= 0"),
                            ));
                        }
                    }
                    if !(0.0..=0.5).contains(&j.hue) {
                        return Err(DataError::config(
                            "ColorJitter.hue",
                            format!("{} must be in [0, 0.5]", j.hue),
                        ));
                    }
                }
                TransformStep::SmallestMaxSize { size } => {
                    check_side(*size, "SmallestMaxSize.size")?;
                }
                TransformStep::CenterCrop { size } => check_side(*size, "CenterCrop.size")?,
                TransformStep::Normalize(n) => {
                    if i + 1 != steps.len() {
                        return Err(DataError::config("Normalize", "must be the last step"));
                    }
                    if n.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                        return Err(DataError::config(
                            "Normalize.std",
                            format!("{:?} has a zero", n.std),
                        ));
                    }
                }
            }
        }
        Ok(Self { steps })
    }

    /// Upstream pretraining, train split (`DATA.IMAGE_TRANSFORM_TRAIN`), with `crop` = 224.
    pub fn pretrain_train(crop: u32, flip_caption: FlipCaption) -> Result<Self> {
        Self::new(vec![
            TransformStep::RandomResizedCrop {
                size: crop,
                scale: (0.2, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            TransformStep::HorizontalFlip {
                p: 0.5,
                caption: flip_caption,
            },
            TransformStep::ColorJitter(ColorJitter::default()),
            TransformStep::Normalize(Normalize::default()),
        ])
    }

    /// Upstream pretraining, val split: shorter side `crop`, centre crop `crop`.
    pub fn pretrain_val(crop: u32) -> Result<Self> {
        Self::no_augmentation(crop)
    }

    /// Downstream / captioning-eval default: shorter side `resize` (256), centre crop `crop` (224).
    pub fn downstream_val(resize: u32, crop: u32) -> Result<Self> {
        Self::new(vec![
            TransformStep::SmallestMaxSize { size: resize },
            TransformStep::CenterCrop { size: crop },
            TransformStep::Normalize(Normalize::default()),
        ])
    }

    /// Downstream training (ImageNet linear / iNaturalist): RandomResizedCrop(crop, scale
    /// 0.08–1) → flip(0.5) → normalise.
    pub fn downstream_train(crop: u32) -> Result<Self> {
        Self::new(vec![
            TransformStep::RandomResizedCrop {
                size: crop,
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            TransformStep::HorizontalFlip {
                p: 0.5,
                caption: FlipCaption::Keep,
            },
            TransformStep::Normalize(Normalize::default()),
        ])
    }

    /// No randomness: shorter side `size`, centre crop `size`, normalise.
    pub fn no_augmentation(size: u32) -> Result<Self> {
        Self::downstream_val(size, size)
    }

    /// A pipeline from upstream's config names (`DATA.IMAGE_TRANSFORM_TRAIN/VAL`):
    /// `random_resized_crop`, `horizontal_flip`, `color_jitter`, `normalize`, `smallest_resize`,
    /// `center_crop`; every size is `crop` (upstream passes `DATA.IMAGE_CROP_SIZE` to all).
    pub fn from_names<S: AsRef<str>>(
        names: &[S],
        crop: u32,
        flip_caption: FlipCaption,
    ) -> Result<Self> {
        let steps = names
            .iter()
            .map(|name| {
                Ok(match name.as_ref() {
                    "random_resized_crop" => TransformStep::RandomResizedCrop {
                        size: crop,
                        scale: (0.2, 1.0),
                        ratio: (0.75, 4.0 / 3.0),
                    },
                    "horizontal_flip" => TransformStep::HorizontalFlip { p: 0.5, caption: flip_caption },
                    "color_jitter" => TransformStep::ColorJitter(ColorJitter::default()),
                    "normalize" => TransformStep::Normalize(Normalize::default()),
                    "smallest_resize" => TransformStep::SmallestMaxSize { size: crop },
                    "center_crop" => TransformStep::CenterCrop { size: crop },
                    other => {
                        return Err(DataError::config(
                            "image transform name",
                            format!(
                                "`{other}` (expected random_resized_crop, horizontal_flip, color_jitter, \
                                 normalize, smallest_resize or center_crop)"
                            ),
                        ))
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(steps)
    }

    /// The steps.
    pub fn steps(&self) -> &[TransformStep] {
        &self.steps
    }

    /// Whether any step draws random numbers.
    pub fn is_random(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s,
                TransformStep::RandomResizedCrop { .. }
                    | TransformStep::HorizontalFlip { .. }
                    | TransformStep::ColorJitter(_)
            )
        })
    }

    /// The output `(height, width)` when it does not depend on the input (the last resizing
    /// step is a crop), which batching requires.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.steps.iter().rev().find_map(|s| match s {
            TransformStep::RandomResizedCrop { size, .. } | TransformStep::CenterCrop { size } => {
                Some(Some((*size, *size)))
            }
            TransformStep::SmallestMaxSize { .. } => Some(None),
            _ => None,
        })?
    }

    /// Applies the pipeline to an image and its caption; the caption changes only under a flip.
    ///
    /// # Panics
    /// When a step's output would exceed the pixel limit (see
    /// [`ImageTransforms::try_apply`], which returns the error instead).
    pub fn apply(
        &self,
        image: &RgbImage,
        caption: &str,
        rng: &mut SampleRng,
    ) -> (TransformedImage, String) {
        self.try_apply(image, caption, rng, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Applies the pipeline to an image alone.
    ///
    /// # Panics
    /// When a step's output would exceed the pixel limit (see
    /// [`ImageTransforms::try_apply_image`], which returns the error instead).
    pub fn apply_image(&self, image: &RgbImage, rng: &mut SampleRng) -> TransformedImage {
        self.try_apply_image(image, rng, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ImageTransforms::apply`], refusing with [`DataError::TransformTooLarge`] (naming
    /// `source`, the image file, when given) a step whose output would exceed
    /// [`crate::image_limits`], before allocating it: e.g. the shorter side of a 1 × 5000
    /// strip resized to 224 gives 224 × 1 120 000 pixels.
    pub fn try_apply(
        &self,
        image: &RgbImage,
        caption: &str,
        rng: &mut SampleRng,
        source: Option<&Path>,
    ) -> Result<(TransformedImage, String)> {
        let mut caption = caption.to_string();
        let image = self.run(image, Some(&mut caption), rng, source)?;
        Ok((image, caption))
    }

    /// [`ImageTransforms::apply_image`] with the checks of [`ImageTransforms::try_apply`].
    pub fn try_apply_image(
        &self,
        image: &RgbImage,
        rng: &mut SampleRng,
        source: Option<&Path>,
    ) -> Result<TransformedImage> {
        self.run(image, None, rng, source)
    }

    fn run(
        &self,
        image: &RgbImage,
        mut caption: Option<&mut String>,
        rng: &mut SampleRng,
        source: Option<&Path>,
    ) -> Result<TransformedImage> {
        let limits = image_limits();
        let check = |step: String, width: u64, height: u64| -> Result<()> {
            check_output(&limits, source, step, width, height)
        };
        // The image between steps: geometric steps work on interleaved RGB; from the flip or
        // the jitter on it is kept planar (de-interleaved once, mirrored on the way), which is
        // also the layout of the output.
        let mut current = Current::Source;
        let mut normalize = None;
        for step in &self.steps {
            match step {
                TransformStep::RandomResizedCrop { size, scale, ratio } => {
                    // Sizes were checked against the limit in force when the pipeline was
                    // built; the limit may have been lowered since.
                    let side = u64::from(*size);
                    check(format!("RandomResizedCrop({size})"), side, side)?;
                    let img = current.interleaved(image);
                    let crop =
                        random_resized_crop_params(img.width(), img.height(), *scale, *ratio, rng);
                    current = Current::Rgb(resize_region(&img, crop, *size, *size));
                }
                TransformStep::HorizontalFlip { p, caption: mode } => {
                    if rng.bernoulli(*p) {
                        current = match current {
                            Current::Planar(mut planes) => {
                                planes.mirror();
                                Current::Planar(planes)
                            }
                            Current::Rgb(img) => {
                                Current::Planar(Planes::from_interleaved(&img, true))
                            }
                            Current::Source => {
                                Current::Planar(Planes::from_interleaved(image, true))
                            }
                        };
                        if let Some(c) = caption.as_deref_mut() {
                            *c = swap_left_right(c, *mode);
                        }
                    }
                }
                TransformStep::ColorJitter(jitter) => {
                    if rng.bernoulli(jitter.p) {
                        let params = jitter.sample(rng);
                        let mut planes = current.planar(image);
                        planes.jitter(&params);
                        current = Current::Planar(planes);
                    }
                }
                TransformStep::SmallestMaxSize { size } => {
                    // The longer side follows the aspect ratio, unbounded by the step's size.
                    let (w, h) = current.dimensions(image);
                    let (w, h) = smallest_max_size_u64(w, h, *size);
                    check(format!("SmallestMaxSize({size})"), w, h)?;
                    let (w, h) = (
                        u32::try_from(w).unwrap_or(u32::MAX),
                        u32::try_from(h).unwrap_or(u32::MAX),
                    );
                    let img = current.interleaved(image);
                    if (w, h) != img.dimensions() {
                        let full = CropBox {
                            left: 0.0,
                            top: 0.0,
                            width: f64::from(img.width()),
                            height: f64::from(img.height()),
                        };
                        current = Current::Rgb(resize_region(&img, full, w, h));
                    } else if let Cow::Owned(img) = img {
                        current = Current::Rgb(img);
                    }
                }
                TransformStep::CenterCrop { size } => {
                    let side = u64::from(*size);
                    check(format!("CenterCrop({size})"), side, side)?;
                    let img = current.interleaved(image);
                    current = Current::Rgb(center_crop(&img, *size, *size));
                }
                TransformStep::Normalize(n) => normalize = Some(*n),
            }
        }
        Ok(match current {
            Current::Source => to_chw(image, normalize.as_ref()),
            Current::Rgb(img) => to_chw(&img, normalize.as_ref()),
            Current::Planar(planes) => planes.to_chw(normalize.as_ref()),
        })
    }
}

/// [`DataError::TransformTooLarge`] when `width × height` exceeds the limit (or a side does not
/// fit in `u32`, which no image buffer can hold).
fn check_output(
    limits: &ImageLimits,
    source: Option<&Path>,
    step: String,
    width: u64,
    height: u64,
) -> Result<()> {
    let fits = |side: u64| u32::try_from(side).is_ok();
    if limits.allows(width, height) && fits(width) && fits(height) {
        return Ok(());
    }
    Err(DataError::TransformTooLarge {
        path: source.map(Path::to_path_buf),
        step,
        width,
        height,
        max_pixels: limits.max_pixels,
    })
}

/// The image between the steps of [`ImageTransforms::run`].
enum Current {
    /// The input, untouched.
    Source,
    /// Interleaved RGB8.
    Rgb(RgbImage),
    /// Planar RGB8.
    Planar(Planes),
}

impl Current {
    /// The image interleaved (borrowed unless it is planar), leaving `self` as the source when
    /// it is taken.
    fn interleaved<'a>(&mut self, source: &'a RgbImage) -> Cow<'a, RgbImage> {
        match std::mem::replace(self, Current::Source) {
            Current::Source => Cow::Borrowed(source),
            Current::Rgb(img) => Cow::Owned(img),
            Current::Planar(planes) => Cow::Owned(planes.to_interleaved()),
        }
    }

    /// `(width, height)` of the image.
    fn dimensions(&self, source: &RgbImage) -> (u32, u32) {
        match self {
            Current::Source => source.dimensions(),
            Current::Rgb(img) => img.dimensions(),
            Current::Planar(planes) => planes.dimensions(),
        }
    }

    /// The image planar, leaving `self` as the source.
    fn planar(&mut self, source: &RgbImage) -> Planes {
        match std::mem::replace(self, Current::Source) {
            Current::Source => Planes::from_interleaved(source, false),
            Current::Rgb(img) => Planes::from_interleaved(&img, false),
            Current::Planar(planes) => planes,
        }
    }
}

/// A crop rectangle in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

/// torchvision's `RandomResizedCrop.get_params` (albumentations uses the same algorithm):
/// returns an integer crop box inside the image (the whole, empty, image when it has no pixels,
/// drawing nothing).
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> CropBox {
    if width == 0 || height == 0 {
        // No box fits; the fallback below would clamp into an empty range.
        return CropBox {
            left: 0.0,
            top: 0.0,
            width: f64::from(width),
            height: f64::from(height),
        };
    }
    let (w_img, h_img) = (f64::from(width), f64::from(height));
    let area = w_img * h_img;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= w_img && h > 0.0 && h <= h_img {
            let top = rng.int_inclusive(0, (h_img - h) as i64) as f64;
            let left = rng.int_inclusive(0, (w_img - w) as i64) as f64;
            return CropBox {
                left,
                top,
                width: w,
                height: h,
            };
        }
    }
    // Fallback: a centre crop with the aspect ratio clamped into `ratio`.
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < ratio.0 {
        (w_img, (w_img / ratio.0).round_ties_even())
    } else if in_ratio > ratio.1 {
        ((h_img * ratio.1).round_ties_even(), h_img)
    } else {
        (w_img, h_img)
    };
    let (w, h) = (w.clamp(1.0, w_img), h.clamp(1.0, h_img));
    CropBox {
        left: ((w_img - w) / 2.0).floor(),
        top: ((h_img - h) / 2.0).floor(),
        width: w,
        height: h,
    }
}

/// Output size of [`TransformStep::SmallestMaxSize`]: `(width, height)`; a longer side beyond
/// `u32::MAX` saturates (the pipeline refuses such sizes before resizing).
pub fn smallest_max_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (w, h) = smallest_max_size_u64(width, height, size);
    (
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    )
}

/// [`smallest_max_size`] without the cast, for the limit check: `size · long / short` can
/// exceed `u32` (a 1 × 65535 strip to 100 000).
fn smallest_max_size_u64(width: u32, height: u32, size: u32) -> (u64, u64) {
    let size64 = u64::from(size);
    if width <= height {
        let h = size64 * u64::from(height) / u64::from(width.max(1));
        (size64, h.max(1))
    } else {
        let w = size64 * u64::from(width) / u64::from(height.max(1));
        (w.max(1), size64)
    }
}

thread_local! {
    /// One resizer per thread, so its internal buffers are reused across images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes the `crop` region of `image` to `out_w × out_h` with the bilinear convolution filter.
pub fn resize_region(image: &RgbImage, crop: CropBox, out_w: u32, out_h: u32) -> RgbImage {
    let mut dst = RgbImage::new(out_w, out_h);
    if image.width() == 0 || image.height() == 0 || out_w == 0 || out_h == 0 {
        return dst;
    }
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    RESIZER.with(|r| {
        // Cannot fail: both images are RGB8, non-empty, and the crop lies inside the source
        // (fast_image_resize clamps it otherwise).
        r.borrow_mut()
            .resize(image, &mut dst, &options)
            .expect("RGB8 to RGB8 resize of non-empty images")
    });
    dst
}

/// torchvision's `CenterCrop`: offsets `round((in − out) / 2)`, zero padding when the image is
/// smaller than the crop.
pub fn center_crop(image: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if (w, h) == (out_w, out_h) {
        return image.clone();
    }
    let offset = |inp: u32, out: u32| -> i64 {
        ((f64::from(inp) - f64::from(out)) / 2.0).round_ties_even() as i64
    };
    let (dx, dy) = (offset(w, out_w), offset(h, out_h));
    let mut out = RgbImage::new(out_w, out_h);
    for y in 0..out_h {
        let sy = i64::from(y) + dy;
        if sy < 0 || sy >= i64::from(h) {
            continue;
        }
        for x in 0..out_w {
            let sx = i64::from(x) + dx;
            if sx >= 0 && sx < i64::from(w) {
                out.put_pixel(x, y, *image.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

impl ColorJitter {
    /// Draws the order and factors (torchvision's `ColorJitter.get_params`).
    pub fn sample(&self, rng: &mut SampleRng) -> JitterParams {
        let mut order = [0u8, 1, 2, 3];
        rng.shuffle(&mut order);
        let factor = |rng: &mut SampleRng, x: f32| -> Option<f64> {
            let x = f64::from(x);
            (x > 0.0).then(|| rng.uniform((1.0 - x).max(0.0), 1.0 + x))
        };
        let brightness = factor(rng, self.brightness);
        let contrast = factor(rng, self.contrast);
        let saturation = factor(rng, self.saturation);
        let hue = (self.hue > 0.0).then(|| rng.uniform(-f64::from(self.hue), f64::from(self.hue)));
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

/// Applies the adjustments of `params` in order.
pub fn apply_jitter(image: &mut RgbImage, params: &JitterParams) {
    via_planes(image, |planes| planes.jitter(params));
}

/// Runs `op` on the planar form of `image` and writes the result back (the pipeline itself
/// stays planar from the flip or jitter on; see [`crate::planar`]).
fn via_planes(image: &mut RgbImage, op: impl FnOnce(&mut Planes)) {
    let mut planes = Planes::from_interleaved(image, false);
    op(&mut planes);
    planes.write_interleaved(image);
}

/// torchvision `adjust_brightness` on uint8: `(factor · x).clamp(0, 255)` truncated, with
/// `factor` rounded to `f32` (torchvision's `_blend` with black).
pub fn adjust_brightness(image: &mut RgbImage, factor: f64) {
    via_planes(image, |planes| planes.brightness(factor));
}

/// torchvision `adjust_contrast` on uint8: blend with the mean of the (uint8) grayscale image.
pub fn adjust_contrast(image: &mut RgbImage, factor: f64) {
    via_planes(image, |planes| planes.contrast(factor));
}

/// torchvision `adjust_saturation` on uint8: blend each pixel with its (uint8) gray value.
pub fn adjust_saturation(image: &mut RgbImage, factor: f64) {
    via_planes(image, |planes| planes.saturation(factor));
}

/// torchvision `adjust_hue` on uint8: RGB → HSV in `f32` (`x / 255`), hue shifted modulo 1,
/// back to RGB, then `(x · 255.999)` truncated (torchvision's `convert_image_dtype`).
/// `hue_factor` is a fraction of the hue circle; torchvision accepts `[-0.5, 0.5]`, and larger
/// values are taken modulo 1 here.
pub fn adjust_hue(image: &mut RgbImage, hue_factor: f64) {
    via_planes(image, |planes| planes.hue(hue_factor));
}

/// HWC u8 → CHW f32, normalised if asked.
pub fn to_chw(image: &RgbImage, normalize: Option<&Normalize>) -> TransformedImage {
    let (w, h) = image.dimensions();
    let plane = (w as usize) * (h as usize);
    let mut data = vec![0f32; 3 * plane];
    let (scale, shift) = chw_scale_shift(normalize);
    let raw = image.as_raw();
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in raw.chunks_exact(3).enumerate() {
        r[i] = f32::from(px[0]) * scale[0] + shift[0];
        g[i] = f32::from(px[1]) * scale[1] + shift[1];
        b[i] = f32::from(px[2]) * scale[2] + shift[2];
    }
    TransformedImage {
        data,
        height: h,
        width: w,
    }
}
