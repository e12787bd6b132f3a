//! OpenCV's `cv::resize(src, dst, dsize, 0, 0, INTER_LINEAR)` on 8-bit RGB, bit for bit.
//!
//! This is the resize under albumentations (upstream's `RandomResizedCrop`, `SmallestMaxSize`,
//! `Resize`), used by [`crate::transforms::ResizeMode::Upstream`]. No anti-aliasing: each output
//! pixel blends the 2 × 2 source pixels around its centre whatever the scale.
//!
//! What OpenCV computes (`modules/imgproc/src/resize.cpp`, `resizeGeneric_` with `HResizeLinear`
//! and `VResizeLinear`/`VResizeLinearVec_32s8u`), and what is reproduced here:
//!
//! - `scale = 1 / (dst / src)` in `f64`, per axis; output pixel `d` samples source coordinate
//!   `f = (float)((d + 0.5) · scale − 0.5)` (half-pixel centres), `s = ⌊f⌋`, `t = f − s` (`f32`).
//! - Weights are 11-bit fixed point: `round_half_even((1 − t) · 2048)` and
//!   `round_half_even(t · 2048)`, computed in `f32` (`saturate_cast<short>`).
//! - Columns: `s < 0` becomes `s = 0, t = 0`, `s ≥ width − 1` becomes `s = width − 1, t = 0`
//!   (border replicated). Rows keep their `t`; the row indices `s`, `s + 1` are clamped into the
//!   image, so both taps may read the same row.
//! - The horizontal pass keeps exact `i32` sums (`pixel · weight`, up to 255 · 2048); the
//!   vertical pass is the SIMD one OpenCV runs on x86 and ARM for every output pixel, tails
//!   included: `((((h0 >> 4) · w0) >> 16) + (((h1 >> 4) · w1) >> 16) + 2) >> 2`, saturated to
//!   `u8`. (Its plain-C fallback rounds `(h0 · w0 + h1 · w1 + 2²¹) >> 22` instead, which differs
//!   by one level on about a tenth of the pixels; opencv-python 4.10 and 5.1 wheels give the
//!   SIMD result everywhere.)
//! - Exact 2× shrinks, which OpenCV sends to its `INTER_AREA` path, come out the same: there
//!   both weights are 1024 and the formula reduces to `(a + b + c + d + 2) >> 2`.
//! - Same size in and out is a copy.
//!
//! `tests/upstream_resize.rs` checks it against opencv-python-headless 4.10.0.84 (the fixture of
//! `tools/reference/upstream_resize.py`; 5.1.0.95 writes the same bytes) on real photographs
//! and on 32 random and edge size pairs of 1 to 24 pixels: no value differs. The formula was
//! first checked in NumPy against both versions on ~400 random size pairs of 1 to 700 pixels.
//! `fast_image_resize`'s `ResizeAlg::Interpolation(FilterType::Bilinear)` (interpolation
//! without anti-aliasing) is within one level of OpenCV but differs on 6 to 38 % of the values
//! of those fixtures, as it rounds between its two passes and normalises its weights
//! differently, hence this module.

use image::RgbImage;

/// Fixed-point scale of the weights: `2^INTER_RESIZE_COEF_BITS` with 11 bits.
const COEF_SCALE: f32 = 2048.0;

/// Source index and fixed-point weights of one output pixel along one axis.
#[derive(Debug, Clone, Copy)]
struct Tap {
    /// First source index.
    i0: usize,
    /// Second source index (clamped into the image).
    i1: usize,
    /// Weights of `i0` and `i1`.
    w: [i32; 2],
}

/// `saturate_cast<short>(float)`: round half to even.
fn fixed(weight: f32) -> i32 {
    weight.round_ties_even() as i32
}

/// Taps of the `dst` output pixels over `src` source pixels. `columns` selects OpenCV's
/// column rule (the fraction is zeroed at the borders) over its row rule (only the indices are
/// clamped).
fn taps(src: usize, dst: usize, columns: bool) -> Vec<Tap> {
    let inv_scale = dst as f64 / src as f64;
    let scale = 1.0 / inv_scale;
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut t = f - s as f32;
            if columns {
                if s < 0 {
                    s = 0;
                    t = 0.0;
                }
                if s >= last {
                    s = last;
                    t = 0.0;
                }
            }
            let w = [fixed((1.0f32 - t) * COEF_SCALE), fixed(t * COEF_SCALE)];
            Tap {
                i0: s.clamp(0, last) as usize,
                i1: (s + 1).clamp(0, last) as usize,
                w,
            }
        })
        .collect()
}

/// The horizontal pass of source row `y` (absolute), columns `left..left + width` of `image`.
fn horizontal(image: &RgbImage, y: usize, left: usize, columns: &[Tap], out: &mut [i32]) {
    let stride = image.width() as usize * 3;
    let row = &image.as_raw()[y * stride..(y + 1) * stride];
    for (tap, px) in columns.iter().zip(out.chunks_exact_mut(3)) {
        let a = &row[(left + tap.i0) * 3..(left + tap.i0) * 3 + 3];
        let b = &row[(left + tap.i1) * 3..(left + tap.i1) * 3 + 3];
        for c in 0..3 {
            px[c] = i32::from(a[c]) * tap.w[0] + i32::from(b[c]) * tap.w[1];
        }
    }
}

/// OpenCV's vertical pass for one value (`VResizeLinearVec_32s8u`).
#[inline]
fn vertical(h0: i32, h1: i32, w: [i32; 2]) -> u8 {
    // `v_pack` of `h >> 4` to i16 saturates, which 255 · 2048 >> 4 = 32640 never reaches;
    // `v_mul_hi` is the high half of the 32-bit product.
    let v = (((h0 >> 4) * w[0]) >> 16) + (((h1 >> 4) * w[1]) >> 16);
    ((v + 2) >> 2).clamp(0, 255) as u8
}

/// Resizes the `width × height` region at (`left`, `top`) of `image` to `out_w × out_h` as
/// OpenCV's `INTER_LINEAR` resize of that region (cut out first, as albumentations crops before
/// resizing: the borders replicate the region's edge, not the pixels beyond it).
///
/// The region must lie inside the image; an empty region or output gives a black image.
pub(crate) fn resize_region(
    image: &RgbImage,
    (left, top, width, height): (u32, u32, u32, u32),
    out_w: u32,
    out_h: u32,
) -> RgbImage {
    let mut dst = RgbImage::new(out_w, out_h);
    if width == 0 || height == 0 || out_w == 0 || out_h == 0 {
        return dst;
    }
    debug_assert!(left + width <= image.width() && top + height <= image.height());
    let (left, top) = (left as usize, top as usize);
    let (width, height) = (width as usize, height as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    let stride = image.width() as usize * 3;
    if (width, height) == (out_w, out_h) {
        for (y, out) in dst.as_mut().chunks_exact_mut(out_w * 3).enumerate() {
            let start = (top + y) * stride + left * 3;
            out.copy_from_slice(&image.as_raw()[start..start + out_w * 3]);
        }
        return dst;
    }
    let columns = taps(width, out_w, true);
    let rows = taps(height, out_h, false);
    // The horizontal pass of the two source rows the current output row reads; rows advance
    // monotonically, so each source row is computed at most once.
    let mut a: (usize, Vec<i32>) = (usize::MAX, vec![0; out_w * 3]);
    let mut b: (usize, Vec<i32>) = (usize::MAX, vec![0; out_w * 3]);
    for (row, out) in rows.iter().zip(dst.as_mut().chunks_exact_mut(out_w * 3)) {
        if a.0 != row.i0 {
            if b.0 == row.i0 {
                std::mem::swap(&mut a, &mut b);
            } else {
                horizontal(image, top + row.i0, left, &columns, &mut a.1);
                a.0 = row.i0;
            }
        }
        if row.i1 != row.i0 && b.0 != row.i1 {
            horizontal(image, top + row.i1, left, &columns, &mut b.1);
            b.0 = row.i1;
        }
        let h1 = if row.i1 == row.i0 { &a.1 } else { &b.1 };
        for ((o, &x0), &x1) in out.iter_mut().zip(&a.1).zip(h1) {
            *o = vertical(x0, x1, row.w);
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0u8; 3];
            for v in &mut px {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *v = (state >> 24) as u8;
            }
            image::Rgb(px)
        })
    }

    #[test]
    fn same_size_is_a_copy_of_the_region() {
        let img = image(9, 7, 1);
        let out = resize_region(&img, (2, 1, 5, 4), 5, 4);
        for (x, y, px) in out.enumerate_pixels() {
            assert_eq!(px, img.get_pixel(x + 2, y + 1));
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        for v in [0u8, 1, 77, 254, 255] {
            let img = RgbImage::from_pixel(13, 11, image::Rgb([v, v, v]));
            for (w, h) in [(1, 1), (5, 3), (26, 22), (40, 7), (6, 5)] {
                let out = resize_region(&img, (0, 0, 13, 11), w, h);
                assert!(out.pixels().all(|p| p.0 == [v, v, v]), "{v} → {w}×{h}");
            }
        }
    }

    #[test]
    fn exact_halving_averages_two_by_two_blocks() {
        let img = image(16, 10, 2);
        let out = resize_region(&img, (0, 0, 16, 10), 8, 5);
        for (x, y, px) in out.enumerate_pixels() {
            for c in 0..3 {
                let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|(dx, dy)| u32::from(img.get_pixel(2 * x + dx, 2 * y + dy)[c]))
                    .sum();
                assert_eq!(u32::from(px[c]), (sum + 2) >> 2, "({x}, {y}) channel {c}");
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (src, dst) in [
            (7, 3),
            (3, 7),
            (480, 224),
            (224, 480),
            (1, 5),
            (5, 1),
            (640, 299),
        ] {
            for columns in [true, false] {
                for tap in taps(src, dst, columns) {
                    assert_eq!(tap.w[0] + tap.w[1], 2048, "{src} → {dst}");
                    assert!(tap.i0 < src && tap.i1 < src);
                }
            }
        }
    }
}
