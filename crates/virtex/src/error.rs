use std::path::PathBuf;

use burn::tensor::DType;
use virtex_backbone::dtype_name;

use virtex_backbone::BackboneError;
use virtex_textual::TextualError;

/// Errors of the `virtex` crate. Every variant names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum VirtexError {
    /// The backbone could not be built or loaded.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// A textual-head configuration is invalid.
    #[error(transparent)]
    Textual(#[from] TextualError),
    /// The textual part of a checkpoint does not fit the model.
    #[error("`{path}`: {source}")]
    TextualWeights {
        /// The checkpoint.
        path: PathBuf,
        /// What the textual loader reported (names the key).
        source: TextualError,
    },
    /// The model configuration is inconsistent.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The decoding configuration cannot run on this model.
    #[error("invalid decoding configuration: {0}")]
    InvalidDecoding(String),
    /// A file could not be opened or read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a readable checkpoint of the expected format.
    #[error("`{path}` is not a readable {format} checkpoint: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The format that was tried.
        format: &'static str,
        /// What the reader reported.
        message: String,
    },
    /// The file is readable but not a VirTex captioning checkpoint.
    #[error("`{path}` is not a VirTex captioning checkpoint: {message}")]
    NotACaptioningCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The file is readable but not a checkpoint of the pretext model asked for.
    #[error("`{path}` is not a VirTex {model} checkpoint: {message}")]
    NotAPretextCheckpoint {
        /// The file.
        path: PathBuf,
        /// The model asked for (`classification`, `masked LM`).
        model: &'static str,
        /// What is missing.
        message: String,
    },
    /// A tensor has a shape the model does not expect.
    #[error("`{path}`: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The key in the file.
        key: String,
        /// Shape the model expects (in the file's layout).
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
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
        /// The key in the file.
        key: String,
        /// The dtype stored in the file.
        found: DType,
        /// The dtype of the parameter it would fill.
        expected: DType,
    },
    /// A tensor the model needs is absent.
    #[error("`{path}` does not hold the tensor `{key}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The first missing key.
        key: String,
    },
    /// The file holds a model tensor this model has no place for.
    #[error("`{path}`: tensor `{key}` does not belong to this model ({message})")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the key suggests.
        message: String,
    },
    /// A duplicated shared tensor differs from the copy it should equal.
    #[error("`{path}`: `{key}` should be a copy of `{twin}` (shared between the two directions) but differs")]
    DuplicateMismatch {
        /// The file.
        path: PathBuf,
        /// The duplicate key (`backward_textual.…`).
        key: String,
        /// The key it should equal (`textual.…`).
        twin: String,
    },
    /// A saved model of another kind (forward-only vs bicaptioning).
    #[error("`{path}` holds a {found} model, not a {expected} one")]
    WrongModelKind {
        /// The file.
        path: PathBuf,
        /// The kind asked for.
        expected: &'static str,
        /// The kind in the file.
        found: String,
    },
    /// A saved model whose architecture differs from the model it is loaded into.
    #[error(
        "`{path}` holds a different architecture: `{key}` is {found} in the file, {expected} in \
         the configured model"
    )]
    ArchitectureMismatch {
        /// The file.
        path: PathBuf,
        /// The first differing configuration key (e.g. `textual.hidden_size`).
        key: String,
        /// The configured model's value (JSON).
        expected: String,
        /// The file's value (JSON).
        found: String,
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
pub type Result<T, E = VirtexError> = std::result::Result<T, E>;
