use std::path::PathBuf;

/// Errors of the evaluation crate. Every variant names the file, line, class or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory does not have the VOCdevkit layout.
    #[error("`{path}` is not a VOC2007 directory: {message}")]
    VocLayout {
        /// The directory that was given.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// A line of an `ImageSets/Main/<class>_<split>.txt` file is malformed.
    #[error("`{path}` line {line}: {message}")]
    VocAnnotation {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A JSON file is not what the command expects.
    #[error("`{path}` is not a valid {what}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file should hold, e.g. "COCO captions annotation file".
        what: &'static str,
        /// What the parser reported.
        message: String,
    },
    /// Array sizes disagree (features, labels, captions).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A hyper-parameter is out of its domain.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The SVM cannot be trained on these labels (for instance a single class present).
    #[error("cannot train an SVM for {what}: {message}")]
    Training {
        /// The class (or fold) being trained.
        what: String,
        /// Why.
        message: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
