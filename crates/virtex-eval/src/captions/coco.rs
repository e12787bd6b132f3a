//! Reading COCO caption files and VirTex's captioning evaluation
//! (`virtex/utils/metrics.py::CocoCaptionsEvaluator`; SPICE, which needs Java, is in
//! `spice.rs`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::captions::bleu::{bleu, BleuScores};
use crate::captions::cider::{cider_d, CiderScores};
use crate::captions::tokenize::coco_tokenize;
use crate::error::{EvalError, Result};

/// A COCO image id: an integer, or a string for images outside COCO (VirTex uses the file
/// stem, as an integer when it is all digits; digit-only strings are read as integers here
/// too, so `"000000000139"` and `139` match).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageId {
    /// A numeric id (all of COCO).
    Int(i64),
    /// Any other id.
    Str(String),
}

impl ImageId {
    fn normalised(self) -> Self {
        match self {
            Self::Str(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse().map_or(Self::Str(text), Self::Int)
            }
            other => other,
        }
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(id) => write!(f, "{id}"),
            Self::Str(id) => f.write_str(id),
        }
    }
}

#[derive(Deserialize)]
struct CaptionEntry {
    image_id: ImageId,
    caption: String,
}

#[derive(Deserialize)]
struct AnnotationFile {
    annotations: Vec<CaptionEntry>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &'static str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| EvalError::Json {
        path: path.to_path_buf(),
        what,
        message: err.to_string(),
    })
}

/// Reference captions of a COCO annotation file (`captions_val2017.json`):
/// `{"annotations": [{"image_id", "caption"}, …]}`, grouped per image in order of first
/// appearance.
pub fn read_coco_annotations(path: &Path) -> Result<Vec<(ImageId, Vec<String>)>> {
    let file: AnnotationFile = read_json(path, "COCO captions annotation file")?;
    let mut order: Vec<ImageId> = Vec::new();
    let mut grouped: HashMap<ImageId, Vec<String>> = HashMap::new();
    for entry in file.annotations {
        let id = entry.image_id.normalised();
        grouped
            .entry(id.clone())
            .or_insert_with(|| {
                order.push(id);
                Vec::new()
            })
            .push(entry.caption);
    }
    Ok(order
        .into_iter()
        .map(|id| {
            let captions = grouped.remove(&id).unwrap_or_default();
            (id, captions)
        })
        .collect())
}

/// Predicted captions: a COCO results file `[{"image_id", "caption"}, …]`, as
/// `scripts/eval_captioning.py --output` writes it.
pub fn read_predictions(path: &Path) -> Result<Vec<(ImageId, String)>> {
    let entries: Vec<CaptionEntry> = read_json(path, "caption predictions file")?;
    Ok(entries
        .into_iter()
        .map(|e| (e.image_id.normalised(), e.caption))
        .collect())
}

/// Scores of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageCaptionScore {
    /// The image.
    pub image_id: ImageId,
    /// The tokenised prediction that was scored (empty when the image had none).
    pub prediction: String,
    /// CIDEr-D of this image.
    pub cider: f64,
    /// BLEU-1..4 of this image.
    pub bleu: [f64; 4],
}

/// The outcome of [`evaluate_captions`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionEvaluation {
    /// Corpus CIDEr-D (coco-caption scale; VirTex prints `100 ×` this).
    pub cider: f64,
    /// Corpus BLEU-1..4.
    pub bleu: [f64; 4],
    /// Images evaluated (every image of the ground truth).
    pub images: usize,
    /// Ground-truth images without a prediction, scored with an empty caption.
    pub missing_predictions: usize,
    /// Predictions whose image is not in the ground truth, ignored.
    pub ignored_predictions: usize,
    /// Per-image scores, in ground-truth order.
    pub per_image: Vec<ImageCaptionScore>,
}

/// Captions as VirTex scores them: one tokenised candidate and the tokenised references per
/// ground-truth image, in ground-truth order.
pub(crate) struct PreparedCaptions {
    /// One candidate per ground-truth image (empty without a prediction).
    pub(crate) candidates: Vec<String>,
    /// The references of each ground-truth image.
    pub(crate) references: Vec<Vec<String>>,
    /// Ground-truth images without a prediction.
    pub(crate) missing_predictions: usize,
    /// Predictions whose image is not in the ground truth.
    pub(crate) ignored_predictions: usize,
}

/// VirTex's preprocessing (`CocoCaptionsEvaluator.evaluate`), shared by every metric: both
/// sides [`coco_tokenize`]d, predictions outside the ground truth dropped, a missing prediction
/// an empty caption, the last prediction of an image winning.
pub(crate) fn prepare_captions(
    predictions: &[(ImageId, String)],
    ground_truth: &[(ImageId, Vec<String>)],
) -> PreparedCaptions {
    let mut predicted: HashMap<&ImageId, &str> = HashMap::new();
    for (id, caption) in predictions {
        predicted.insert(id, caption);
    }
    let known: std::collections::HashSet<&ImageId> =
        ground_truth.iter().map(|(id, _)| id).collect();
    let ignored_predictions = predicted.keys().filter(|id| !known.contains(*id)).count();
    let mut missing_predictions = 0;
    let candidates: Vec<String> = ground_truth
        .iter()
        .map(|(id, _)| match predicted.get(id) {
            Some(caption) => coco_tokenize(caption),
            None => {
                missing_predictions += 1;
                String::new()
            }
        })
        .collect();
    let references: Vec<Vec<String>> = ground_truth
        .iter()
        .map(|(_, refs)| refs.iter().map(|r| coco_tokenize(r)).collect())
        .collect();
    PreparedCaptions {
        candidates,
        references,
        missing_predictions,
        ignored_predictions,
    }
}

/// Scores predictions against references the way VirTex does: both sides PTB-tokenised with
/// coco-caption's punctuation removal ([`coco_tokenize`]), predictions for images outside the
/// ground truth dropped, ground-truth images without a prediction given an empty caption (the
/// last prediction wins when an image has several), then CIDEr-D and BLEU over all
/// ground-truth images. SPICE is separate ([`crate::Spice`]) because it runs Stanford's jar.
pub fn evaluate_captions(
    predictions: &[(ImageId, String)],
    ground_truth: &[(ImageId, Vec<String>)],
) -> Result<CaptionEvaluation> {
    let PreparedCaptions {
        candidates,
        references,
        missing_predictions,
        ignored_predictions,
    } = prepare_captions(predictions, ground_truth);
    let CiderScores {
        corpus: cider,
        per_image: cider_per_image,
    } = cider_d(&candidates, &references)?;
    let BleuScores {
        corpus: bleu_corpus,
        per_image: bleu_per_image,
    } = bleu(&candidates, &references)?;
    let per_image = ground_truth
        .iter()
        .zip(candidates)
        .zip(cider_per_image.into_iter().zip(bleu_per_image))
        .map(
            |(((image_id, _), prediction), (cider, bleu))| ImageCaptionScore {
                image_id: image_id.clone(),
                prediction,
                cider,
                bleu,
            },
        )
        .collect();
    Ok(CaptionEvaluation {
        cider,
        bleu: bleu_corpus,
        images: ground_truth.len(),
        missing_predictions,
        ignored_predictions,
        per_image,
    })
}
