use burn::tensor::DType;

use virtex_device::dtype_name;

/// Errors of the textual crate. Every variant names the value or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TextualError {
    /// A textual head name that is not `transdec_postnorm::L{L}_H{H}_A{A}_F{F}` (or `prenorm`).
    #[error(
        "cannot parse textual head name `{name}`: {reason} (expected e.g. \
         `transdec_postnorm::L1_H2048_A32_F8192` or `transdec_prenorm::L1_H1024_A16_F4096`)"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration cannot build a head.
    #[error("invalid textual head configuration: {0}")]
    InvalidConfig(String),
    /// A tensor the head needs is absent from a state dict.
    #[error("the state dict has no tensor `{key}` ({found} of {expected} head tensors found)")]
    MissingTensor {
        /// The first missing key, in PyTorch naming (with the caller's prefix).
        key: String,
        /// How many head tensors were present.
        found: usize,
        /// How many the head needs.
        expected: usize,
    },
    /// A tensor has a shape the configured head does not expect.
    #[error("tensor `{key}` has shape {found:?}, the head expects {expected:?}")]
    ShapeMismatch {
        /// The key, in PyTorch naming (with the caller's prefix).
        key: String,
        /// Shape in PyTorch layout that the head expects.
        expected: Vec<usize>,
        /// Shape found in the state dict.
        found: Vec<usize>,
    },
    /// A key inside the head's namespace that the head has no parameter for.
    #[error("tensor `{key}` does not belong to this head (is it a {hint}?)")]
    UnexpectedTensor {
        /// The key, in PyTorch naming (with the caller's prefix).
        key: String,
        /// What the key suggests about the checkpoint.
        hint: String,
    },
    /// A tensor stored with a dtype that cannot fill its parameter (integers, bool, quantized).
    /// float16, bfloat16 and float64 are converted and never give this error.
    #[error(
        "tensor `{key}` is stored as {}, the head expects {} (float16, bfloat16 and float64 \
         weights are converted; integer, bool and quantized tensors are refused)",
        dtype_name(*found),
        dtype_name(*expected)
    )]
    UnsupportedDType {
        /// The key, in PyTorch naming (with the caller's prefix).
        key: String,
        /// The dtype stored in the state dict.
        found: DType,
        /// The dtype of the parameter it would fill.
        expected: DType,
    },
    /// Any other failure while reading or applying a tensor.
    #[error("cannot load tensor `{key}`: {message}")]
    BadTensor {
        /// The key.
        key: String,
        /// What went wrong.
        message: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = TextualError> = std::result::Result<T, E>;
