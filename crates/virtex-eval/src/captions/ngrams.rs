//! n-gram counting shared by BLEU and CIDEr (coco-caption's `precook`).

use std::collections::HashMap;

/// Counts of every 1..=n-gram of a whitespace-tokenised sentence, keyed by the words joined
/// with a single space (words contain no whitespace, so the key is unambiguous).
pub(crate) type NgramCounts = HashMap<(usize, String), usize>;

/// `precook(s, n)`: the words of `sentence` (split on whitespace) and their n-gram counts.
pub(crate) fn precook(sentence: &str, n: usize) -> (usize, NgramCounts) {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut counts = NgramCounts::new();
    for k in 1..=n {
        if words.len() < k {
            break;
        }
        for window in words.windows(k) {
            *counts.entry((k, window.join(" "))).or_insert(0) += 1;
        }
    }
    (words.len(), counts)
}
