//! Labelled images for downstream classification (upstream `virtex/data/datasets/downstream.py`):
//! any image-folder dataset (`root/<class>/*.jpg`, torchvision's `ImageFolder`), ImageNet in its
//! usual layouts, and iNaturalist 2018's JSON files.
//!
//! | dataset | train | val |
//! |---|---|---|
//! | image folder | `train/<class>/*` | `val/<class>/*` (classes = train's) |
//! | ImageNet | `train/<wnid>/*.JPEG` | `val/<wnid>/*.JPEG`, or flat `val/*.JPEG` with a label file |
//! | iNaturalist 2018 | `train2018.json` | `val2018.json` (paths relative to the JSON's directory) |
//!
//! Classes of an image folder are its sub-directories in sorted (byte) order, as torchvision
//! sorts them, so label `i` means the same class in our runs and in upstream's. A flat ImageNet
//! validation directory is labelled by `LOC_val_solution.csv` (the Kaggle release:
//! `ImageId,PredictionString` whose first word is the wnid) or a text file of
//! `<file name> <wnid>` lines. The devkit's `ILSVRC2012_validation_ground_truth.txt` holds
//! ILSVRC ids whose wnids are only in the devkit's `meta.mat` (a MATLAB struct array no
//! maintained Rust crate reads): convert it once to the text form (see `docs/evaluation.md`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::image_files::collect_image_files;

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    /// The image file.
    pub path: PathBuf,
    /// Class index, `0..classes.len()`.
    pub label: u32,
}

/// A classification split: the class names and the labelled images, in a deterministic order
/// (by class, then by file name; iNaturalist: as the JSON lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassificationDataset {
    /// Class names (directory names, wnids, or iNaturalist category names), index = label.
    pub classes: Vec<String>,
    /// The images.
    pub images: Vec<LabelledImage>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ClassificationDataset {
    /// An image folder whose sub-directories are the classes (sorted), as torchvision's
    /// `ImageFolder` reads it, except that only the images directly inside each class folder
    /// are taken (deeper folders are not searched). Empty class directories are errors (a typo in a class name
    /// would otherwise shift every later label).
    pub fn image_folder(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let mut classes = Vec::new();
        for entry in fs::read_dir(root).map_err(io_error(root))? {
            let entry = entry.map_err(io_error(root))?;
            if entry.path().is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(DataError::Classes {
                path: root.to_path_buf(),
                message: "no class sub-directories (expected root/<class>/<image>)".into(),
            });
        }
        Self::image_folder_with_classes(root, &classes)
    }

    /// An image folder labelled with a given class list (a validation split with the training
    /// split's classes): every sub-directory must be one of `classes`; classes without a
    /// directory here simply have no images.
    pub fn image_folder_with_classes(root: impl AsRef<Path>, classes: &[String]) -> Result<Self> {
        let root = root.as_ref();
        let index: BTreeMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as u32))
            .collect();
        let mut directories = Vec::new();
        for entry in fs::read_dir(root).map_err(io_error(root))? {
            let entry = entry.map_err(io_error(root))?;
            if entry.path().is_dir() {
                directories.push(entry.path());
            }
        }
        directories.sort();
        let mut images = Vec::new();
        for directory in directories {
            let name = directory
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(&label) = index.get(name.as_str()) else {
                return Err(DataError::Classes {
                    path: directory.clone(),
                    message: format!("`{name}` is not one of the {} classes", classes.len()),
                });
            };
            let files = collect_image_files(&[&directory])?;
            if files.is_empty() {
                return Err(DataError::Classes {
                    path: directory.clone(),
                    message: "a class directory without images".into(),
                });
            }
            images.extend(files.into_iter().map(|path| LabelledImage { path, label }));
        }
        Ok(Self {
            classes: classes.to_vec(),
            images,
        })
    }

    /// A flat directory of images labelled by `labels`: `LOC_val_solution.csv` (Kaggle:
    /// header `ImageId,PredictionString`, the wnid first in the prediction string) or lines of
    /// `<file name or stem> <class>`. Every image needs a label and every label a class.
    pub fn flat_with_labels(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        classes: &[String],
    ) -> Result<Self> {
        let (directory, labels) = (images.as_ref(), labels.as_ref());
        let text = fs::read_to_string(labels).map_err(io_error(labels))?;
        let index: BTreeMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as u32))
            .collect();
        let mut by_stem: BTreeMap<String, u32> = BTreeMap::new();
        let bad_line = |line: usize, message: String| DataError::LabelLine {
            path: labels.to_path_buf(),
            line,
            message,
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (number == 0 && line.starts_with("ImageId,")) {
                continue;
            }
            let (image, class) = match line.split_once(',') {
                Some((image, prediction)) => (image, prediction.split_whitespace().next()),
                None => {
                    let mut words = line.split_whitespace();
                    (words.next().unwrap_or_default(), words.next())
                }
            };
            let class = class.ok_or_else(|| {
                bad_line(
                    number + 1,
                    "expected `<image> <class>` or `ImageId,wnid …`".into(),
                )
            })?;
            let &label = index.get(class).ok_or_else(|| {
                bad_line(
                    number + 1,
                    format!("class `{class}` is not among the training classes"),
                )
            })?;
            let stem = Path::new(image)
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            by_stem.insert(stem, label);
        }
        let mut images = Vec::new();
        for path in collect_image_files(&[directory])? {
            let stem = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(&label) = by_stem.get(&stem) else {
                return Err(DataError::Classes {
                    path,
                    message: format!("no label for this image in `{}`", labels.display()),
                });
            };
            images.push(LabelledImage { path, label });
        }
        Ok(Self {
            classes: classes.to_vec(),
            images,
        })
    }

    /// An iNaturalist 2018 split (`train2018.json` / `val2018.json`): `images[].file_name`
    /// relative to `image_root` (default: the JSON's directory), labels from
    /// `annotations[].category_id`, classes from `categories` (8,142 in 2018) in id order.
    pub fn inaturalist(json: impl AsRef<Path>, image_root: Option<&Path>) -> Result<Self> {
        #[derive(Deserialize)]
        struct File {
            images: Vec<Image>,
            annotations: Vec<Annotation>,
            categories: Vec<Category>,
        }
        #[derive(Deserialize)]
        struct Image {
            id: u64,
            file_name: String,
        }
        #[derive(Deserialize)]
        struct Annotation {
            image_id: u64,
            category_id: u64,
        }
        #[derive(Deserialize)]
        struct Category {
            id: u64,
            name: String,
        }
        let json = json.as_ref();
        let text = fs::read_to_string(json).map_err(io_error(json))?;
        let file: File = serde_json::from_str(&text).map_err(|err| DataError::Json {
            path: json.to_path_buf(),
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        })?;
        let mut categories = file.categories;
        categories.sort_by_key(|category| category.id);
        let label_of: BTreeMap<u64, u32> = categories
            .iter()
            .enumerate()
            .map(|(i, category)| (category.id, i as u32))
            .collect();
        let mut labels: BTreeMap<u64, u32> = BTreeMap::new();
        for annotation in &file.annotations {
            let &label =
                label_of
                    .get(&annotation.category_id)
                    .ok_or_else(|| DataError::Classes {
                        path: json.to_path_buf(),
                        message: format!(
                            "an annotation of image {} has category {}, which `categories` lacks",
                            annotation.image_id, annotation.category_id
                        ),
                    })?;
            labels.insert(annotation.image_id, label);
        }
        let root = image_root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| json.parent().unwrap_or(Path::new(".")).to_path_buf());
        let mut images = Vec::with_capacity(file.images.len());
        for image in file.images {
            let label = *labels.get(&image.id).ok_or_else(|| DataError::Classes {
                path: json.to_path_buf(),
                message: format!(
                    "image {} (`{}`) has no annotation",
                    image.id, image.file_name
                ),
            })?;
            images.push(LabelledImage {
                path: root.join(&image.file_name),
                label,
            });
        }
        Ok(Self {
            classes: categories
                .into_iter()
                .map(|category| category.name)
                .collect(),
            images,
        })
    }

    /// ImageNet's `val/`: class folders if it has sub-directories, else flat images labelled by
    /// `labels` (or `LOC_val_solution.csv` / `val_labels.txt` next to `val/` when `None`).
    pub fn imagenet_val(
        val: impl AsRef<Path>,
        labels: Option<&Path>,
        classes: &[String],
    ) -> Result<Self> {
        let val = val.as_ref();
        let has_class_dirs = fs::read_dir(val)
            .map_err(io_error(val))?
            .flatten()
            .any(|entry| entry.path().is_dir());
        if has_class_dirs {
            return Self::image_folder_with_classes(val, classes);
        }
        let parent = val.parent().unwrap_or(Path::new("."));
        let labels = match labels {
            Some(labels) => labels.to_path_buf(),
            None => ["LOC_val_solution.csv", "val_labels.txt"]
                .iter()
                .map(|name| parent.join(name))
                .find(|path| path.is_file())
                .ok_or_else(|| DataError::Classes {
                    path: val.to_path_buf(),
                    message: "a flat validation directory needs labels: LOC_val_solution.csv or \
                              val_labels.txt beside it, or an explicit label file"
                        .into(),
                })?,
        };
        Self::flat_with_labels(val, &labels, classes)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}
