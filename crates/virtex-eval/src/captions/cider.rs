//! CIDEr-D exactly as coco-caption's `Cider` computes it (`cider_scorer.py`; VirTex's own port
//! in `virtex/utils/metrics.py` is the same computation).

use std::collections::{HashMap, HashSet};

use crate::captions::bleu::check_inputs;
use crate::captions::ngrams::{precook, NgramCounts};
use crate::error::Result;

/// Corpus CIDEr-D and the per-image values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CiderScores {
    /// Mean over images (coco-caption's `score`; VirTex reports it ×100).
    pub corpus: f64,
    /// Per image (`scores`), `[images]`.
    pub per_image: Vec<f64>,
}

/// CIDEr-D over already tokenised captions: one candidate and ≥ 1 references per image.
///
/// For n = 1..4: TF-IDF vectors with `idf = log(N_images) − log(max(1, df))`, where the
/// document frequency `df` counts the images whose *references* contain the n-gram (candidates
/// never contribute, and the corpus is exactly the images passed in); similarity to each
/// reference is the clipped dot product `Σ min(h, r)·r / (‖h‖‖r‖)` (no division when a norm is
/// 0), times the Gaussian length penalty `exp(−δ²/(2σ²))`, σ = 6. The image score is the mean
/// over n, averaged over references, ×10.
///
/// Quirk kept from coco-caption: δ is the difference in the number of **bigrams**, not words
/// (`length` only counts n-grams with n = 2), which differs from the word-length difference
/// only for captions shorter than two words.
///
/// # Shapes
/// - `candidates`: `[images]`, `references`: `[images][refs ≥ 1]`
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> Result<CiderScores> {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    check_inputs(candidates, references)?;
    let cooked_refs: Vec<Vec<NgramCounts>> = references
        .iter()
        .map(|refs| refs.iter().map(|r| precook(r, N).1).collect())
        .collect();
    let mut document_frequency: HashMap<&(usize, String), f64> = HashMap::new();
    for refs in &cooked_refs {
        let unique: HashSet<&(usize, String)> = refs.iter().flat_map(|r| r.keys()).collect();
        for ngram in unique {
            *document_frequency.entry(ngram).or_insert(0.0) += 1.0;
        }
    }
    let log_ref_len = (cooked_refs.len() as f64).ln();

    let mut per_image = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(&cooked_refs) {
        let (_, candidate_counts) = precook(candidate, N);
        let (hyp, hyp_norm, hyp_len) =
            counts_to_vector(&candidate_counts, &document_frequency, log_ref_len);
        let mut score = [0.0f64; N];
        for reference in refs {
            let (reference, ref_norm, ref_len) =
                counts_to_vector(reference, &document_frequency, log_ref_len);
            let delta = hyp_len as f64 - ref_len as f64;
            let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
            for n in 0..N {
                let mut value = 0.0;
                for (ngram, &h) in &hyp[n] {
                    let r = reference[n].get(ngram).copied().unwrap_or(0.0);
                    value += h.min(r) * r;
                }
                if hyp_norm[n] != 0.0 && ref_norm[n] != 0.0 {
                    value /= hyp_norm[n] * ref_norm[n];
                }
                score[n] += value * penalty;
            }
        }
        let mean = score.iter().sum::<f64>() / N as f64;
        per_image.push(mean / refs.len() as f64 * 10.0);
    }
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    Ok(CiderScores { corpus, per_image })
}

type TfIdf<'a> = ([HashMap<&'a str, f64>; 4], [f64; 4], usize);

/// coco-caption's `counts2vec`: per-n TF-IDF maps, their norms, and the bigram count.
fn counts_to_vector<'a>(
    counts: &'a NgramCounts,
    document_frequency: &HashMap<&(usize, String), f64>,
    log_ref_len: f64,
) -> TfIdf<'a> {
    let mut vector: [HashMap<&str, f64>; 4] = std::array::from_fn(|_| HashMap::new());
    let mut norm = [0.0f64; 4];
    let mut length = 0usize;
    for (key, &term_frequency) in counts {
        let df = document_frequency.get(key).copied().unwrap_or(0.0);
        let idf = log_ref_len - df.max(1.0).ln();
        let value = term_frequency as f64 * idf;
        let n = key.0 - 1;
        vector[n].insert(key.1.as_str(), value);
        norm[n] += value.powi(2);
        if n == 1 {
            length += term_frequency;
        }
    }
    (vector, norm.map(f64::sqrt), length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caption_identical_to_unique_references_scores_high() {
        let candidates = vec![
            "a cat on a mat".to_string(),
            "two dogs play outside".to_string(),
        ];
        let references = vec![
            vec!["a cat on a mat".to_string()],
            vec!["two dogs play outside".to_string()],
        ];
        let scores = cider_d(&candidates, &references).unwrap();
        // idf = log 2 for every n-gram; cosine 1 for n = 1..4 (both have ≥ 4 words), no length
        // penalty → 10 per image.
        for value in &scores.per_image {
            assert!((value - 10.0).abs() < 1e-12, "{value}");
        }
    }

    #[test]
    fn n_grams_in_every_reference_set_carry_no_weight() {
        // With one image, idf = log 1 − log 1 = 0 for everything: CIDEr is 0.
        let scores = cider_d(&["a cat".to_string()], &[vec!["a cat".to_string()]]).unwrap();
        assert_eq!(scores.corpus, 0.0);
    }
}
