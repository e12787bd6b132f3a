//! COCO object labels (`instances_{train,val}2017.json`) for the multilabel-classification
//! pretext ablation (upstream `multilabel_classification_R_50`,
//! `virtex/data/datasets/multilabel.py`).
//!
//! COCO's 80 category ids run from 1 to 90 with gaps; as upstream, they are remapped to
//! consecutive labels `1..=80` in increasing id order, and label 0 is the background / padding
//! class the loss ignores (`DATA.VOCAB_SIZE: 81`). An image's labels are the distinct labels of
//! its instance annotations, sorted; an image with no annotation has none.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::coco::ImageId;
use crate::error::{DataError, Result};

/// The image → object-label table of a COCO instances file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoInstances {
    path: PathBuf,
    /// Category names by label; index 0 is `"background"`.
    categories: Vec<String>,
    labels: BTreeMap<u64, Vec<u32>>,
}

#[derive(Deserialize)]
struct InstancesFile {
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

/// Only the fields used: serde skips the rest (boxes, segmentations) without building them.
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

impl CocoInstances {
    /// Reads an instances file (streamed: train2017's is 450 MB, mostly segmentations).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: InstancesFile =
            serde_json::from_reader(BufReader::new(file)).map_err(|err| DataError::Json {
                path: path.to_path_buf(),
                line: err.line(),
                column: err.column(),
                message: err.to_string(),
            })?;
        let mut categories = parsed.categories;
        categories.sort_by_key(|category| category.id);
        if categories.windows(2).any(|pair| pair[0].id == pair[1].id) {
            return Err(DataError::Classes {
                path: path.to_path_buf(),
                message: "a category id appears twice in `categories`".into(),
            });
        }
        let label_of: BTreeMap<u64, u32> = categories
            .iter()
            .enumerate()
            .map(|(index, category)| (category.id, index as u32 + 1))
            .collect();
        let mut labels: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for annotation in parsed.annotations {
            let &label =
                label_of
                    .get(&annotation.category_id)
                    .ok_or_else(|| DataError::Classes {
                        path: path.to_path_buf(),
                        message: format!(
                            "an annotation of image {} has category {}, which `categories` lacks",
                            annotation.image_id, annotation.category_id
                        ),
                    })?;
            labels.entry(annotation.image_id).or_default().push(label);
        }
        for image_labels in labels.values_mut() {
            image_labels.sort_unstable();
            image_labels.dedup();
        }
        Ok(Self {
            path: path.to_path_buf(),
            categories: std::iter::once("background".to_string())
                .chain(categories.into_iter().map(|category| category.name))
                .collect(),
            labels,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of classes including the background label 0 (81 for COCO).
    pub fn num_classes(&self) -> usize {
        self.categories.len()
    }

    /// Category names by label (index 0: `"background"`).
    pub fn category_names(&self) -> &[String] {
        &self.categories
    }

    /// The distinct object labels of an image (`1..num_classes()`, sorted); empty for an image
    /// without annotations or with a non-numeric id.
    pub fn labels(&self, image: &ImageId) -> &[u32] {
        match image {
            ImageId::Int(id) => self.labels.get(id).map_or(&[], Vec::as_slice),
            ImageId::Name(_) => &[],
        }
    }

    /// Images with at least one annotation.
    pub fn annotated_images(&self) -> usize {
        self.labels.len()
    }

    /// Whether an image has at least one object label (upstream's `MultiLabelClassificationDataset`
    /// keeps only those images).
    pub fn is_labelled(&self, image: &ImageId) -> bool {
        !self.labels(image).is_empty()
    }

    /// The labels of `images` as a `[B, K]` row-major matrix, each row the image's sorted labels
    /// right-padded with 0 (upstream's `pad_sequence(padding_value=0)`; 0 is the background id
    /// the loss ignores), `K` the most labels of an image in the batch (at least 1, so a batch
    /// of unlabelled images is one column of padding). Returns the matrix and `K`.
    pub fn padded_labels(&self, images: &[ImageId]) -> (Vec<i64>, usize) {
        let width = images
            .iter()
            .map(|image| self.labels(image).len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut matrix = vec![0i64; images.len() * width];
        for (row, image) in images.iter().enumerate() {
            for (column, &label) in self.labels(image).iter().enumerate() {
                matrix[row * width + column] = i64::from(label);
            }
        }
        (matrix, width)
    }
}
