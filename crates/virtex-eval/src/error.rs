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
    /// SPICE cannot run here: no jar given, the jar does not exist, or no Java.
    #[error("SPICE cannot run: {0}")]
    SpiceUnavailable(#[from] crate::captions::SpiceUnavailable),
    /// The Java executable could not be started.
    #[error("cannot start Java `{java}` for SPICE: {source}")]
    SpiceJava {
        /// The executable that was tried.
        java: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The SPICE jar ran and exited with a failure status.
    #[error("SPICE failed: `{command}` exited with {status}{}", stderr_section(.stderr_tail))]
    SpiceFailed {
        /// The command line that was run.
        command: String,
        /// Its exit status, as the OS reports it.
        status: String,
        /// The last lines the jar wrote to stderr (or stdout when stderr was empty).
        stderr_tail: String,
    },
    /// The SPICE output file is missing or is not the jar's JSON.
    #[error("SPICE output `{path}` is unusable: {message}")]
    SpiceOutput {
        /// The output file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The SVM cannot be trained on these labels (for instance a single class present).
    #[error("cannot train an SVM for {what}: {message}")]
    Training {
        /// The class (or fold) being trained.
        what: String,
        /// Why.
        message: String,
    },
}

fn stderr_section(tail: &str) -> String {
    if tail.trim().is_empty() {
        " and printed nothing".to_string()
    } else {
        format!("; its output ends with:\n{tail}")
    }
}

/// Result type of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
