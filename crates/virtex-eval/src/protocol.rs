//! Upstream's VOC07 SVM protocol (`scripts/clf_voc07.py`): per class, choose `C` by 3-fold
//! cross-validated AP, refit on all of trainval, report test AP; mAP over classes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cv::{fold_indices, stratified_kfold};
use crate::error::{EvalError, Result};
use crate::features::Features;
use crate::ranking::average_precision;
use crate::svm::{LinearSvcConfig, SKLEARN_RANDOM_STATE_0_SEED};
use crate::voc::{Voc07Split, VocLabel};

/// The protocol's knobs; [`Default`] is upstream's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Voc07SvmConfig {
    /// Candidate `C` values, tried in order (ties keep the earlier one).
    pub costs: Vec<f64>,
    /// Cross-validation folds (stratified, unshuffled).
    pub folds: usize,
    /// `class_weight[+1]`.
    pub positive_weight: f64,
    /// `class_weight[-1]`.
    pub negative_weight: f64,
    /// Solver tolerance (`tol`).
    pub tol: f64,
    /// Solver iteration cap (`max_iter`).
    pub max_iter: usize,
    /// Coordinate-order seed (see [`SKLEARN_RANDOM_STATE_0_SEED`]).
    pub seed: u32,
}

impl Default for Voc07SvmConfig {
    /// `C ∈ {0.01, 0.1, 1, 10}`, 3 folds, `class_weight={1: 2, -1: 1}`, `tol=1e-4`,
    /// `max_iter=2000`: `LinearSVC(C, class_weight={1: 2, -1: 1}, penalty="l2",
    /// loss="squared_hinge", max_iter=2000)` with `cross_val_score(cv=3,
    /// scoring="average_precision")`.
    fn default() -> Self {
        Self {
            costs: vec![0.01, 0.1, 1.0, 10.0],
            folds: 3,
            positive_weight: 2.0,
            negative_weight: 1.0,
            tol: 1e-4,
            max_iter: 2000,
            seed: SKLEARN_RANDOM_STATE_0_SEED,
        }
    }
}

impl Voc07SvmConfig {
    fn svm(&self, cost: f64) -> LinearSvcConfig {
        LinearSvcConfig::new(cost)
            .with_class_weight(self.positive_weight, self.negative_weight)
            .with_tol(self.tol)
            .with_max_iter(self.max_iter)
            .with_seed(self.seed)
    }
}

/// Cross-validation of one `C` for one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostScore {
    /// The `C` value.
    pub cost: f64,
    /// AP of each fold; NaN where the fold could not be trained (scikit-learn's
    /// `error_score=nan`, e.g. a training fold with a single class).
    pub fold_ap: Vec<f64>,
    /// Mean of `fold_ap` (NaN if any fold is NaN).
    pub mean_ap: f64,
}

/// The outcome for one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSvmResult {
    /// Class name.
    pub class_name: String,
    /// One entry per candidate `C`, in [`Voc07SvmConfig::costs`] order.
    pub cross_validation: Vec<CostScore>,
    /// The `C` with the highest mean cross-validated AP.
    pub best_cost: f64,
    /// That mean AP.
    pub best_cv_ap: f64,
    /// AP on the non-difficult test images (fraction, not ×100).
    pub test_ap: f64,
    /// Non-difficult test images scored.
    pub test_images: usize,
    /// Positives among them.
    pub test_positives: usize,
    /// Fits (cross-validation and refit) that stopped at `max_iter`.
    pub unconverged_fits: usize,
}

/// Per-class results and their mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Voc07Result {
    /// One entry per class, in class order.
    pub classes: Vec<ClassSvmResult>,
    /// Mean test AP over classes ×100, the number upstream reports.
    pub map: f64,
}

/// Trains and tests the SVMs of one class.
///
/// Training labels: positive → +1; negative and **difficult → −1** (upstream keeps difficult
/// images as negatives). Test AP ignores difficult images.
///
/// # Shapes
/// - `train_features`: `[n_train, d]`, `train_labels`: `[n_train]`
/// - `test_features`: `[n_test, d]`, `test_labels`: `[n_test]`
pub fn train_test_class(
    config: &Voc07SvmConfig,
    class_name: &str,
    train_features: &Features,
    train_labels: &[VocLabel],
    test_features: &Features,
    test_labels: &[VocLabel],
) -> Result<ClassSvmResult> {
    if train_labels.len() != train_features.rows() || test_labels.len() != test_features.rows() {
        return Err(EvalError::Shape(format!(
            "class `{class_name}`: {} train labels for {} train rows, {} test labels for {} \
             test rows",
            train_labels.len(),
            train_features.rows(),
            test_labels.len(),
            test_features.rows()
        )));
    }
    if train_features.dim() != test_features.dim() {
        return Err(EvalError::Shape(format!(
            "train features have dimension {}, test features {}",
            train_features.dim(),
            test_features.dim()
        )));
    }
    if config.costs.is_empty() {
        return Err(EvalError::InvalidConfig("no candidate C values".into()));
    }
    let targets: Vec<bool> = train_labels
        .iter()
        .map(|&l| l == VocLabel::Positive)
        .collect();
    let test_folds =
        stratified_kfold(&targets, config.folds).map_err(|err| EvalError::Training {
            what: format!("class `{class_name}`"),
            message: err.to_string(),
        })?;
    let folds: Vec<(Features, Vec<bool>, Features, Vec<bool>)> = (0..config.folds)
        .map(|fold| {
            let (train, test) = fold_indices(&test_folds, fold);
            (
                train_features.select(&train),
                train.iter().map(|&i| targets[i]).collect(),
                train_features.select(&test),
                test.iter().map(|&i| targets[i]).collect(),
            )
        })
        .collect();

    // Every (C, fold) fit is independent: run them all in parallel.
    let jobs: Vec<(usize, usize)> = (0..config.costs.len())
        .flat_map(|c| (0..config.folds).map(move |f| (c, f)))
        .collect();
    let fold_results: Vec<(f64, bool)> = jobs
        .par_iter()
        .map(|&(c, f)| {
            let (x_train, y_train, x_test, y_test) = &folds[f];
            match config.svm(config.costs[c]).fit(x_train, y_train) {
                Ok(svm) => {
                    let scores = svm.decision_function(x_test);
                    let ap = average_precision(y_test, &scores).unwrap_or(f64::NAN);
                    (ap, svm.converged)
                }
                Err(_) => (f64::NAN, true),
            }
        })
        .collect();
    let mut unconverged_fits = fold_results.iter().filter(|(_, ok)| !ok).count();
    let cross_validation: Vec<CostScore> = config
        .costs
        .iter()
        .enumerate()
        .map(|(c, &cost)| {
            let fold_ap: Vec<f64> = (0..config.folds)
                .map(|f| fold_results[c * config.folds + f].0)
                .collect();
            let mean_ap = fold_ap.iter().sum::<f64>() / fold_ap.len() as f64;
            CostScore {
                cost,
                fold_ap,
                mean_ap,
            }
        })
        .collect();

    // Upstream: `if ap_scores.mean() > best_crossval_ap` starting from 0.0.
    let mut best: Option<&CostScore> = None;
    for score in &cross_validation {
        if score.mean_ap > best.map_or(0.0, |b| b.mean_ap) {
            best = Some(score);
        }
    }
    let best =
        best.ok_or_else(|| EvalError::Training {
            what: format!("class `{class_name}`"),
            message: format!(
            "no C reached a cross-validated AP above 0 (mean APs {:?}); upstream fails here too",
            cross_validation.iter().map(|s| s.mean_ap).collect::<Vec<_>>()
        ),
        })?;
    let svm = config
        .svm(best.cost)
        .fit(train_features, &targets)
        .map_err(|err| EvalError::Training {
            what: format!("class `{class_name}`"),
            message: err.to_string(),
        })?;
    unconverged_fits += usize::from(!svm.converged);

    let scores = svm.decision_function(test_features);
    let (eval_targets, eval_scores): (Vec<bool>, Vec<f64>) = test_labels
        .iter()
        .zip(scores)
        .filter(|(label, _)| **label != VocLabel::Difficult)
        .map(|(label, score)| (*label == VocLabel::Positive, score))
        .unzip();
    let test_ap = average_precision(&eval_targets, &eval_scores)?;
    Ok(ClassSvmResult {
        class_name: class_name.to_string(),
        best_cost: best.cost,
        best_cv_ap: best.mean_ap,
        cross_validation: cross_validation.clone(),
        test_ap,
        test_images: eval_targets.len(),
        test_positives: eval_targets.iter().filter(|&&t| t).count(),
        unconverged_fits,
    })
}

/// The whole protocol: one-vs-all SVMs for every class of `train`, in parallel over classes.
///
/// # Shapes
/// - `train_features`: `[train.len(), d]`, rows in `train.image_ids` order
/// - `test_features`: `[test.len(), d]`, rows in `test.image_ids` order
pub fn evaluate_voc07(
    config: &Voc07SvmConfig,
    train: &Voc07Split,
    train_features: &Features,
    test: &Voc07Split,
    test_features: &Features,
) -> Result<Voc07Result> {
    if train.class_names != test.class_names {
        return Err(EvalError::Shape(format!(
            "the {} split has classes {:?} but the {} split has {:?}",
            train.split, train.class_names, test.split, test.class_names
        )));
    }
    if train_features.rows() != train.len() || test_features.rows() != test.len() {
        return Err(EvalError::Shape(format!(
            "{} train feature rows for {} images, {} test feature rows for {} images",
            train_features.rows(),
            train.len(),
            test_features.rows(),
            test.len()
        )));
    }
    let classes: Vec<ClassSvmResult> = (0..train.class_names.len())
        .into_par_iter()
        .map(|class| {
            train_test_class(
                config,
                &train.class_names[class],
                train_features,
                &train.class_labels(class),
                test_features,
                &test.class_labels(class),
            )
        })
        .collect::<Result<_>>()?;
    let map = 100.0 * classes.iter().map(|c| c.test_ap).sum::<f64>() / classes.len() as f64;
    Ok(Voc07Result { classes, map })
}
