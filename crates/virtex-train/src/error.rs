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
    /// A TensorBoard event file is damaged (framing or CRC) or is not one.
    #[error("event file `{path}`: {message}")]
    EventFile {
        /// The event file.
        path: PathBuf,
        /// What is wrong, and where (byte offset).
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
    /// A multi-node collective operation (joining, a training step's all-reduce) did not
    /// finish within `--collective-timeout`: another node died, never joined or is
    /// unreachable. Reported by the watchdog, which then ends the process
    /// (`virtex_train::data_parallel::Watchdog`).
    #[error(
        "multi-node: {what}; no progress within {} (--collective-timeout), so this node stops. \
         Checkpoints are written only by node 0 and only between steps: resume every node \
         with --resume from node 0's run directory (shared or copied)",
        humantime::format_duration(*.timeout)
    )]
    CollectiveTimeout {
        /// The collective call that hung.
        what: String,
        /// The timeout it outlived.
        timeout: std::time::Duration,
    },
    /// The device request cannot be served.
    #[error(transparent)]
    Device(#[from] virtex_device::DeviceError),
    /// An output path would overwrite an input or a checkpoint.
    #[error(transparent)]
    Output(#[from] virtex_device::OutputConflict),
    /// Another process is training in this run directory.
    #[error(
        "the run directory `{path}` is in use by another run (process {holder}): wait for it \
         to finish, or choose another --run-dir"
    )]
    RunDirLocked {
        /// The run directory.
        path: PathBuf,
        /// The process id written by the holder of the lock.
        holder: String,
    },
    /// A new run was pointed at a directory that holds another run's results.
    #[error(
        "the run directory `{path}` already holds another run's results ({found}): continue \
         that run with --resume {path}, or choose another --run-dir (nothing was written)",
        found = .found.join(", ")
    )]
    RunDirHoldsResults {
        /// The run directory.
        path: PathBuf,
        /// What is there (file and checkpoint names).
        found: Vec<String>,
    },
    /// `--resume` of a run that has already run all its iterations.
    #[error(
        "the run in `{path}` is already complete (iteration {iteration} of {iteration}); \
         nothing to do (raise optim.num_iterations in a new run to train longer)"
    )]
    AlreadyComplete {
        /// The run directory.
        path: PathBuf,
        /// Its last iteration.
        iteration: u64,
    },
    /// The run stopped on an error after the model's state was saved.
    #[error(
        "{cause}\nthe work up to iteration {iteration} is saved in `{checkpoint}`: fix the \
         cause, then continue with --resume {run_dir}"
    )]
    Stopped {
        /// What stopped the run.
        cause: Box<TrainError>,
        /// The last completed iteration (the checkpoint's).
        iteration: u64,
        /// The checkpoint written before stopping.
        checkpoint: PathBuf,
        /// The run directory to resume.
        run_dir: PathBuf,
    },
}
