//! Caption metrics: coco-caption's tokenisation, CIDEr-D and BLEU, and SPICE through its jar.

mod bleu;
mod cider;
mod coco;
mod ngrams;
mod spice;
mod tokenize;

pub use bleu::{bleu, BleuScores};
pub use cider::{cider_d, CiderScores};
pub use coco::{
    evaluate_captions, read_coco_annotations, read_predictions, CaptionEvaluation,
    ImageCaptionScore, ImageId,
};
pub use spice::{
    find_java, parse_spice_output, read_spice_output, spice_availability, spice_availability_in,
    spice_entries, spice_input_json, write_spice_input, JarOrigin, Spice, SpiceEntry,
    SpiceEnvironment, SpiceImageScore, SpicePrf, SpiceScores, SpiceUnavailable,
    SPICE_DEFAULT_MAX_HEAP, SPICE_JAR_ENV,
};
pub use tokenize::{coco_tokenize, ptb_tokenize, COCO_PUNCTUATIONS};
