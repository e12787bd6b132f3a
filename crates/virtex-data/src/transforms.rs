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
//! [`ImageTransforms::from_names`] builds a pipeline from upstream's config names, keyword
//! arguments included (`random_resized_crop::{'scale': (0.08, 1.0)}`, see
//! [`crate::transform_spec`]); [`ImageTransforms::canonical_names`] writes them back.
//!
//! How images are resized and cropped is the pipeline's [`ResizeMode`]:
//!
//! | | [`ResizeMode::Torchvision`] (default) | [`ResizeMode::Upstream`] |
//! |---|---|---|
//! | resize filter | `fast_image_resize`'s bilinear convolution = Pillow's **anti-aliased** bilinear (torchvision on PIL images) | OpenCV `INTER_LINEAR`, no anti-aliasing, bit-exact (albumentations) |
//! | SmallestMaxSize, longer side | `⌊size · long / short⌋` (torchvision `Resize`) | `round_half_even(long · (size / short))` (albumentations 0.4–1.x `py3round`) |
//! | CenterCrop offset | `round_half_even((in − out) / 2)` (torchvision) | `⌊(in − out) / 2⌋` (albumentations) |
//!
//! Colour jitter follows torchvision's tensor ops on `uint8` images, truncations included, in
//! both modes.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::caption::{swap_left_right, FlipCaption};
use crate::error::{DataError, Result};
use crate::image_io::{image_limits, ImageLimits};
use crate::opencv_resize;
use crate::planar::{chw_scale_shift, Planes};
use crate::rng::SampleRng;
use crate::transform_spec::{PyValue, TransformSpec};

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
    /// Resize so the shorter side is `size`; the longer side follows the aspect ratio, rounded
    /// as the pipeline's [`ResizeMode`] says ([`ResizeMode::smallest_max_size`]).
    SmallestMaxSize {
        /// Target shorter side.
        size: u32,
    },
    /// Central `size × size` crop (offsets per [`ResizeMode::center_crop_offset`]; zero-padded
    /// if the image is smaller).
    CenterCrop {
        /// Output side.
        size: u32,
    },
    /// Resize the whole image to `size × size`, ignoring its aspect ratio (upstream's
    /// `global_resize`, albumentations `Resize(size, size)`).
    GlobalResize {
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

/// How a pipeline resizes and crops: torchvision's conventions on PIL images (the default) or
/// upstream's albumentations on OpenCV, bit for bit.
///
/// Applies to [`TransformStep::RandomResizedCrop`] (the resize of the crop),
/// [`TransformStep::SmallestMaxSize`], [`TransformStep::CenterCrop`] and
/// [`TransformStep::GlobalResize`]. The crop box of `RandomResizedCrop` is drawn the same way in
/// both modes. Select it with [`ImageTransforms::with_resize_mode`]; in a serialised pipeline it
/// is `"resize_mode": "upstream"` (absent means torchvision). Parses from `torchvision` and
/// `upstream` (or `opencv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Anti-aliased bilinear resize (`fast_image_resize`'s convolution = Pillow's, as torchvision
    /// on PIL images), SmallestMaxSize's longer side `⌊size · long / short⌋` (torchvision
    /// `Resize`), CenterCrop offsets `round_half_even((in − out) / 2)` (torchvision
    /// `CenterCrop`).
    #[default]
    Torchvision,
    /// Upstream's albumentations (0.4 to 1.x, which upstream's `albumentations>=0.5.0` pulled
    /// in) on OpenCV: `cv2.resize(..., INTER_LINEAR)` without anti-aliasing, reproduced bit for
    /// bit; SmallestMaxSize's sides `round_half_even(side · (size / short))` (`py3round`);
    /// CenterCrop offsets `⌊(in − out) / 2⌋`. Where upstream raises (a centre crop larger than
    /// the image) the image is zero-padded instead, as in the torchvision mode.
    #[serde(alias = "opencv")]
    Upstream,
}

impl ResizeMode {
    fn is_torchvision(&self) -> bool {
        *self == ResizeMode::Torchvision
    }

    /// Output `(width, height)` of [`TransformStep::SmallestMaxSize`] to `size`: the shorter
    /// side becomes `size`; a longer side beyond `u32::MAX` saturates (the pipeline refuses
    /// such sizes before resizing).
    ///
    /// - torchvision: `⌊size · long / short⌋` in integers. 640 × 480 to 224 gives 298 × 224.
    /// - upstream: each side `round_half_even(side · (size / short))` in `f64`, unchanged when
    ///   `size / short` is 1. 640 × 480 to 224 gives 299 × 224.
    pub fn smallest_max_size(self, width: u32, height: u32, size: u32) -> (u32, u32) {
        let (w, h) = self.smallest_max_size_u64(width, height, size);
        (
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
        )
    }

    /// [`ResizeMode::smallest_max_size`] without the cast, for the limit check: the longer
    /// side can exceed `u32` (a 1 × 65535 strip to 100 000).
    fn smallest_max_size_u64(self, width: u32, height: u32, size: u32) -> (u64, u64) {
        match self {
            ResizeMode::Torchvision => smallest_max_size_u64(width, height, size),
            ResizeMode::Upstream => {
                let short = width.min(height).max(1);
                let scale = f64::from(size) / f64::from(short);
                if scale == 1.0 {
                    return (u64::from(width), u64::from(height));
                }
                // albumentations' `py3round` is Python 3's `round`: half to even.
                let side = |x: u32| ((f64::from(x) * scale).round_ties_even() as u64).max(1);
                (side(width), side(height))
            }
        }
    }

    /// Offset of a centre crop of `out` pixels from `inp` pixels (negative when the image is
    /// smaller and gets padded): torchvision `round_half_even((inp − out) / 2)`, upstream
    /// `⌊(inp − out) / 2⌋`. 299 → 224 gives 38 and 37.
    pub fn center_crop_offset(self, inp: u32, out: u32) -> i64 {
        let diff = i64::from(inp) - i64::from(out);
        match self {
            ResizeMode::Torchvision => (diff as f64 / 2.0).round_ties_even() as i64,
            ResizeMode::Upstream => diff.div_euclid(2),
        }
    }

    /// Resizes the `crop` region of `image` to `out_w × out_h`: [`resize_region`] (torchvision)
    /// or [`resize_region_opencv`] (upstream).
    pub fn resize_region(
        self,
        image: &RgbImage,
        crop: CropBox,
        out_w: u32,
        out_h: u32,
    ) -> RgbImage {
        match self {
            ResizeMode::Torchvision => resize_region(image, crop, out_w, out_h),
            ResizeMode::Upstream => resize_region_opencv(image, crop, out_w, out_h),
        }
    }

    /// Central `out_w × out_h` crop with this mode's offsets, zero-padded where the image is
    /// smaller.
    pub fn center_crop(self, image: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
        let (w, h) = image.dimensions();
        if (w, h) == (out_w, out_h) {
            return image.clone();
        }
        let (dx, dy) = (
            self.center_crop_offset(w, out_w),
            self.center_crop_offset(h, out_h),
        );
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
}

impl std::fmt::Display for ResizeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResizeMode::Torchvision => "torchvision",
            ResizeMode::Upstream => "upstream",
        })
    }
}

impl std::str::FromStr for ResizeMode {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "torchvision" => Ok(ResizeMode::Torchvision),
            "upstream" | "opencv" => Ok(ResizeMode::Upstream),
            _ => Err(DataError::config(
                "resize mode",
                format!("`{s}` (expected torchvision or upstream)"),
            )),
        }
    }
}

/// A validated transform pipeline (deserialising validates too, as [`ImageTransforms::new`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageTransforms {
    steps: Vec<TransformStep>,
    #[serde(skip_serializing_if = "ResizeMode::is_torchvision")]
    resize_mode: ResizeMode,
}

impl<'de> Deserialize<'de> for ImageTransforms {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through `new`, so a config file cannot smuggle in a size 0 or a probability of 2.
        #[derive(Deserialize)]
        struct Steps {
            steps: Vec<TransformStep>,
            #[serde(default)]
            resize_mode: ResizeMode,
        }
        let Steps { steps, resize_mode } = Steps::deserialize(deserializer)?;
        Ok(Self::new(steps)
            .map_err(serde::de::Error::custom)?
            .with_resize_mode(resize_mode))
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

/// Checks one step's values (everything [`ImageTransforms::new`] checks but the position of
/// `Normalize`).
fn validate_step(step: &TransformStep) -> Result<()> {
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
        TransformStep::GlobalResize { size } => check_side(*size, "GlobalResize.size")?,
        TransformStep::Normalize(n) => {
            if n.mean.iter().any(|m| !m.is_finite()) {
                return Err(DataError::config(
                    "Normalize.mean",
                    format!("{:?} must be finite", n.mean),
                ));
            }
            if n.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(DataError::config(
                    "Normalize.std",
                    format!("{:?} has a zero", n.std),
                ));
            }
        }
    }
    Ok(())
}

impl ImageTransforms {
    /// A pipeline from steps, validated: sizes positive with `size × size` within the pixel
    /// limit ([`crate::image_limits`]), probabilities in `[0, 1]`, ranges ordered and positive,
    /// hue ≤ 0.5, standard deviations non-zero, `Normalize` only last.
    pub fn new(steps: Vec<TransformStep>) -> Result<Self> {
        for (i, step) in steps.iter().enumerate() {
            validate_step(step)?;
            if matches!(step, TransformStep::Normalize(_)) && i + 1 != steps.len() {
                return Err(DataError::config("Normalize", "must be the last step"));
            }
        }
        Ok(Self {
            steps,
            resize_mode: ResizeMode::default(),
        })
    }

    /// The pipeline with its resizes and crops done as `mode` says (see [`ResizeMode`]).
    pub fn with_resize_mode(mut self, mode: ResizeMode) -> Self {
        self.resize_mode = mode;
        self
    }

    /// How the pipeline resizes and crops.
    pub fn resize_mode(&self) -> ResizeMode {
        self.resize_mode
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

    /// A pipeline from upstream's config names (`DATA.IMAGE_TRANSFORM_TRAIN/VAL`), each
    /// `name` or `name::{kwargs}` as upstream's `ImageTransformsFactory.create` takes them
    /// (syntax in [`crate::transform_spec`]); every size is `crop` (upstream passes
    /// `DATA.IMAGE_CROP_SIZE` to all) unless a keyword argument sets it. The pipeline's
    /// [`ResizeMode`] is the default; change it with [`ImageTransforms::with_resize_mode`].
    ///
    /// | name | step and defaults | keyword arguments |
    /// |---|---|---|
    /// | `random_resized_crop` | RandomResizedCrop(crop, scale (0.2, 1), ratio (3/4, 4/3)) | `scale`, `ratio`: (min, max); `size` / `height` / `width` |
    /// | `center_crop` | CenterCrop(crop) | `size` / `height` / `width` |
    /// | `smallest_resize` | SmallestMaxSize(crop) | `max_size` |
    /// | `global_resize` | GlobalResize(crop) | `size` / `height` / `width` |
    /// | `horizontal_flip` | HorizontalFlip(p 0.5, caption per `flip_caption`) | `p` |
    /// | `color_jitter` | ColorJitter(0.4, 0.4, 0.4, 0.1, p 0.8) | `brightness`, `contrast`, `saturation`, `hue`, `p` |
    /// | `normalize` | Normalize(ImageNet mean and std) | `mean`, `std`: 3 numbers or one; `max_pixel_value` |
    ///
    /// Every transform also takes albumentations' `p` and `always_apply`. Crops, resizes and
    /// `normalize` run on every image here, so their `p` must be 1 (or `always_apply` True):
    /// upstream would skip them at random, which for a crop gives images of varying size. Where
    /// a resize happens `interpolation` is accepted when it is 1 (`cv2.INTER_LINEAR`; the filter
    /// itself is the [`ResizeMode`]'s). Crops and resizes are square, as upstream's
    /// `RandomResizedSquareCrop`, `CenterSquareCrop` and `SquareResize`: `size`, `height` and
    /// `width` all set the side and must agree. (Upstream passes the size positionally, so there
    /// these keys, and `max_size`, raise a `TypeError`; here they override `crop`, which lets one
    /// list say `smallest_resize::{'max_size': 256}` then `center_crop`.) `color_jitter`'s
    /// strengths are single numbers (a `(min, max)` range is refused). `normalize`'s
    /// `max_pixel_value` m is folded into the mean and standard deviation (`mean · m / 255`,
    /// `std · m / 255`). Ints are accepted for floats; tuples and lists are interchangeable.
    ///
    /// # Errors
    /// [`DataError::InvalidTransform`] (naming the text) for a syntax error, an unknown name, a
    /// value of the wrong type or out of range (the message says which and why);
    /// [`DataError::UnknownTransformKwarg`] for a keyword argument the transform does not take,
    /// listing those it does; [`DataError::InvalidConfig`] for a bad `crop` given to plain names.
    pub fn from_names<S: AsRef<str>>(
        names: &[S],
        crop: u32,
        flip_caption: FlipCaption,
    ) -> Result<Self> {
        let steps = names
            .iter()
            .map(|name| step_from_name(name.as_ref(), crop, flip_caption))
            .collect::<Result<Vec<_>>>()?;
        Self::new(steps)
    }

    /// The pipeline as names [`ImageTransforms::from_names`] reads back to the same steps,
    /// every value explicit, e.g. `random_resized_crop::{'size': 224, 'scale': (0.2, 1.0),
    /// 'ratio': (0.75, 1.3333333333333333)}`, for printing a resolved config. Not in the text:
    /// the flip's caption rule (`from_names`' `flip_caption`) and the [`ResizeMode`].
    pub fn canonical_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| step.spec().to_string())
            .collect()
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
            TransformStep::RandomResizedCrop { size, .. }
            | TransformStep::CenterCrop { size }
            | TransformStep::GlobalResize { size } => Some(Some((*size, *size))),
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
        let mode = self.resize_mode;
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
                    current = Current::Rgb(mode.resize_region(&img, crop, *size, *size));
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
                    let (w, h) = mode.smallest_max_size_u64(w, h, *size);
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
                        current = Current::Rgb(mode.resize_region(&img, full, w, h));
                    } else if let Cow::Owned(img) = img {
                        current = Current::Rgb(img);
                    }
                }
                TransformStep::CenterCrop { size } => {
                    let side = u64::from(*size);
                    check(format!("CenterCrop({size})"), side, side)?;
                    let img = current.interleaved(image);
                    current = Current::Rgb(mode.center_crop(&img, *size, *size));
                }
                TransformStep::GlobalResize { size } => {
                    let side = u64::from(*size);
                    check(format!("GlobalResize({size})"), side, side)?;
                    let img = current.interleaved(image);
                    if img.dimensions() != (*size, *size) {
                        let full = CropBox {
                            left: 0.0,
                            top: 0.0,
                            width: f64::from(img.width()),
                            height: f64::from(img.height()),
                        };
                        current = Current::Rgb(mode.resize_region(&img, full, *size, *size));
                    } else if let Cow::Owned(img) = img {
                        current = Current::Rgb(img);
                    }
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

/// Names [`ImageTransforms::from_names`] knows.
const TRANSFORM_NAMES: [&str; 7] = [
    "random_resized_crop",
    "center_crop",
    "smallest_resize",
    "global_resize",
    "horizontal_flip",
    "color_jitter",
    "normalize",
];

/// One step from `name` or `name::{kwargs}` (see [`ImageTransforms::from_names`]).
fn step_from_name(text: &str, crop: u32, flip_caption: FlipCaption) -> Result<TransformStep> {
    let spec = TransformSpec::parse(text)?;
    let has_kwargs = !spec.kwargs.is_empty();
    let name = spec.name.clone();
    let accepted: &[&str] = match name.as_str() {
        "random_resized_crop" => &[
            "size",
            "height",
            "width",
            "scale",
            "ratio",
            "interpolation",
            "p",
            "always_apply",
        ],
        "center_crop" => &["size", "height", "width", "p", "always_apply"],
        "smallest_resize" => &["max_size", "interpolation", "p", "always_apply"],
        "global_resize" => &[
            "size",
            "height",
            "width",
            "interpolation",
            "p",
            "always_apply",
        ],
        "horizontal_flip" => &["p", "always_apply"],
        "color_jitter" => &[
            "brightness",
            "contrast",
            "saturation",
            "hue",
            "p",
            "always_apply",
        ],
        "normalize" => &["mean", "std", "max_pixel_value", "p", "always_apply"],
        other => {
            return Err(DataError::InvalidTransform {
                text: text.to_string(),
                message: format!(
                    "unknown transform `{other}` (expected {})",
                    TRANSFORM_NAMES.join(", ")
                ),
            })
        }
    };
    let kw = Kwargs::new(text, spec, accepted)?;
    let step = match name.as_str() {
        "random_resized_crop" => {
            kw.always_applied()?;
            kw.linear_interpolation()?;
            TransformStep::RandomResizedCrop {
                size: kw.square_side(crop)?,
                scale: kw.pair("scale")?.unwrap_or((0.2, 1.0)),
                ratio: kw.pair("ratio")?.unwrap_or((0.75, 4.0 / 3.0)),
            }
        }
        "center_crop" => {
            kw.always_applied()?;
            TransformStep::CenterCrop {
                size: kw.square_side(crop)?,
            }
        }
        "smallest_resize" => {
            kw.always_applied()?;
            kw.linear_interpolation()?;
            TransformStep::SmallestMaxSize {
                size: kw.side("max_size")?.unwrap_or(crop),
            }
        }
        "global_resize" => {
            kw.always_applied()?;
            kw.linear_interpolation()?;
            TransformStep::GlobalResize {
                size: kw.square_side(crop)?,
            }
        }
        "horizontal_flip" => TransformStep::HorizontalFlip {
            p: kw.probability(0.5)?,
            caption: flip_caption,
        },
        "color_jitter" => {
            let d = ColorJitter::default();
            TransformStep::ColorJitter(ColorJitter {
                brightness: kw.strength("brightness")?.unwrap_or(d.brightness),
                contrast: kw.strength("contrast")?.unwrap_or(d.contrast),
                saturation: kw.strength("saturation")?.unwrap_or(d.saturation),
                hue: kw.strength("hue")?.unwrap_or(d.hue),
                p: kw.probability(d.p)?,
            })
        }
        "normalize" => {
            kw.always_applied()?;
            let d = Normalize::default();
            let mean = kw.triple("mean")?;
            let std = kw.triple("std")?;
            let max_pixel_value = match kw.number("max_pixel_value")? {
                Some(m) if !(m > 0.0 && m.is_finite()) => {
                    return Err(kw.bad_value("max_pixel_value", "must be a positive number"))
                }
                Some(m) => m,
                None => 255.0,
            };
            let fold = |given: Option<[f64; 3]>, default: [f32; 3]| -> [f32; 3] {
                if max_pixel_value == 255.0 {
                    return given.map_or(default, |v| v.map(|x| x as f32));
                }
                let v = given.unwrap_or(default.map(f64::from));
                v.map(|x| (x * max_pixel_value / 255.0) as f32)
            };
            TransformStep::Normalize(Normalize {
                mean: fold(mean, d.mean),
                std: fold(std, d.std),
            })
        }
        _ => unreachable!("names were matched above"),
    };
    match validate_step(&step) {
        // A bad value that came from the text: name the text.
        Err(e) if has_kwargs => Err(DataError::InvalidTransform {
            text: text.to_string(),
            message: e.to_string(),
        }),
        Err(e) => Err(e),
        Ok(()) => Ok(step),
    }
}

/// The keyword arguments of one transform text, all known to its transform.
struct Kwargs<'a> {
    text: &'a str,
    values: Vec<(String, PyValue)>,
}

impl<'a> Kwargs<'a> {
    fn new(text: &'a str, spec: TransformSpec, accepted: &[&str]) -> Result<Self> {
        if let Some((key, _)) = spec
            .kwargs
            .iter()
            .find(|(key, _)| !accepted.contains(&key.as_str()))
        {
            return Err(DataError::UnknownTransformKwarg {
                text: text.to_string(),
                transform: spec.name.clone(),
                kwarg: key.clone(),
                accepted: accepted.iter().map(|a| a.to_string()).collect(),
            });
        }
        Ok(Self {
            text,
            values: spec.kwargs,
        })
    }

    fn get(&self, key: &str) -> Option<&PyValue> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// [`DataError::InvalidTransform`] about `key`'s value.
    fn bad_value(&self, key: &str, problem: impl std::fmt::Display) -> DataError {
        let value = self.get(key).map(ToString::to_string).unwrap_or_default();
        DataError::InvalidTransform {
            text: self.text.to_string(),
            message: format!("'{key}' = {value}: {problem}"),
        }
    }

    /// A number (int or float; bools and `None` are refused).
    fn number(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) => Ok(Some(x)),
                None => {
                    Err(self.bad_value(key, format!("expected a number, not {}", v.type_name())))
                }
            },
        }
    }

    /// `(min, max)`: a tuple or list of two numbers.
    fn pair(&self, key: &str) -> Result<Option<(f64, f64)>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v
            .as_sequence()
            .map(|items| items.iter().map(PyValue::as_f64).collect::<Vec<_>>())
        {
            Some(items) if items.len() == 2 && items.iter().all(Option::is_some) => Ok(Some((
                items[0].expect("checked"),
                items[1].expect("checked"),
            ))),
            _ => Err(self.bad_value(key, "expected a (min, max) pair of numbers")),
        }
    }

    /// Three numbers (one per RGB channel) or one number for all three.
    fn triple(&self, key: &str) -> Result<Option<[f64; 3]>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(x) = v.as_f64() {
            return Ok(Some([x; 3]));
        }
        match v
            .as_sequence()
            .map(|items| items.iter().map(PyValue::as_f64).collect::<Vec<_>>())
        {
            Some(items) if items.len() == 3 && items.iter().all(Option::is_some) => Ok(Some([
                items[0].expect("checked"),
                items[1].expect("checked"),
                items[2].expect("checked"),
            ])),
            _ => Err(self.bad_value(key, "expected three numbers (R, G, B) or one number")),
        }
    }

    /// A side length: an int in `0..=u32::MAX` (zero is refused by the step's own check).
    fn side(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(PyValue::Int(i)) => match u32::try_from(*i) {
                Ok(side) => Ok(Some(side)),
                Err(_) => Err(self.bad_value(key, "expected a positive number of pixels")),
            },
            Some(v) => Err(self.bad_value(
                key,
                format!("expected an int number of pixels, not {}", v.type_name()),
            )),
        }
    }

    /// The side of a square crop or resize: `size`, `height` and `width` if given (they must
    /// agree), else `crop`.
    fn square_side(&self, crop: u32) -> Result<u32> {
        let mut side: Option<(&str, u32)> = None;
        for key in ["size", "height", "width"] {
            if let Some(v) = self.side(key)? {
                match side {
                    Some((first, s)) if s != v => {
                        return Err(self.bad_value(
                            key,
                            format!(
                                "differs from '{first}' = {s}; crops and resizes here are square \
                                 (upstream's RandomResizedSquareCrop, CenterSquareCrop, \
                                 SquareResize), so 'size', 'height' and 'width' must agree"
                            ),
                        ))
                    }
                    _ => side = Some((key, v)),
                }
            }
        }
        Ok(side.map_or(crop, |(_, s)| s))
    }

    fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(PyValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad_value(
                key,
                format!("expected True or False, not {}", v.type_name()),
            )),
        }
    }

    /// The probability of a random step: 1 under `always_apply`, else `p` or `default`.
    fn probability(&self, default: f64) -> Result<f64> {
        let p = self.number("p")?;
        Ok(if self.flag("always_apply")? == Some(true) {
            1.0
        } else {
            p.unwrap_or(default)
        })
    }

    /// Refuses `p` other than 1 (unless `always_apply`) on a step that must always run.
    fn always_applied(&self) -> Result<()> {
        let p = self.number("p")?;
        let always = self.flag("always_apply")? == Some(true);
        match p {
            Some(p) if p != 1.0 && !always => Err(self.bad_value(
                "p",
                "this step runs on every image here; upstream would skip it with probability \
                 1 − p, leaving images uncropped or unresized (of varying size, which cannot be \
                 batched) or unnormalised; only p = 1.0 is supported",
            )),
            _ => Ok(()),
        }
    }

    /// Accepts `interpolation` only when it is `cv2.INTER_LINEAR` (1).
    fn linear_interpolation(&self) -> Result<()> {
        match self.get("interpolation") {
            None | Some(PyValue::Int(1)) => Ok(()),
            Some(_) => Err(self.bad_value(
                "interpolation",
                "only 1 (cv2.INTER_LINEAR, bilinear) is supported; the exact filter is the \
                 pipeline's resize mode (ResizeMode)",
            )),
        }
    }

    /// A colour-jitter strength: one number (albumentations' `(min, max)` form is refused).
    fn strength(&self, key: &str) -> Result<Option<f32>> {
        if self.get(key).is_some_and(|v| v.as_sequence().is_some()) {
            return Err(self.bad_value(
                key,
                "a (min, max) range is not supported; give one strength x, drawn from \
                 [max(0, 1 − x), 1 + x] (hue: [−x, x])",
            ));
        }
        Ok(self.number(key)?.map(|x| x as f32))
    }
}

/// `x` as the shortest decimal that reads back to the same `f32`, held in an `f64`.
fn py_f32(x: f32) -> PyValue {
    PyValue::Float(x.to_string().parse().unwrap_or(f64::from(x)))
}

impl TransformStep {
    /// The step as upstream's `name::{kwargs}`, every value explicit (see
    /// [`ImageTransforms::canonical_names`]). The flip's caption rule has no keyword.
    pub fn spec(&self) -> TransformSpec {
        let pair = |(a, b): (f64, f64)| PyValue::Tuple(vec![PyValue::Float(a), PyValue::Float(b)]);
        let triple = |v: [f32; 3]| PyValue::Tuple(v.iter().map(|&x| py_f32(x)).collect());
        let side = |s: u32| PyValue::Int(i64::from(s));
        let (name, kwargs): (&str, Vec<(&str, PyValue)>) = match self {
            TransformStep::RandomResizedCrop { size, scale, ratio } => (
                "random_resized_crop",
                vec![
                    ("size", side(*size)),
                    ("scale", pair(*scale)),
                    ("ratio", pair(*ratio)),
                ],
            ),
            TransformStep::HorizontalFlip { p, .. } => {
                ("horizontal_flip", vec![("p", PyValue::Float(*p))])
            }
            TransformStep::ColorJitter(j) => (
                "color_jitter",
                vec![
                    ("brightness", py_f32(j.brightness)),
                    ("contrast", py_f32(j.contrast)),
                    ("saturation", py_f32(j.saturation)),
                    ("hue", py_f32(j.hue)),
                    ("p", PyValue::Float(j.p)),
                ],
            ),
            TransformStep::SmallestMaxSize { size } => {
                ("smallest_resize", vec![("max_size", side(*size))])
            }
            TransformStep::CenterCrop { size } => ("center_crop", vec![("size", side(*size))]),
            TransformStep::GlobalResize { size } => ("global_resize", vec![("size", side(*size))]),
            TransformStep::Normalize(n) => (
                "normalize",
                vec![("mean", triple(n.mean)), ("std", triple(n.std))],
            ),
        };
        TransformSpec {
            name: name.to_string(),
            kwargs: kwargs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
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

/// Output size of [`TransformStep::SmallestMaxSize`] in the torchvision mode: `(width, height)`;
/// a longer side beyond `u32::MAX` saturates (the pipeline refuses such sizes before resizing).
/// [`ResizeMode::smallest_max_size`] gives either mode's.
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

/// OpenCV's `cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_LINEAR)` of the
/// `crop` region of `image`, bit for bit (no anti-aliasing; see [`ResizeMode::Upstream`]). As
/// albumentations crops before resizing, the region is cut out first: its borders replicate its
/// own edge pixels. The box is taken in whole pixels (fractions dropped) and clamped into the
/// image.
pub fn resize_region_opencv(image: &RgbImage, crop: CropBox, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let whole = |v: f64, max: u32| -> u32 {
        if v.is_nan() || v <= 0.0 {
            0
        } else {
            (v.trunc().min(f64::from(max))) as u32
        }
    };
    let left = whole(crop.left, w);
    let top = whole(crop.top, h);
    let width = whole(crop.width, w - left);
    let height = whole(crop.height, h - top);
    opencv_resize::resize_region(image, (left, top, width, height), out_w, out_h)
}

/// torchvision's `CenterCrop`: offsets `round((in − out) / 2)`, zero padding when the image is
/// smaller than the crop ([`ResizeMode::center_crop`] with [`ResizeMode::Torchvision`]).
pub fn center_crop(image: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    ResizeMode::Torchvision.center_crop(image, out_w, out_h)
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
