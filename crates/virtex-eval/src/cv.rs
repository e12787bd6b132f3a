//! scikit-learn's `StratifiedKFold(n_splits, shuffle=False)`, fold for fold.

use crate::error::{EvalError, Result};

/// The test fold of every sample, as `StratifiedKFold(n_splits, shuffle=False)` assigns them
/// (`_make_test_folds`): classes are numbered by first appearance, the per-fold class counts
/// come from dealing the class-sorted labels round-robin over the folds, and each class's
/// samples fill folds 0, 1, … in index order.
///
/// Fold `k` is then `test = {i : folds[i] == k}`, `train = the rest`, both in index order
/// ([`fold_indices`]).
///
/// Errors as scikit-learn does when `n_splits < 2`, when there are fewer samples than folds,
/// or when every class has fewer members than folds. (A class with fewer members than folds
/// is only a warning in scikit-learn and is allowed here too.)
///
/// # Shapes
/// - `labels`: `[n]`
/// - returns: `[n]`, values in `0..n_splits`
pub fn stratified_kfold<T: PartialEq>(labels: &[T], n_splits: usize) -> Result<Vec<usize>> {
    if n_splits < 2 {
        return Err(EvalError::InvalidConfig(format!(
            "k-fold cross-validation needs at least 2 folds, got {n_splits}"
        )));
    }
    if n_splits > labels.len() {
        return Err(EvalError::InvalidConfig(format!(
            "cannot have n_splits={n_splits} greater than the number of samples: n_samples={}",
            labels.len()
        )));
    }
    // Class index by order of first appearance.
    let mut classes: Vec<&T> = Vec::new();
    let encoded: Vec<usize> = labels
        .iter()
        .map(|label| match classes.iter().position(|c| *c == label) {
            Some(index) => index,
            None => {
                classes.push(label);
                classes.len() - 1
            }
        })
        .collect();
    let mut counts = vec![0usize; classes.len()];
    for &class in &encoded {
        counts[class] += 1;
    }
    if counts.iter().all(|&count| count < n_splits) {
        return Err(EvalError::InvalidConfig(format!(
            "n_splits={n_splits} cannot be greater than the number of members in each class \
             (class sizes {counts:?})"
        )));
    }
    // allocation[fold][class] = members of `class` among y_sorted[fold::n_splits].
    let mut sorted = encoded.clone();
    sorted.sort_unstable();
    let mut allocation = vec![vec![0usize; classes.len()]; n_splits];
    for (position, &class) in sorted.iter().enumerate() {
        allocation[position % n_splits][class] += 1;
    }
    let mut folds = vec![0usize; labels.len()];
    for (class, _) in classes.iter().enumerate() {
        let mut assignment =
            (0..n_splits).flat_map(|fold| std::iter::repeat_n(fold, allocation[fold][class]));
        for (sample, &sample_class) in encoded.iter().enumerate() {
            if sample_class == class {
                // The allocation of a class sums to its size, so this never runs dry.
                folds[sample] = assignment.next().unwrap_or(n_splits - 1);
            }
        }
    }
    Ok(folds)
}

/// `(train, test)` indices of fold `fold` given per-sample test folds, both ascending.
pub fn fold_indices(test_folds: &[usize], fold: usize) -> (Vec<usize>, Vec<usize>) {
    let (test, train): (Vec<usize>, Vec<usize>) =
        (0..test_folds.len()).partition(|&i| test_folds[i] == fold);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sklearn_on_a_hand_checked_case() {
        // StratifiedKFold(3).split(X, [1, 1, -1, -1, -1, 1, -1, -1, 1, -1]):
        // class 1 (4 members) → folds [0, 0, 1, 2]; class -1 (6 members) → [0, 0, 1, 1, 2, 2].
        let labels = [1, 1, -1, -1, -1, 1, -1, -1, 1, -1];
        let folds = stratified_kfold(&labels, 3).unwrap();
        assert_eq!(folds, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        let (train, test) = fold_indices(&folds, 1);
        assert_eq!(test, vec![4, 5, 6]);
        assert_eq!(train, vec![0, 1, 2, 3, 7, 8, 9]);
    }

    #[test]
    fn rejects_what_sklearn_rejects() {
        assert!(stratified_kfold(&[true, false], 3).is_err());
        assert!(stratified_kfold(&[true, false, true, false], 3).is_err());
        assert!(stratified_kfold(&[true, false, true], 1).is_err());
        // One class smaller than the number of folds is only a warning.
        assert!(stratified_kfold(&[true, false, false, false], 3).is_ok());
    }
}
