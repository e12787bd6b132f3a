//! Average precision exactly as `sklearn.metrics.average_precision_score` defines it.

use crate::error::{EvalError, Result};

/// Non-interpolated average precision, `Σₖ (Rₖ − Rₖ₋₁)·Pₖ` over the distinct score thresholds
/// in decreasing order (scikit-learn's `average_precision_score`; *not* VOC's 11-point AP).
///
/// Tied scores form one threshold, so the order of tied samples does not matter. With no
/// positive label the result is 0, as scikit-learn returns (with a warning).
///
/// # Shapes
/// - `labels`: `[n]`, `true` for the positive class
/// - `scores`: `[n]`, higher means more confidently positive
pub fn average_precision(labels: &[bool], scores: &[f64]) -> Result<f64> {
    if labels.len() != scores.len() {
        return Err(EvalError::Shape(format!(
            "{} labels for {} scores",
            labels.len(),
            scores.len()
        )));
    }
    if let Some(bad) = scores.iter().find(|s| s.is_nan()) {
        return Err(EvalError::Shape(format!("a score is {bad}")));
    }
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return Ok(0.0);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    let mut ap = 0.0;
    let mut true_positives = 0usize;
    let mut previous_recall = 0.0;
    let mut seen = 0usize;
    let mut start = 0;
    while start < order.len() {
        let threshold = scores[order[start]];
        let mut end = start;
        while end < order.len() && scores[order[end]] == threshold {
            true_positives += usize::from(labels[order[end]]);
            end += 1;
        }
        seen += end - start;
        let precision = true_positives as f64 / seen as f64;
        let recall = true_positives as f64 / positives as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
        start = end;
    }
    Ok(ap.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        // sklearn: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333…
        let ap = average_precision(&[false, false, true, true], &[0.1, 0.4, 0.35, 0.8]).unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-15);
        // Ties form one threshold: ([-1, -1, 1, 1], [.1, .1, .1, .2]) == 0.75.
        let ap = average_precision(&[false, false, true, true], &[0.1, 0.1, 0.1, 0.2]).unwrap();
        assert!((ap - 0.75).abs() < 1e-15);
        assert_eq!(
            average_precision(&[false; 3], &[0.1, 0.3, 0.2]).unwrap(),
            0.0
        );
        assert_eq!(average_precision(&[true, false], &[1.0, 0.0]).unwrap(), 1.0);
    }

    #[test]
    fn rejects_mismatched_lengths_and_nan() {
        assert!(average_precision(&[true], &[0.1, 0.2]).is_err());
        assert!(average_precision(&[true, false], &[f64::NAN, 0.2]).is_err());
    }
}
