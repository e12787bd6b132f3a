//! Random damage to real checkpoints, fed to every reader of weights: `ResNet::load_weights`
//! (zip `.pth`, legacy pickle `.pth`, safetensors, burnpack, the CNN of a full VirTex
//! checkpoint), the official import (`from_official_checkpoint`, `load_official_weights`) and
//! our own format (`CaptioningModel::load`, `load_weights`). Each must return `Ok` or `Err`:
//! never panic, not even a panic that burn-store catches itself, and never abort (a panic inside
//! burn-store's applier aborts with a double free, which ends this test process).
//!
//! Mutations: random bytes, bit flips, truncations, overwritten ranges; inside a `.pth` zip,
//! the same applied to one entry (the pickle or a storage) with the archive rebuilt around it so
//! the CRCs hold and the damage reaches the pickle reader, and storage classes swapped
//! (`FloatStorage` → `LongStorage`, `BoolStorage`, …); in a safetensors header, a tensor's
//! dtype string, shape or offsets edited, or a tensor dropped or renamed.
//!
//! Each target runs for `VIRTEX_FUZZ_SECONDS` seconds (default 10), driving proptest's
//! `TestRunner` round after round with deterministic seeds; `--nocapture` shows the number of
//! cases run. `VIRTEX_FUZZ_VERBOSE=1` prints every case before it runs (to find the input of an
//! abort, which no assertion can report).

mod common;

#[path = "../../virtex-backbone/tests/common/files.rs"]
mod files;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use burn_store::{BurnpackWriter, ModuleSnapshot};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use virtex::backbone::{BlockKind, ResNet, ResNetConfig};
use virtex::{CaptioningModel, ImportOptions};

use common::{fixture, B};
use files::{read_zip, write_zip};

fn backbone_fixture(name: &str) -> PathBuf {
    fixture(&format!("../../../virtex-backbone/tests/fixtures/{name}"))
}

/// A byte-level change.
#[derive(Debug, Clone)]
enum Damage {
    /// Flip bit `bit` of the byte at `at` (a fraction of the length), for each pair.
    FlipBits(Vec<(f64, u8)>),
    /// Keep only this fraction of the bytes.
    Truncate(f64),
    /// Overwrite bytes from `at` with `bytes`.
    Overwrite { at: f64, bytes: Vec<u8> },
    /// Replace everything with random bytes.
    Random(Vec<u8>),
}

impl Damage {
    fn apply(&self, data: &mut Vec<u8>) {
        let index = |at: f64, len: usize| ((at * len as f64) as usize).min(len.saturating_sub(1));
        match self {
            Self::FlipBits(flips) if !data.is_empty() => {
                for (at, bit) in flips {
                    let i = index(*at, data.len());
                    data[i] ^= 1 << (bit % 8);
                }
            }
            Self::Truncate(keep) => data.truncate((keep * data.len() as f64) as usize),
            Self::Overwrite { at, bytes } if !data.is_empty() => {
                let start = index(*at, data.len());
                for (offset, byte) in bytes.iter().enumerate() {
                    if let Some(slot) = data.get_mut(start + offset) {
                        *slot = *byte;
                    }
                }
            }
            Self::Random(bytes) => *data = bytes.clone(),
            _ => {}
        }
    }
}

/// An edit of one tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
enum HeaderEdit {
    DType(&'static str),
    Shape(Vec<u64>),
    /// Reverse the dimensions (the byte count stays right, the layout does not).
    ReverseShape,
    Offsets(u64, u64),
    Drop,
    Rename,
    /// Set a number of the model configuration in the metadata (`virtex.config`): the one at
    /// `leaf` (a fraction of the numeric leaves).
    Config {
        leaf: f64,
        value: serde_json::Value,
    },
}

/// One change to a checkpoint file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Damage to the file's bytes.
    Bytes(Damage),
    /// Damage to one entry of a zip archive (a fraction of the entries; the pickle when
    /// `pickle`), the archive rebuilt with valid CRCs.
    ZipEntry {
        entry: f64,
        pickle: bool,
        damage: Damage,
    },
    /// Every float storage becomes this class (in the pickle of a zip, or in a legacy file).
    StorageClass(&'static str),
    /// An edit of the tensor at `tensor` (a fraction of the sorted keys) in a safetensors
    /// header, the header re-serialised.
    Header { tensor: f64, edit: HeaderEdit },
}

const STORAGE_CLASSES: [&str; 10] = [
    "LongStorage",
    "IntStorage",
    "BoolStorage",
    "ByteStorage",
    "HalfStorage",
    "DoubleStorage",
    "BFloat16Storage",
    "ComplexFloatStorage",
    "QInt8Storage",
    "NoSuchStorage",
];

const SAFETENSORS_DTYPES: [&str; 13] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "U32", "I8", "U8", "BOOL", "F8_E4M3", "C64", "XYZ",
];

const FLOAT_GLOBAL: &[u8] = b"ctorch\nFloatStorage\n";

impl Mutation {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut data = bytes.to_vec();
        match self {
            Self::Bytes(damage) => damage.apply(&mut data),
            Self::ZipEntry {
                entry,
                pickle,
                damage,
            } => {
                let mut entries = read_zip(bytes);
                let index = match pickle {
                    true => entries
                        .iter()
                        .position(|(name, _)| name.ends_with("data.pkl")),
                    false => Some(((entry * entries.len() as f64) as usize).min(entries.len() - 1)),
                };
                if let Some(index) = index {
                    damage.apply(&mut entries[index].1);
                }
                data = write_zip(&entries);
            }
            Self::StorageClass(class) => {
                let replace = |pickle: &[u8]| -> Vec<u8> {
                    let Some(at) = (0..pickle.len().saturating_sub(FLOAT_GLOBAL.len()))
                        .find(|&at| pickle[at..].starts_with(FLOAT_GLOBAL))
                    else {
                        return pickle.to_vec();
                    };
                    let mut edited = pickle[..at].to_vec();
                    edited.extend(format!("ctorch\n{class}\n").as_bytes());
                    edited.extend(&pickle[at + FLOAT_GLOBAL.len()..]);
                    edited
                };
                if bytes.starts_with(b"PK\x03\x04") {
                    let mut entries = read_zip(bytes);
                    for (name, entry) in &mut entries {
                        if name.ends_with("data.pkl") {
                            *entry = replace(entry);
                        }
                    }
                    data = write_zip(&entries);
                } else {
                    data = replace(bytes);
                }
            }
            Self::Header { tensor, edit } => data = edit_header(bytes, *tensor, edit),
        }
        data
    }
}

fn edit_header(bytes: &[u8], tensor: f64, edit: &HeaderEdit) -> Vec<u8> {
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let mut keys: Vec<String> = header
        .keys()
        .filter(|key| *key != "__metadata__")
        .cloned()
        .collect();
    keys.sort();
    let key = keys[((tensor * keys.len() as f64) as usize).min(keys.len() - 1)].clone();
    if let HeaderEdit::Config { leaf, value } = edit {
        let Some(config) = header
            .get_mut("__metadata__")
            .and_then(|metadata| metadata.get_mut("virtex.config"))
        else {
            return bytes.to_vec();
        };
        let mut tree: serde_json::Value = serde_json::from_str(config.as_str().unwrap()).unwrap();
        let mut leaves = Vec::new();
        numeric_leaves(&mut tree, &mut leaves);
        if !leaves.is_empty() {
            let index = ((leaf * leaves.len() as f64) as usize).min(leaves.len() - 1);
            *leaves.swap_remove(index) = value.clone();
        }
        *config = tree.to_string().into();
    } else {
        edit_entry(&mut header, &key, edit);
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + length..]);
    out
}

fn numeric_leaves<'a>(
    value: &'a mut serde_json::Value,
    found: &mut Vec<&'a mut serde_json::Value>,
) {
    match value {
        serde_json::Value::Number(_) => found.push(value),
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|item| numeric_leaves(item, found)),
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .for_each(|item| numeric_leaves(item, found)),
        _ => {}
    }
}

fn edit_entry(
    header: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    edit: &HeaderEdit,
) {
    let entry = header[key].as_object_mut().unwrap();
    match edit {
        HeaderEdit::DType(dtype) => {
            entry.insert("dtype".into(), (*dtype).into());
        }
        HeaderEdit::Shape(shape) => {
            entry.insert("shape".into(), shape.clone().into());
        }
        HeaderEdit::ReverseShape => {
            let mut shape = entry["shape"].as_array().unwrap().clone();
            shape.reverse();
            entry.insert("shape".into(), shape.into());
        }
        HeaderEdit::Offsets(start, end) => {
            entry.insert("data_offsets".into(), vec![*start, *end].into());
        }
        HeaderEdit::Drop => {
            header.remove(key);
        }
        HeaderEdit::Rename => {
            let value = header.remove(key).unwrap();
            header.insert(format!("{key}.renamed"), value);
        }
        HeaderEdit::Config { .. } => unreachable!("handled by edit_header"),
    }
}

fn damage() -> impl Strategy<Value = Damage> {
    // Structure lives in the first bytes (headers, pickles' openings) and in the last ones (a
    // zip's directory): positions favour both ends.
    let position = prop_oneof![0.0..0.02f64, 0.0..1.0f64, 0.97..1.0f64];
    prop_oneof![
        proptest::collection::vec((position.clone(), any::<u8>()), 1..8).prop_map(Damage::FlipBits),
        (0.0..1.0f64).prop_map(Damage::Truncate),
        (position, proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Damage::Random),
    ]
}

fn dimension() -> impl Strategy<Value = u64> {
    prop_oneof![0..40u64, Just(1 << 20), Just(1 << 40), Just(u64::MAX)]
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        proptest::sample::select(&SAFETENSORS_DTYPES[..]).prop_map(HeaderEdit::DType),
        proptest::collection::vec(dimension(), 0..5).prop_map(HeaderEdit::Shape),
        Just(HeaderEdit::ReverseShape),
        (dimension(), dimension()).prop_map(|(start, end)| HeaderEdit::Offsets(start, end)),
        Just(HeaderEdit::Drop),
        Just(HeaderEdit::Rename),
        (
            0.0..1.0f64,
            prop_oneof![
                (0..70u64).prop_map(serde_json::Value::from),
                Just(serde_json::Value::from(1u64 << 20)),
                Just(serde_json::Value::from(1u64 << 40)),
                Just(serde_json::Value::from(u64::MAX)),
                Just(serde_json::Value::from(-1)),
                Just(serde_json::Value::from(0.5)),
            ]
        )
            .prop_map(|(leaf, value)| HeaderEdit::Config { leaf, value }),
    ]
}

/// The mutations that fit a file of the given kind.
fn mutation(kind: Kind) -> BoxedStrategy<Mutation> {
    let bytes = damage().prop_map(Mutation::Bytes);
    match kind {
        Kind::Zip => prop_oneof![
            2 => bytes,
            3 => (0.0..1.0f64, any::<bool>(), damage()).prop_map(|(entry, pickle, damage)| {
                Mutation::ZipEntry {
                    entry,
                    pickle,
                    damage,
                }
            }),
            1 => proptest::sample::select(&STORAGE_CLASSES[..]).prop_map(Mutation::StorageClass),
        ]
        .boxed(),
        Kind::Pickle => prop_oneof![
            4 => bytes,
            1 => proptest::sample::select(&STORAGE_CLASSES[..]).prop_map(Mutation::StorageClass),
        ]
        .boxed(),
        Kind::Safetensors => prop_oneof![
            1 => bytes,
            1 => (0.0..1.0f64, header_edit())
                .prop_map(|(tensor, edit)| Mutation::Header { tensor, edit }),
        ]
        .boxed(),
        Kind::Other => bytes.boxed(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Pickle,
    Safetensors,
    Other,
}

thread_local! {
    /// Panics on this thread since the last reset, caught or not.
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Counts every panic per thread, including those burn-store catches in
/// `TensorSnapshot::to_data`, before the default hook prints it.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.set(panics.get() + 1));
            default(info);
        }));
    });
}

fn seconds() -> u64 {
    std::env::var("VIRTEX_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10)
}

/// Feeds mutations of `original` to `load` (which reads the file at the path it is given)
/// until the deadline; fails on the first panic, naming the mutation and keeping the input.
fn fuzz(
    target: &str,
    original: &[u8],
    kind: Kind,
    extension: &str,
    load: &mut dyn FnMut(&Path) -> bool,
) {
    count_panics();
    let verbose = std::env::var_os("VIRTEX_FUZZ_VERBOSE").is_some();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(format!("{target}.{extension}"));
    let strategy = mutation(kind);
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let (mut cases, mut loaded) = (0u64, 0u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        for (slot, byte) in seed[8..].iter_mut().zip(target.bytes()) {
            *slot = byte;
        }
        let mut runner = TestRunner::new_with_rng(
            Config {
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        for _ in 0..8 {
            let mutation = strategy.new_tree(&mut runner).unwrap().current();
            let bytes = mutation.apply(original);
            std::fs::write(&path, &bytes).unwrap();
            if verbose {
                eprintln!("{target} round {round}: {mutation:?}");
            }
            PANICS.with(|panics| panics.set(0));
            let outcome = catch_unwind(AssertUnwindSafe(|| load(&path)));
            let panics = PANICS.with(Cell::get);
            if outcome.is_err() || panics > 0 {
                let kept = std::env::temp_dir().join(format!("virtex-fuzz-{target}.{extension}"));
                std::fs::write(&kept, &bytes).unwrap();
                let mut described = format!("{mutation:?}");
                described.truncate(2000);
                panic!(
                    "{target}: {panics} panic(s) in round {round} (input kept at {}): {described}",
                    kept.display()
                );
            }
            cases += 1;
            loaded += u64::from(outcome.unwrap());
        }
    }
    eprintln!(
        "{target}: {cases} cases in {} s ({loaded} loaded, {} refused)",
        seconds(),
        cases - loaded
    );
    assert!(cases > 0);
}

fn tiny_backbone(kind: BlockKind) -> ResNet<B> {
    match kind {
        BlockKind::Bottleneck => ResNetConfig::new(kind, [2, 1, 1, 1]).with_stem_channels(4),
        BlockKind::Basic => ResNetConfig::new(kind, [2, 1, 1, 1]).with_stem_channels(8),
    }
    .init::<B>(&Default::default())
}

fn fuzz_backbone(target: &str, file: &Path, kind: Kind, block: BlockKind) {
    let original = std::fs::read(file).unwrap();
    let extension = file.extension().unwrap().to_str().unwrap().to_string();
    let mut model = tiny_backbone(block);
    fuzz(target, &original, kind, &extension, &mut |path| {
        model.load_weights(path).is_ok()
    });
}

#[test]
fn backbone_zip_pth() {
    let file = backbone_fixture("resnet_bottleneck_tiny.pth");
    fuzz_backbone("backbone_zip_pth", &file, Kind::Zip, BlockKind::Bottleneck);
}

#[test]
fn backbone_legacy_pth() {
    let file = backbone_fixture("resnet_basic_tiny_hub.pth");
    fuzz_backbone("backbone_legacy_pth", &file, Kind::Pickle, BlockKind::Basic);
}

#[test]
fn backbone_safetensors() {
    let file = backbone_fixture("resnet_bottleneck_tiny.safetensors");
    fuzz_backbone(
        "backbone_safetensors",
        &file,
        Kind::Safetensors,
        BlockKind::Bottleneck,
    );
}

#[test]
fn backbone_of_a_virtex_checkpoint() {
    let file = backbone_fixture("virtex_checkpoint_tiny.pth");
    fuzz_backbone(
        "backbone_virtex_pth",
        &file,
        Kind::Zip,
        BlockKind::Bottleneck,
    );
}

#[test]
fn backbone_burnpack() {
    let mut model = tiny_backbone(BlockKind::Bottleneck);
    model
        .load_weights(backbone_fixture("resnet_bottleneck_tiny.pth"))
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("backbone.bpk");
    BurnpackWriter::new(model.collect(None, None, false))
        .write_to_file(&file)
        .unwrap();
    fuzz_backbone(
        "backbone_burnpack",
        &file,
        Kind::Other,
        BlockKind::Bottleneck,
    );
}

fn options() -> ImportOptions {
    ImportOptions {
        attention_heads: Some(2),
        dropout: 0.0,
        ..ImportOptions::default()
    }
}

#[test]
fn official_import() {
    let original = std::fs::read(fixture("bicaptioning_tiny.pth")).unwrap();
    let (mut model, _) = CaptioningModel::<B>::from_official_checkpoint(
        fixture("bicaptioning_tiny.pth"),
        &options(),
        &Default::default(),
    )
    .unwrap();
    let mut into_existing = false;
    fuzz(
        "official_import",
        &original,
        Kind::Zip,
        "pth",
        &mut |path| {
            // Alternately a new model from the file, and the file into an existing model.
            into_existing = !into_existing;
            match into_existing {
                true => model.load_official_weights(path).is_ok(),
                false => CaptioningModel::<B>::from_official_checkpoint(
                    path,
                    &options(),
                    &Default::default(),
                )
                .is_ok(),
            }
        },
    );
}

/// A bicaptioning model saved in our format, and the model.
fn ours() -> (tempfile::TempDir, Vec<u8>, CaptioningModel<B>) {
    let (model, _) = CaptioningModel::<B>::from_official_checkpoint(
        fixture("bicaptioning_tiny.pth"),
        &options(),
        &Default::default(),
    )
    .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("model.safetensors");
    model.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (directory, bytes, model)
}

#[test]
fn our_format_load() {
    let (_directory, original, _) = ours();
    fuzz(
        "ours_load",
        &original,
        Kind::Safetensors,
        "safetensors",
        &mut |path| CaptioningModel::<B>::load(path, &Default::default()).is_ok(),
    );
}

#[test]
fn our_format_load_weights() {
    let (_directory, original, mut model) = ours();
    fuzz(
        "ours_load_weights",
        &original,
        Kind::Safetensors,
        "safetensors",
        &mut |path| model.load_weights(path).is_ok(),
    );
}
