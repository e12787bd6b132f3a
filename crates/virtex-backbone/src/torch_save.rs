//! A small writer of PyTorch's checkpoint format: what `torch.save` writes and
//! `torch.load(..., weights_only=True)` reads back.
//!
//! No maintained crate writes this format without libtorch: `serde-pickle` encodes Python's
//! built-in types only (no `GLOBAL` references to `torch` classes, no persistent ids), and `tch`
//! needs libtorch. So this module writes exactly what the backbone exports need: dicts and
//! `collections.OrderedDict`s keyed by strings, strings, bools, ints, and float32 / int64 tensors.
//!
//! # The file
//!
//! A zip archive (PyTorch ≥ 1.6) of stored (uncompressed) entries under one folder, `archive/`
//! (the name `torch.save` gives an archive written to a buffer; readers take whatever folder
//! the first entry sits in):
//!
//! | entry                | content                                                          |
//! |----------------------|------------------------------------------------------------------|
//! | `archive/data.pkl`   | the object, pickled with protocol 2; tensors refer to storages   |
//! | `archive/byteorder`  | `little`                                                         |
//! | `archive/data/<k>`   | storage `k`: the tensor's elements, little-endian, C order; the data starts at a multiple of 64 bytes in the file, as torch aligns it (so `torch.load(mmap=True)` can map it) |
//! | `archive/version`    | `3\n`, the format version torch writes                           |
//!
//! Entries carry the zip epoch (1980-01-01) as their time, so the same weights give the same
//! bytes.
//!
//! # The pickle
//!
//! Protocol 2 is torch's default and the highest whose opcodes torch's `weights_only` unpickler
//! accepts. A tensor is pickled as torch pickles it:
//!
//! ```text
//! torch._utils._rebuild_tensor_v2(
//!     persistent_load(('storage', torch.FloatStorage, '<k>', 'cpu', numel)),
//!     0, shape, contiguous strides, False, collections.OrderedDict())
//! ```
//!
//! Only the globals `weights_only` allows are referenced (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, `torch.LongStorage`). The memo
//! (`BINPUT`/`BINGET`) is not used: it only saves repeated bytes.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use burn::tensor::{DType, TensorData};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::{BackboneError, Result};

/// A Python value [`save_torch`] can write.
#[derive(Debug, Clone, PartialEq)]
pub enum TorchValue {
    /// A plain `dict` with string keys, in this order.
    Dict(Vec<(String, TorchValue)>),
    /// A `collections.OrderedDict` with string keys, in this order: what `state_dict()`
    /// returns.
    OrderedDict(Vec<(String, TorchValue)>),
    /// A `str`.
    Str(String),
    /// A `bool`.
    Bool(bool),
    /// An `int`.
    Int(i64),
    /// A CPU tensor; float32 (`FloatStorage`) or int64 (`LongStorage`) only.
    Tensor(TensorData),
}

/// Writes `value` to `path` as `torch.save(value, path)` would, atomically (a temporary file
/// renamed into place: an interrupted write never leaves a partial file at `path`).
///
/// # Errors
/// [`BackboneError::Write`] naming `path` when a tensor has a dtype other than float32 or int64
/// or the file cannot be written.
pub fn save_torch(value: &TorchValue, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    // Everything that can fail on the data fails before the file is touched.
    let (pickle, storages) = encode(value).map_err(|message| BackboneError::Write {
        path: path.to_path_buf(),
        message,
    })?;
    crate::weights::write_atomically(path, |temporary| {
        let file = File::create(temporary).map_err(|err| err.to_string())?;
        let mut writer = write_archive(BufWriter::new(file), &pickle, &storages)
            .map_err(|err| err.to_string())?;
        writer.flush().map_err(|err| err.to_string())
    })
}

/// The bytes [`save_torch`] writes, in memory (for the tests).
#[cfg(test)]
fn torch_save_bytes(value: &TorchValue) -> std::result::Result<Vec<u8>, String> {
    let (pickle, storages) = encode(value)?;
    let cursor = write_archive(std::io::Cursor::new(Vec::new()), &pickle, &storages)
        .map_err(|err| err.to_string())?;
    Ok(cursor.into_inner())
}

/// The folder of every entry (see the module table).
const ARCHIVE: &str = "archive";
/// Alignment of storage data in the file: torch's `.storage_alignment` default.
const STORAGE_ALIGNMENT: u16 = 64;

fn write_archive<W: Write + Seek>(
    writer: W,
    pickle: &[u8],
    storages: &[Vec<u8>],
) -> zip::result::ZipResult<W> {
    // Stored, as torch writes them: the storages must be readable (and mappable) in place.
    let stored = SimpleFileOptions::DEFAULT.compression_method(CompressionMethod::Stored);
    let mut zip = ZipWriter::new(writer);
    zip.start_file(format!("{ARCHIVE}/data.pkl"), stored)?;
    zip.write_all(pickle)?;
    zip.start_file(format!("{ARCHIVE}/byteorder"), stored)?;
    zip.write_all(b"little")?;
    for (key, bytes) in storages.iter().enumerate() {
        let options = stored
            .with_alignment(STORAGE_ALIGNMENT)
            // zip64 only where an entry needs it (a storage of 4 GiB or more).
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(format!("{ARCHIVE}/data/{key}"), options)?;
        zip.write_all(bytes)?;
    }
    zip.start_file(format!("{ARCHIVE}/version"), stored)?;
    zip.write_all(b"3\n")?;
    zip.finish()
}

/// Pickles `value`; returns the pickle and the storages it refers to (storage `k` is
/// `storages[k]`, little-endian bytes).
fn encode(value: &TorchValue) -> std::result::Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let mut pickler = Pickler::default();
    pickler.out.extend([op::PROTO, 2]);
    pickler.value(value)?;
    pickler.out.push(op::STOP);
    Ok((pickler.out, pickler.storages))
}

/// The pickle opcodes used (names as in Python's `pickletools`).
mod op {
    /// Protocol header, followed by the protocol number.
    pub const PROTO: u8 = 0x80;
    /// End of the pickle: the value on top of the stack is the result.
    pub const STOP: u8 = b'.';
    /// Pushes a mark: the start of a variable number of items (tuple, SETITEMS).
    pub const MARK: u8 = b'(';
    /// Pushes `module.name` (two newline-terminated lines follow): the only way protocol 2
    /// names a class or function.
    pub const GLOBAL: u8 = b'c';
    /// Calls the callable below the top with the argument tuple on top.
    pub const REDUCE: u8 = b'R';
    /// Replaces the top with `persistent_load(top)`: how torch refers to storages kept
    /// outside the pickle.
    pub const BINPERSID: u8 = b'Q';
    /// Pushes `{}`.
    pub const EMPTY_DICT: u8 = b'}';
    /// `dict[k] = v` for every pair above the mark (works on an OrderedDict too).
    pub const SETITEMS: u8 = b'u';
    /// Pushes `()`.
    pub const EMPTY_TUPLE: u8 = b')';
    /// Tuples of the top 1, 2 or 3 items.
    pub const TUPLE1: u8 = 0x85;
    /// See [`TUPLE1`].
    pub const TUPLE2: u8 = 0x86;
    /// See [`TUPLE1`].
    pub const TUPLE3: u8 = 0x87;
    /// A tuple of every item above the mark.
    pub const TUPLE: u8 = b't';
    /// Pushes a UTF-8 string (4-byte little-endian length): the only string opcode of
    /// protocol 2 that `weights_only` reads.
    pub const BINUNICODE: u8 = b'X';
    /// Pushes `True`.
    pub const NEWTRUE: u8 = 0x88;
    /// Pushes `False`.
    pub const NEWFALSE: u8 = 0x89;
    /// Pushes an unsigned 1-byte int.
    pub const BININT1: u8 = b'K';
    /// Pushes an unsigned 2-byte little-endian int.
    pub const BININT2: u8 = b'M';
    /// Pushes a signed 4-byte little-endian int.
    pub const BININT: u8 = b'J';
    /// Pushes an int of n little-endian two's-complement bytes (1-byte n): ints beyond i32.
    pub const LONG1: u8 = 0x8a;
}

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    storages: Vec<Vec<u8>>,
}

impl Pickler {
    fn value(&mut self, value: &TorchValue) -> std::result::Result<(), String> {
        match value {
            TorchValue::Dict(items) => {
                self.out.push(op::EMPTY_DICT);
                self.items(items)?;
            }
            TorchValue::OrderedDict(items) => {
                self.empty_ordered_dict();
                self.items(items)?;
            }
            TorchValue::Str(text) => self.string(text),
            TorchValue::Bool(true) => self.out.push(op::NEWTRUE),
            TorchValue::Bool(false) => self.out.push(op::NEWFALSE),
            TorchValue::Int(number) => self.int(*number),
            TorchValue::Tensor(data) => self.tensor(data)?,
        }
        Ok(())
    }

    /// `collections.OrderedDict()`: the class, called with no arguments.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend([op::EMPTY_TUPLE, op::REDUCE]);
    }

    /// Fills the dict on top of the stack (nothing for an empty one: `SETITEMS` with no pair is
    /// valid but pointless).
    fn items(&mut self, items: &[(String, TorchValue)]) -> std::result::Result<(), String> {
        if items.is_empty() {
            return Ok(());
        }
        self.out.push(op::MARK);
        for (key, value) in items {
            self.string(key);
            self.value(value)?;
        }
        self.out.push(op::SETITEMS);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn string(&mut self, text: &str) {
        self.out.push(op::BINUNICODE);
        // A key or string of 4 GiB cannot occur here (names and short metadata).
        self.out
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.out.extend_from_slice(text.as_bytes());
    }

    /// The shortest of Python's binary int encodings for `number` (what `pickle` itself picks).
    fn int(&mut self, number: i64) {
        if let Ok(byte) = u8::try_from(number) {
            self.out.extend([op::BININT1, byte]);
        } else if let Ok(short) = u16::try_from(number) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&short.to_le_bytes());
        } else if let Ok(int) = i32::try_from(number) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&int.to_le_bytes());
        } else {
            // 8 bytes always hold an i64; LONG1 does not need the minimal length.
            self.out.extend([op::LONG1, 8]);
            self.out.extend_from_slice(&number.to_le_bytes());
        }
    }

    /// A tuple of ints (a shape or strides).
    fn int_tuple(&mut self, numbers: &[usize]) {
        if numbers.is_empty() {
            self.out.push(op::EMPTY_TUPLE);
            return;
        }
        if numbers.len() > 3 {
            self.out.push(op::MARK);
        }
        for &number in numbers {
            self.int(number as i64);
        }
        self.out.push(match numbers.len() {
            1 => op::TUPLE1,
            2 => op::TUPLE2,
            3 => op::TUPLE3,
            _ => op::TUPLE,
        });
    }

    fn tensor(&mut self, data: &TensorData) -> std::result::Result<(), String> {
        let (storage, bytes) = match data.dtype {
            DType::F32 => (
                "FloatStorage",
                little_endian(data.as_slice::<f32>(), |v| v.to_le_bytes())?,
            ),
            DType::I64 => (
                "LongStorage",
                little_endian(data.as_slice::<i64>(), |v| v.to_le_bytes())?,
            ),
            other => {
                return Err(format!(
                    "cannot write a {other:?} tensor to a .pth file (float32 and int64 only)"
                ))
            }
        };
        let numel: usize = data.shape.iter().product();
        let key = self.storages.len();
        self.storages.push(bytes);

        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        // The storage: `persistent_load(('storage', torch.<Type>Storage, key, 'cpu', numel))`;
        // torch.load maps it to `data/<key>` in the archive.
        self.out.push(op::MARK);
        self.string("storage");
        self.global("torch", storage);
        self.string(&key.to_string());
        self.string("cpu");
        self.int(numel as i64);
        self.out.extend([op::TUPLE, op::BINPERSID]);
        // Storage offset, size, stride (C-contiguous), requires_grad.
        self.int(0);
        self.int_tuple(&data.shape);
        self.int_tuple(&contiguous_strides(&data.shape));
        self.out.push(op::NEWFALSE);
        // Backward hooks: torch always pickles an empty OrderedDict here.
        self.empty_ordered_dict();
        self.out.extend([op::TUPLE, op::REDUCE]);
        Ok(())
    }
}

/// A storage's bytes: little-endian whatever the host, as `byteorder` declares.
fn little_endian<T: Copy, const N: usize>(
    values: std::result::Result<&[T], burn::tensor::DataError>,
    to_le: impl Fn(T) -> [u8; N],
) -> std::result::Result<Vec<u8>, String> {
    let values = values.map_err(|err| format!("cannot read the tensor's values: {err:?}"))?;
    Ok(values.iter().flat_map(|&value| to_le(value)).collect())
}

/// Strides, in elements, of a C-contiguous tensor of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pickle(value: &TorchValue) -> Vec<u8> {
        encode(value).unwrap().0
    }

    #[test]
    fn scalars_use_the_shortest_encoding() {
        let body = |value| pickle(&value)[2..].to_vec();
        assert_eq!(body(TorchValue::Int(7)), [b'K', 7, b'.']);
        assert_eq!(body(TorchValue::Int(300)), [b'M', 0x2c, 0x01, b'.']);
        assert_eq!(
            body(TorchValue::Int(-1)),
            [b'J', 0xff, 0xff, 0xff, 0xff, b'.']
        );
        let big = 1i64 << 40;
        let mut expected = vec![0x8a, 8];
        expected.extend(big.to_le_bytes());
        expected.push(b'.');
        assert_eq!(body(TorchValue::Int(big)), expected);
        assert_eq!(body(TorchValue::Bool(true)), [0x88, b'.']);
        assert_eq!(
            body(TorchValue::Str("é".into())),
            [b'X', 2, 0, 0, 0, 0xc3, 0xa9, b'.']
        );
    }

    #[test]
    fn a_dict_is_filled_by_one_setitems() {
        let value = TorchValue::Dict(vec![
            ("a".into(), TorchValue::Bool(false)),
            ("b".into(), TorchValue::OrderedDict(vec![])),
        ]);
        let mut expected = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', 0x89];
        expected.extend([b'X', 1, 0, 0, 0, b'b']);
        expected.extend(b"ccollections\nOrderedDict\n)R");
        expected.extend([b'u', b'.']);
        assert_eq!(pickle(&value), expected);
    }

    #[test]
    fn a_tensor_is_pickled_as_torch_does() {
        let data = TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]);
        let (bytes, storages) = encode(&TorchValue::Tensor(data)).unwrap();
        let mut expected = vec![0x80, 2];
        expected.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\0\0\0storage");
        // The storage key `0`: BINUNICODE, length 1, then the character.
        expected.extend(b"ctorch\nFloatStorage\nX\x01\0\0\0\x30X\x03\0\0\0cpuK\x06tQ");
        expected.extend(b"K\0K\x02K\x03\x86K\x03K\x01\x86\x89");
        expected.extend(b"ccollections\nOrderedDict\n)RtR.");
        assert_eq!(bytes, expected);
        assert_eq!(storages.len(), 1);
        assert_eq!(&storages[0][..4], &1f32.to_le_bytes());
    }

    #[test]
    fn scalar_int64_tensors_have_empty_shape_and_strides() {
        let data = TensorData::new(vec![5i64], [0usize; 0]);
        let (bytes, storages) = encode(&TorchValue::Tensor(data)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("ctorch\nLongStorage\n"), "{text}");
        assert!(text.contains("K\x01tQK\0))\u{fffd}"), "{text}");
        assert_eq!(storages, vec![5i64.to_le_bytes().to_vec()]);
    }

    #[test]
    fn other_dtypes_are_refused() {
        let data = TensorData::new(vec![1i32], [1]);
        let err = encode(&TorchValue::Tensor(data)).unwrap_err();
        assert!(err.contains("float32 and int64"), "{err}");
    }

    #[test]
    fn storage_data_is_aligned_to_64_bytes() {
        let value = TorchValue::OrderedDict(
            (0..3)
                .map(|i| {
                    let data = TensorData::new(vec![i as f32; 3 + i], [3 + i]);
                    (format!("tensor_{i}"), TorchValue::Tensor(data))
                })
                .collect(),
        );
        let bytes = torch_save_bytes(&value).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let names: Vec<String> = archive.file_names().map(str::to_string).collect();
        for name in ["archive/data.pkl", "archive/byteorder", "archive/version"] {
            assert!(names.iter().any(|n| n == name), "{names:?}");
        }
        for key in 0..3 {
            let entry = archive.by_name(&format!("archive/data/{key}")).unwrap();
            assert_eq!(entry.compression(), CompressionMethod::Stored);
            assert_eq!(entry.data_start().unwrap() % 64, 0, "data/{key}");
            assert_eq!(entry.size(), 4 * (3 + key as u64));
        }
    }
}
