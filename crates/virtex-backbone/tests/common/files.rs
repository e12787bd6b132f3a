//! Rewriting real checkpoints into hostile ones, in memory: other dtypes, damaged archives.
//!
//! `torch.save` writes a zip of *stored* (uncompressed) entries: `data.pkl` (the pickle that
//! names each tensor's storage class, `torch.FloatStorage`, …) and one `data/N` entry per
//! storage. The helpers here read such an archive, edit the pickle and the storages, and write
//! a valid archive back (CRCs included), so the readers see a well-formed `.pth` whose tensors
//! are float16 / bfloat16 / float64 / int64. The `virtex` crate's tests include this file too.
#![allow(dead_code)]

use std::collections::HashMap;

use burn::tensor::{bf16, f16};

/// A dtype a float32 checkpoint is rewritten to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retype {
    F16,
    BF16,
    F64,
    I64,
}

pub const ALL_RETYPES: [Retype; 4] = [Retype::F16, Retype::BF16, Retype::F64, Retype::I64];

impl Retype {
    /// PyTorch's storage class.
    pub fn storage(self) -> &'static str {
        match self {
            Self::F16 => "HalfStorage",
            Self::BF16 => "BFloat16Storage",
            Self::F64 => "DoubleStorage",
            Self::I64 => "LongStorage",
        }
    }

    pub fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F16 => safetensors::Dtype::F16,
            Self::BF16 => safetensors::Dtype::BF16,
            Self::F64 => safetensors::Dtype::F64,
            Self::I64 => safetensors::Dtype::I64,
        }
    }

    /// Little-endian f32 bytes → the same values in this dtype.
    pub fn convert(self, f32_bytes: &[u8]) -> Vec<u8> {
        f32_bytes
            .chunks_exact(4)
            .flat_map(|b| {
                let value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                match self {
                    Self::F16 => f16::from_f32(value).to_le_bytes().to_vec(),
                    Self::BF16 => bf16::from_f32(value).to_le_bytes().to_vec(),
                    Self::F64 => f64::from(value).to_le_bytes().to_vec(),
                    Self::I64 => (value as i64).to_le_bytes().to_vec(),
                }
            })
            .collect()
    }

    /// What a float32 value becomes after a round trip through this dtype (what a loader
    /// converting back to f32 must produce).
    pub fn round(self, value: f32) -> f32 {
        match self {
            Self::F16 => f16::from_f32(value).to_f32(),
            Self::BF16 => bf16::from_f32(value).to_f32(),
            Self::F64 => value,
            Self::I64 => value.trunc(),
        }
    }
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The entries of a zip archive of stored entries, in order.
pub fn read_zip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let end = (0..bytes.len() - 21)
        .rev()
        .find(|&at| bytes[at..].starts_with(b"PK\x05\x06"))
        .expect("an end-of-central-directory record");
    let count = u16_at(end + 10);
    let mut at = u32_at(end + 16) as usize;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        assert!(
            bytes[at..].starts_with(b"PK\x01\x02"),
            "central directory entry"
        );
        assert_eq!(u16_at(at + 10), 0, "stored entries only");
        let size = u32_at(at + 20) as usize;
        let name_length = u16_at(at + 28);
        let extra_length = u16_at(at + 30);
        let comment_length = u16_at(at + 32);
        let local = u32_at(at + 42) as usize;
        let name = String::from_utf8(bytes[at + 46..at + 46 + name_length].to_vec()).unwrap();
        let data_at = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        entries.push((name, bytes[data_at..data_at + size].to_vec()));
        at += 46 + name_length + extra_length + comment_length;
    }
    entries
}

/// A zip archive of stored entries.
pub fn write_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut directory = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let mut common = Vec::new();
        common.extend(20u16.to_le_bytes()); // version needed
        common.extend(0u16.to_le_bytes()); // flags
        common.extend(0u16.to_le_bytes()); // stored
        common.extend(0u32.to_le_bytes()); // time, date
        common.extend(crc.to_le_bytes());
        common.extend((data.len() as u32).to_le_bytes());
        common.extend((data.len() as u32).to_le_bytes());
        common.extend((name.len() as u16).to_le_bytes());
        common.extend(0u16.to_le_bytes()); // extra length
        out.extend(b"PK\x03\x04");
        out.extend(&common);
        out.extend(name.as_bytes());
        out.extend(data);
        directory.extend(b"PK\x01\x02");
        directory.extend(20u16.to_le_bytes()); // version made by
        directory.extend(&common);
        directory.extend(0u16.to_le_bytes()); // comment length
        directory.extend(0u16.to_le_bytes()); // disk
        directory.extend(0u16.to_le_bytes()); // internal attributes
        directory.extend(0u32.to_le_bytes()); // external attributes
        directory.extend(offset.to_le_bytes());
        directory.extend(name.as_bytes());
    }
    let directory_offset = out.len() as u32;
    out.extend(&directory);
    out.extend(b"PK\x05\x06");
    out.extend(0u32.to_le_bytes()); // disk numbers
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((directory.len() as u32).to_le_bytes());
    out.extend(directory_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // comment length
    out
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    (from..=haystack.len().saturating_sub(needle.len()))
        .find(|&at| haystack[at..].starts_with(needle))
}

const FLOAT_GLOBAL: &[u8] = b"ctorch\nFloatStorage\n";

/// Every float32 tensor of a `.pth` archive rewritten as `to` (the pickle's storage class and
/// the storages' bytes). The int64 storages (`num_batches_tracked`, one element, 8 bytes) stay.
pub fn retype_pth(bytes: &[u8], to: Retype) -> Vec<u8> {
    let entries = read_zip(bytes)
        .into_iter()
        .map(|(name, data)| {
            if name.ends_with("data.pkl") {
                let at = find(&data, FLOAT_GLOBAL, 0).expect("a FloatStorage");
                let mut pickle = data[..at].to_vec();
                pickle.extend(format!("ctorch\n{}\n", to.storage()).as_bytes());
                pickle.extend(&data[at + FLOAT_GLOBAL.len()..]);
                (name, pickle)
            } else if name.contains("/data/") && data.len() != 8 {
                let converted = to.convert(&data);
                (name, converted)
            } else {
                (name, data)
            }
        })
        .collect::<Vec<_>>();
    write_zip(&entries)
}

/// One tensor of a `.pth` archive (`key`, not the file's first tensor) rewritten as `to`; the
/// others stay float32. Its storage must not be shared with another tensor.
pub fn retype_one_pth(bytes: &[u8], key: &str, to: Retype) -> Vec<u8> {
    let mut entries = read_zip(bytes);
    let (pickle_index, _) = entries
        .iter()
        .enumerate()
        .find(|(_, (name, _))| name.ends_with("data.pkl"))
        .expect("a data.pkl");
    let pickle = entries[pickle_index].1.clone();
    // Memo slots of the class and of the string 'storage': later tensors refer to them with
    // BINGET (`h` + slot).
    let global = find(&pickle, FLOAT_GLOBAL, 0).expect("a FloatStorage");
    assert_eq!(
        pickle[global + FLOAT_GLOBAL.len()],
        b'q',
        "BINPUT after the class"
    );
    let float_slot = pickle[global + FLOAT_GLOBAL.len() + 1];
    let storage = find(&pickle, b"X\x07\x00\x00\x00storageq", 0).expect("'storage'");
    let storage_slot = pickle[storage + 13];

    let mut name = vec![b'X'];
    name.extend((key.len() as u32).to_le_bytes());
    name.extend(key.as_bytes());
    let key_at = find(&pickle, &name, 0).unwrap_or_else(|| panic!("`{key}` in the pickle"));
    let reference = [b'h', storage_slot, b'h', float_slot];
    let class_at = find(&pickle, &reference, key_at).expect("the tensor's storage tuple") + 2;
    // Then the storage's key: BINUNICODE `X` + u32 length + key.
    let key_length = u32::from_le_bytes(pickle[class_at + 3..class_at + 7].try_into().unwrap());
    assert_eq!(
        pickle[class_at + 2],
        b'X',
        "the storage key follows its class"
    );
    let storage_key =
        String::from_utf8(pickle[class_at + 7..class_at + 7 + key_length as usize].to_vec())
            .unwrap();

    let mut edited = pickle[..class_at].to_vec();
    edited.extend(format!("ctorch\n{}\n", to.storage()).as_bytes());
    edited.extend(&pickle[class_at + 2..]);
    entries[pickle_index].1 = edited;
    let suffix = format!("/data/{storage_key}");
    let data = entries
        .iter_mut()
        .find(|(name, _)| name.ends_with(&suffix))
        .expect("the tensor's storage");
    data.1 = to.convert(&data.1);
    write_zip(&entries)
}

/// A safetensors file with its float32 tensors (or only `only`) rewritten as `to`; metadata
/// kept.
pub fn retype_safetensors(bytes: &[u8], to: Retype, only: Option<&str>) -> Vec<u8> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let chosen = only.is_none_or(|only| only == name);
            if view.dtype() == safetensors::Dtype::F32 && chosen {
                let data = to.convert(view.data());
                (name, to.safetensors(), view.shape().to_vec(), data)
            } else {
                (
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                )
            }
        })
        .collect();
    let views = tensors.iter().map(|(name, dtype, shape, data)| {
        (
            name.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    let metadata: Option<HashMap<String, String>> = metadata.metadata().clone();
    safetensors::serialize(views, metadata).unwrap()
}
