//! BLEU-1..4 exactly as coco-caption's `Bleu(4)` computes it (`bleu_scorer.py`, option
//! `"closest"`).

use crate::captions::ngrams::precook;
use crate::error::{EvalError, Result};

/// Corpus BLEU-1..4 and the per-image values coco-caption also returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BleuScores {
    /// Corpus-level BLEU-1..4 (`score` of `Bleu.compute_score`).
    pub corpus: [f64; 4],
    /// Per-image BLEU-1..4 (`scores`), `[images]`.
    pub per_image: Vec<[f64; 4]>,
}

/// BLEU over already tokenised captions: one candidate and ≥ 1 references per image.
///
/// As coco-caption: clipped n-gram matches against the per-n-gram maximum reference count;
/// the effective reference length of an image is the reference length **closest** to the
/// candidate length (ties → the shorter); corpus BLEU-n is the geometric mean of the summed
/// precisions 1..n with `+1e-15`/`+1e-9` smoothing, times the brevity penalty
/// `exp(1 − r/c)` when `c < r`. Per-image values use the same formula per image.
///
/// # Shapes
/// - `candidates`: `[images]`, `references`: `[images][refs ≥ 1]`
pub fn bleu(candidates: &[String], references: &[Vec<String>]) -> Result<BleuScores> {
    const N: usize = 4;
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    check_inputs(candidates, references)?;
    let mut total_guess = [0usize; N];
    let mut total_correct = [0usize; N];
    let mut total_test_len = 0usize;
    let mut total_ref_len = 0usize;
    let mut per_image = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(references) {
        let mut ref_lens = Vec::with_capacity(refs.len());
        let mut max_counts: std::collections::HashMap<(usize, String), usize> =
            std::collections::HashMap::new();
        for reference in refs {
            let (len, counts) = precook(reference, N);
            ref_lens.push(len);
            for (ngram, count) in counts {
                let entry = max_counts.entry(ngram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        let (test_len, counts) = precook(candidate, N);
        // min((|l - testlen|, l)): closest, ties to the shorter reference.
        let ref_len = ref_lens
            .iter()
            .copied()
            .min_by_key(|&l| (l.abs_diff(test_len), l))
            .unwrap_or(0);
        let guess: [usize; N] = std::array::from_fn(|k| (test_len + 1).saturating_sub(k + 1));
        let mut correct = [0usize; N];
        for ((k, ngram), count) in &counts {
            let reference = max_counts.get(&(*k, ngram.clone())).copied().unwrap_or(0);
            correct[k - 1] += reference.min(*count);
        }
        for k in 0..N {
            total_guess[k] += guess[k];
            total_correct[k] += correct[k];
        }
        total_test_len += test_len;
        total_ref_len += ref_len;
        per_image.push(bleu_from_counts(
            &correct, &guess, test_len, ref_len, SMALL, TINY,
        ));
    }
    Ok(BleuScores {
        corpus: bleu_from_counts(
            &total_correct,
            &total_guess,
            total_test_len,
            total_ref_len,
            SMALL,
            TINY,
        ),
        per_image,
    })
}

fn bleu_from_counts(
    correct: &[usize; 4],
    guess: &[usize; 4],
    test_len: usize,
    ref_len: usize,
    small: f64,
    tiny: f64,
) -> [f64; 4] {
    let mut scores = [0.0; 4];
    let mut product = 1.0f64;
    for k in 0..4 {
        product *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        scores[k] = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (test_len as f64 + tiny) / (ref_len as f64 + small);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for score in &mut scores {
            *score *= penalty;
        }
    }
    scores
}

pub(crate) fn check_inputs(candidates: &[String], references: &[Vec<String>]) -> Result<()> {
    if candidates.len() != references.len() {
        return Err(EvalError::Shape(format!(
            "{} candidate captions for {} reference sets",
            candidates.len(),
            references.len()
        )));
    }
    if let Some(index) = references.iter().position(Vec::is_empty) {
        return Err(EvalError::Shape(format!(
            "image #{index} has no reference caption"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_captions_score_one() {
        let scores = bleu(
            &["a cat on a mat".to_string()],
            &[vec!["a cat on a mat".to_string()]],
        )
        .unwrap();
        for value in scores.corpus {
            assert!((value - 1.0).abs() < 1e-9, "{value}");
        }
    }

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_ties() {
        // Candidate of 3 words; references of 2 and 4 words: r = 2, no brevity penalty.
        let scores = bleu(
            &["a b c".to_string()],
            &[vec!["a b c d".to_string(), "a b".to_string()]],
        )
        .unwrap();
        assert!((scores.corpus[0] - 1.0).abs() < 1e-9);
    }
}
