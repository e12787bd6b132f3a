use std::path::PathBuf;

/// Errors of the pretraining job. Each names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid configuration or command line.
    #[error("configuration: {0}")]
    Config(String),
    /// The dataset or tokenizer could not be loaded, or a batch failed.
    #[error("data: {0}")]
    Data(#[from] virtex_data::DataError),
    /// A file could not be read or written.
    #[error("`{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model could not be built, loaded or saved (the error names the file).
    #[error("model: {0}")]
    Model(#[from] virtex::VirtexError),
    /// A checkpoint could not be loaded.
    #[error("checkpoint `{path}`: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Too many consecutive non-finite steps.
    #[error(
        "stopping: {count} consecutive steps had a non-finite loss or gradient (last at \
         iteration {iteration}); a checkpoint was written to `{checkpoint}`"
    )]
    Diverged {
        /// Consecutive skipped steps.
        count: u64,
        /// The last iteration.
        iteration: u64,
        /// The checkpoint written before stopping.
        checkpoint: PathBuf,
    },
    /// Data-parallel training failed (a collective operation or a replica).
    #[error("data parallel: {0}")]
    DataParallel(String),
    /// The device request cannot be served.
    #[error(transparent)]
    Device(#[from] virtex_device::DeviceError),
}
