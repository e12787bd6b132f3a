//! # virtex-eval
//!
//! How VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666)) is judged,
//! without scikit-learn or Java (except SPICE, which runs Stanford's jar when it is installed):
//!
//! - **PASCAL VOC07 linear SVMs** (upstream `scripts/clf_voc07.py`): [`Voc07Split`] reads the
//!   VOCdevkit layout, [`evaluate_voc07`] runs the protocol on backbone features — per class,
//!   one-vs-all [`LinearSvcConfig`] (squared hinge, L2, `class_weight={+1: 2, −1: 1}`, difficult
//!   images as negatives), `C ∈ {0.01, 0.1, 1, 10}` picked by 3-fold [`stratified_kfold`]
//!   cross-validated [`average_precision`], refit on trainval, test AP over non-difficult
//!   images, mAP ×100. Classes run in parallel (rayon).
//! - **Caption metrics** (upstream `virtex/utils/metrics.py`, coco-caption): [`coco_tokenize`]
//!   (a PTB-style tokenizer standing in for Stanford's `PTBTokenizer`), [`cider_d`], [`bleu`],
//!   and [`evaluate_captions`] over COCO JSON files.
//! - **SPICE** needs Stanford's Java jar (`spice-1.0.jar`), which this crate runs the way
//!   pycocoevalcap does when it is there ([`spice_availability`], [`Spice`]): the input file
//!   ([`spice_entries`], [`spice_input_json`]), the child process, and the output's mean
//!   `All.f` ([`parse_spice_output`]).
//!
//! Features come from the backbone (`virtex-backbone`) through the `virtex` CLI; this crate
//! only sees `f32`/`f64` matrices, so it has no Burn dependency.
//!
//! ## Why the SVM solver is ours and not the `liblinear` crate
//!
//! scikit-learn's `LinearSVC` is liblinear's dual coordinate-descent solver, and the
//! `liblinear` crate (1.0.0) binds that C++ library — it builds offline here with gcc. We still
//! port the solver (≈150 lines in `svm.rs`), because the crate binds *stock* LIBLINEAR 2.30,
//! not the fork scikit-learn ships, and the differences are exactly the ones the protocol
//! depends on:
//!
//! - the iteration cap is hard-coded to 1000 in stock liblinear; upstream passes
//!   `max_iter=2000` (a scikit-learn patch);
//! - coordinates are shuffled with the C library's global `rand()`: results depend on the libc,
//!   and with classes trained in parallel threads they depend on thread scheduling — not
//!   reproducible. scikit-learn uses its own `mt19937` + bounded draw, seeded per fit;
//! - stock liblinear orders labels by first appearance, scikit-learn sorts them (which changes
//!   the data order the solver sees, hence its iterates);
//! - the crate depends on the deprecated `failure` crate and prints to stdout by default.
//!
//! The port reproduces scikit-learn's fork to the letter (class grouping, per-class costs,
//! bias as a regularised constant feature with `intercept_scaling = 1`, `tol = 1e-4`,
//! shrinking, stopping rule, `max_iter`) including its random number generator, so with the
//! same seed a fit equals `LinearSVC(..., dual=True, random_state=0)` to rounding error — a
//! much tighter check than agreeing to the solver tolerance. No other Rust crate fits:
//! `linfa-svm` and `smartcore` solve the kernel SVM with plain hinge loss by SMO, a different
//! objective.
//!
//! Differences from upstream that remain, all below the parity tolerance (see
//! `docs/evaluation.md`): upstream leaves `random_state=None` (a random coordinate order per
//! run; we fix the seed of `random_state=0`); with scikit-learn ≥ 1.5 upstream's code, which
//! does not pass `dual`, selects the primal Newton solver (`dual="auto"`) for VOC07's
//! `n_samples > n_features`, which converges to the same optimum; upstream averages the 20
//! APs in float32.
//!
//! ```
//! use virtex_eval::{average_precision, Features, LinearSvcConfig};
//!
//! let features = Features::new(vec![1.0, 0.0, 0.0, 1.0, 0.9, 0.2, 0.1, 0.8], 4, 2)?;
//! let labels = [true, false, true, false];
//! let svm = LinearSvcConfig::new(1.0).with_class_weight(2.0, 1.0).fit(&features, &labels)?;
//! let ap = average_precision(&labels, &svm.decision_function(&features))?;
//! assert_eq!(ap, 1.0);
//!
//! let cider = virtex_eval::cider_d(
//!     &[virtex_eval::coco_tokenize("A cat on a mat."), "two dogs".into()],
//!     &[vec!["a cat on a mat".into()], vec!["two dogs play".into()]],
//! )?;
//! assert!(cider.corpus > 0.0);
//! # Ok::<(), virtex_eval::EvalError>(())
//! ```
#![warn(missing_docs)]

mod captions;
mod cv;
mod error;
mod features;
mod mt19937;
mod protocol;
mod ranking;
mod svm;
mod voc;

pub use captions::{
    bleu, cider_d, coco_tokenize, evaluate_captions, find_java, parse_spice_output, ptb_tokenize,
    read_coco_annotations, read_predictions, read_spice_output, spice_availability,
    spice_availability_in, spice_entries, spice_input_json, write_spice_input, BleuScores,
    CaptionEvaluation, CiderScores, ImageCaptionScore, ImageId, JarOrigin, Spice, SpiceEntry,
    SpiceEnvironment, SpiceImageScore, SpicePrf, SpiceScores, SpiceUnavailable, COCO_PUNCTUATIONS,
    SPICE_DEFAULT_MAX_HEAP, SPICE_JAR_ENV,
};
pub use cv::{fold_indices, stratified_kfold};
pub use error::{EvalError, Result};
pub use features::Features;
pub use protocol::{
    evaluate_voc07, train_test_class, ClassSvmResult, CostScore, Voc07Result, Voc07SvmConfig,
};
pub use ranking::average_precision;
pub use svm::{LinearSvc, LinearSvcConfig, SKLEARN_RANDOM_STATE_0_SEED};
pub use voc::{resolve_voc2007_root, Voc07Split, VocLabel, VOC_CLASSES};
