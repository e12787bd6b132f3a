//! Image decoding: every file becomes an 8-bit RGB image.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::error::{DataError, Result};

/// Reads and decodes an image file to RGB8 (see [`decode_image`]).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, path)
}

/// Decodes an encoded image (JPEG or PNG) to RGB8; `path` names it in errors.
///
/// - Grayscale, grayscale+alpha, palette, RGBA, CMYK (JPEG) and 16-bit images all become RGB8
///   (alpha is dropped, as OpenCV's `imread(IMREAD_COLOR)` upstream does; 16-bit samples are
///   scaled to 8 bits).
/// - The EXIF orientation is applied, as OpenCV does by default.
/// - Zero-byte files give [`DataError::EmptyImage`]; a JPEG without its end-of-image marker or a
///   PNG that ends early gives [`DataError::TruncatedImage`]; anything else undecodable gives
///   [`DataError::CorruptImage`].
pub fn decode_image(bytes: &[u8], path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    if bytes.is_empty() {
        return Err(DataError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    let corrupt = |message: String| DataError::CorruptImage {
        path: path.to_path_buf(),
        message,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    let format = reader.format().ok_or_else(|| {
        corrupt(format!(
            "unrecognised file signature {:02x?} (expected JPEG or PNG)",
            &bytes[..bytes.len().min(8)]
        ))
    })?;
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // zune-jpeg fills a truncated scan with grey instead of failing; catch it here.
        return Err(DataError::TruncatedImage {
            path: path.to_path_buf(),
            message: "the JPEG end-of-image marker (FF D9) is missing".into(),
        });
    }
    let classify = |e: image::ImageError| -> DataError {
        let message = e.to_string();
        let lower = message.to_lowercase();
        let truncated = matches!(&e, image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
            || lower.contains("eof")
            || lower.contains("end of")
            || lower.contains("truncated")
            || lower.contains("unexpected end");
        if truncated {
            DataError::TruncatedImage {
                path: path.to_path_buf(),
                message,
            }
        } else {
            corrupt(message)
        }
    };
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let orientation = decoder.orientation().map_err(classify)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

/// Whether a JPEG stream ends with EOI (`FF D9`), allowing trailing padding bytes (`00`, `FF`,
/// whitespace) that some writers append.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let trimmed = bytes
        .iter()
        .rposition(|&b| !matches!(b, 0x00 | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(&bytes[..0], |end| &bytes[..=end]);
    // Look within the last 1 KiB: cameras sometimes append a few bytes after EOI.
    let tail = &trimmed[trimmed.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}
