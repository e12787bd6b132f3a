//! Planar RGB8 images and the colour-jitter kernels that run on them.
//!
//! The training pipeline de-interleaves the 224² crop once (mirroring it on the way when the
//! flip fires), runs the jitter's adjustments on three contiguous `u8` planes — each adjustment
//! still reads and writes `uint8` values, as torchvision does between ops — and writes the
//! normalised CHW tensor from the planes. On planes every kernel is a plain element-wise loop
//! over three slices, which the compiler turns into SIMD (8 pixels per instruction with AVX2,
//! selected at run time); no kernel changes the order or kind of any floating-point operation of
//! the per-pixel formula, so results are bit-for-bit those of the scalar torchvision formulas
//! (tests `vectorised_*_equals_the_scalar_formula_bit_for_bit`). There is no FMA: the compiler
//! never fuses a multiply and an add unless asked to.

use image::RgbImage;

use crate::transforms::{JitterParams, Normalize, TransformedImage};

/// An RGB8 image as three planes, `data[c * width * height + y * width + x]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planes {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

/// Defines `$name`, which runs `$kernel` compiled for AVX2 when the CPU has it and for the
/// baseline target otherwise. Kernels are `#[inline(always)]`, so each copy is vectorised for
/// its own instruction set.
macro_rules! avx2_dispatch {
    ($(fn $name:ident => $kernel:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked on the line above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    )*};
}

avx2_dispatch! {
    fn blend_all => blend_values(data: &mut [u8], other: f32, ratio: f32, ratio_c: f32);
    fn deinterleave => deinterleave_row(src: &[u8], r: &mut [u8], g: &mut [u8], b: &mut [u8], mirror: bool);
    fn gray_total => gray_sum(r: &[u8], g: &[u8], b: &[u8]) -> u64;
    fn saturate => saturation_planes(r: &mut [u8], g: &mut [u8], b: &mut [u8], ratio: f32, ratio_c: f32);
    fn shift_hue => hue_planes(r: &mut [u8], g: &mut [u8], b: &mut [u8], hue_factor: f32);
}

impl Planes {
    /// `(width, height)`.
    pub(crate) fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// De-interleaves `image`, mirrored left–right when `mirror` is set.
    pub(crate) fn from_interleaved(image: &RgbImage, mirror: bool) -> Self {
        let (width, height) = image.dimensions();
        let plane = width as usize * height as usize;
        let mut data = vec![0u8; 3 * plane];
        if plane > 0 {
            let (r, rest) = data.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            let w = width as usize;
            let rows = image.as_raw().chunks_exact(3 * w);
            let planes = r.chunks_exact_mut(w).zip(g.chunks_exact_mut(w));
            for ((src, (r, g)), b) in rows.zip(planes).zip(b.chunks_exact_mut(w)) {
                deinterleave(src, r, g, b, mirror);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Writes the planes back into `image` (of the same size), interleaved.
    pub(crate) fn write_interleaved(&self, image: &mut RgbImage) {
        assert_eq!(image.dimensions(), (self.width, self.height));
        let [r, g, b] = self.planes();
        let dst: &mut [u8] = image.as_mut();
        for (((px, r), g), b) in dst.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
            px.copy_from_slice(&[*r, *g, *b]);
        }
    }

    /// The planes as an interleaved image.
    pub(crate) fn to_interleaved(&self) -> RgbImage {
        let mut image = RgbImage::new(self.width, self.height);
        self.write_interleaved(&mut image);
        image
    }

    /// Mirrors the image left–right in place.
    pub(crate) fn mirror(&mut self) {
        let w = self.width as usize;
        if w > 0 {
            self.data.chunks_exact_mut(w).for_each(<[u8]>::reverse);
        }
    }

    fn planes(&self) -> [&[u8]; 3] {
        let plane = self.width as usize * self.height as usize;
        let (r, rest) = self.data.split_at(plane);
        let (g, b) = rest.split_at(plane);
        [r, g, b]
    }

    fn planes_mut(&mut self) -> [&mut [u8]; 3] {
        let plane = self.width as usize * self.height as usize;
        let (r, rest) = self.data.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        [r, g, b]
    }

    /// CHW `f32`, normalised if asked: the same arithmetic as [`crate::transforms::to_chw`].
    pub(crate) fn to_chw(&self, normalize: Option<&Normalize>) -> TransformedImage {
        let (scale, shift) = chw_scale_shift(normalize);
        let mut data = Vec::with_capacity(self.data.len());
        for (c, plane) in self.planes().into_iter().enumerate() {
            let (scale, shift) = (scale[c], shift[c]);
            data.extend(plane.iter().map(|&v| f32::from(v) * scale + shift));
        }
        TransformedImage {
            data,
            height: self.height,
            width: self.width,
        }
    }

    /// The adjustments of `params`, in their order.
    pub(crate) fn jitter(&mut self, params: &JitterParams) {
        for op in params.order {
            match op {
                0 => {
                    if let Some(f) = params.brightness {
                        self.brightness(f)
                    }
                }
                1 => {
                    if let Some(f) = params.contrast {
                        self.contrast(f)
                    }
                }
                2 => {
                    if let Some(f) = params.saturation {
                        self.saturation(f)
                    }
                }
                _ => {
                    if let Some(f) = params.hue {
                        self.hue(f)
                    }
                }
            }
        }
    }

    /// torchvision `adjust_brightness` on uint8: a blend with black.
    pub(crate) fn brightness(&mut self, factor: f64) {
        let (r, rc) = blend_ratios(factor);
        blend_all(&mut self.data, 0.0, r, rc);
    }

    /// torchvision `adjust_contrast` on uint8: a blend with the mean of the (uint8) grayscale
    /// image.
    pub(crate) fn contrast(&mut self, factor: f64) {
        let (r, rc) = blend_ratios(factor);
        let n = self.width as usize * self.height as usize;
        if n == 0 {
            return;
        }
        let [red, green, blue] = self.planes();
        let sum = gray_total(red, green, blue);
        let mean = (sum as f64 / n as f64) as f32;
        blend_all(&mut self.data, mean, r, rc);
    }

    /// torchvision `adjust_saturation` on uint8: a blend of each pixel with its (uint8) gray.
    pub(crate) fn saturation(&mut self, factor: f64) {
        let (r, rc) = blend_ratios(factor);
        let [red, green, blue] = self.planes_mut();
        saturate(red, green, blue, r, rc);
    }

    /// torchvision `adjust_hue` on uint8 (see [`crate::transforms::adjust_hue`]).
    pub(crate) fn hue(&mut self, hue_factor: f64) {
        let mut hue_factor = hue_factor as f32;
        if !(-1.0..=1.0).contains(&hue_factor) {
            // One wrap in `hue_pixel` handles h + factor in [-1, 2).
            hue_factor = hue_factor.rem_euclid(1.0);
        }
        let [red, green, blue] = self.planes_mut();
        shift_hue(red, green, blue, hue_factor);
    }
}

/// `(scale, shift)` per channel of `x · scale + shift`:
/// `(x / 255 − mean) / std == x · (1 / (255 std)) − mean / std`.
pub(crate) fn chw_scale_shift(normalize: Option<&Normalize>) -> ([f32; 3], [f32; 3]) {
    match normalize {
        Some(n) => (
            [0, 1, 2].map(|c| 1.0 / (255.0 * n.std[c])),
            [0, 1, 2].map(|c| -n.mean[c] / n.std[c]),
        ),
        None => ([1.0; 3], [0.0; 3]),
    }
}

#[inline(always)]
fn deinterleave_row(src: &[u8], r: &mut [u8], g: &mut [u8], b: &mut [u8], mirror: bool) {
    let dst = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
    if mirror {
        for (px, ((r, g), b)) in src.chunks_exact(3).rev().zip(dst) {
            (*r, *g, *b) = (px[0], px[1], px[2]);
        }
    } else {
        for (px, ((r, g), b)) in src.chunks_exact(3).zip(dst) {
            (*r, *g, *b) = (px[0], px[1], px[2]);
        }
    }
}

/// torchvision `_blend` on uint8: `(ratio·a + (1 − ratio)·b).clamp(0, 255)` truncated to u8.
/// `ratio` and `1 − ratio` are Python floats that torch rounds to `f32`; `ratio_c` is the latter.
#[inline(always)]
fn blend(a: f32, b: f32, ratio: f32, ratio_c: f32) -> u8 {
    to_u8((ratio * a + ratio_c * b).clamp(0.0, 255.0))
}

/// `x as u8` (truncation, saturating at 0 and 255, NaN → 0) in a form the compiler vectorises:
/// it scalarises float → `u8` and float → `i32` casts of vectors, whose out-of-range and NaN
/// rules AVX2 has no instruction for. After the clamp to `[0, 256)` (NaN → 0), `trunc(x) + 2²³`
/// is exact and holds the integer in the low mantissa bits.
#[inline(always)]
pub(crate) fn to_u8(x: f32) -> u8 {
    let x = if x >= 0.0 { x } else { 0.0 };
    let x = if x < 256.0 { x } else { 255.0 };
    ((x.trunc() + 8_388_608.0).to_bits() & 0xFF) as u8
}

/// `(ratio, 1 − ratio)` rounded to `f32` as torch does with Python scalars.
fn blend_ratios(factor: f64) -> (f32, f32) {
    (factor as f32, (1.0 - factor) as f32)
}

/// torchvision `_rgb2gray` on uint8: `0.2989 r + 0.587 g + 0.114 b`, truncated to u8 (as `f32`).
#[inline(always)]
fn gray(r: u8, g: u8, b: u8) -> f32 {
    let level = 0.2989f32 * f32::from(r) + 0.587f32 * f32::from(g) + 0.114f32 * f32::from(b);
    // The weights sum to 0.9999, so `level` lies in [0, 255): truncating it is the u8 cast.
    level.trunc()
}

/// [`blend`] of every value with `other`.
#[inline(always)]
fn blend_values(data: &mut [u8], other: f32, ratio: f32, ratio_c: f32) {
    for v in data {
        *v = blend(f32::from(*v), other, ratio, ratio_c);
    }
}

/// Σ gray over the pixels (each gray ≤ 254; blocks of 2¹⁶ pixels keep the `u32` sums exact).
#[inline(always)]
fn gray_sum(r: &[u8], g: &[u8], b: &[u8]) -> u64 {
    const BLOCK: usize = 1 << 16;
    r.chunks(BLOCK)
        .zip(g.chunks(BLOCK))
        .zip(b.chunks(BLOCK))
        .map(|((r, g), b)| {
            let block: u32 = r
                .iter()
                .zip(g)
                .zip(b)
                .map(|((&r, &g), &b)| u32::from(to_u8(gray(r, g, b))))
                .sum();
            u64::from(block)
        })
        .sum()
}

#[inline(always)]
fn saturation_planes(r: &mut [u8], g: &mut [u8], b: &mut [u8], ratio: f32, ratio_c: f32) {
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let gray = gray(*r, *g, *b);
        *r = blend(f32::from(*r), gray, ratio, ratio_c);
        *g = blend(f32::from(*g), gray, ratio, ratio_c);
        *b = blend(f32::from(*b), gray, ratio, ratio_c);
    }
}

#[inline(always)]
fn hue_planes(r: &mut [u8], g: &mut [u8], b: &mut [u8], hue_factor: f32) {
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let [r2, g2, b2] = hue_pixel(
            [
                f32::from(*r) / 255.0,
                f32::from(*g) / 255.0,
                f32::from(*b) / 255.0,
            ],
            hue_factor,
        );
        // `x · 255.999` lies in [0, 256) for x in [0, 1]: truncation is the u8 cast.
        *r = to_u8(r2 * 255.999);
        *g = to_u8(g2 * 255.999);
        *b = to_u8(b2 * 255.999);
    }
}

/// The larger of two non-NaN values without NaN handling (`a > b ? a : b`, one `maxps`); equal to
/// `f32::max` here, where no input is NaN or a negative zero.
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The smaller of two non-NaN values (see [`max`]).
#[inline(always)]
fn min(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// torchvision's `_rgb2hsv` → hue shift → `_hsv2rgb` on one pixel in `[0, 1]`, branch-free.
#[inline(always)]
fn hue_pixel([r, g, b]: [f32; 3], hue_factor: f32) -> [f32; 3] {
    let maxc = max(max(r, g), b);
    let minc = min(min(r, g), b);
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
    // `(h / 6 + 1) % 1`: h / 6 + 1 lies in [5/6, 2), where the remainder is one subtraction
    // (exact, by Sterbenz's lemma).
    let h = h / 6.0 + 1.0;
    let h = if h >= 1.0 { h - 1.0 } else { h };
    // Python's `(h + factor) % 1` (torch.remainder, sign of the divisor) for h + factor in
    // [-1, 2): fmod returns its argument or argument − 1, then a negative one gets + 1.
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
    let floor = h6.trunc();
    let f = h6 - floor;
    let sector = if floor >= 6.0 { floor - 6.0 } else { floor };
    let pp = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    let pick = |values: [f32; 6]| {
        let mut chosen = values[5];
        for (k, value) in values.into_iter().enumerate().take(5) {
            chosen = if sector == k as f32 { value } else { chosen };
        }
        chosen
    };
    [
        pick([v, q, pp, pp, t, v]),
        pick([t, v, v, q, pp, pp]),
        pick([pp, pp, t, v, v, q]),
    ]
}

#[cfg(test)]
mod tests {
    use super::to_u8;

    #[test]
    fn to_u8_is_the_saturating_cast() {
        // Every 61st bit pattern (all exponents, signs and NaNs), plus the edges.
        let specials = [
            0.0f32,
            -0.0,
            0.5,
            0.999_999_9,
            1.0,
            254.999_98,
            255.0,
            255.5,
            255.999_98,
            256.0,
            256.5,
            -0.5,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            8_388_608.0,
        ];
        let patterns = (0..=u32::MAX).step_by(61).map(f32::from_bits);
        for x in specials.into_iter().chain(patterns) {
            assert_eq!(to_u8(x), x as u8, "{x:e} ({:#x})", x.to_bits());
        }
    }
}
