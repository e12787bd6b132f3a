//! The embedded sample: 13 real photographs in COCO Captions layout (see `sample/README.md`).

use std::path::PathBuf;

/// Root of the embedded COCO-layout sample (`annotations/captions_{train,val}2017.json`,
/// `train2017/` with 10 images, `val2017/` with 3), shipped in this crate's source directory.
pub fn sample_data_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample")
}

/// A SentencePiece BPE vocabulary (400 pieces) trained on the sample's train captions with
/// upstream's trainer flags, as an official `.model` file.
pub fn sample_vocab_path() -> PathBuf {
    sample_data_root().join("vocab").join("coco_sample.model")
}
