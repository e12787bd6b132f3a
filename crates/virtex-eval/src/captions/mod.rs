//! Caption metrics: coco-caption's tokenisation, CIDEr-D and BLEU.

mod bleu;
mod cider;
mod coco;
mod ngrams;
mod tokenize;

pub use bleu::{bleu, BleuScores};
pub use cider::{cider_d, CiderScores};
pub use coco::{
    evaluate_captions, read_coco_annotations, read_predictions, CaptionEvaluation,
    ImageCaptionScore, ImageId,
};
pub use tokenize::{coco_tokenize, ptb_tokenize, COCO_PUNCTUATIONS};
