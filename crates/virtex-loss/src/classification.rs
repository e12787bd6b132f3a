//! The classification pretext losses of the ablations (`virtex/models/classification.py`).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::IndexingUpdateOp;

/// Ids ignored by token classification: `<unk>`, `[SOS]`, `[EOS]`, `[MASK]`.
pub const TOKEN_CLASSIFICATION_IGNORE: [usize; 4] = [0, 1, 2, 3];

/// Ids ignored by multilabel classification: 0, background/padding.
pub const MULTILABEL_IGNORE: [usize; 1] = [0];

/// Cross-entropy against a K-hot target of each image's *unique* labels:
/// `mean_b( −mean_{k ∈ unique(labels[b]) \ ignore} log_softmax(logits[b])[k] )`.
///
/// Duplicated labels count once; ids in `ignore` are dropped. The batch mean divides by `B`.
/// An image left with no label contributes 0 (upstream would produce NaN from an empty mean).
///
/// # Panics
/// If the batch sizes differ. Labels must be in `0..V`.
///
/// # Shapes
/// - `logits`: `[B, V]`
/// - `labels`: `[B, L]` (padded with an ignored id)
/// - returns: `[1]`
pub fn unique_label_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 2, Int>,
    ignore: &[usize],
) -> Tensor<B, 1> {
    let [b, v] = logits.dims();
    let [lb, l] = labels.dims();
    assert_eq!(
        lb,
        b,
        "labels {:?} do not match logits {:?}",
        labels.dims(),
        logits.dims()
    );
    let device = logits.device();
    let counts = Tensor::<B, 2>::zeros([b, v], &device).scatter(
        1,
        labels,
        Tensor::ones([b, l], &device),
        IndexingUpdateOp::Add,
    );
    let mut allowed = vec![1f32; v];
    for &id in ignore.iter().filter(|&&id| id < v) {
        allowed[id] = 0.0;
    }
    let allowed = Tensor::<B, 1>::from_data(TensorData::new(allowed, [v]), &device).reshape([1, v]);
    let k_hot = counts.greater_elem(0.0).float() * allowed;
    let unique = k_hot.clone().sum_dim(1).clamp_min(1.0);
    let targets = k_hot / unique;
    (targets * log_softmax(logits, 1))
        .sum_dim(1)
        .mean()
        .neg()
        .reshape([1])
}

/// The token-classification loss (`token_classification_R_50`): unique caption tokens of each
/// image as a K-hot target, ignoring `<unk>`, `[SOS]`, `[EOS]`, `[MASK]`.
///
/// # Shapes
/// - `logits`: `[B, V]` (V = 10000)
/// - `caption_tokens`: `[B, T]`
pub fn token_classification_loss<B: Backend>(
    logits: Tensor<B, 2>,
    caption_tokens: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    unique_label_cross_entropy(logits, caption_tokens, &TOKEN_CLASSIFICATION_IGNORE)
}

/// The multilabel-classification loss (`multilabel_classification_R_50`): COCO categories
/// (remapped to 1..80) of each image, ignoring the background/padding id 0.
///
/// # Shapes
/// - `logits`: `[B, V]` (V = 81)
/// - `labels`: `[B, L]`
pub fn multilabel_classification_loss<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    unique_label_cross_entropy(logits, labels, &MULTILABEL_IGNORE)
}
