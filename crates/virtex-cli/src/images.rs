//! Image loading and the deterministic evaluation preprocessing:
//! resize the shorter side (bilinear, antialiased) → centre crop → ImageNet normalisation.

use std::path::{Path, PathBuf};

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage};

use crate::error::CliError;

/// ImageNet channel means, RGB, on the [0, 1] scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations, RGB, on the [0, 1] scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Expands files and directories (one level, JPEG/PNG by extension) into a sorted file list.
pub fn collect_image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|err| {
                CliError::Input(format!(
                    "cannot list directory `{}`: {err}",
                    input.display()
                ))
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|err| {
                        CliError::Input(format!(
                            "cannot list directory `{}`: {err}",
                            input.display()
                        ))
                    })?
                    .path();
                if path.is_file() && has_image_extension(&path) {
                    files.push(path);
                }
            }
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(CliError::Input(format!(
                "`{}` is neither an image file nor a directory",
                input.display()
            )));
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(CliError::Input(
            "no JPEG or PNG images found in the given paths".into(),
        ));
    }
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes any JPEG/PNG (grey, palette, 16-bit, alpha…) into 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, CliError> {
    let image_error = |message: String| CliError::Image {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|err| image_error(err.to_string()))?;
    if bytes.is_empty() {
        return Err(image_error("the file is empty".into()));
    }
    let decoded = image::load_from_memory(&bytes).map_err(|err| image_error(err.to_string()))?;
    Ok(decoded.to_rgb8())
}

/// Evaluation preprocessing as torchvision's `Resize(short_side)` + `CenterCrop(crop)` +
/// `ToTensor` + `Normalize(ImageNet)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalTransform {
    /// Target length of the shorter side after resizing.
    pub short_side: u32,
    /// Side of the square centre crop.
    pub crop: u32,
}

impl EvalTransform {
    /// Applies the transform, returning CHW f32 values (length `3 · crop²`).
    ///
    /// Where the image already has the target size the resize and the crop are exact no-ops.
    pub fn apply(&self, path: &Path, image: &RgbImage) -> Result<Vec<f32>, CliError> {
        let (width, height) = image.dimensions();
        let (new_width, new_height) = resized_size(width, height, self.short_side);
        if new_width < self.crop || new_height < self.crop {
            return Err(CliError::Usage(format!(
                "--crop {} is larger than the resized image ({new_width}×{new_height}); \
                 use --short-side ≥ --crop",
                self.crop
            )));
        }
        let resized: RgbImage = if (new_width, new_height) == (width, height) {
            image.clone()
        } else {
            resize_bilinear(path, image, new_width, new_height)?
        };
        // torchvision's CenterCrop rounds the offset: int(round((size - crop) / 2)).
        let left = ((new_width - self.crop) as f64 / 2.0).round() as u32;
        let top = ((new_height - self.crop) as f64 / 2.0).round() as u32;
        let crop = self.crop as usize;
        let mut chw = vec![0f32; 3 * crop * crop];
        for y in 0..crop {
            for x in 0..crop {
                let pixel = resized.get_pixel(left + x as u32, top + y as u32);
                for channel in 0..3 {
                    let value = pixel[channel] as f32 / 255.0;
                    chw[channel * crop * crop + y * crop + x] =
                        (value - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel];
                }
            }
        }
        Ok(chw)
    }
}

/// torchvision's `Resize(size)` output size: the shorter side becomes `size`, the longer one
/// `int(size · long / short)` (truncated).
pub fn resized_size(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    if width <= height {
        let long = (short_side as u64 * height as u64 / width.max(1) as u64) as u32;
        (short_side, long)
    } else {
        let long = (short_side as u64 * width as u64 / height.max(1) as u64) as u32;
        (long, short_side)
    }
}

/// Antialiased bilinear resize (Pillow's convolution filter, as torchvision uses on PIL images).
fn resize_bilinear(
    path: &Path,
    image: &RgbImage,
    width: u32,
    height: u32,
) -> Result<RgbImage, CliError> {
    let resize_error = |message: String| CliError::Image {
        path: path.to_path_buf(),
        message: format!("resize failed: {message}"),
    };
    let source = DynamicImage::ImageRgb8(image.clone());
    let mut target = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&source, &mut target, &options)
        .map_err(|err| resize_error(err.to_string()))?;
    RgbImage::from_raw(width, height, target.into_vec())
        .ok_or_else(|| resize_error("buffer size mismatch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_follows_torchvision_sizes() {
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(480, 640, 256), (256, 341));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn exact_size_images_are_only_normalised() {
        let image = RgbImage::from_fn(4, 4, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 60) as u8, 255])
        });
        let transform = EvalTransform {
            short_side: 4,
            crop: 4,
        };
        let chw = transform.apply(Path::new("test.png"), &image).unwrap();
        let expected_red = (60.0 / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        assert!((chw[1] - expected_red).abs() < 1e-6);
        let expected_blue = (1.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2];
        assert!((chw[2 * 16] - expected_blue).abs() < 1e-6);
    }

    #[test]
    fn centre_crop_takes_the_middle() {
        // 6×4 image, crop 4 after a no-op resize: columns 1..5.
        let image = RgbImage::from_fn(6, 4, |x, _| image::Rgb([x as u8 * 40, 0, 0]));
        let transform = EvalTransform {
            short_side: 4,
            crop: 4,
        };
        let chw = transform.apply(Path::new("test.png"), &image).unwrap();
        let first = chw[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        assert!((first - 40.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn corrupt_and_empty_files_are_errors_naming_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let empty = directory.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let err = load_rgb(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.jpg") && err.contains("empty"), "{err}");
        let garbage = directory.path().join("garbage.png");
        std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = load_rgb(&garbage).unwrap_err().to_string();
        assert!(err.contains("garbage.png"), "{err}");
    }
}
