//! Reading PASCAL VOC2007 classification labels from the VOCdevkit layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};

/// The 20 PASCAL VOC classes in sorted file order, as upstream enumerates them.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// One image's label for one class, from `ImageSets/Main/<class>_<split>.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum VocLabel {
    /// `1`: the class is present.
    Positive,
    /// `-1`: the class is absent.
    Negative,
    /// `0`: present but difficult. A negative for SVM training, excluded from test AP.
    Difficult,
}

impl VocLabel {
    /// Parses the integer of an annotation line.
    pub fn from_voc(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::Positive),
            -1 => Some(Self::Negative),
            0 => Some(Self::Difficult),
            _ => None,
        }
    }

    /// Upstream's remapped value (`VOC07ClassificationDataset`): 1, 0, and −1 for difficult.
    pub fn upstream_value(self) -> i32 {
        match self {
            Self::Positive => 1,
            Self::Negative => 0,
            Self::Difficult => -1,
        }
    }
}

/// One split (`trainval`, `test`, …) of VOC2007: image ids and a label per image and class.
///
/// Mirrors upstream's `VOC07ClassificationDataset`: classes are the `*_<split>.txt` files of
/// `ImageSets/Main` in sorted order, images are sorted by id, and an image missing from a
/// class file gets [`VocLabel::Difficult`] for it (upstream's default of −1).
#[derive(Debug, Clone, PartialEq)]
pub struct Voc07Split {
    /// The `VOC2007` directory the split was read from.
    pub root: PathBuf,
    /// The split name.
    pub split: String,
    /// Class names, sorted.
    pub class_names: Vec<String>,
    /// Image ids (file stems), sorted.
    pub image_ids: Vec<String>,
    /// `labels[image][class]`, `[images, classes]`.
    pub labels: Vec<Vec<VocLabel>>,
}

/// Finds the `VOC2007` directory: `path` itself, or `path/VOC2007` for a `VOCdevkit` root.
pub fn resolve_voc2007_root(path: &Path) -> Result<PathBuf> {
    let has_layout = |p: &Path| p.join("ImageSets").join("Main").is_dir();
    if has_layout(path) {
        return Ok(path.to_path_buf());
    }
    let nested = path.join("VOC2007");
    if has_layout(&nested) {
        return Ok(nested);
    }
    Err(EvalError::VocLayout {
        path: path.to_path_buf(),
        message: "neither it nor its `VOC2007` subdirectory has `ImageSets/Main` \
                  (expected VOCdevkit/VOC2007/{JPEGImages, ImageSets/Main/<class>_<split>.txt})"
            .into(),
    })
}

impl Voc07Split {
    /// Reads `split` (`"trainval"` or `"test"`) under a `VOCdevkit` or `VOC2007` directory.
    pub fn read(voc_root: &Path, split: &str) -> Result<Self> {
        let root = resolve_voc2007_root(voc_root)?;
        let main = root.join("ImageSets").join("Main");
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EvalError::Io { path, source }
        };
        let suffix = format!("_{split}.txt");
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&main).map_err(io_error(&main))? {
            let path = entry.map_err(io_error(&main))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Upstream globs `*_{split}.txt` and takes the text before the first `_`.
            if let Some(stem) = name.strip_suffix(&suffix) {
                let class = stem.split('_').next().unwrap_or(stem).to_string();
                if !class.is_empty() && path.is_file() {
                    files.push((name.to_string(), path));
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(EvalError::VocLayout {
                path: main,
                message: format!("no `<class>{suffix}` annotation files"),
            });
        }
        let class_names: Vec<String> = files
            .iter()
            .map(|(name, _)| name.split('_').next().unwrap_or(name).to_string())
            .collect();

        let mut per_image: BTreeMap<String, Vec<VocLabel>> = BTreeMap::new();
        for (class_index, (_, path)) in files.iter().enumerate() {
            let text = std::fs::read_to_string(path).map_err(io_error(path))?;
            for (line_index, line) in text.lines().enumerate() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.is_empty() {
                    continue;
                }
                let annotation_error = |message: String| EvalError::VocAnnotation {
                    path: path.clone(),
                    line: line_index + 1,
                    message,
                };
                let [image_id, value] = fields[..] else {
                    return Err(annotation_error(format!(
                        "expected `<image id> <1|-1|0>`, found `{line}`"
                    )));
                };
                let label = value
                    .parse::<i32>()
                    .ok()
                    .and_then(VocLabel::from_voc)
                    .ok_or_else(|| {
                        annotation_error(format!(
                            "label `{value}` of image `{image_id}` is not 1, -1 or 0"
                        ))
                    })?;
                per_image
                    .entry(image_id.to_string())
                    .or_insert_with(|| vec![VocLabel::Difficult; class_names.len()])[class_index] =
                    label;
            }
        }
        let (image_ids, labels) = per_image.into_iter().unzip();
        Ok(Self {
            root,
            split: split.to_string(),
            class_names,
            image_ids,
            labels,
        })
    }

    /// `JPEGImages/<id>.jpg` of every image, in [`Self::image_ids`] order.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        let images = self.root.join("JPEGImages");
        self.image_ids
            .iter()
            .map(|id| images.join(format!("{id}.jpg")))
            .collect()
    }

    /// The labels of class `class` for every image, `[images]`.
    ///
    /// # Panics
    /// If `class` is out of range.
    pub fn class_labels(&self, class: usize) -> Vec<VocLabel> {
        self.labels.iter().map(|row| row[class]).collect()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.image_ids.len()
    }

    /// `true` when the split has no image.
    pub fn is_empty(&self) -> bool {
        self.image_ids.is_empty()
    }
}
