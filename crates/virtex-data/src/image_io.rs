//! Image decoding: every file becomes an 8-bit RGB image, within one pixel limit.

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{shorten, DataError, Result, MAX_QUOTED_MESSAGE};

/// How large an image the decoder accepts: the guard against decompression bombs (a 2 KB JPEG
/// or PNG can claim 65000 × 65000 pixels, 12.7 GB once decoded).
///
/// One number, [`ImageLimits::max_pixels`], bounds everything image reading allocates:
/// - width × height of every decoded image ([`DataError::ImageTooLarge`], checked on the
///   header before any pixel is decoded);
/// - the `image` crate's allocation limit (`Limits::max_alloc`, [`ImageLimits::max_alloc_bytes`]),
///   so the decoder itself cannot allocate past it either;
/// - the size of an image file read whole ([`ImageLimits::max_file_bytes`],
///   [`DataError::ImageFileTooLarge`]);
/// - the output of each resize or crop of the transforms ([`DataError::TransformTooLarge`]).
///
/// The limit in force is process-wide ([`set_image_limits`], [`image_limits`]) so that a tool
/// or the trainer sets it once, from a flag or config key, and every loader thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageLimits {
    /// Largest width × height accepted. Default [`ImageLimits::DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
}

impl ImageLimits {
    /// PIL's decompression-bomb threshold: above `Image.MAX_IMAGE_PIXELS` (`1024³ // 4 // 3`
    /// = 89 478 485) PIL warns, above twice that, 178 956 970, it raises
    /// `DecompressionBombError`. Upstream VirTex's Python tooling uses PIL, so the same images
    /// are refused there; it is ~13 377 × 13 377, far above COCO's 640 × 480.
    pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

    /// Bytes per pixel of the widest buffer a JPEG or PNG decodes into (16-bit RGBA).
    const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;

    /// Room for metadata (EXIF, ICC, text chunks) in a file on top of its pixel data.
    const FILE_SLACK_BYTES: u64 = 64 << 20;

    /// A limit of `max_pixels`, refusing 0 (no image would be accepted).
    pub fn new(max_pixels: u64) -> Result<Self> {
        if max_pixels == 0 {
            return Err(DataError::config(
                "max_image_pixels",
                "must be at least 1 (no image would be accepted)",
            ));
        }
        Ok(Self { max_pixels })
    }

    /// Whether a `width × height` image is within the limit.
    pub fn allows(&self, width: u64, height: u64) -> bool {
        width.saturating_mul(height) <= self.max_pixels
    }

    /// The decoder's allocation budget: `max_pixels` × 8 bytes (a 16-bit RGBA buffer of the
    /// largest image allowed).
    pub fn max_alloc_bytes(&self) -> u64 {
        self.max_pixels
            .saturating_mul(Self::MAX_DECODED_BYTES_PER_PIXEL)
    }

    /// The largest image file read: [`ImageLimits::max_alloc_bytes`] + 64 MiB. A JPEG or PNG
    /// within the pixel limit is smaller (even a PNG stored uncompressed), metadata included.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_alloc_bytes()
            .saturating_add(Self::FILE_SLACK_BYTES)
    }

    /// The `image` crate's limits for this budget.
    fn decoder_limits(&self) -> Limits {
        // Width and height are left unbounded: a 1 × N strip is as fine as a square, and
        // `max_pixels` is checked on the product.
        let mut limits = Limits::no_limits();
        limits.max_alloc = Some(self.max_alloc_bytes());
        limits
    }
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// The process-wide pixel limit; an atomic so every loader thread reads the current value
/// without locking.
static MAX_PIXELS: AtomicU64 = AtomicU64::new(ImageLimits::DEFAULT_MAX_PIXELS);

/// Sets the image limits of the whole process: every later [`load_image`], [`decode_image`] and
/// transform, in every thread, uses them. Set it once at start-up (from a flag or config key)
/// for genuinely huge images; a `max_pixels` of 0 refuses every image.
pub fn set_image_limits(limits: ImageLimits) {
    MAX_PIXELS.store(limits.max_pixels, Ordering::Relaxed);
}

/// The image limits in force (see [`set_image_limits`]; [`ImageLimits::default`] unless set).
pub fn image_limits() -> ImageLimits {
    ImageLimits {
        max_pixels: MAX_PIXELS.load(Ordering::Relaxed),
    }
}

/// Reads and decodes an image file to RGB8 (see [`decode_image`]) under [`image_limits`].
///
/// A file larger than [`ImageLimits::max_file_bytes`] gives [`DataError::ImageFileTooLarge`]
/// without being read whole (also for pipes and devices, which are read up to the limit).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let limits = image_limits();
    let bytes = read_capped(path, limits.max_file_bytes())?;
    decode_image_with_limits(&bytes, path, limits)
}

/// Reads a file of at most `max_bytes` bytes.
fn read_capped(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let too_large = || DataError::ImageFileTooLarge {
        path: path.to_path_buf(),
        max_bytes,
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
    if meta.is_file() && meta.len() > max_bytes {
        return Err(too_large());
    }
    // The length is a hint only (a file can grow, a pipe has none): `take` enforces the cap.
    let hint = if meta.is_file() {
        meta.len().min(max_bytes)
    } else {
        0
    };
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Decodes an encoded image (JPEG or PNG) to RGB8 under [`image_limits`]; `path` names it in
/// errors.
///
/// - Grayscale, grayscale+alpha, palette, RGBA, CMYK (JPEG) and 16-bit images all become RGB8
///   (alpha is dropped, as OpenCV's `imread(IMREAD_COLOR)` upstream does; 16-bit samples are
///   scaled to 8 bits).
/// - The EXIF orientation is applied, as OpenCV does by default; EXIF data that cannot be
///   parsed is ignored (no rotation), as OpenCV does.
/// - An image whose header claims more than [`ImageLimits::max_pixels`] gives
///   [`DataError::ImageTooLarge`] before any pixel is decoded, and the decoder may allocate at
///   most [`ImageLimits::max_alloc_bytes`].
/// - Zero-byte files give [`DataError::EmptyImage`]; a JPEG without its end-of-image marker or a
///   PNG that ends early gives [`DataError::TruncatedImage`]; anything else undecodable gives
///   [`DataError::CorruptImage`]. No error quotes the file's bytes.
pub fn decode_image(bytes: &[u8], path: impl AsRef<Path>) -> Result<RgbImage> {
    decode_image_with_limits(bytes, path, image_limits())
}

/// [`decode_image`] under explicit `limits` instead of the process-wide ones.
pub fn decode_image_with_limits(
    bytes: &[u8],
    path: impl AsRef<Path>,
    limits: ImageLimits,
) -> Result<RgbImage> {
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
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    reader.limits(limits.decoder_limits());
    // Only the format is named, never the bytes: the file may not be an image at all, and its
    // contents have no place in logs.
    let format = match reader.format() {
        Some(format @ (ImageFormat::Jpeg | ImageFormat::Png)) => format,
        Some(other) => {
            return Err(corrupt(format!(
                "a {other:?} file by its signature, not JPEG or PNG"
            )))
        }
        None => {
            return Err(corrupt(
                "not a JPEG or PNG file (unrecognised signature)".into(),
            ))
        }
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // zune-jpeg fills a truncated scan with grey instead of failing; catch it here.
        return Err(DataError::TruncatedImage {
            path: path.to_path_buf(),
            message: "the JPEG end-of-image marker (FF D9) is missing".into(),
        });
    }
    let classify = |e: image::ImageError| -> DataError {
        let truncated = matches!(&e, image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
        let message = e.to_string();
        let lower = message.to_lowercase();
        let truncated = truncated
            || lower.contains("eof")
            || lower.contains("end of")
            || lower.contains("truncated")
            || lower.contains("unexpected end");
        let limited = matches!(&e, image::ImageError::Limits(_));
        // Decoder messages describe the structure ("invalid marker", "chunk too long"); cap
        // their length all the same, as they are passed on unread.
        let message = shorten(message, MAX_QUOTED_MESSAGE);
        if limited {
            corrupt(format!(
                "{message} (the decoder may allocate at most {} bytes, from the image pixel \
                 limit of {}; raise it with `virtex_data::set_image_limits` if the image is \
                 genuine)",
                limits.max_alloc_bytes(),
                limits.max_pixels
            ))
        } else if truncated {
            DataError::TruncatedImage {
                path: path.to_path_buf(),
                message,
            }
        } else {
            corrupt(message)
        }
    };
    // Reads the header only: the dimensions are known before any pixel buffer exists.
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    let too_large = || DataError::ImageTooLarge {
        path: path.to_path_buf(),
        width: u64::from(width),
        height: u64::from(height),
        max_pixels: limits.max_pixels,
    };
    if !limits.allows(u64::from(width), u64::from(height)) {
        return Err(too_large());
    }
    // `DynamicImage::from_decoder` does not charge the output buffer to the limits (only
    // `ImageReader::decode` does, which cannot read the orientation); charge it here, so that
    // the decoder's own allocations get what is left.
    let mut budget = limits.decoder_limits();
    budget
        .reserve(decoder.total_bytes())
        .map_err(|_| too_large())?;
    decoder.set_limits(budget).map_err(classify)?;
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
