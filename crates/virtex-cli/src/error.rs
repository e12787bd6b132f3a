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
    /// A training run (the linear probe) failed. Boxed: the training error is large and
    /// every command returns this enum.
    #[error(transparent)]
    Train(Box<virtex_train::TrainError>),
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
    /// A size or count argument outside what can work (e.g. `--crop 0`, `--batch-size 0`,
    /// `--short-side 100000`).
    #[error("invalid {option} {value}: {reason}")]
    InvalidArgument {
        /// The option, as written on the command line (`--crop`).
        option: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: String,
    },
    /// The output path would destroy an input or a training checkpoint
    /// ([`virtex_device::check_output_path`]).
    #[error(transparent)]
    OutputConflict(#[from] virtex_device::OutputConflict),
    /// The tokenizer's vocabulary is not the one the checkpoint was trained with: its ids would
    /// decode to the wrong words (larger vocabulary) or fail after inference (smaller).
    #[error(
        "the tokenizer `{vocab}` has {vocab_size} pieces but the checkpoint `{checkpoint}` \
         predicts over a vocabulary of {checkpoint_vocab_size}; use the tokenizer the model was \
         trained with"
    )]
    VocabularyMismatch {
        /// The tokenizer file.
        vocab: PathBuf,
        /// Its number of pieces.
        vocab_size: usize,
        /// The checkpoint file.
        checkpoint: PathBuf,
        /// The vocabulary size of the checkpoint's textual head.
        checkpoint_vocab_size: usize,
    },
    /// `eval-voc07 --run` names a directory that is not a training run (missing, a file, a
    /// checkpoint directory, or a directory holding nothing a run writes).
    #[error("`{directory}` is not a training run directory: {reason}")]
    NotARunDirectory {
        /// The directory given.
        directory: PathBuf,
        /// What it is instead, and what to pass.
        reason: String,
    },
    /// A file `eval-voc07 --run` keeps in the run directory cannot be used: `voc07.jsonl`
    /// with a damaged line or records made with other settings, or held by another
    /// `eval-voc07 --run`.
    #[error("`{path}`: {message}")]
    RunFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Evaluating one checkpoint of a run failed (an unreadable model file, an SVM that cannot
    /// be trained on its features).
    #[error("checkpoint `{checkpoint}`: {source}")]
    Checkpoint {
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// What went wrong.
        source: Box<CliError>,
    },
    /// `--checkpoint` is a directory without a checkpoint: neither a checkpoint directory
    /// (`model.safetensors`) nor a training run holding a `checkpoint_<digits>/` directory with
    /// `model.safetensors` and `state.json`.
    #[error(
        "no checkpoint in the directory `{directory}`: expected `model.safetensors`, or \
         `checkpoint_<digits>/` directories holding `model.safetensors` and `state.json`"
    )]
    NoCheckpoint {
        /// The directory given.
        directory: PathBuf,
    },
    /// A `--weights` argument that is neither an existing file nor the name of released
    /// weights (`virtex weights list`).
    #[error(
        "`{argument}` is neither a file nor a released weights name; `virtex weights list` \
         prints the released names (e.g. `bicaptioning_R_50_L1_H2048`)"
    )]
    UnknownWeights {
        /// The argument given.
        argument: PathBuf,
    },
    /// Downloading released weights: the server answered with an HTTP error status.
    #[error("downloading `{url}`: the server answered HTTP {status} {reason}")]
    WeightsHttp {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The status line's reason phrase.
        reason: String,
    },
    /// Downloading released weights: the connection failed or was cut (what arrived is kept as
    /// `NAME.pth.part` and the next fetch resumes from it).
    #[error("downloading `{url}`: {message}")]
    WeightsNetwork {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A weights file whose SHA-256 is not the expected one (recorded at its first download or
    /// pinned with `--sha256`).
    #[error("`{path}` has SHA-256 {actual}, expected {expected}: {hint}")]
    ChecksumMismatch {
        /// The file checked.
        path: PathBuf,
        /// The expected digest (64 lowercase hex digits).
        expected: String,
        /// The file's digest.
        actual: String,
        /// Where the expected digest came from, what was done with the file, what to do.
        hint: String,
    },
    /// A file of the released-weights cache cannot be read or written.
    #[error("weights cache `{path}`: {message}")]
    WeightsCache {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl From<virtex_train::TrainError> for CliError {
    fn from(err: virtex_train::TrainError) -> Self {
        Self::Train(Box::new(err))
    }
}
