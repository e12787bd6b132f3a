//! Captioning cross-entropy (`nn.CrossEntropyLoss(ignore_index=0)` on shifted logits).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Token id ignored by the loss: padding and `<unk>` (VirTex's `DATA.UNK_INDEX`).
pub const PADDING_INDEX: usize = 0;

/// Next-token cross-entropy of one direction, averaged over every non-ignored target token of
/// the batch (a token mean, not a caption mean):
///
/// ```text
/// CE(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), ignore_index)
/// ```
///
/// Targets equal to `ignore_index` (padding, and any real `<unk>`) contribute nothing. Computed
/// with a log-softmax, so it is stable for any logit scale; a row with no target at all (an
/// all-padding caption) simply contributes nothing. If the *whole batch* has no target token,
/// torch returns `0/0 = NaN`; this returns 0 (and a zero gradient) instead.
///
/// # Panics
/// If the shapes disagree or `T < 2`.
///
/// # Shapes
/// - `logits`: `[B, T, V]`
/// - `tokens`: `[B, T]`
/// - returns: `[1]`
pub fn captioning_loss<B: Backend>(
    logits: Tensor<B, 3>,
    tokens: Tensor<B, 2, Int>,
    ignore_index: usize,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    assert_eq!(
        tokens.dims(),
        [b, t],
        "captioning_loss: tokens {:?} do not match logits {:?}",
        tokens.dims(),
        logits.dims()
    );
    assert!(
        t >= 2,
        "captioning_loss needs at least 2 positions, got {t}"
    );
    let inputs = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let targets = tokens.narrow(1, 1, t - 1).reshape([b * (t - 1), 1]);
    let log_probs = log_softmax(inputs, 1);
    let picked = log_probs.gather(1, targets.clone()).reshape([b * (t - 1)]);
    let keep = targets
        .reshape([b * (t - 1)])
        .not_equal_elem(ignore_index as i64)
        .float();
    let count = keep.clone().sum().clamp_min(1.0);
    (picked * keep).sum().neg() / count
}

/// The bicaptioning objective and its logged components (`loss_components` upstream).
#[derive(Debug, Clone)]
pub struct BicaptioningLoss<B: Backend> {
    /// `captioning_forward + captioning_backward`, what is optimised, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Loss of the left-to-right head, `[1]`.
    pub captioning_forward: Tensor<B, 1>,
    /// Loss of the right-to-left head, `[1]`.
    pub captioning_backward: Tensor<B, 1>,
}

/// `L_fwd + L_bwd`: the plain sum (no ½) of the forward loss on `caption_tokens` and the
/// backward loss on `noitpac_tokens` (each caption reversed before padding).
///
/// # Shapes
/// - `forward_logits`, `backward_logits`: `[B, T, V]`
/// - `caption_tokens`, `noitpac_tokens`: `[B, T]`
pub fn bicaptioning_loss<B: Backend>(
    forward_logits: Tensor<B, 3>,
    caption_tokens: Tensor<B, 2, Int>,
    backward_logits: Tensor<B, 3>,
    noitpac_tokens: Tensor<B, 2, Int>,
) -> BicaptioningLoss<B> {
    let captioning_forward = captioning_loss(forward_logits, caption_tokens, PADDING_INDEX);
    let captioning_backward = captioning_loss(backward_logits, noitpac_tokens, PADDING_INDEX);
    BicaptioningLoss {
        loss: captioning_forward.clone() + captioning_backward.clone(),
        captioning_forward,
        captioning_backward,
    }
}
