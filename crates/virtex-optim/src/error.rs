/// Errors of the optimisation crate. Every variant names the setting, pattern or parameter path
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum LookaheadError {
    /// A regular expression of the parameter-group configuration does not compile.
    #[error("invalid regular expression `{pattern}` in `{setting}`: {message}")]
    InvalidRegex {
        /// The configuration field, e.g. `groups.no_decay` or `groups.rules[0].pattern`.
        setting: String,
        /// The pattern as written.
        pattern: String,
        /// What the regex compiler reported.
        message: String,
    },
    /// A configuration value is out of range.
    #[error("invalid setting `{setting}` = {value}: {expected}")]
    InvalidConfig {
        /// The configuration field, e.g. `lookahead.k`.
        setting: String,
        /// The value found.
        value: String,
        /// What is expected instead.
        expected: String,
    },
    /// The module has no trainable parameter, so there is nothing to optimise.
    #[error(
        "the module has no trainable parameter (only parameters of an autodiff module that \
         require gradients are optimised)"
    )]
    NoParameters,
    /// A saved optimizer record does not fit the module or configuration it is loaded into.
    #[error("optimizer record does not fit the module: {subject}: {problem}")]
    RecordMismatch {
        /// The parameter path or record part at fault.
        subject: String,
        /// What differs.
        problem: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = LookaheadError> = std::result::Result<T, E>;

pub(crate) fn invalid(
    setting: impl Into<String>,
    value: impl std::fmt::Display,
    expected: impl Into<String>,
) -> LookaheadError {
    LookaheadError::InvalidConfig {
        setting: setting.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}
