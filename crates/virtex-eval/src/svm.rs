//! A linear SVM that reproduces scikit-learn's `LinearSVC` (squared hinge, L2, `dual=True`).
//!
//! The solver is the dual coordinate descent of Hsieh et al. (ICML 2008), as scikit-learn's
//! bundled liblinear (`sklearn/svm/src/liblinear/linear.cpp`, `solve_l2r_l1l2_svc` with
//! `L2R_L2LOSS_SVC_DUAL`) implements it, including every detail that changes the iterates:
//!
//! - labels are grouped negatives-first (sklearn sorts liblinear's labels), stable within a
//!   class, before the solver sees them;
//! - per-sample cost `C·class_weight[y]`, diagonal `D_ii = 1/(2·C_i)`, no upper bound on α;
//! - the intercept is an extra constant feature of value `intercept_scaling` whose weight is
//!   regularised like the others (liblinear's bias handling; sklearn reports
//!   `intercept_ = intercept_scaling · w_bias`);
//! - each outer iteration visits the active set in a random order drawn with `std::mt19937`
//!   and sklearn's bounded draw, with liblinear's shrinking and its stopping rule
//!   `max PG − min PG ≤ tol`, and stops after `max_iter` outer iterations.
//!
//! With the same seed the coordinate order is the same as sklearn's, so weights agree to
//! rounding error (see the crate's parity tests).

use crate::error::{EvalError, Result};
use crate::features::Features;
use crate::mt19937::Mt19937;

/// The liblinear seed scikit-learn derives from `random_state=0`
/// (`np.random.RandomState(0).randint(np.iinfo("i").max)`).
///
/// Upstream VirTex leaves `random_state=None`, so its coordinate order is random per run; any
/// fixed seed is as faithful, and this one makes `LinearSVC(random_state=0)` reproducible.
pub const SKLEARN_RANDOM_STATE_0_SEED: u32 = 209_652_396;

/// Hyper-parameters of [`LinearSvc`], named as in scikit-learn's `LinearSVC`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSvcConfig {
    /// Inverse regularisation strength `C` (> 0).
    pub c: f64,
    /// `class_weight[+1]`: multiplies `C` for positive samples.
    pub positive_weight: f64,
    /// `class_weight[-1]`: multiplies `C` for negative samples.
    pub negative_weight: f64,
    /// Stopping tolerance on the projected-gradient spread (`tol`, sklearn default 1e-4).
    pub tol: f64,
    /// Maximum number of outer iterations (`max_iter`, sklearn default 1000).
    pub max_iter: usize,
    /// Learn an intercept (`fit_intercept`).
    pub fit_intercept: bool,
    /// Value of the synthetic bias feature (`intercept_scaling`, > 0).
    pub intercept_scaling: f64,
    /// Seed of the coordinate-order generator (see [`SKLEARN_RANDOM_STATE_0_SEED`]).
    pub seed: u32,
}

impl LinearSvcConfig {
    /// scikit-learn's defaults (`class_weight=None`, `tol=1e-4`, `max_iter=1000`,
    /// `intercept_scaling=1`) with the given `C` and the seed of `random_state=0`.
    pub fn new(c: f64) -> Self {
        Self {
            c,
            positive_weight: 1.0,
            negative_weight: 1.0,
            tol: 1e-4,
            max_iter: 1000,
            fit_intercept: true,
            intercept_scaling: 1.0,
            seed: SKLEARN_RANDOM_STATE_0_SEED,
        }
    }

    /// Sets `class_weight = {+1: positive, -1: negative}`.
    pub fn with_class_weight(mut self, positive: f64, negative: f64) -> Self {
        self.positive_weight = positive;
        self.negative_weight = negative;
        self
    }

    /// Sets `max_iter`.
    pub fn with_max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Sets `tol`.
    pub fn with_tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }

    /// Sets the coordinate-order seed.
    pub fn with_seed(mut self, seed: u32) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `fit_intercept` and `intercept_scaling`.
    pub fn with_intercept(mut self, fit_intercept: bool, intercept_scaling: f64) -> Self {
        self.fit_intercept = fit_intercept;
        self.intercept_scaling = intercept_scaling;
        self
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &str, value: f64| {
            if value > 0.0 && value.is_finite() {
                Ok(())
            } else {
                Err(EvalError::InvalidConfig(format!(
                    "{name} must be a positive finite number, got {value}"
                )))
            }
        };
        positive("C", self.c)?;
        positive("class weight of +1", self.positive_weight)?;
        positive("class weight of -1", self.negative_weight)?;
        positive("tol", self.tol)?;
        if self.fit_intercept {
            positive("intercept_scaling", self.intercept_scaling)?;
        }
        if self.max_iter == 0 {
            return Err(EvalError::InvalidConfig(
                "max_iter must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Trains on `features` `[n, d]` with binary `labels` `[n]` (`true` = the +1 class).
    ///
    /// Errors when the shapes disagree or when only one class is present (scikit-learn raises
    /// "This solver needs samples of at least 2 classes").
    pub fn fit(&self, features: &Features, labels: &[bool]) -> Result<LinearSvc> {
        self.validate()?;
        if labels.len() != features.rows() {
            return Err(EvalError::Shape(format!(
                "{} labels for {} feature rows",
                labels.len(),
                features.rows()
            )));
        }
        let positives = labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == labels.len() {
            return Err(EvalError::Training {
                what: format!("{} samples", labels.len()),
                message: format!(
                    "the labels hold a single class ({positives} positives): at least one \
                     positive and one negative sample are needed"
                ),
            });
        }
        Ok(solve_l2_loss_dual(self, features, labels))
    }
}

/// A trained linear SVM: `decision(x) = w·x + intercept`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSvc {
    /// `coef_`, `[d]`.
    pub weights: Vec<f64>,
    /// `intercept_` (0 without an intercept).
    pub intercept: f64,
    /// Outer iterations run (`n_iter_`).
    pub n_iter: usize,
    /// `false` when the solver stopped at `max_iter` (sklearn's `ConvergenceWarning`).
    pub converged: bool,
}

impl LinearSvc {
    /// `decision_function`: one signed distance per row of `features` `[n, d]` → `[n]`.
    ///
    /// # Panics
    /// If the feature dimension differs from the training one.
    pub fn decision_function(&self, features: &Features) -> Vec<f64> {
        assert_eq!(
            features.dim(),
            self.weights.len(),
            "feature dimension differs from the one the SVM was trained on"
        );
        (0..features.rows())
            .map(|row| dot(&self.weights, features.row(row)) + self.intercept)
            .collect()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Sequential accumulation in feature order, as liblinear's sparse loop does: keeps the
    // iterates bit-comparable with scikit-learn.
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

/// liblinear's `solve_l2r_l1l2_svc` for `L2R_L2LOSS_SVC_DUAL`, on sklearn's class grouping.
fn solve_l2_loss_dual(config: &LinearSvcConfig, features: &Features, labels: &[bool]) -> LinearSvc {
    let dim = features.dim();
    let bias = if config.fit_intercept {
        Some(config.intercept_scaling)
    } else {
        None
    };
    let w_size = dim + usize::from(bias.is_some());

    // group_classes with sorted labels: class -1 (index 0) first, then +1, stable.
    let order: Vec<usize> = (0..labels.len())
        .filter(|&i| !labels[i])
        .chain((0..labels.len()).filter(|&i| labels[i]))
        .collect();
    let l = order.len();
    let x = |i: usize| features.row(order[i]);
    let y: Vec<f64> = order
        .iter()
        .map(|&i| if labels[i] { 1.0 } else { -1.0 })
        .collect();
    let cost_positive = config.c * config.positive_weight;
    let cost_negative = config.c * config.negative_weight;
    let diag: Vec<f64> = y
        .iter()
        .map(|&yi| {
            0.5 / if yi > 0.0 {
                cost_positive
            } else {
                cost_negative
            }
        })
        .collect();
    let qd: Vec<f64> = (0..l)
        .map(|i| {
            let mut q = diag[i];
            for v in x(i) {
                q += v * v;
            }
            if let Some(b) = bias {
                q += b * b;
            }
            q
        })
        .collect();

    let mut w = vec![0.0f64; w_size];
    let mut alpha = vec![0.0f64; l];
    let mut index: Vec<usize> = (0..l).collect();
    let mut active_size = l;
    let mut rng = Mt19937::new(config.seed);
    // liblinear also tracks `PGmin_old`, used only to shrink variables at their upper bound;
    // the L2-loss dual has none, so it never affects the iterates and is omitted.
    let mut pg_max_old = f64::INFINITY;
    let mut iter = 0;

    while iter < config.max_iter {
        let mut pg_max_new = f64::NEG_INFINITY;
        let mut pg_min_new = f64::INFINITY;
        for i in 0..active_size {
            let j = i + rng.bounded(active_size - i);
            index.swap(i, j);
        }
        let mut s = 0;
        while s < active_size {
            let i = index[s];
            let xi = x(i);
            let yi = y[i];
            let mut g = dot(&w[..dim], xi);
            if let Some(b) = bias {
                g += w[dim] * b;
            }
            g = g * yi - 1.0;
            g += alpha[i] * diag[i];

            // The L2-loss dual has no upper bound, so only the α = 0 bound can shrink.
            let mut pg = 0.0;
            if alpha[i] == 0.0 {
                if g > pg_max_old {
                    active_size -= 1;
                    index.swap(s, active_size);
                    continue;
                } else if g < 0.0 {
                    pg = g;
                }
            } else {
                pg = g;
            }
            pg_max_new = pg_max_new.max(pg);
            pg_min_new = pg_min_new.min(pg);

            if pg.abs() > 1.0e-12 {
                let alpha_old = alpha[i];
                alpha[i] = (alpha[i] - g / qd[i]).max(0.0);
                let d = (alpha[i] - alpha_old) * yi;
                for (wk, v) in w[..dim].iter_mut().zip(xi) {
                    *wk += d * v;
                }
                if let Some(b) = bias {
                    w[dim] += d * b;
                }
            }
            s += 1;
        }

        iter += 1;
        if pg_max_new - pg_min_new <= config.tol {
            if active_size == l {
                break;
            }
            active_size = l;
            pg_max_old = f64::INFINITY;
            continue;
        }
        pg_max_old = if pg_max_new <= 0.0 {
            f64::INFINITY
        } else {
            pg_max_new
        };
    }

    let intercept = bias.map_or(0.0, |b| b * w[dim]);
    w.truncate(dim);
    LinearSvc {
        weights: w,
        intercept,
        n_iter: iter,
        converged: iter < config.max_iter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Features, Vec<bool>) {
        let values = vec![
            1.0, 0.0, //
            0.0, 1.0, //
            1.0, 0.1, //
            0.1, 1.0, //
            0.9, 0.2, //
            0.2, 0.8,
        ];
        let labels = vec![true, false, true, false, true, false];
        (Features::new(values, 6, 2).unwrap(), labels)
    }

    #[test]
    fn separates_a_separable_problem() {
        let (x, y) = toy();
        let svm = LinearSvcConfig::new(1.0).fit(&x, &y).unwrap();
        assert!(svm.converged);
        let scores = svm.decision_function(&x);
        for (score, label) in scores.iter().zip(&y) {
            assert_eq!(*score > 0.0, *label, "score {score} for label {label}");
        }
    }

    #[test]
    fn satisfies_the_primal_optimality_condition() {
        // Primal: ½‖w̃‖² + Σ C_i max(0, 1 − y_i w̃·x̃_i)², w̃ = [w, b/s], x̃ = [x, s].
        // Its gradient w̃ − 2 Σ C_i ξ_i y_i x̃_i must vanish at the optimum.
        let (x, y) = toy();
        let config = LinearSvcConfig::new(0.7)
            .with_class_weight(2.0, 1.0)
            .with_tol(1e-10)
            .with_max_iter(100_000);
        let svm = config.fit(&x, &y).unwrap();
        let scale = config.intercept_scaling;
        let mut gradient: Vec<f64> = svm.weights.clone();
        gradient.push(svm.intercept / scale);
        for (row, &label) in y.iter().enumerate() {
            let sign = if label { 1.0 } else { -1.0 };
            let cost = config.c * if label { 2.0 } else { 1.0 };
            let margin = 1.0 - sign * (dot(&svm.weights, x.row(row)) + svm.intercept);
            if margin > 0.0 {
                for (k, v) in x.row(row).iter().chain([scale].iter()).enumerate() {
                    gradient[k] -= 2.0 * cost * margin * sign * v;
                }
            }
        }
        let norm = gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm < 1e-6, "primal gradient norm {norm}");
    }

    #[test]
    fn rejects_a_single_class_and_bad_shapes() {
        let (x, _) = toy();
        assert!(matches!(
            LinearSvcConfig::new(1.0).fit(&x, &[true; 6]),
            Err(EvalError::Training { .. })
        ));
        assert!(matches!(
            LinearSvcConfig::new(1.0).fit(&x, &[true, false]),
            Err(EvalError::Shape(_))
        ));
        assert!(matches!(
            LinearSvcConfig::new(-1.0).fit(&x, &[true, false, true, false, true, false]),
            Err(EvalError::InvalidConfig(_))
        ));
    }

    #[test]
    fn reports_non_convergence() {
        let (x, y) = toy();
        let svm = LinearSvcConfig::new(10.0)
            .with_tol(1e-300)
            .with_max_iter(3)
            .fit(&x, &y)
            .unwrap();
        assert_eq!(svm.n_iter, 3);
        assert!(!svm.converged);
    }
}
