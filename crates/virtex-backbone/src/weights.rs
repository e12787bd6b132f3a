//! Loading and saving backbone weights.
//!
//! # The mapping table
//!
//! Module fields are named like torchvision's, so only the projection shortcut is renamed.
//! Keys on the left are as they appear in the file, after the detected prefix is stripped.
//!
//! | file (torchvision `state_dict`)           | burn module path                    |
//! |-------------------------------------------|-------------------------------------|
//! | `conv1.weight`                            | `conv1.weight`                      |
//! | `bn1.{weight,bias,running_mean,running_var}` | same                             |
//! | `layerN.i.convK.weight`, `layerN.i.bnK.*` | same (`layerN` is a `Vec` of blocks)|
//! | `layerN.i.downsample.0.weight`            | `layerN.i.downsample.conv.weight`   |
//! | `layerN.i.downsample.1.*`                 | `layerN.i.downsample.bn.*`          |
//! | `*.num_batches_tracked`                   | ignored (momentum is fixed)         |
//! | `fc.weight`, `fc.bias`                    | ignored (the backbone has no `fc`)  |
//!
//! Prefixes, detected from where `conv1.weight` sits in the file:
//!
//! | file kind                                              | prefix                 |
//! |--------------------------------------------------------|------------------------|
//! | torchvision `state_dict` (`torch.save`, `.pth`)        | none                   |
//! | the same as safetensors                                | none                   |
//! | VirTex torch-hub backbone (`backbone_*.pth`)           | none                   |
//! | full VirTex checkpoint `{"model": state_dict, ...}`    | `model.visual.cnn.`    |
//! | a bare VirTex model `state_dict`                       | `visual.cnn.`          |
//! | a DDP-wrapped `state_dict`                             | `module.`              |
//!
//! Every backbone tensor must be present with the right shape: a missing or mis-shaped key is
//! an error naming it. (burn-store's `allow_partial` alone would accept a file where a wrong
//! prefix left most tensors unapplied.)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{
    ApplyError, ApplyResult, BurnpackStore, KeyRemapper, ModuleSnapshot, ModuleStore, PytorchStore,
    SafetensorsStore, TensorSnapshot,
};

use crate::error::{BackboneError, Result};
use crate::resnet::ResNet;
use crate::zip_check::zip_problem;
use virtex_device::{fit_snapshot, Unfit};

/// torchvision name → burn path, for keys that differ (applied after the prefix is stripped).
const TORCHVISION_TO_BURN: [(&str, &str); 2] = [
    (r"^(.+)\.downsample\.0\.(.+)$", "$1.downsample.conv.$2"),
    (r"^(.+)\.downsample\.1\.(.+)$", "$1.downsample.bn.$2"),
];

/// burn path → torchvision name (the inverse of [`TORCHVISION_TO_BURN`]).
const BURN_TO_TORCHVISION: [(&str, &str); 2] = [
    (".downsample.conv.", ".downsample.0."),
    (".downsample.bn.", ".downsample.1."),
];

/// Keys in a file that a backbone never uses.
fn is_ignored_key(key: &str) -> bool {
    key.ends_with("num_batches_tracked") || key.starts_with("fc.")
}

/// On-disk formats the backbone reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// `torch.save` output (`.pth`/`.pt`, zip or legacy pickle).
    Pytorch,
    /// safetensors with torchvision (or VirTex) key names.
    Safetensors,
    /// burn's own format, as written by [`ResNet::save_burnpack`].
    Burnpack,
}

impl FromStr for WeightsFormat {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "pytorch" | "torch" | "pth" | "pt" => Ok(Self::Pytorch),
            "safetensors" => Ok(Self::Safetensors),
            "burnpack" | "bpk" | "burn" => Ok(Self::Burnpack),
            other => Err(format!(
                "unknown weights format `{other}`: expected pytorch, safetensors or burnpack"
            )),
        }
    }
}

impl WeightsFormat {
    fn name(self) -> &'static str {
        match self {
            Self::Pytorch => "PyTorch",
            Self::Safetensors => "safetensors",
            Self::Burnpack => "burnpack",
        }
    }

    /// Recognises a file by its first bytes (extension as a fallback).
    ///
    /// zip (`PK\x03\x04`) or pickle (`\x80`) → PyTorch; an 8-byte little-endian header length
    /// followed by `{` → safetensors; burnpack's magic number → burnpack; otherwise the
    /// extension decides.
    pub fn detect(path: &Path) -> Result<Self> {
        let io_error = |source| BackboneError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = [0u8; 9];
        let mut file = File::open(path).map_err(io_error)?;
        let read = file.read(&mut head).map_err(io_error)?;
        let head = &head[..read];
        if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
            return Ok(Self::Pytorch);
        }
        if head.len() == 9 && head[8] == b'{' {
            return Ok(Self::Safetensors);
        }
        if head.starts_with(BURNPACK_MAGIC) {
            return Ok(Self::Burnpack);
        }
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match extension.as_str() {
            "bpk" | "burnpack" => Ok(Self::Burnpack),
            "pth" | "pt" => Ok(Self::Pytorch),
            "safetensors" => Ok(Self::Safetensors),
            _ if head.is_empty() => Err(BackboneError::Unreadable {
                path: path.to_path_buf(),
                format: "weights",
                message: "the file is empty".into(),
            }),
            _ => Err(BackboneError::Unreadable {
                path: path.to_path_buf(),
                format: "weights",
                message: "not a PyTorch (zip/pickle), safetensors or burnpack file".into(),
            }),
        }
    }
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The format that was read.
    pub format: WeightsFormat,
    /// The key prefix the backbone was found under (`""`, `"model.visual.cnn."`, …).
    pub prefix: String,
    /// Number of tensors applied to the model.
    pub applied: usize,
    /// Backbone keys of the file that were skipped (`fc.*`, `num_batches_tracked`).
    pub ignored: usize,
}

impl<B: Backend> ResNet<B> {
    /// Loads weights, detecting the format from the file's first bytes.
    ///
    /// Accepts every file kind in the module's table. All backbone tensors must be present.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let path = path.as_ref();
        let format = WeightsFormat::detect(path)?;
        self.load_weights_as(path, format)
    }

    /// Loads weights in the given format.
    pub fn load_weights_as(
        &mut self,
        path: impl AsRef<Path>,
        format: WeightsFormat,
    ) -> Result<LoadReport> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(BackboneError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let unreadable = |message: String| BackboneError::Unreadable {
            path: path.to_path_buf(),
            format: format.name(),
            message,
        };
        let snapshots: Vec<TensorSnapshot> = match format {
            WeightsFormat::Pytorch => read_pytorch_snapshots(path)?.into_values().collect(),
            WeightsFormat::Safetensors => {
                let mut store = SafetensorsStore::from_file(path);
                let all = store
                    .get_all_snapshots()
                    .map_err(|err| unreadable(err.to_string()))?;
                all.values().cloned().collect()
            }
            WeightsFormat::Burnpack => {
                // Read, not `load_from`: burn-store would apply the tensors unchecked (see
                // `conform`), and a damaged file would abort the process.
                let mut store = BurnpackStore::from_file(path).auto_extension(false);
                let all = store
                    .get_all_snapshots()
                    .map_err(|err| unreadable(err.to_string()))?;
                let snapshots = all.values().cloned().collect();
                // burn's own paths: no prefix, no renaming, errors name burn paths.
                let applied = self.apply_checked(snapshots, path, &|key| key.to_string())?;
                return Ok(LoadReport {
                    format,
                    prefix: String::new(),
                    applied,
                    ignored: 0,
                });
            }
        };

        self.load_state_dict(snapshots, None, format, path)
    }

    /// Loads tensors already read from `path` (a state dict in `format`): the backbone's keys
    /// start with `prefix` (`"model.visual.cnn."` in a VirTex checkpoint), or, with `None`,
    /// with the prefix detected as in [`ResNet::load_weights`]. Keys outside the prefix are
    /// ignored; `path` only names the file in errors. This is how a caller that has read a
    /// whole checkpoint once (the `virtex` crate's official import) hands the CNN its part.
    ///
    /// Every tensor is checked against its parameter (shape, then dtype: float16, bfloat16 and
    /// float64 are converted, anything else is [`BackboneError::UnsupportedDType`]) before any
    /// is applied.
    pub fn load_state_dict(
        &mut self,
        snapshots: Vec<TensorSnapshot>,
        prefix: Option<&str>,
        format: WeightsFormat,
        path: &Path,
    ) -> Result<LoadReport> {
        let prefix = match prefix {
            Some(prefix) => prefix.to_string(),
            None => detect_prefix(&snapshots).ok_or_else(|| BackboneError::MissingTensor {
                path: path.to_path_buf(),
                key: "conv1.weight".into(),
                hint: closest_key_hint(&snapshots),
                found: 0,
                expected: self.num_tensors(),
            })?,
        };
        let (backbone, ignored) = select_backbone(snapshots, &prefix);
        let remapper = KeyRemapper::from_patterns(TORCHVISION_TO_BURN.to_vec())
            .expect("the mapping table holds valid regular expressions");
        let (backbone, _) = remapper.remap(backbone);

        let file_key = |burn_path: &str| format!("{prefix}{}", burn_to_torchvision(burn_path));
        let applied = self.apply_checked(backbone, path, &file_key)?;
        Ok(LoadReport {
            format,
            prefix,
            applied,
            ignored,
        })
    }

    /// Applies `snapshots` (keyed by burn paths) after checking each against the parameter it
    /// fills, so that nothing can panic inside burn-store's applier (see `conform`). Keys the
    /// backbone has no parameter for are left out. Returns the number of tensors applied;
    /// errors name keys through `file_key` (burn path → the file's name).
    fn apply_checked(
        &mut self,
        snapshots: Vec<TensorSnapshot>,
        path: &Path,
        file_key: &dyn Fn(&str) -> String,
    ) -> Result<usize> {
        let mut by_path: HashMap<String, TensorSnapshot> = snapshots
            .into_iter()
            .map(|snapshot| (snapshot.full_path(), snapshot))
            .collect();
        let mut checked = Vec::with_capacity(by_path.len());
        // In the module's order, so the first error is the same whatever the file's order.
        for target in self.collect(None, None, false) {
            let burn_path = target.full_path();
            let Some(snapshot) = by_path.remove(&burn_path) else {
                continue;
            };
            let fitted = fit_snapshot(&snapshot, &target.shape, target.dtype).map_err(|unfit| {
                let (path, key) = (path.to_path_buf(), file_key(&burn_path));
                match unfit {
                    Unfit::Shape { expected, found } => BackboneError::ShapeMismatch {
                        path,
                        key,
                        expected,
                        found,
                    },
                    Unfit::DType { expected, found } => BackboneError::UnsupportedDType {
                        path,
                        key,
                        found,
                        expected,
                    },
                }
            })?;
            checked.push(fitted);
        }
        let result = self.apply(checked, None, None, false);
        check_result(path, file_key, &result)?;
        Ok(result.applied.len())
    }

    /// Number of tensors (parameters and running statistics) the backbone holds.
    pub fn num_tensors(&self) -> usize {
        self.collect(None, None, false).len()
    }

    /// Saves in burn's own format (burnpack), keeping burn's module paths.
    pub fn save_burnpack(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.sync_running_statistics();
        write_atomically(path, |temporary| {
            let mut store = BurnpackStore::from_file(temporary)
                .auto_extension(false)
                .overwrite(true);
            self.save_into(&mut store).map_err(|err| err.to_string())
        })
    }

    /// Saves as safetensors with torchvision key names, loadable from PyTorch with
    /// `model.load_state_dict(safetensors.torch.load_file(path), strict=False)` on a torchvision
    /// ResNet without `fc` (or `strict=True` after `model.fc = nn.Identity()`).
    ///
    /// `num_batches_tracked` is written as 0 for every BatchNorm: the count only matters to
    /// torch when `momentum=None`, which VirTex never uses.
    pub fn save_torchvision_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        // The same keys, order and values as `save_torchvision_pth` (crate::export).
        let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = self
            .torchvision_state_dict(path)?
            .into_iter()
            .map(|(name, data)| {
                let dtype = match data.dtype {
                    DType::I64 => safetensors::Dtype::I64,
                    _ => safetensors::Dtype::F32,
                };
                (name, dtype, data.shape.to_vec(), data.as_bytes().to_vec())
            })
            .collect();
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| BackboneError::Write {
                path: path.to_path_buf(),
                message: err.to_string(),
            })?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_atomically(path, |temporary| {
            safetensors::serialize_to_file(views, Some(metadata), temporary)
                .map_err(|err| err.to_string())
        })
    }
}

/// Reads every tensor of a `torch.save` file (zip, legacy pickle or tar), keyed by its full
/// name (`model.visual.cnn.conv1.weight`, …); the data stays on disk until a tensor is read.
///
/// The file is recognised and checked first, because burn-store tries zip, then tar, then plain
/// pickle and reports the last failure (a truncated zip archive reads as "Invalid pickle
/// opcode"), and turns a storage it cannot read into zeros. Here a zip archive that is cut
/// short, has a damaged directory or an entry failing its CRC (or that burn-store cannot open)
/// is [`BackboneError::DamagedArchive`]; a legacy pickle file whose storage data ends early is
/// [`BackboneError::Unreadable`]; and a file that is neither zip, pickle nor tar is
/// [`BackboneError::Unreadable`] saying what it looks like instead.
pub fn read_pytorch_snapshots(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
    let io_error = |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    };
    let unreadable = |message: String| BackboneError::Unreadable {
        path: path.to_path_buf(),
        format: "PyTorch",
        message,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut head = Vec::with_capacity(TAR_MAGIC_END);
    (&mut file)
        .take(TAR_MAGIC_END as u64)
        .read_to_end(&mut head)
        .map_err(io_error)?;
    let kind = sniff_pytorch(&head);
    match kind {
        PytorchKind::Zip => {
            if let Some(problem) = zip_problem(&mut file).map_err(io_error)? {
                return Err(BackboneError::DamagedArchive {
                    path: path.to_path_buf(),
                    message: problem,
                });
            }
        }
        PytorchKind::Pickle => {
            if let Some(problem) = legacy_storage_problem(path) {
                return Err(unreadable(problem));
            }
        }
        PytorchKind::Tar => {}
        PytorchKind::Other(what) => {
            return Err(unreadable(format!(
                "not a `torch.save` file (neither a zip archive, a pickle nor a tar \
                 archive): {what}"
            )))
        }
    }
    drop(file);
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    let snapshots = store.get_all_snapshots().map_err(|err| match kind {
        PytorchKind::Zip => BackboneError::DamagedArchive {
            path: path.to_path_buf(),
            message: err.to_string(),
        },
        PytorchKind::Pickle => unreadable(format!(
            "truncated, damaged or unsupported legacy (pickle) .pth file: {err}"
        )),
        _ => unreadable(err.to_string()),
    })?;
    Ok(snapshots.clone())
}

/// Why the storages of a legacy (pre-1.6, pickle) file cannot all be read, or `None`.
///
/// burn-store locates each storage from the sizes the pickle declares and, when a read fails,
/// silently hands back zeros: a truncated download of a hub backbone would load as a network
/// of zeros. So the layout is rebuilt here exactly as burn-store's legacy reader builds it
/// (magic, protocol and system-info pickles, the main pickle read with a data source so it
/// records each storage's extent, the storage-key list, then the data) and the last storage,
/// which ends the file, must be readable to its end. Parse failures return `None`: the reader
/// reports them.
fn legacy_storage_problem(path: &Path) -> Option<String> {
    use burn_store::pytorch::lazy_data::LazyDataSource;
    use burn_store::pytorch::pickle_reader::{
        read_pickle, read_pickle_with_data, skip_pickle, Object,
    };
    use std::io::BufReader;
    use std::sync::Arc;

    let mut reader = BufReader::new(File::open(path).ok()?);
    for _ in 0..3 {
        read_pickle(&mut reader).ok()?;
    }
    let main = reader.stream_position().ok()?;
    skip_pickle(&mut reader).ok()?;
    let Ok(Object::List(keys)) = read_pickle(&mut reader) else {
        return None;
    };
    let keys: Vec<String> = keys
        .into_iter()
        .filter_map(|key| match key {
            Object::String(key) => Some(key),
            _ => None,
        })
        .collect();
    let last = keys.last()?.clone();
    let data_start = reader.stream_position().ok()?;
    let data_size = reader
        .seek(SeekFrom::End(0))
        .ok()?
        .checked_sub(data_start)?;
    let source = Arc::new(LazyDataSource::from_legacy_multi_storage(
        path, data_start, data_size,
    ));
    if let LazyDataSource::LegacyMultiStorage(inner) = source.as_ref() {
        inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_storage_keys(keys);
    }
    reader.seek(SeekFrom::Start(main)).ok()?;
    read_pickle_with_data(&mut reader, source.clone()).ok()?;
    // Where does the last storage stop being readable? Probed one byte at a time (a damaged
    // pickle can declare a storage of 2^60 bytes: reading it whole would size an allocation by
    // it): `read_range` yields a byte inside the storage and the file, an error inside the
    // storage but past the end of the file, and nothing past the end of the storage.
    let probe = |offset: usize| source.read_range(&last, offset, 1);
    let inside = |offset: usize| matches!(probe(offset), Ok(byte) if !byte.is_empty());
    let end = if inside(0) {
        let (mut low, mut high) = (0usize, 1usize);
        while high < usize::MAX && inside(high) {
            low = high;
            high = high.saturating_mul(2);
        }
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if inside(middle) {
                low = middle;
            } else {
                high = middle;
            }
        }
        high
    } else {
        0
    };
    match probe(end) {
        Ok(_) => None,
        Err(err) => Some(format!(
            "its tensor data ends early or is damaged ({data_size} bytes of storage data; the \
             last storage cannot be read past byte {end}: {err}): a truncated download or copy?"
        )),
    }
}

/// burnpack's magic number (`0x4255524E`, "BURN") as written: little-endian.
const BURNPACK_MAGIC: &[u8] = b"NRUB";

/// End of the bytes [`sniff_pytorch`] looks at: a tar header's `ustar` magic sits at 257.
const TAR_MAGIC_END: usize = 262;

/// The container of a `torch.save` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PytorchKind {
    /// PyTorch ≥ 1.6: a zip archive holding `data.pkl` and one entry per storage.
    Zip,
    /// Older PyTorch: pickle streams (protocol 2+ starts with the `PROTO` opcode `\x80`).
    Pickle,
    /// PyTorch < 0.4: a tar archive.
    Tar,
    /// Something else, described.
    Other(&'static str),
}

fn sniff_pytorch(head: &[u8]) -> PytorchKind {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return PytorchKind::Zip;
    }
    if head.first() == Some(&0x80) {
        return PytorchKind::Pickle;
    }
    if head.len() >= TAR_MAGIC_END && &head[257..262] == b"ustar" {
        return PytorchKind::Tar;
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(64)]).to_ascii_lowercase();
    PytorchKind::Other(if head.is_empty() {
        "the file is empty"
    } else if head.len() >= 9 && head[8] == b'{' {
        "it looks like a safetensors file (load it as safetensors)"
    } else if head.starts_with(b"\x1f\x8b") {
        "it is gzip-compressed (decompress it first)"
    } else if text.starts_with("version https://git-lfs") {
        "it is a Git LFS pointer, not the file (run `git lfs pull`)"
    } else if text.trim_start().starts_with("<!doctype html")
        || text.trim_start().starts_with("<html")
    {
        "it is an HTML page (a failed download?)"
    } else if head.starts_with(BURNPACK_MAGIC) {
        "it looks like a burnpack file (load it as burnpack)"
    } else if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "it is a text file"
    } else {
        "its first bytes match no known format"
    })
}

/// Where the backbone sits: the prefix in front of the stem's `conv1.weight`.
fn detect_prefix(snapshots: &[TensorSnapshot]) -> Option<String> {
    let mut candidates: Vec<String> = snapshots
        .iter()
        .map(|s| s.full_path())
        .filter_map(|key| key.strip_suffix("conv1.weight").map(str::to_string))
        .filter(|prefix| prefix.is_empty() || prefix.ends_with('.'))
        .filter(|prefix| !prefix.contains("layer"))
        .collect();
    // The shortest prefix wins (a checkpoint could nest a second network deeper).
    candidates.sort_by_key(|prefix| prefix.len());
    candidates.into_iter().next()
}

/// Keeps the tensors under `prefix`, strips it, and drops the keys a backbone never uses.
/// Returns them and how many backbone keys were ignored.
fn select_backbone(snapshots: Vec<TensorSnapshot>, prefix: &str) -> (Vec<TensorSnapshot>, usize) {
    let mut ignored = 0;
    let kept = snapshots
        .into_iter()
        .filter_map(|mut snapshot| {
            let key = snapshot.full_path();
            let local = key.strip_prefix(prefix)?.to_string();
            if is_ignored_key(&local) {
                ignored += 1;
                return None;
            }
            snapshot.path_stack = Some(local.split('.').map(str::to_string).collect());
            Some(snapshot)
        })
        .collect();
    (kept, ignored)
}

pub(crate) fn burn_to_torchvision(path: &str) -> String {
    BURN_TO_TORCHVISION
        .iter()
        .fold(path.to_string(), |key, (from, to)| key.replace(from, to))
}

/// A ` (did you mean …)` hint from keys that look like a stem convolution.
fn closest_key_hint(snapshots: &[TensorSnapshot]) -> String {
    let mut keys: Vec<String> = snapshots.iter().map(|s| s.full_path()).collect();
    keys.sort();
    match keys.iter().find(|key| key.contains("conv1")) {
        Some(key) => format!(" (the file has `{key}`; {} tensors in all)", keys.len()),
        None => match keys.first() {
            Some(first) => format!(" (its {} tensors start with `{first}`)", keys.len()),
            None => " (the file holds no tensors)".to_string(),
        },
    }
}

/// Turns burn-store's permissive result into a strict one.
fn check_result(
    path: &Path,
    file_key: &dyn Fn(&str) -> String,
    result: &ApplyResult,
) -> Result<()> {
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path: key,
                expected,
                found,
            } => BackboneError::ShapeMismatch {
                path: path.to_path_buf(),
                key: file_key(key),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            ApplyError::DTypeMismatch { path: key, .. }
            | ApplyError::AdapterError { path: key, .. }
            | ApplyError::LoadError { path: key, .. } => BackboneError::BadTensor {
                path: path.to_path_buf(),
                key: file_key(key),
                message: error.to_string(),
            },
        });
    }
    if let Some((missing, _)) = result.missing.first() {
        let mut missing_keys: Vec<&String> = result.missing.iter().map(|(key, _)| key).collect();
        missing_keys.sort();
        let first = missing_keys.first().copied().unwrap_or(missing);
        return Err(BackboneError::MissingTensor {
            path: path.to_path_buf(),
            key: file_key(first),
            hint: String::new(),
            found: result.applied.len(),
            expected: result.applied.len() + result.missing.len(),
        });
    }
    Ok(())
}

/// [`virtex_device::write_atomically`] for the weight writers, whose failures are strings.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    virtex_device::write_atomically(path, |temporary| {
        write(temporary).map_err(std::io::Error::other)
    })
    .map_err(|err| BackboneError::Write {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_round_trip_through_the_table() {
        let burn = "layer2.0.downsample.conv.weight";
        assert_eq!(burn_to_torchvision(burn), "layer2.0.downsample.0.weight");
        let remapper = KeyRemapper::from_patterns(TORCHVISION_TO_BURN.to_vec()).unwrap();
        let snapshot = TensorSnapshot::from_data(
            burn::tensor::TensorData::new(vec![0f32], [1]),
            "layer2.0.downsample.1.running_var"
                .split('.')
                .map(str::to_string)
                .collect(),
            vec![],
            burn::module::ParamId::new(),
        );
        let (mapped, _) = remapper.remap(vec![snapshot]);
        assert_eq!(mapped[0].full_path(), "layer2.0.downsample.bn.running_var");
    }

    #[test]
    fn formats_parse_from_their_names() {
        assert_eq!("pth".parse::<WeightsFormat>(), Ok(WeightsFormat::Pytorch));
        assert_eq!(
            "SafeTensors".parse::<WeightsFormat>(),
            Ok(WeightsFormat::Safetensors)
        );
        assert!("onnx".parse::<WeightsFormat>().is_err());
    }
}
