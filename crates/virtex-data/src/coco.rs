//! COCO Captions reading (upstream `CocoCaptionsDataset`) and an image-directory dataset for
//! inference (upstream `ImageDirectoryDataset`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::caption::normalize_caption;
use crate::error::{shorten, DataError, Result};
use crate::image_io::load_image;

/// An image id: COCO's integer ids, or a file stem for image directories whose names are not all
/// digits. Serialises as a JSON number or string, as COCO result files expect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageId {
    /// A numeric id.
    Int(u64),
    /// A non-numeric id (file stem).
    Name(String),
}

impl ImageId {
    /// The id of an image file: its stem, as a number when it is all ASCII digits (upstream's
    /// `eval_captioning.py` rule, so `000000000139.jpg` → 139).
    pub fn from_file_stem(path: &Path) -> Self {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse() {
                return Self::Int(n);
            }
        }
        Self::Name(stem)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Name(s) => write!(f, "{s}"),
        }
    }
}

/// A dataset split: `train` reads `captions_train2017.json` and `train2017/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// COCO train2017.
    Train,
    /// COCO val2017.
    Val,
}

impl Split {
    /// `"train"` or `"val"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" | "train2017" => Ok(Self::Train),
            "val" | "val2017" => Ok(Self::Val),
            other => Err(DataError::config(
                "split",
                format!("`{other}` (expected `train` or `val`)"),
            )),
        }
    }
}

/// One image with all of its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionedImage {
    /// The COCO image id.
    pub image_id: ImageId,
    /// The image file.
    pub path: PathBuf,
    /// Its captions, normalised ([`normalize_caption`]), in annotation-file order.
    pub captions: Vec<String>,
}

/// An image that was skipped because `skip_bad_images` was set, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedImage {
    /// The image id.
    pub image_id: ImageId,
    /// The image file.
    pub path: PathBuf,
    /// The error that would otherwise have been returned.
    pub reason: String,
}

impl fmt::Display for SkippedImage {
    /// One log line: `image 7 (`path`): reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "image {} (`{}`): {}",
            self.image_id,
            self.path.display(),
            self.reason
        )
    }
}

/// Options of [`CocoCaptions::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CocoOptions {
    /// Skip (and list in [`CocoCaptions::skipped`], with file and reason) images that are
    /// missing, empty or directories, instead of failing; with [`CocoOptions::verify_images`]
    /// also those that do not decode or exceed the pixel limit ([`DataError::is_bad_image`]).
    /// The loader has its own flag for images that fail later
    /// ([`crate::LoaderConfig::skip_bad_images`]). An unsafe `file_name`
    /// ([`DataError::UnsafeImagePath`]) is never skipped.
    pub skip_bad_images: bool,
    /// Decode every image once while loading, to find corrupt or truncated files up front
    /// (costs one full decode pass over the split).
    pub verify_images: bool,
}

#[derive(Deserialize)]
struct CaptionsFile {
    images: Vec<ImageEntry>,
    annotations: Vec<AnnotationEntry>,
}

#[derive(Deserialize)]
struct ImageEntry {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct AnnotationEntry {
    image_id: u64,
    #[serde(default)]
    id: Option<serde_json::Value>,
    caption: String,
}

/// COCO Captions: one entry per annotated image, with its normalised captions.
///
/// Images are ordered by the first appearance of their id in `annotations`, as upstream groups
/// them; images without any caption are left out.
#[derive(Debug, Clone)]
pub struct CocoCaptions {
    root: PathBuf,
    split: Split,
    annotations: PathBuf,
    images: Vec<CaptionedImage>,
    skipped: Vec<SkippedImage>,
}

impl CocoCaptions {
    /// Reads `root/annotations/captions_{split}2017.json`, with images in `root/{split}2017/`.
    pub fn load(root: impl AsRef<Path>, split: Split, options: &CocoOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let annotations = root
            .join("annotations")
            .join(format!("captions_{}2017.json", split.name()));
        let image_dir = root.join(format!("{}2017", split.name()));
        Self::load_files(&annotations, &image_dir, split, options).map(|mut d| {
            d.root = root;
            d
        })
    }

    /// Reads an annotation file with images in `image_dir` (for layouts other than COCO's).
    ///
    /// Every image's `file_name` must be a relative path inside `image_dir` (no `..`, root or
    /// drive component), else [`DataError::UnsafeImagePath`], which `skip_bad_images` does not
    /// skip; symlinks inside `image_dir` are followed.
    pub fn load_files(
        annotations: &Path,
        image_dir: &Path,
        split: Split,
        options: &CocoOptions,
    ) -> Result<Self> {
        let bytes = std::fs::read(annotations).map_err(|e| DataError::io(annotations, e))?;
        let file: CaptionsFile =
            serde_json::from_slice(&bytes).map_err(|e| DataError::json(annotations, &e))?;
        let files: HashMap<u64, &str> = file
            .images
            .iter()
            .map(|im| (im.id, im.file_name.as_str()))
            .collect();

        let mut order: Vec<u64> = Vec::new();
        let mut captions: HashMap<u64, Vec<String>> = HashMap::new();
        for ann in &file.annotations {
            if !files.contains_key(&ann.image_id) {
                return Err(DataError::UnknownImageId {
                    annotations: annotations.to_path_buf(),
                    annotation_id: ann
                        .id
                        .as_ref()
                        // Any JSON value is accepted as an id; quote at most a short one.
                        .map_or_else(|| "(no id)".into(), |v| shorten(v.to_string(), 64)),
                    image_id: ImageId::Int(ann.image_id),
                });
            }
            let entry = captions.entry(ann.image_id).or_insert_with(|| {
                order.push(ann.image_id);
                Vec::new()
            });
            entry.push(normalize_caption(&ann.caption));
        }

        let mut images = Vec::with_capacity(order.len());
        let mut skipped = Vec::new();
        for id in order {
            let image_id = ImageId::Int(id);
            let file_name = files[&id];
            if let Err(problem) = confined_file_name(file_name) {
                return Err(DataError::UnsafeImagePath {
                    annotations: annotations.to_path_buf(),
                    image_id,
                    file_name: file_name.to_string(),
                    problem: problem.into(),
                });
            }
            let path = image_dir.join(file_name);
            let check =
                check_image_file(&path, options.verify_images, || DataError::MissingImage {
                    annotations: annotations.to_path_buf(),
                    image_id: image_id.clone(),
                    path: path.clone(),
                });
            match check {
                Ok(()) => images.push(CaptionedImage {
                    image_id,
                    path,
                    captions: captions.remove(&id).unwrap_or_default(),
                }),
                Err(err) if options.skip_bad_images && err.is_bad_image() => {
                    skipped.push(SkippedImage {
                        image_id,
                        path,
                        reason: err.to_string(),
                    })
                }
                Err(err) => return Err(err),
            }
        }
        if images.is_empty() {
            return Err(DataError::EmptyDataset {
                path: annotations.to_path_buf(),
            });
        }
        Ok(Self {
            root: image_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            split,
            annotations: annotations.to_path_buf(),
            images,
            skipped,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is no image (never true for a loaded dataset).
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

    /// The images, for the data-efficiency subsets of [`crate::CaptionSource`], which drop
    /// images and captions in place.
    pub(crate) fn images_mut(&mut self) -> &mut Vec<CaptionedImage> {
        &mut self.images
    }

    /// Images skipped while loading (only with `skip_bad_images`).
    pub fn skipped(&self) -> &[SkippedImage] {
        &self.skipped
    }

    /// Every caption of the split, in order (the corpus for vocabulary training).
    pub fn captions(&self) -> impl Iterator<Item = &str> {
        self.images
            .iter()
            .flat_map(|im| im.captions.iter().map(String::as_str))
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The split.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The annotation file.
    pub fn annotations_path(&self) -> &Path {
        &self.annotations
    }
}

/// The up-front check of one annotated image file, shared by the COCO and plain readers: it
/// exists (else `missing()`), is a non-empty file, and with `verify` decodes.
pub(crate) fn check_image_file(
    path: &Path,
    verify: bool,
    missing: impl FnOnce() -> DataError,
) -> Result<()> {
    match std::fs::metadata(path) {
        Err(_) => Err(missing()),
        Ok(meta) if meta.is_dir() => Err(DataError::CorruptImage {
            path: path.to_path_buf(),
            message: "a directory, not an image file".into(),
        }),
        Ok(meta) if meta.len() == 0 => Err(DataError::EmptyImage {
            path: path.to_path_buf(),
        }),
        Ok(_) if verify => load_image(path).map(|_| ()),
        Ok(_) => Ok(()),
    }
}

/// Checks that an annotation's `file_name` stays inside the image directory once joined to it:
/// relative, with at least one name and no `..`, root or drive component. The check is lexical:
/// symlinks inside the dataset are followed as usual (COCO setups often link the image
/// directories in), but the annotation file alone cannot reach `../../etc/passwd` or `/home`.
fn confined_file_name(file_name: &str) -> std::result::Result<(), &'static str> {
    use std::path::Component;
    let mut names = 0;
    for component in Path::new(file_name).components() {
        match component {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err("it has a `..` component"),
            Component::RootDir => return Err("it is an absolute path"),
            Component::Prefix(_) => return Err("it has a drive or UNC prefix"),
        }
    }
    if names == 0 {
        return Err("it names no file");
    }
    Ok(())
}

/// Reads the raw (unnormalised) captions of a COCO captions file, in annotation order; for
/// vocabulary training from `captions_train2017.json` without touching the images.
pub fn read_caption_file(annotations: impl AsRef<Path>) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct OnlyCaptions {
        annotations: Vec<OnlyCaption>,
    }
    #[derive(Deserialize)]
    struct OnlyCaption {
        caption: String,
    }
    let path = annotations.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let file: OnlyCaptions =
        serde_json::from_slice(&bytes).map_err(|e| DataError::json(path, &e))?;
    Ok(file.annotations.into_iter().map(|a| a.caption).collect())
}

/// The image files of a directory, sorted by file name, with ids from their stems (upstream
/// `ImageDirectoryDataset`, used by `eval_captioning.py`).
#[derive(Debug, Clone)]
pub struct ImageDirectory {
    dir: PathBuf,
    entries: Vec<(ImageId, PathBuf)>,
}

/// File extensions [`ImageDirectory`] picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

impl ImageDirectory {
    /// Lists `dir` (not recursively).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
            let entry = entry.map_err(|e| DataError::io(&dir, e))?;
            let path = entry.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if is_image && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(DataError::EmptyDataset { path: dir });
        }
        let entries = paths
            .into_iter()
            .map(|p| (ImageId::from_file_stem(&p), p))
            .collect();
        Ok(Self { dir, entries })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no image (never true for an opened directory).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(image id, path)` pairs in sorted file order.
    pub fn entries(&self) -> &[(ImageId, PathBuf)] {
        &self.entries
    }
}
