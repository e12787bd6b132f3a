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

use std::cell::RefCell;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::caption::{swap_left_right, FlipCaption};
use crate::error::{DataError, Result};
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

/// A validated transform pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTransforms {
    steps: Vec<TransformStep>,
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
    /// A pipeline from steps, validated: sizes positive, probabilities in `[0, 1]`, ranges
    /// ordered and positive, hue ≤ 0.5, standard deviations non-zero, `Normalize` only last.
    pub fn new(steps: Vec<TransformStep>) -> Result<Self> {
        for (i, step) in steps.iter().enumerate() {
            match step {
                TransformStep::RandomResizedCrop { size, scale, ratio } => {
                    if *size == 0 {
                        return Err(DataError::config(
                            "RandomResizedCrop.size",
                            "must be positive",
                        ));
                    }
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
                TransformStep::SmallestMaxSize { size } | TransformStep::CenterCrop { size } => {
                    if *size == 0 {
                        return Err(DataError::config(
                            format!("step {i} size"),
                            "must be positive",
                        ));
                    }
                }
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
    pub fn apply(
        &self,
        image: &RgbImage,
        caption: &str,
        rng: &mut SampleRng,
    ) -> (TransformedImage, String) {
        let mut caption = caption.to_string();
        let image = self.run(image, Some(&mut caption), rng);
        (image, caption)
    }

    /// Applies the pipeline to an image alone.
    pub fn apply_image(&self, image: &RgbImage, rng: &mut SampleRng) -> TransformedImage {
        self.run(image, None, rng)
    }

    fn run(
        &self,
        image: &RgbImage,
        mut caption: Option<&mut String>,
        rng: &mut SampleRng,
    ) -> TransformedImage {
        let mut current: Option<RgbImage> = None;
        let mut normalize = None;
        for step in &self.steps {
            let img = current.as_ref().unwrap_or(image);
            match step {
                TransformStep::RandomResizedCrop { size, scale, ratio } => {
                    let crop =
                        random_resized_crop_params(img.width(), img.height(), *scale, *ratio, rng);
                    current = Some(resize_region(img, crop, *size, *size));
                }
                TransformStep::HorizontalFlip { p, caption: mode } => {
                    if rng.bernoulli(*p) {
                        current = Some(image::imageops::flip_horizontal(img));
                        if let Some(c) = caption.as_deref_mut() {
                            *c = swap_left_right(c, *mode);
                        }
                    }
                }
                TransformStep::ColorJitter(jitter) => {
                    if rng.bernoulli(jitter.p) {
                        let params = jitter.sample(rng);
                        let mut out = img.clone();
                        apply_jitter(&mut out, &params);
                        current = Some(out);
                    }
                }
                TransformStep::SmallestMaxSize { size } => {
                    let (w, h) = smallest_max_size(img.width(), img.height(), *size);
                    if (w, h) != img.dimensions() {
                        let full = CropBox {
                            left: 0.0,
                            top: 0.0,
                            width: f64::from(img.width()),
                            height: f64::from(img.height()),
                        };
                        current = Some(resize_region(img, full, w, h));
                    }
                }
                TransformStep::CenterCrop { size } => {
                    current = Some(center_crop(img, *size, *size));
                }
                TransformStep::Normalize(n) => normalize = Some(*n),
            }
        }
        to_chw(current.as_ref().unwrap_or(image), normalize.as_ref())
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
/// returns an integer crop box inside the image.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> CropBox {
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

/// Output size of [`TransformStep::SmallestMaxSize`]: `(width, height)`.
pub fn smallest_max_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        let h = (u64::from(size) * u64::from(height) / u64::from(width.max(1))) as u32;
        (size, h.max(1))
    } else {
        let w = (u64::from(size) * u64::from(width) / u64::from(height.max(1))) as u32;
        (w.max(1), size)
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
    for op in params.order {
        match op {
            0 => {
                if let Some(f) = params.brightness {
                    adjust_brightness(image, f)
                }
            }
            1 => {
                if let Some(f) = params.contrast {
                    adjust_contrast(image, f)
                }
            }
            2 => {
                if let Some(f) = params.saturation {
                    adjust_saturation(image, f)
                }
            }
            _ => {
                if let Some(f) = params.hue {
                    adjust_hue(image, f)
                }
            }
        }
    }
}

/// torchvision `_blend` on uint8: `(ratio·a + (1 − ratio)·b).clamp(0, 255)` truncated to u8.
/// `ratio` and `1 − ratio` are Python floats that torch rounds to `f32`; `ratio_c` is the latter.
#[inline]
fn blend(a: u8, b: f32, ratio: f32, ratio_c: f32) -> u8 {
    (ratio * f32::from(a) + ratio_c * b).clamp(0.0, 255.0) as u8
}

/// `(ratio, 1 − ratio)` rounded to `f32` as torch does with Python scalars.
fn blend_ratios(factor: f64) -> (f32, f32) {
    (factor as f32, (1.0 - factor) as f32)
}

/// torchvision `_rgb2gray` on uint8: `0.2989 r + 0.587 g + 0.114 b`, truncated to u8.
#[inline]
fn gray(p: &[u8]) -> u8 {
    (0.2989f32 * f32::from(p[0]) + 0.587f32 * f32::from(p[1]) + 0.114f32 * f32::from(p[2])) as u8
}

/// torchvision `adjust_brightness` on uint8.
pub fn adjust_brightness(image: &mut RgbImage, factor: f64) {
    let (r, rc) = blend_ratios(factor);
    apply_table(image, &byte_table(|v| blend(v, 0.0, r, rc)));
}

/// The 256 outputs of a per-byte map: one table lookup per byte then gives exactly the
/// arithmetic's result at a fraction of its cost.
fn byte_table(map: impl Fn(u8) -> u8) -> [u8; 256] {
    std::array::from_fn(|v| map(v as u8))
}

fn apply_table(image: &mut RgbImage, table: &[u8; 256]) {
    for v in image.iter_mut() {
        *v = table[usize::from(*v)];
    }
}

/// torchvision `adjust_contrast` on uint8: blend with the mean of the (uint8) grayscale image.
pub fn adjust_contrast(image: &mut RgbImage, factor: f64) {
    let (r, rc) = blend_ratios(factor);
    let n = u64::from(image.width()) * u64::from(image.height());
    if n == 0 {
        return;
    }
    let sum: u64 = image.pixels().map(|p| u64::from(gray(&p.0))).sum();
    let mean = (sum as f64 / n as f64) as f32;
    apply_table(image, &byte_table(|v| blend(v, mean, r, rc)));
}

/// torchvision `adjust_saturation` on uint8: blend each pixel with its (uint8) gray value.
pub fn adjust_saturation(image: &mut RgbImage, factor: f64) {
    let (r, rc) = blend_ratios(factor);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked on the line above).
        unsafe { adjust_saturation_avx2(image, r, rc) };
        return;
    }
    adjust_saturation_lanes(image, r, rc);
}

/// [`adjust_saturation_lanes`] compiled for AVX2 (see [`adjust_hue_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adjust_saturation_avx2(image: &mut RgbImage, ratio: f32, ratio_c: f32) {
    adjust_saturation_lanes(image, ratio, ratio_c);
}

/// Blend of every pixel with its grayscale value, `HUE_LANES` pixels at a time in plain array
/// arithmetic (vectorised by the compiler; the same operations per pixel as [`gray`] and
/// [`blend`]).
#[inline(always)]
fn adjust_saturation_lanes(image: &mut RgbImage, ratio: f32, ratio_c: f32) {
    for group in image.as_mut().chunks_mut(3 * HUE_LANES) {
        let mut rgb = [[0f32; HUE_LANES]; 3];
        for (i, px) in group.chunks_exact(3).enumerate() {
            for c in 0..3 {
                rgb[c][i] = f32::from(px[c]);
            }
        }
        let mut gray = [0f32; HUE_LANES];
        for i in 0..HUE_LANES {
            let level = (0.2989f32 * rgb[0][i] + 0.587f32 * rgb[1][i] + 0.114f32 * rgb[2][i]) as u8;
            gray[i] = f32::from(level);
        }
        for channel in &mut rgb {
            for i in 0..HUE_LANES {
                channel[i] = (ratio * channel[i] + ratio_c * gray[i]).clamp(0.0, 255.0);
            }
        }
        for (i, px) in group.chunks_exact_mut(3).enumerate() {
            for c in 0..3 {
                px[c] = rgb[c][i] as u8;
            }
        }
    }
}

/// torchvision `adjust_hue` on uint8: RGB → HSV in `f32` (`x / 255`), hue shifted modulo 1,
/// back to RGB, then `(x · 255.999)` truncated (torchvision's `convert_image_dtype`).
/// `hue_factor` is a fraction of the hue circle; torchvision accepts `[-0.5, 0.5]`, and larger
/// values are taken modulo 1 here.
pub fn adjust_hue(image: &mut RgbImage, hue_factor: f64) {
    let mut hue_factor = hue_factor as f32;
    if !(-1.0..=1.0).contains(&hue_factor) {
        // One wrap below handles h + factor in [-1, 2).
        hue_factor = hue_factor.rem_euclid(1.0);
    }
    // Pixels go through in groups of LANES with branch-free arithmetic on arrays, which the
    // compiler turns into SIMD: the same IEEE operations per pixel as the scalar formula
    // (divisions stay divisions), so the result is bit-for-bit the same, ~5× sooner.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked on the line above).
        unsafe { adjust_hue_avx2(image, hue_factor) };
        return;
    }
    adjust_hue_lanes(image, hue_factor);
}

/// [`adjust_hue_lanes`] compiled for AVX2 (8 lanes per instruction instead of SSE2's 4). No FMA:
/// the compiler never fuses a multiply and an add without it being asked, so the per-pixel
/// results stay those of the scalar formula.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adjust_hue_avx2(image: &mut RgbImage, hue_factor: f32) {
    adjust_hue_lanes(image, hue_factor);
}

#[inline(always)]
fn adjust_hue_lanes(image: &mut RgbImage, hue_factor: f32) {
    for group in image.as_mut().chunks_mut(3 * HUE_LANES) {
        let mut rgb = [[0f32; HUE_LANES]; 3];
        for (i, px) in group.chunks_exact(3).enumerate() {
            for c in 0..3 {
                rgb[c][i] = f32::from(px[c]) / 255.0;
            }
        }
        let out = hue_lanes(rgb, hue_factor);
        for (i, px) in group.chunks_exact_mut(3).enumerate() {
            for c in 0..3 {
                px[c] = (out[c][i] * 255.999) as u8;
            }
        }
    }
}

/// Pixels per group of [`hue_lanes`] (two AVX registers).
const HUE_LANES: usize = 16;

/// torchvision's `_rgb2hsv` → hue shift → `_hsv2rgb` on `HUE_LANES` pixels in `[0, 1]`.
#[inline(always)]
fn hue_lanes([r, g, b]: [[f32; HUE_LANES]; 3], hue_factor: f32) -> [[f32; HUE_LANES]; 3] {
    let mut out = [[0f32; HUE_LANES]; 3];
    for i in 0..HUE_LANES {
        let (r, g, b) = (r[i], g[i], b[i]);
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if eqc { 1.0 } else { maxc };
        let div = if eqc { 1.0 } else { cr };
        let rc = (maxc - r) / div;
        let gc = (maxc - g) / div;
        let bc = (maxc - b) / div;
        let hr = if maxc == r { bc - gc } else { 0.0 };
        let hg = if maxc == g && maxc != r {
            2.0 + rc - bc
        } else {
            0.0
        };
        let hb = if maxc != g && maxc != r {
            4.0 + gc - rc
        } else {
            0.0
        };
        let h = hr + hg + hb;
        // `(h / 6 + 1) % 1`: h / 6 + 1 lies in [5/6, 2), where the remainder is one
        // subtraction (exact, by Sterbenz's lemma).
        let h = h / 6.0 + 1.0;
        let h = if h >= 1.0 { h - 1.0 } else { h };
        // Python's `(h + factor) % 1` (torch.remainder, sign of the divisor) for h + factor in
        // [-0.5, 1.5): fmod returns its argument or argument − 1, then a negative one gets + 1.
        let h = h + hue_factor;
        let h = if h < 0.0 {
            h + 1.0
        } else if h >= 1.0 {
            h - 1.0
        } else {
            h
        };
        let v = maxc;
        // h ≥ 0, so truncation is floor; h rounds up to 1.0 at most, where i = 6 wraps to 0.
        let h6 = h * 6.0;
        let sector = h6 as i32;
        let f = h6 - sector as f32;
        let sector = if sector >= 6 { sector - 6 } else { sector };
        let pp = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        let pick = |values: [f32; 6]| {
            let mut chosen = values[5];
            for (k, value) in values.into_iter().enumerate().take(5) {
                chosen = if sector == k as i32 { value } else { chosen };
            }
            chosen
        };
        out[0][i] = pick([v, q, pp, pp, t, v]);
        out[1][i] = pick([t, v, v, q, pp, pp]);
        out[2][i] = pick([pp, pp, t, v, v, q]);
    }
    out
}

/// HWC u8 → CHW f32, normalised if asked.
pub fn to_chw(image: &RgbImage, normalize: Option<&Normalize>) -> TransformedImage {
    let (w, h) = image.dimensions();
    let plane = (w as usize) * (h as usize);
    let mut data = vec![0f32; 3 * plane];
    let (scale, shift) = match normalize {
        // (x / 255 - mean) / std  ==  x * (1 / (255 std)) - mean / std
        Some(n) => (
            [0, 1, 2].map(|c| 1.0 / (255.0 * n.std[c])),
            [0, 1, 2].map(|c| -n.mean[c] / n.std[c]),
        ),
        None => ([1.0; 3], [0.0; 3]),
    };
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
