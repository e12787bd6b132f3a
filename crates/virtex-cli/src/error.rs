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
    /// Data error: an image that cannot be read or decoded, no image in the inputs, a
    /// tokenizer or caption file.
    #[error(transparent)]
    Data(#[from] virtex_data::DataError),
    /// Evaluation error.
    #[error(transparent)]
    Eval(#[from] virtex_eval::EvalError),
    /// An input file is missing or empty (e.g. a VOC split).
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
