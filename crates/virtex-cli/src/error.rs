use std::path::PathBuf;

/// Everything a `virtex` command can fail with. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The device request was invalid or cannot be served.
    #[error(transparent)]
    Device(#[from] virtex_device::DeviceError),
    /// Loading or saving backbone weights failed.
    #[error(transparent)]
    Backbone(#[from] virtex_backbone::BackboneError),
    /// Loading a captioning model or decoding failed.
    #[error(transparent)]
    Virtex(#[from] virtex::VirtexError),
    /// Data, tokenizer or caption-file error.
    #[error(transparent)]
    Data(#[from] virtex_data::DataError),
    /// Evaluation error.
    #[error(transparent)]
    Eval(#[from] virtex_eval::EvalError),
    /// An image could not be read or decoded.
    #[error("cannot read image `{path}`: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An input path does not exist or holds no images.
    #[error("{0}")]
    Input(String),
    /// An output file could not be written.
    #[error("cannot write `{path}`: {message}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Invalid combination of arguments.
    #[error("{0}")]
    Usage(String),
}
