//! PyTorch state dicts of a textual head onto the burn modules.
//!
//! # The mapping table
//!
//! Module fields are named like upstream's, so every key keeps its name; only the layout of
//! `nn.Linear` weights changes (torch `[out, in]`, burn `[in, out]`). Keys are relative to the
//! head (a VirTex checkpoint prefixes them with `textual.`; see the `virtex` crate for the file).
//!
//! | PyTorch key (shape)                                                  | burn path          | change      |
//! |----------------------------------------------------------------------|--------------------|-------------|
//! | `visual_projection.weight` `[H, C]`                                  | same, `[C, H]`     | transpose   |
//! | `visual_projection.bias` `[H]`                                       | same               |             |
//! | `embedding.words.weight` `[V, H]`                                    | same               |             |
//! | `embedding.positions.weight` `[30, H]`                               | same               |             |
//! | `embedding.layer_norm.{weight,bias}` `[H]`                           | same               |             |
//! | `transformer.layers.{i}.{self_attn,multihead_attn}.in_proj_weight` `[3H, H]` | same       | none (kept stacked `[Wq; Wk; Wv]`, torch layout) |
//! | `transformer.layers.{i}.{self_attn,multihead_attn}.in_proj_bias` `[3H]` | same            |             |
//! | `transformer.layers.{i}.{self_attn,multihead_attn}.out_proj.weight` `[H, H]` | same       | transpose   |
//! | `transformer.layers.{i}.{self_attn,multihead_attn}.out_proj.bias` `[H]` | same            |             |
//! | `transformer.layers.{i}.linear1.weight` `[F, H]`                     | same, `[H, F]`     | transpose   |
//! | `transformer.layers.{i}.linear2.weight` `[H, F]`                     | same, `[F, H]`     | transpose   |
//! | `transformer.layers.{i}.linear{1,2}.bias`                            | same               |             |
//! | `transformer.layers.{i}.norm{1,2,3}.{weight,bias}` `[H]`             | same               |             |
//! | `transformer.norm.{weight,bias}` `[H]` (pre-norm heads only)         | same               |             |
//! | `output.weight` `[V, H]`                                             | — (tied: it *is* `embedding.words.weight`; checked equal, not loaded) | |
//! | `output.bias` `[V]`                                                  | same               |             |
//!
//! Loading is strict: every parameter of the module must be present with the right shape, and
//! a key inside the head's namespace that the module has no parameter for is an error (a
//! pre-norm checkpoint on a post-norm head, a deeper checkpoint on a shallower head, …).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleSnapshot, TensorSnapshot};
use virtex_device::{accepts_dtype, conform_snapshot, fit_snapshot, Unfit};

use crate::decoder::TransformerDecoder;
use crate::error::{Result, TextualError};
use crate::head::TransformerDecoderTextualHead;

/// Where a PyTorch key of the head goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchKey {
    /// The burn module path (identical to the key: fields are named like upstream's).
    pub path: String,
    /// Whether the tensor is an `nn.Linear` weight that burn stores transposed.
    pub transpose: bool,
}

/// The mapping table as a function: `None` for the tied `output.weight`, which is not loaded.
pub fn torch_key_to_burn(key: &str) -> Option<TorchKey> {
    if key == "output.weight" {
        return None;
    }
    let linear_weight = [
        "visual_projection.weight",
        "out_proj.weight",
        "linear1.weight",
        "linear2.weight",
    ]
    .iter()
    .any(|suffix| key == *suffix || key.ends_with(&format!(".{suffix}")));
    Some(TorchKey {
        path: key.to_string(),
        transpose: linear_weight,
    })
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadLoadReport {
    /// Tensors applied to the module.
    pub applied: usize,
    /// Whether a tied `output.weight` was found and checked equal to `embedding.words.weight`.
    pub tied_output_checked: bool,
}

/// What a [`load_torch_head_matching`] or [`load_torch_decoder_matching`] did, by PyTorch key
/// (with the prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchingLoadReport {
    /// Keys of the module found in the state dict and loaded.
    pub loaded: Vec<String>,
    /// Keys of the module the state dict lacks: they keep their fresh initialisation.
    pub initialised: Vec<String>,
    /// Keys of the state dict under the prefix that the module has no parameter for (e.g. the
    /// layers of a deeper checkpoint): not used.
    pub unused: Vec<String>,
}

/// Loads the head from a PyTorch state dict whose head keys start with `prefix` (`"textual."`
/// in a VirTex checkpoint, `""` for a bare head). Keys outside the prefix are ignored.
///
/// Errors name the first missing or mis-shaped key (in the module's order, with the prefix).
pub fn load_torch_head<B: Backend>(
    head: &mut TransformerDecoderTextualHead<B>,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
) -> Result<HeadLoadReport> {
    let tied = check_tied_output(head, state_dict, prefix)?;
    let applied = load_module(head, state_dict, prefix, "", Loading::Strict)?
        .loaded
        .len();
    Ok(HeadLoadReport {
        applied,
        tied_output_checked: tied,
    })
}

/// Loads what matches of a PyTorch state dict into a head of another depth (fine-tuning a
/// released L1 checkpoint as an L2 captioner, say): every parameter present with the right
/// shape is loaded, a parameter the file lacks keeps its initialisation, and a key the head has
/// no place for is left out; the report names all three lists.
///
/// A present key with another shape is still an error ([`TextualError::ShapeMismatch`]): a
/// different width, vocabulary or caption length is not a matter of depth.
pub fn load_torch_head_matching<B: Backend>(
    head: &mut TransformerDecoderTextualHead<B>,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
) -> Result<MatchingLoadReport> {
    check_tied_output(head, state_dict, prefix)?;
    let mut report = load_module(head, state_dict, prefix, "", Loading::Matching)?;
    // The tied output weight is loaded as `embedding.words.weight`.
    report
        .unused
        .retain(|key| *key != format!("{prefix}output.weight"));
    Ok(report)
}

/// [`load_torch_decoder`] loading what matches, as [`load_torch_head_matching`] does.
pub fn load_torch_decoder_matching<B: Backend>(
    decoder: &mut TransformerDecoder<B>,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
) -> Result<MatchingLoadReport> {
    load_module(
        decoder,
        state_dict,
        prefix,
        "transformer.",
        Loading::Matching,
    )
}

/// Whether loading must find every parameter and use every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loading {
    Strict,
    Matching,
}

/// A tied `output.weight`, when the file has one, must equal `embedding.words.weight`; returns
/// whether it was there.
fn check_tied_output<B: Backend>(
    head: &TransformerDecoderTextualHead<B>,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
) -> Result<bool> {
    let tied = match state_dict.get(&format!("{prefix}output.weight")) {
        Some(output) => {
            let words = state_dict.get(&format!("{prefix}embedding.words.weight"));
            // Both tensors are read only if the word matrix has the head's shape.
            let expected = head
                .collect(None, None, false)
                .into_iter()
                .find(|target| target.full_path() == "embedding.words.weight")
                .map(|target| target.shape.to_vec());
            check_tied(prefix, output, words, expected.as_deref())?;
            true
        }
        None => false,
    };
    Ok(tied)
}

/// Loads a decoder stack from keys `"{prefix}layers.{i}.…"` (e.g. the backward stack of a
/// bicaptioning checkpoint, `prefix = "backward_textual.transformer."`).
pub fn load_torch_decoder<B: Backend>(
    decoder: &mut TransformerDecoder<B>,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
) -> Result<usize> {
    Ok(
        load_module(decoder, state_dict, prefix, "transformer.", Loading::Strict)?
            .loaded
            .len(),
    )
}

/// `namespace` is the module's place inside a head, so that [`torch_key_to_burn`] sees
/// head-relative keys.
fn load_module<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    state_dict: &BTreeMap<String, TensorSnapshot>,
    prefix: &str,
    namespace: &str,
    loading: Loading,
) -> Result<MatchingLoadReport> {
    let expected: Vec<TensorSnapshot> = module.collect(None, None, false);
    // key in the state dict and the stored snapshot, by burn path.
    let mut by_path: HashMap<String, (String, &TensorSnapshot)> = HashMap::new();
    for (key, snapshot) in state_dict.range(prefix.to_string()..) {
        let Some(local) = key.strip_prefix(prefix) else {
            break;
        };
        let Some(mapping) = torch_key_to_burn(&format!("{namespace}{local}")) else {
            continue;
        };
        let path = mapping
            .path
            .strip_prefix(namespace)
            .unwrap_or(&mapping.path)
            .to_string();
        by_path.insert(path, (key.clone(), snapshot));
    }

    let present = expected
        .iter()
        .filter(|target| by_path.contains_key(&target.full_path()))
        .count();
    let mut applied = Vec::with_capacity(expected.len());
    let mut report = MatchingLoadReport::default();
    for target in &expected {
        let path = target.full_path();
        let transpose = torch_key_to_burn(&format!("{namespace}{path}"))
            .map(|m| m.transpose)
            .unwrap_or(false);
        let torch_shape = torch_layout(&target.shape.to_vec(), transpose);
        let Some((key, snapshot)) = by_path.remove(&path) else {
            if loading == Loading::Matching {
                report.initialised.push(format!("{prefix}{path}"));
                continue;
            }
            return Err(TextualError::MissingTensor {
                key: format!("{prefix}{path}"),
                found: present,
                expected: expected.len(),
            });
        };
        report.loaded.push(key.clone());
        // Stored in torch layout: compared as such, before anything is read. Nothing that
        // reaches burn-store's applier may panic there (see `conform_snapshot`).
        let conformed =
            fit_snapshot(snapshot, &torch_shape, target.dtype).map_err(|unfit| match unfit {
                Unfit::Shape { expected, found } => TextualError::ShapeMismatch {
                    key,
                    expected,
                    found,
                },
                Unfit::DType { expected, found } => TextualError::UnsupportedDType {
                    key,
                    found,
                    expected,
                },
            })?;
        applied.push(relocate(&conformed, &path, transpose));
    }
    if loading == Loading::Matching {
        report.unused = by_path.into_values().map(|(key, _)| key).collect();
        report.unused.sort();
    } else if let Some((key, _)) = by_path.values().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(TextualError::UnexpectedTensor {
            key: key.clone(),
            hint: unexpected_hint(key),
        });
    }

    let count = applied.len();
    let result = module.apply(applied, None, None, false);
    if let Some(error) = result.errors.first() {
        return Err(TextualError::BadTensor {
            key: prefix.to_string(),
            message: error.to_string(),
        });
    }
    // Matching loads leave the parameters they report as initialised untouched on purpose.
    if let Some((path, _)) = result
        .missing
        .first()
        .filter(|_| loading == Loading::Strict)
    {
        return Err(TextualError::MissingTensor {
            key: format!("{prefix}{path}"),
            found: result.applied.len(),
            expected: count,
        });
    }
    Ok(report)
}

fn unexpected_hint(key: &str) -> String {
    if key.contains("transformer.norm.") {
        "pre-norm head (`transdec_prenorm`) loaded into a post-norm one".into()
    } else if key.contains("transformer.layers.") {
        "decoder with more layers than the configured head".into()
    } else {
        "different kind of head".into()
    }
}

/// torch layout of a burn shape.
fn torch_layout(shape: &[usize], transpose: bool) -> Vec<usize> {
    if transpose && shape.len() == 2 {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

/// A snapshot under a new path, transposed lazily when it is an `nn.Linear` weight.
fn relocate(snapshot: &TensorSnapshot, path: &str, transpose: bool) -> TensorSnapshot {
    let path_stack: Vec<String> = path.split('.').map(str::to_string).collect();
    if !(transpose && snapshot.shape.len() == 2) {
        let mut moved = snapshot.clone();
        moved.path_stack = Some(path_stack);
        moved.container_stack = None;
        return moved;
    }
    let original = snapshot.clone_data_fn();
    let shape = [snapshot.shape[1], snapshot.shape[0]];
    TensorSnapshot::from_closure(
        Rc::new(move || original().map(transpose_2d)),
        snapshot.dtype,
        shape.into(),
        path_stack,
        Vec::new(),
        ParamId::new(),
    )
}

/// Transposes a row-major 2-D tensor of any element type.
fn transpose_2d(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape[0], data.shape[1]);
    let size = data.dtype.size();
    let bytes = data.as_bytes();
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        for c in 0..cols {
            let from = (r * cols + c) * size;
            let to = (c * rows + r) * size;
            out[to..to + size].copy_from_slice(&bytes[from..from + size]);
        }
    }
    TensorData::from_bytes_vec(out, vec![cols, rows], data.dtype)
}

/// `output.weight` must be the word matrix: same shape and same values. `expected` is the
/// head's word-matrix shape: when the stored one differs, nothing is compared (the loader
/// reports it), so a damaged header cannot make the comparison read an arbitrary amount.
fn check_tied(
    prefix: &str,
    output: &TensorSnapshot,
    words: Option<&TensorSnapshot>,
    expected: Option<&[usize]>,
) -> Result<()> {
    let key = format!("{prefix}output.weight");
    let Some(words) = words else {
        return Err(TextualError::MissingTensor {
            key: format!("{prefix}embedding.words.weight"),
            found: 0,
            expected: 1,
        });
    };
    if expected.is_some_and(|expected| words.shape.as_slice() != expected) {
        // Nothing is read: the loader then names the first mis-shaped tensor in the module's
        // order (the word matrix at the latest).
        return Ok(());
    }
    if output.shape != words.shape {
        return Err(TextualError::ShapeMismatch {
            key,
            expected: words.shape.to_vec(),
            found: output.shape.to_vec(),
        });
    }
    let read = |snapshot: &TensorSnapshot, key: &str| {
        snapshot.to_data().map_err(|err| TextualError::BadTensor {
            key: key.to_string(),
            message: err.to_string(),
        })
    };
    // Compared as the head will hold them, so an f16 file compares f16 values (and a dtype
    // the head refuses is reported by the loader, naming the word matrix).
    let as_loaded = |snapshot: &TensorSnapshot| match accepts_dtype(snapshot.dtype, DType::F32) {
        true => conform_snapshot(snapshot, DType::F32),
        false => snapshot.clone(),
    };
    let output_data = read(&as_loaded(output), &key)?;
    let words_data = read(
        &as_loaded(words),
        &format!("{prefix}embedding.words.weight"),
    )?;
    if output_data.as_bytes() != words_data.as_bytes() {
        return Err(TextualError::BadTensor {
            key,
            message: "differs from `embedding.words.weight`, but upstream ties the two".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linear_weights_are_transposed() {
        for (key, transpose) in [
            ("visual_projection.weight", true),
            ("visual_projection.bias", false),
            ("transformer.layers.0.self_attn.in_proj_weight", false),
            ("transformer.layers.0.self_attn.out_proj.weight", true),
            ("transformer.layers.2.multihead_attn.out_proj.bias", false),
            ("transformer.layers.0.linear1.weight", true),
            ("transformer.layers.0.linear2.weight", true),
            ("transformer.layers.0.norm1.weight", false),
            ("embedding.words.weight", false),
            ("output.bias", false),
        ] {
            let mapped = torch_key_to_burn(key).unwrap();
            assert_eq!(mapped.path, key);
            assert_eq!(mapped.transpose, transpose, "{key}");
        }
        assert_eq!(torch_key_to_burn("output.weight"), None);
    }

    #[test]
    fn transposes_bytes() {
        let data = TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]);
        let t = transpose_2d(data);
        assert_eq!(t.shape.to_vec(), vec![3, 2]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
    }
}
