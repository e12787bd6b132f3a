//! Hostile files built inside the tests: decompression bombs (PNG and JPEG headers claiming
//! huge sizes), small COCO datasets in temporary directories, and an allocation meter.

#![allow(dead_code)] // each test binary uses a part

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use virtex_data::sample_data_root;

/// Width and height the bombs claim: 65000 × 65000 RGB8 would be 12.7 GB decoded.
pub const BOMB_SIDE: u32 = 65_000;

/// CRC-32 (IEEE, as PNG uses), bitwise: small and slow is fine for a few chunks.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One PNG chunk: length, type, data, CRC over type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + data.len());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A well-formed PNG header claiming `width × height` RGB8, followed by a tiny IDAT (an empty
/// zlib stream) and IEND: a few dozen bytes.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive filter, no interlace
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// `jpeg` with the height and width of its start-of-frame segment replaced.
pub fn patch_jpeg_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut i = 2; // after SOI
    while i + 9 <= out.len() {
        assert_eq!(out[i], 0xFF, "not at a JPEG marker at byte {i}");
        let marker = out[i + 1];
        let length = usize::from(u16::from_be_bytes([out[i + 2], out[i + 3]]));
        let is_sof = (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker);
        if is_sof {
            // FF Cn, length (2), precision (1), height (2), width (2)
            out[i + 5..i + 7].copy_from_slice(&height.to_be_bytes());
            out[i + 7..i + 9].copy_from_slice(&width.to_be_bytes());
            return out;
        }
        i += 2 + length;
    }
    panic!("no start-of-frame marker");
}

/// A small baseline JPEG (400 × 300, 4 KB) of the embedded sample.
pub fn small_jpeg() -> Vec<u8> {
    std::fs::read(sample_data_root().join("val2017/000000000011.jpg")).unwrap()
}

/// A JPEG of a few KB whose header claims 65000 × 65000.
pub fn jpeg_bomb() -> Vec<u8> {
    patch_jpeg_size(&small_jpeg(), BOMB_SIDE as u16, BOMB_SIDE as u16)
}

/// PNG-encodes an RGB8 image.
pub fn encode_png(image: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A COCO-layout dataset in a temporary directory: `annotations/captions_train2017.json` and
/// `train2017/`, one image per `(file name, bytes)`, ids from 1, two captions each.
pub struct TempCoco {
    pub dir: tempfile::TempDir,
}

impl TempCoco {
    /// Writes the images and an annotation file listing them.
    pub fn new(images: &[(&str, Vec<u8>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("annotations")).unwrap();
        std::fs::create_dir_all(dir.path().join("train2017")).unwrap();
        let names: Vec<&str> = images.iter().map(|(name, _)| *name).collect();
        for (name, bytes) in images {
            std::fs::write(dir.path().join("train2017").join(name), bytes).unwrap();
        }
        let coco = Self { dir };
        coco.write_annotations(&names);
        coco
    }

    /// Rewrites the annotation file with images of these `file_name`s (ids from 1).
    pub fn write_annotations(&self, file_names: &[&str]) {
        let images: Vec<_> = file_names
            .iter()
            .enumerate()
            .map(|(i, name)| serde_json::json!({"id": i + 1, "file_name": name}))
            .collect();
        let annotations: Vec<_> = (0..file_names.len())
            .flat_map(|i| {
                [
                    serde_json::json!({"id": 2 * i + 1, "image_id": i + 1, "caption": "A dog on the left."}),
                    serde_json::json!({"id": 2 * i + 2, "image_id": i + 1, "caption": "A cat."}),
                ]
            })
            .collect();
        let file = serde_json::json!({"images": images, "annotations": annotations});
        std::fs::write(self.annotations(), serde_json::to_vec(&file).unwrap()).unwrap();
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn annotations(&self) -> PathBuf {
        self.dir.path().join("annotations/captions_train2017.json")
    }

    pub fn image_dir(&self) -> PathBuf {
        self.dir.path().join("train2017")
    }

    pub fn image(&self, name: &str) -> PathBuf {
        self.image_dir().join(name)
    }
}

/// A global allocator that remembers, per thread, the largest single allocation asked for, so a
/// test can show that a bomb is refused without allocating its claimed size. Install it in a
/// test binary with `#[global_allocator] static ALLOC: common::Meter = common::Meter;`.
pub struct Meter;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a size is recorded.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made in this thread
/// (only meaningful where [`Meter`] is the global allocator).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}
