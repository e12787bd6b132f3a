//! Your own data: plain caption files (JSON lines or TSV) besides COCO (upstream issue #30), and
//! [`CaptionSource`], the captioned images a [`crate::CaptioningDataset`] reads from either.
//!
//! ```text
//! train.jsonl:  {"image": "images/dog.jpg", "caption": "A dog runs on the beach."}
//!               {"image": "/data/cat.jpg", "captions": ["A cat.", "A cat on a sofa."]}
//! train.tsv:    image<TAB>caption                   (an optional header line)
//!               images/dog.jpg<TAB>A dog runs on the beach.
//!               images/dog.jpg<TAB>A brown dog near the sea.
//! ```
//!
//! Lines naming the same image are grouped into one [`CaptionedImage`] (images in order of first
//! appearance, captions in line order, as the COCO reader groups annotations); relative paths are
//! resolved against the captions file's directory or [`PlainOptions::image_root`]. Image ids are
//! the 1-based line number of the image's first occurrence, the number errors cite. One file
//! holds one split; a directory holds `train.jsonl` / `val.tsv` / ... ([`PlainCaptions::load_split`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::caption::normalize_caption;
use crate::coco::{check_image_file, CaptionedImage, CocoCaptions, ImageId, SkippedImage};
use crate::error::{shorten, CaptionLineProblem, DataError, Result, MAX_QUOTED_MESSAGE};

/// The syntax of a plain captions file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlainFormat {
    /// One JSON object per line: `{"image": PATH, "caption": TEXT}` or
    /// `{"image": PATH, "captions": [TEXT, ...]}` (other fields are ignored).
    JsonLines,
    /// `PATH<TAB>CAPTION` per line, with an optional header line `image<TAB>caption`. The path
    /// ends at the first tab; the rest of the line is the caption.
    Tsv,
}

impl PlainFormat {
    /// File extensions of JSON lines files (case-insensitive).
    pub const JSON_LINES_EXTENSIONS: [&'static str; 2] = ["jsonl", "ndjson"];
    /// File extensions of TSV files (case-insensitive).
    pub const TSV_EXTENSIONS: [&'static str; 1] = ["tsv"];

    /// The format a file's extension names: `.jsonl` / `.ndjson` or `.tsv`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let is = |list: &[&str]| list.iter().any(|x| x.eq_ignore_ascii_case(extension));
        if is(&Self::JSON_LINES_EXTENSIONS) {
            Ok(Self::JsonLines)
        } else if is(&Self::TSV_EXTENSIONS) {
            Ok(Self::Tsv)
        } else {
            Err(DataError::config(
                "captions file format",
                format!(
                    "cannot tell the format of `{}` from its extension (expected .jsonl, \
                     .ndjson or .tsv, or name the format explicitly)",
                    path.display()
                ),
            ))
        }
    }

    /// `"jsonl"` or `"tsv"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::Tsv => "tsv",
        }
    }
}

impl std::str::FromStr for PlainFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "json-lines" | "jsonlines" | "ndjson" => Ok(Self::JsonLines),
            "tsv" => Ok(Self::Tsv),
            other => Err(DataError::config(
                "captions file format",
                format!("`{other}` (expected `jsonl` or `tsv`)"),
            )),
        }
    }
}

/// Options of [`PlainCaptions::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainOptions {
    /// Resolve relative image paths against this directory instead of the captions file's own.
    pub image_root: Option<PathBuf>,
    /// The syntax; `None` = from the file's extension ([`PlainFormat::from_path`]).
    pub format: Option<PlainFormat>,
    /// As [`crate::CocoOptions::skip_bad_images`]: skip (and list in
    /// [`PlainCaptions::skipped`]) images that are missing, empty or directories instead of
    /// failing. A malformed line is never skipped.
    pub skip_bad_images: bool,
    /// As [`crate::CocoOptions::verify_images`]: decode every image once while loading.
    pub verify_images: bool,
}

/// One usable line: the image path as written and its captions (raw, not normalised).
struct PlainLine {
    line: usize,
    image: String,
    captions: Vec<String>,
}

#[derive(Deserialize)]
struct JsonLine {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    captions: Option<Vec<String>>,
}

/// Parses a whole captions file into its usable lines, checking each.
fn parse_lines(path: &Path, format: PlainFormat) -> Result<Vec<PlainLine>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |line: usize, problem: CaptionLineProblem| DataError::CaptionLine {
        path: path.to_path_buf(),
        line,
        problem,
    };
    // Editors on Windows save a byte-order mark; it is not part of the first path or JSON value.
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut lines = Vec::new();
    let mut header_allowed = format == PlainFormat::Tsv;
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let text =
            std::str::from_utf8(raw).map_err(|_| bad(number, CaptionLineProblem::NotUtf8))?;
        // CRLF line endings leave a `\r` on every line.
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let (image, captions) = match format {
            PlainFormat::JsonLines => {
                let entry: JsonLine = serde_json::from_str(text).map_err(|e| {
                    let message = e.to_string();
                    let message = match message.rfind(" at line ") {
                        Some(cut) => message[..cut].to_string(),
                        None => message,
                    };
                    bad(
                        number,
                        CaptionLineProblem::InvalidJson {
                            column: e.column(),
                            message: shorten(message, MAX_QUOTED_MESSAGE),
                        },
                    )
                })?;
                let image = entry.image.ok_or_else(|| {
                    bad(number, CaptionLineProblem::MissingField { field: "image" })
                })?;
                let captions: Vec<String> = entry
                    .caption
                    .into_iter()
                    .chain(entry.captions.into_iter().flatten())
                    .collect();
                if captions.is_empty() {
                    return Err(bad(
                        number,
                        CaptionLineProblem::MissingField { field: "caption" },
                    ));
                }
                (image, captions)
            }
            PlainFormat::Tsv => {
                let Some((image, caption)) = text.split_once('\t') else {
                    return Err(bad(number, CaptionLineProblem::MissingTab));
                };
                if std::mem::take(&mut header_allowed)
                    && image.trim().eq_ignore_ascii_case("image")
                    && caption.trim().eq_ignore_ascii_case("caption")
                {
                    continue;
                }
                (image.to_string(), vec![caption.to_string()])
            }
        };
        let image = image.trim();
        if image.is_empty() {
            return Err(bad(number, CaptionLineProblem::EmptyImagePath));
        }
        if captions.iter().any(|c| c.trim().is_empty()) {
            return Err(bad(number, CaptionLineProblem::EmptyCaption));
        }
        lines.push(PlainLine {
            line: number,
            image: image.to_string(),
            captions,
        });
    }
    Ok(lines)
}

/// Reads the raw (unnormalised) captions of a plain captions file, in line order, without
/// touching the images: the corpus for vocabulary training, as [`crate::read_caption_file`] is
/// for COCO. `format: None` = from the extension.
pub fn read_plain_captions(
    path: impl AsRef<Path>,
    format: Option<PlainFormat>,
) -> Result<Vec<String>> {
    let path = path.as_ref();
    let format = match format {
        Some(format) => format,
        None => PlainFormat::from_path(path)?,
    };
    Ok(parse_lines(path, format)?
        .into_iter()
        .flat_map(|line| line.captions)
        .collect())
}

/// A plain captions file: one entry per image, with its normalised captions.
#[derive(Debug, Clone)]
pub struct PlainCaptions {
    path: PathBuf,
    image_root: PathBuf,
    split: String,
    images: Vec<CaptionedImage>,
    skipped: Vec<SkippedImage>,
}

impl PlainCaptions {
    /// Reads one captions file; the split is named after the file's stem (`train.jsonl` →
    /// `train`).
    pub fn load(captions: impl AsRef<Path>, options: &PlainOptions) -> Result<Self> {
        let path = captions.as_ref().to_path_buf();
        let format = match options.format {
            Some(format) => format,
            None => PlainFormat::from_path(&path)?,
        };
        let image_root = match &options.image_root {
            Some(root) => root.clone(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let lines = parse_lines(&path, format)?;

        // Grouped by the resolved path, so `a.jpg` in one line and `/data/a.jpg` in another are
        // one image when the root is `/data`.
        let mut grouped: Vec<(usize, CaptionedImage)> = Vec::new();
        let mut index_of: HashMap<PathBuf, usize> = HashMap::new();
        for line in lines {
            let resolved = image_root.join(&line.image);
            let at = *index_of.entry(resolved.clone()).or_insert_with(|| {
                grouped.push((
                    line.line,
                    CaptionedImage {
                        image_id: ImageId::Int(line.line as u64),
                        path: resolved,
                        captions: Vec::new(),
                    },
                ));
                grouped.len() - 1
            });
            grouped[at]
                .1
                .captions
                .extend(line.captions.iter().map(|c| normalize_caption(c)));
        }

        let mut images = Vec::with_capacity(grouped.len());
        let mut skipped = Vec::new();
        for (line, image) in grouped {
            let check = check_image_file(&image.path, options.verify_images, || {
                DataError::MissingListedImage {
                    captions: path.clone(),
                    line,
                    path: image.path.clone(),
                }
            });
            match check {
                Ok(()) => images.push(image),
                Err(err) if options.skip_bad_images && err.is_bad_image() => {
                    skipped.push(SkippedImage {
                        image_id: image.image_id,
                        path: image.path,
                        reason: err.to_string(),
                    })
                }
                Err(err) => return Err(err),
            }
        }
        if images.is_empty() {
            return Err(DataError::EmptyDataset { path });
        }
        let split = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            path,
            image_root,
            split,
            images,
            skipped,
        })
    }

    /// Reads split `split` (e.g. `train`, `val`, `test`) of a directory of captions files:
    /// the one of `{split}.jsonl`, `{split}.ndjson`, `{split}.tsv` that exists
    /// ([`PlainCaptions::split_file`]).
    pub fn load_split(dir: impl AsRef<Path>, split: &str, options: &PlainOptions) -> Result<Self> {
        Self::load(Self::split_file(dir, split)?, options)
    }

    /// The captions file of split `split` in `dir`: the first of `{split}.jsonl`,
    /// `{split}.ndjson`, `{split}.tsv` that exists, else [`DataError::MissingSplitFile`].
    pub fn split_file(dir: impl AsRef<Path>, split: &str) -> Result<PathBuf> {
        let dir = dir.as_ref();
        let tried: Vec<PathBuf> = PlainFormat::JSON_LINES_EXTENSIONS
            .iter()
            .chain(&PlainFormat::TSV_EXTENSIONS)
            .map(|extension| dir.join(format!("{split}.{extension}")))
            .collect();
        match tried.iter().find(|path| path.is_file()) {
            Some(path) => Ok(path.clone()),
            None => Err(DataError::MissingSplitFile {
                dir: dir.to_path_buf(),
                split: split.to_string(),
                tried,
            }),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is no image (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The images with their captions.
    pub fn images(&self) -> &[CaptionedImage] {
        &self.images
    }

    /// One image by dataset index.
    pub fn get(&self, index: usize) -> Option<&CaptionedImage> {
        self.images.get(index)
    }

    /// The images, for the data-efficiency subsets of [`CaptionSource`], which drop images and
    /// captions in place.
    pub(crate) fn images_mut(&mut self) -> &mut Vec<CaptionedImage> {
        &mut self.images
    }

    /// Images skipped while loading (only with `skip_bad_images`).
    pub fn skipped(&self) -> &[SkippedImage] {
        &self.skipped
    }

    /// Every caption, in order (normalised).
    pub fn captions(&self) -> impl Iterator<Item = &str> {
        self.images
            .iter()
            .flat_map(|im| im.captions.iter().map(String::as_str))
    }

    /// The captions file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory relative image paths are resolved against.
    pub fn image_root(&self) -> &Path {
        &self.image_root
    }

    /// The split name: the captions file's stem.
    pub fn split(&self) -> &str {
        &self.split
    }
}

/// The captioned images a [`crate::CaptioningDataset`] reads: COCO Captions or a plain
/// captions file. Both give the same [`CaptionedImage`] records, so the dataset and the loader
/// do not know which one they read.
#[derive(Debug, Clone)]
pub enum CaptionSource {
    /// COCO Captions (`captions_{split}2017.json`).
    Coco(CocoCaptions),
    /// A plain captions file (JSON lines or TSV).
    Plain(PlainCaptions),
}

impl CaptionSource {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images().len()
    }

    /// Whether there is no image (never true for a loaded source).
    pub fn is_empty(&self) -> bool {
        self.images().is_empty()
    }

    /// The images with their captions.
    pub fn images(&self) -> &[CaptionedImage] {
        match self {
            Self::Coco(coco) => coco.images(),
            Self::Plain(plain) => plain.images(),
        }
    }

    /// One image by dataset index.
    pub fn get(&self, index: usize) -> Option<&CaptionedImage> {
        self.images().get(index)
    }

    /// Images skipped while loading (only with `skip_bad_images`).
    pub fn skipped(&self) -> &[SkippedImage] {
        match self {
            Self::Coco(coco) => coco.skipped(),
            Self::Plain(plain) => plain.skipped(),
        }
    }

    /// Every caption, in order (normalised).
    pub fn captions(&self) -> impl Iterator<Item = &str> {
        self.images()
            .iter()
            .flat_map(|im| im.captions.iter().map(String::as_str))
    }

    /// The annotation or captions file the images come from.
    pub fn annotations_path(&self) -> &Path {
        match self {
            Self::Coco(coco) => coco.annotations_path(),
            Self::Plain(plain) => plain.path(),
        }
    }
}

impl From<CocoCaptions> for CaptionSource {
    fn from(coco: CocoCaptions) -> Self {
        Self::Coco(coco)
    }
}

impl From<PlainCaptions> for CaptionSource {
    fn from(plain: PlainCaptions) -> Self {
        Self::Plain(plain)
    }
}

// So `CaptioningDataset::new(coco, ..)` keeps working with a `CocoCaptions` value.
impl From<CocoCaptions> for Arc<CaptionSource> {
    fn from(coco: CocoCaptions) -> Self {
        Arc::new(CaptionSource::Coco(coco))
    }
}

impl From<PlainCaptions> for Arc<CaptionSource> {
    fn from(plain: PlainCaptions) -> Self {
        Arc::new(CaptionSource::Plain(plain))
    }
}
