use std::path::PathBuf;

use crate::ImageId;

/// Errors of the data crate. Every variant names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The classes or labels of a classification dataset cannot be determined.
    #[error("`{path}`: {message}")]
    Classes {
        /// The directory or file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A line of a classification label file cannot be used.
    #[error("`{path}`:{line}: {message}")]
    LabelLine {
        /// The label file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A file or directory could not be opened, read or written.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or does not have the expected structure.
    #[error("`{path}`:{line}:{column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
        /// What the parser reported.
        message: String,
    },
    /// An annotation refers to an image id that the `images` list of the file does not define.
    #[error("`{annotations}`: annotation {annotation_id} refers to image id {image_id}, which is not in the `images` list")]
    UnknownImageId {
        /// The annotation file.
        annotations: PathBuf,
        /// The annotation's own id.
        annotation_id: String,
        /// The image id it refers to.
        image_id: ImageId,
    },
    /// An annotated image file does not exist.
    #[error("`{annotations}` lists image {image_id} as `{path}`, which does not exist (use skip_bad_images to skip such images)")]
    MissingImage {
        /// The annotation file.
        annotations: PathBuf,
        /// The image id.
        image_id: ImageId,
        /// The expected image path.
        path: PathBuf,
    },
    /// A line of a plain captions file (JSON lines or TSV) cannot be used.
    #[error("`{path}`:{line}: {problem}")]
    CaptionLine {
        /// The captions file.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong with the line.
        problem: CaptionLineProblem,
    },
    /// An image that a plain captions file lists does not exist.
    #[error("`{captions}`:{line}: image `{path}` does not exist (use skip_bad_images to skip such images)")]
    MissingListedImage {
        /// The captions file.
        captions: PathBuf,
        /// 1-based line of the image's first occurrence.
        line: usize,
        /// The image path, resolved against the image root.
        path: PathBuf,
    },
    /// A directory of plain captions files has no file for a split.
    #[error("no captions file for split `{split}` in `{dir}` (expected one of {})", display_paths(.tried))]
    MissingSplitFile {
        /// The directory searched.
        dir: PathBuf,
        /// The split name, e.g. `train`.
        split: String,
        /// The file names looked for.
        tried: Vec<PathBuf>,
    },
    /// An image file is empty (zero bytes).
    #[error("image `{path}` is empty (0 bytes)")]
    EmptyImage {
        /// The image file.
        path: PathBuf,
    },
    /// An image file ends before its data is complete.
    #[error("image `{path}` is truncated: {message}")]
    TruncatedImage {
        /// The image file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// An image file cannot be decoded (corrupt or in an unsupported format).
    #[error("cannot decode image `{path}`: {message}")]
    CorruptImage {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },
    /// An image claims more pixels than the decoder accepts ([`crate::ImageLimits`]): the guard
    /// against decompression bombs, small files whose header claims a huge size.
    #[error(
        "image `{path}` is {width}x{height} = {pixels} pixels, above the limit of {max_pixels} \
         (a guard against decompression bombs: a small file can claim a huge size); if the image \
         is genuine, raise the limit with `virtex_data::set_image_limits` (the `max_image_pixels` \
         setting)",
        pixels = pixel_count(*.width, *.height)
    )]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// Width its header claims.
        width: u64,
        /// Height its header claims.
        height: u64,
        /// The limit in force ([`crate::ImageLimits::max_pixels`]).
        max_pixels: u64,
    },
    /// An image file is larger than any JPEG or PNG within the pixel limit can be (checked before
    /// it is read whole, so a huge or endless file is not loaded into memory).
    #[error(
        "image file `{path}` is larger than {max_bytes} bytes, more than an image within the \
         pixel limit can take; if the image is genuine, raise the limit with \
         `virtex_data::set_image_limits` (the `max_image_pixels` setting)"
    )]
    ImageFileTooLarge {
        /// The image file.
        path: PathBuf,
        /// The most bytes accepted ([`crate::ImageLimits::max_file_bytes`]).
        max_bytes: u64,
    },
    /// A transform step would produce an image above the pixel limit (e.g. resizing the shorter
    /// side of a very elongated image); refused before anything is allocated.
    #[error(
        "transform {step} would make {} {width}x{height} = {pixels} pixels, above the limit of \
         {max_pixels}; use a smaller size, or raise the limit with \
         `virtex_data::set_image_limits` (the `max_image_pixels` setting)",
        display_source(.path.as_deref()),
        pixels = pixel_count(*.width, *.height)
    )]
    TransformTooLarge {
        /// The image file, when known.
        path: Option<PathBuf>,
        /// The step, e.g. `SmallestMaxSize(100000)`.
        step: String,
        /// Output width the step would produce.
        width: u64,
        /// Output height the step would produce.
        height: u64,
        /// The limit in force ([`crate::ImageLimits::max_pixels`]).
        max_pixels: u64,
    },
    /// An annotation's `file_name` is not a plain relative path inside the image directory
    /// (absolute, or with `..`, root or drive components): refused so an annotation file
    /// cannot make the loader read files elsewhere on the machine.
    #[error(
        "`{annotations}` lists image {image_id} as {file_name:?}, which is not a relative path \
         inside the image directory ({problem}); the file is not read"
    )]
    UnsafeImagePath {
        /// The annotation file.
        annotations: PathBuf,
        /// The image id.
        image_id: ImageId,
        /// The `file_name` as written in the annotation file.
        file_name: String,
        /// What is wrong with it, e.g. "it has a `..` component".
        problem: String,
    },
    /// Image files and directories given as inputs hold no JPEG or PNG image.
    #[error("no JPEG or PNG image in {}", display_paths(.inputs))]
    NoImages {
        /// The files and directories given.
        inputs: Vec<PathBuf>,
    },
    /// A dataset has no usable sample.
    #[error("dataset `{path}` has no usable image with captions")]
    EmptyDataset {
        /// The annotation file or image directory.
        path: PathBuf,
    },
    /// A tokenizer model file is not a model we can read.
    #[error("`{path}` is not a readable tokenizer model: {message}")]
    InvalidModel {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model is a valid SentencePiece model that uses a feature we do not implement.
    #[error("`{path}`: unsupported SentencePiece model: {message}")]
    UnsupportedModel {
        /// The model file.
        path: PathBuf,
        /// The unsupported feature.
        message: String,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownTokenId {
        /// The id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Vocabulary training failed.
    #[error("tokenizer training failed: {0}")]
    Training(String),
    /// A configuration value is out of range.
    #[error("invalid {what}: {message}")]
    InvalidConfig {
        /// The setting, e.g. `RandomResizedCrop.scale`.
        what: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// An image transform name in upstream's `name::{kwargs}` syntax cannot be read or used: a
    /// syntax error, an unknown transform, a keyword argument of the wrong type or out of range.
    #[error("image transform `{text}`: {message}")]
    InvalidTransform {
        /// The transform text as given, e.g. `random_resized_crop::{'scale': (0.5, 0.2)}`.
        text: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// An image transform name has a keyword argument its transform does not take.
    #[error(
        "image transform `{text}`: `{transform}` takes no keyword argument '{kwarg}' (it accepts {})",
        display_names(.accepted)
    )]
    UnknownTransformKwarg {
        /// The transform text as given.
        text: String,
        /// The transform's name, e.g. `center_crop`.
        transform: String,
        /// The keyword argument that is not accepted.
        kwarg: String,
        /// The keyword arguments the transform accepts.
        accepted: Vec<String>,
    },
    /// A loader worker thread panicked.
    #[error("data loader worker panicked: {0}")]
    WorkerPanicked(String),
    /// A WebDataset shard pattern cannot be expanded.
    #[error("shard pattern `{pattern}`: {message}")]
    ShardPattern {
        /// The pattern as given, e.g. `shards/{00000..00123}.tar`.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A shard named by the shard pattern does not exist.
    #[error("shard `{shard}` does not exist")]
    MissingShard {
        /// The shard file.
        shard: PathBuf,
    },
    /// A shard is not a readable tar archive (truncated, corrupt header), or one of its members
    /// cannot be read (invalid JSON, caption not UTF-8).
    #[error("shard `{shard}`{}: {message}", display_member(.member.as_deref()))]
    CorruptShard {
        /// The shard file.
        shard: PathBuf,
        /// The member at fault, or the last one read before the fault, when known.
        member: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A sample of a shard lacks its image or its caption.
    #[error("shard `{shard}`: sample `{key}` has no {missing} (its members: {})", display_names(.members))]
    IncompleteShardSample {
        /// The shard file.
        shard: PathBuf,
        /// The sample key.
        key: String,
        /// What is missing: an image or a caption.
        missing: &'static str,
        /// The sample's members.
        members: Vec<String>,
    },
    /// A shard's image member cannot be decoded.
    #[error("shard `{shard}`, member `{member}`: {message}")]
    BadShardImage {
        /// The shard file.
        shard: PathBuf,
        /// The image member.
        member: String,
        /// What the decoder reported.
        message: String,
    },
}

impl DataError {
    /// Builds [`DataError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds [`DataError::Json`] from a serde_json error.
    pub(crate) fn json(path: impl Into<PathBuf>, error: &serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            line: error.line(),
            column: error.column(),
            // serde_json appends " at line L column C"; the variant carries those itself.
            message: {
                let text = error.to_string();
                let text = match text.rfind(" at line ") {
                    Some(cut) => text[..cut].to_string(),
                    None => text,
                };
                // Type errors quote the offending value ("invalid type: string \"…\""), which
                // can be a whole caption or blob; keep the message to a readable size.
                shorten(text, MAX_QUOTED_MESSAGE)
            },
        }
    }

    /// Builds [`DataError::InvalidConfig`].
    pub(crate) fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            what: what.into(),
            message: message.into(),
        }
    }

    /// Whether this error is about one bad image file (missing, empty, truncated, corrupt, or
    /// too large for the pixel limit, as file or after a resize), the kind that
    /// `skip_bad_images` skips.
    ///
    /// [`DataError::UnsafeImagePath`] is not one: an annotation file that points outside the
    /// dataset is a broken or hostile annotation file, which should stop the run.
    pub fn is_bad_image(&self) -> bool {
        matches!(
            self,
            Self::MissingImage { .. }
                | Self::MissingListedImage { .. }
                | Self::EmptyImage { .. }
                | Self::TruncatedImage { .. }
                | Self::CorruptImage { .. }
                | Self::ImageTooLarge { .. }
                | Self::ImageFileTooLarge { .. }
                | Self::TransformTooLarge { .. }
                | Self::BadShardImage { .. }
        ) || matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What is wrong with one line of a plain captions file ([`DataError::CaptionLine`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptionLineProblem {
    /// The line is not a JSON object of the expected shape (syntax error, or a field of the wrong
    /// type, e.g. `"captions": "a dog"` instead of a list).
    #[error("invalid JSON line (column {column}): {message}")]
    InvalidJson {
        /// 1-based column within the line (0 when unknown).
        column: usize,
        /// What the parser reported.
        message: String,
    },
    /// A JSON line lacks a required field (`image`, or `caption` / `captions`).
    #[error("no `{field}` field (each line needs \"image\" and \"caption\" or a non-empty \"captions\" list)")]
    MissingField {
        /// The field, e.g. `image`.
        field: &'static str,
    },
    /// The image path is empty.
    #[error("the image path is empty")]
    EmptyImagePath,
    /// A caption is empty or only white space.
    #[error("the caption is empty")]
    EmptyCaption,
    /// A TSV line has no tab between the image path and the caption.
    #[error("no tab on this line (TSV lines are `path<TAB>caption`)")]
    MissingTab,
    /// The line is not valid UTF-8.
    #[error("the line is not valid UTF-8")]
    NotUtf8,
}

/// Longest message taken over from a parser or decoder, in characters.
pub(crate) const MAX_QUOTED_MESSAGE: usize = 200;

/// `text` cut to at most `max` characters (on a character boundary), marked with "…".
pub(crate) fn shorten(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn pixel_count(width: u64, height: u64) -> u64 {
    width.saturating_mul(height)
}

fn display_source(path: Option<&std::path::Path>) -> String {
    match path {
        Some(path) => format!("image `{}`", path.display()),
        None => "the image".into(),
    }
}

fn display_member(member: Option<&str>) -> String {
    member.map_or_else(String::new, |member| format!(", member `{member}`"))
}

fn display_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "the given paths (none given)".into();
    }
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result type of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
