use std::path::PathBuf;

use burn::tensor::DType;

use virtex_device::dtype_name;

/// Errors of the backbone crate. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The architecture name is not one of the presets.
    #[error(
        "unknown ResNet architecture `{0}`: expected one of resnet18, resnet34, resnet50, \
         resnet101, resnet152, wide_resnet50_2 (optionally prefixed by `torchvision::`)"
    )]
    UnknownArchitecture(String),
    /// The configuration cannot build a network.
    #[error("invalid ResNet configuration: {0}")]
    InvalidConfig(String),
    /// A file could not be opened or read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a checkpoint in any format we read, or is damaged.
    #[error("`{path}` is not a readable {format} checkpoint: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The format that was tried.
        format: &'static str,
        /// What the reader reported.
        message: String,
    },
    /// A `.pth` zip archive that ends early or whose directory is damaged (an interrupted
    /// download or copy, most often).
    #[error("`{path}` is a truncated or damaged .pth (zip) file: {message}")]
    DamagedArchive {
        /// The file.
        path: PathBuf,
        /// What is wrong with the archive.
        message: String,
    },
    /// A tensor is stored with a dtype that cannot fill its parameter (integers, bool,
    /// quantized). float16, bfloat16 and float64 are converted and never give this error.
    #[error(
        "`{path}`: tensor `{key}` is stored as {}, the model expects {} (float16, bfloat16 and \
         float64 weights are converted; integer, bool and quantized tensors are refused)",
        dtype_name(*found),
        dtype_name(*expected)
    )]
    UnsupportedDType {
        /// The file.
        path: PathBuf,
        /// The key, as named in the file.
        key: String,
        /// The dtype stored in the file.
        found: DType,
        /// The dtype of the parameter it would fill.
        expected: DType,
    },
    /// A tensor the backbone needs is absent from the checkpoint.
    #[error(
        "`{path}` does not hold the backbone tensor `{key}`{hint} ({found} of {expected} \
         backbone tensors found; is this the right architecture and checkpoint?)"
    )]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The first missing key, in torchvision naming.
        key: String,
        /// A suggestion such as ` (did you mean `visual.cnn.conv1.weight`?)`, or empty.
        hint: String,
        /// How many backbone tensors were present.
        found: usize,
        /// How many the backbone needs.
        expected: usize,
    },
    /// A tensor has the wrong shape for the configured architecture.
    #[error("`{path}`: tensor `{key}` has shape {found:?}, the backbone expects {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The key, in torchvision naming.
        key: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// Any other failure while applying a tensor.
    #[error("`{path}`: cannot load tensor `{key}`: {message}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// Writing a checkpoint failed.
    #[error("cannot write `{path}`: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = BackboneError> = std::result::Result<T, E>;
