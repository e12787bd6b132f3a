//! Checking a stored tensor against the parameter it will fill, before burn-store applies it.
//!
//! # Why this exists
//!
//! `ModuleSnapshot::apply` moves the module out of `&mut self` with `ptr::read`, maps it, and
//! writes it back. burn-store's applier builds each tensor there with
//! `Tensor::from_data(data, (device, snapshot.dtype))`, which panics for a non-float dtype on a
//! float parameter ("Expected float dtype") and, further on, for a float dtype the parameter does
//! not hold ("dtype mismatch"). A panic between the read and the write unwinds with the module
//! owned twice: the process aborts with `free(): double free detected`. `catch_unwind` cannot
//! make that sound, so nothing that can panic may reach the applier: every snapshot handed to
//! `apply` in this workspace goes through [`conform_snapshot`] first, after its shape and
//! [`accepts_dtype`] were checked against the parameter's.
//!
//! # What is accepted
//!
//! | stored                                   | parameter        | result                       |
//! |------------------------------------------|------------------|------------------------------|
//! | the parameter's dtype                    | any              | used as is                   |
//! | float16, bfloat16, float32               | float            | converted (exact)            |
//! | float64                                  | float            | converted (rounded to f32: not lossless, but PyTorch users do save doubles, and weights never need more than f32) |
//! | int*, uint*, bool, quantized             | float            | refused, naming the tensor   |
//!
//! The conversion is lazy (the data is read when burn-store asks for it) and re-checks what the
//! reader produced: burn-store's PyTorch reader pads short storages with zeros and may hand back
//! f32 zeros whatever the stored dtype, so the element count and byte length are verified too.
//! A failure there becomes burn-store's `LoadError` for that tensor, never a panic.

use std::rc::Rc;

use burn::tensor::{bf16, f16, BoolStore, DType, TensorData};
use burn_store::{TensorSnapshot, TensorSnapshotError};

/// PyTorch's name of a dtype (`float32`, `int64`, `bool`, …), for error messages.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "float64",
        DType::F32 | DType::Flex32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        DType::I32 => "int32",
        DType::I16 => "int16",
        DType::I8 => "int8",
        DType::U64 => "uint64",
        DType::U32 => "uint32",
        DType::U16 => "uint16",
        DType::U8 => "uint8",
        DType::Bool(BoolStore::Native) => "bool",
        DType::Bool(_) => "bool (packed)",
        DType::QFloat(_) => "quantized float",
    }
}

/// Whether a tensor stored as `stored` can fill a parameter of dtype `expected`: the same
/// dtype, or float to float (see the module's table).
pub fn accepts_dtype(stored: DType, expected: DType) -> bool {
    stored == expected || (stored.is_float() && expected.is_float())
}

/// Why a stored tensor cannot fill a parameter ([`fit_snapshot`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Unfit {
    /// The stored shape is not the parameter's (in the file's layout).
    Shape {
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The stored shape.
        found: Vec<usize>,
    },
    /// The stored dtype cannot be converted to the parameter's ([`accepts_dtype`]).
    DType {
        /// The parameter's dtype.
        expected: DType,
        /// The stored dtype.
        found: DType,
    },
}

/// The one gate before burn-store's applier: `snapshot` checked against a parameter of
/// `shape` (as the file stores it) and `dtype`, then [`conform_snapshot`]ed. Every reader of
/// the workspace maps [`Unfit`] to its own error, naming the file's key.
pub fn fit_snapshot(
    snapshot: &TensorSnapshot,
    shape: &[usize],
    dtype: DType,
) -> Result<TensorSnapshot, Unfit> {
    if snapshot.shape.as_slice() != shape {
        return Err(Unfit::Shape {
            expected: shape.to_vec(),
            found: snapshot.shape.to_vec(),
        });
    }
    if !accepts_dtype(snapshot.dtype, dtype) {
        return Err(Unfit::DType {
            expected: dtype,
            found: snapshot.dtype,
        });
    }
    Ok(conform_snapshot(snapshot, dtype))
}

/// `snapshot` as a tensor of dtype `expected`, converted when its data is read.
///
/// The caller has checked [`accepts_dtype`] and the shape against the parameter's; what the
/// reader then produces is checked again (shape, byte length, dtype), so a damaged file yields
/// a `TensorSnapshotError` instead of a panic inside burn-store's applier.
pub fn conform_snapshot(snapshot: &TensorSnapshot, expected: DType) -> TensorSnapshot {
    let original = snapshot.clone_data_fn();
    let shape = snapshot.shape.clone();
    let key = snapshot.full_path();
    let read_shape = shape.clone();
    let data_fn = Rc::new(move || {
        let data = original()?;
        conform_data(data, &read_shape, expected)
            .map_err(|problem| TensorSnapshotError::DataError(format!("`{key}`: {problem}")))
    });
    let mut conformed = TensorSnapshot::from_closure(
        data_fn,
        expected,
        shape,
        Vec::new(),
        Vec::new(),
        snapshot.tensor_id.unwrap_or_default(),
    );
    conformed.path_stack = snapshot.path_stack.clone();
    conformed.container_stack = snapshot.container_stack.clone();
    conformed
}

/// Checks what a reader produced and converts it; the error says what is wrong.
fn conform_data(data: TensorData, shape: &[usize], expected: DType) -> Result<TensorData, String> {
    if data.shape.as_slice() != shape {
        return Err(format!(
            "the stored data has shape {:?}, its header says {shape:?}",
            data.shape.as_slice()
        ));
    }
    let elements = shape
        .iter()
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let stored = data.dtype;
    if matches!(
        stored,
        DType::QFloat(_) | DType::Bool(BoolStore::U8 | BoolStore::U32)
    ) || Some(data.bytes.len()) != elements.checked_mul(stored.size())
    {
        return Err(format!(
            "{} bytes of {} data for {elements} elements (the file is damaged)",
            data.bytes.len(),
            dtype_name(stored)
        ));
    }
    if stored == expected {
        return Ok(data);
    }
    if !accepts_dtype(stored, expected) {
        return Err(format!(
            "stored as {}, expected {}",
            dtype_name(stored),
            dtype_name(expected)
        ));
    }
    // Decoded from little-endian bytes rather than through `TensorData::convert_dtype`, which
    // reinterprets the buffer in place and needs it aligned for the source type.
    let bytes = data.as_bytes();
    let values: Vec<f32> = match stored {
        DType::F32 | DType::Flex32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => unreachable!("accepts_dtype admits only floats here"),
    };
    Ok(TensorData::new(values, shape.to_vec()).convert_dtype(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ParamId;

    fn snapshot(data: TensorData) -> TensorSnapshot {
        TensorSnapshot::from_data(data, vec!["w".into()], Vec::new(), ParamId::new())
    }

    #[test]
    fn half_and_double_become_f32() {
        let values = [1.5f32, -2.25, 0.0, 1024.0];
        for data in [
            TensorData::new(values.map(f16::from_f32).to_vec(), [2, 2]),
            TensorData::new(values.map(bf16::from_f32).to_vec(), [2, 2]),
            TensorData::new(values.map(f64::from).to_vec(), [2, 2]),
        ] {
            let stored = data.dtype;
            let conformed = conform_snapshot(&snapshot(data), DType::F32);
            assert_eq!(conformed.dtype, DType::F32);
            let read = conformed.to_data().unwrap();
            assert_eq!(read.dtype, DType::F32, "{stored:?}");
            assert_eq!(read.to_vec::<f32>().unwrap(), values, "{stored:?}");
        }
    }

    #[test]
    fn integers_are_not_floats_and_bad_lengths_are_errors() {
        assert!(!accepts_dtype(DType::I64, DType::F32));
        assert!(!accepts_dtype(DType::Bool(BoolStore::Native), DType::F32));
        assert!(accepts_dtype(DType::I64, DType::I64));
        // The reader produced an int64 tensor although the header said float32.
        let mut lying = snapshot(TensorData::new(vec![1i64, 2], [2]));
        lying.dtype = DType::F32;
        assert!(conform_snapshot(&lying, DType::F32).to_data().is_err());
        // Fewer bytes than the shape needs.
        let short = TensorData::from_bytes_vec(vec![0u8; 6], vec![2], DType::F32);
        assert!(conform_snapshot(&snapshot(short), DType::F32)
            .to_data()
            .is_err());
    }
}
