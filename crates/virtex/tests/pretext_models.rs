//! The pretext ablations' models: official-checkpoint import and loss parity with the PyTorch
//! reference (fixtures from `tools/reference/pretext_models.py`), our format, backbone export,
//! and the statistics of the masked-LM masking (whose random stream cannot match Python's).

mod common;

use burn::prelude::*;
use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use virtex::{
    mask_tokens, mask_tokens_with, ClassificationKind, ClassificationModel, ImportOptions,
    MaskedLmModel, MaskingConfig, VirtexError, MASK_INDEX,
};

const REFERENCE: &str = "pretext_reference.safetensors";

/// Losses are sums of a few dozen f32 log-probabilities through a tiny ResNet: 1e-4 is the
/// parity the issue asks for, far above the ~1e-6 float noise seen here.
const TOLERANCE: f32 = 1e-4;

fn scalar(tensor: Tensor<impl Backend, 1>) -> TensorData {
    tensor.into_data().convert::<f32>()
}

fn classification<Bk: Backend>(kind: ClassificationKind) -> ClassificationModel<Bk> {
    let file = format!("{}_tiny.pth", kind.name());
    let (model, report) =
        ClassificationModel::from_official_checkpoint(fixture(&file), kind, &Default::default())
            .unwrap();
    assert_eq!(report.prefix, "model.");
    assert_eq!(report.head_tensors, 2);
    assert!(report.cnn_tensors > 0);
    model
}

/// Train mode (BatchNorm on batch statistics, autodiff) and eval mode losses, and the eval
/// logits, against the reference; returns the largest difference.
fn check_classification(kind: ClassificationKind, vocab: usize) -> f32 {
    let reference = reference(REFERENCE);
    let name = kind.name();
    let images = &reference["images"];
    let labels = &reference[&format!("{name}.labels")];

    let model = classification::<B>(kind);
    assert_eq!(model.config.vocab_size, vocab);
    assert_eq!(model.config.kind, kind);
    let output = model.forward_eval(float(images), int(labels));
    let logits = max_abs_diff(
        &output.logits.into_data(),
        &reference[&format!("{name}.eval.logits")],
    );
    let eval = max_abs_diff(
        &scalar(output.loss),
        &reference[&format!("{name}.eval.loss")],
    );

    let train_model = classification::<AB>(kind);
    let loss = train_model.loss(float(images), int(labels));
    let train = max_abs_diff(
        &scalar(loss.clone()),
        &reference[&format!("{name}.train.loss")],
    );
    let _ = loss.backward();
    eprintln!(
        "{name}: max |Δ| eval logits {logits:.3e}, eval loss {eval:.3e}, train loss {train:.3e}"
    );
    assert!(
        logits < TOLERANCE && eval < TOLERANCE && train < TOLERANCE,
        "{name}: {logits} {eval} {train}"
    );
    logits.max(eval).max(train)
}

#[test]
fn token_classification_matches_pytorch() {
    check_classification(ClassificationKind::Token, 50);
}

#[test]
fn multilabel_classification_matches_pytorch() {
    check_classification(ClassificationKind::Multilabel, 81);
}

fn masked_lm_options() -> ImportOptions {
    // H = 16 is not a multiple of 64: the heads are given (2, as generated); dropout 0 as the
    // reference.
    ImportOptions {
        attention_heads: Some(2),
        dropout: 0.0,
        ..ImportOptions::default()
    }
}

fn masked_lm<Bk: Backend>() -> MaskedLmModel<Bk> {
    let (model, report) = MaskedLmModel::from_official_checkpoint(
        fixture("masked_lm_tiny.pth"),
        &masked_lm_options(),
        &Default::default(),
    )
    .unwrap();
    assert!(report.head_tensors > 0 && report.cnn_tensors > 0);
    assert!(!model.textual.mask_future_positions);
    model
}

/// The reference's three images: its two, then the first mirrored.
fn masked_lm_images<Bk: Backend>(
    reference: &std::collections::HashMap<String, TensorData>,
) -> Tensor<Bk, 4> {
    let images: Tensor<Bk, 4> = float(&reference["images"]);
    let mirrored = images.clone().slice(0..1).flip([3]);
    Tensor::cat(vec![images, mirrored], 0)
}

#[test]
fn masked_lm_matches_pytorch() {
    let reference = reference(REFERENCE);
    let tokens = &reference["masked_lm.caption_tokens"];
    let lengths = &reference["masked_lm.caption_lengths"];
    let labels = &reference["masked_lm.masked_labels"];

    let model = masked_lm::<B>();
    let output = model.forward_eval(
        masked_lm_images(&reference),
        int(tokens),
        int(lengths),
        int(labels),
    );
    let logits = max_abs_diff(
        &output.logits.into_data(),
        &reference["masked_lm.eval.logits"],
    );
    let eval = max_abs_diff(&scalar(output.loss), &reference["masked_lm.eval.loss"]);

    let train_model = masked_lm::<AB>();
    let loss = train_model.loss(
        masked_lm_images(&reference),
        int(tokens),
        int(lengths),
        int(labels),
    );
    let train = max_abs_diff(&scalar(loss.clone()), &reference["masked_lm.train.loss"]);
    let _ = loss.backward();
    eprintln!(
        "masked_lm: max |Δ| eval logits {logits:.3e}, eval loss {eval:.3e}, train loss {train:.3e}"
    );
    assert!(
        logits < TOLERANCE && eval < TOLERANCE && train < TOLERANCE,
        "masked_lm: {logits} {eval} {train}"
    );
}

#[test]
fn the_masked_lm_head_sees_future_tokens() {
    // Changing the last token changes the first position's logits: no causal mask.
    let reference = reference(REFERENCE);
    let model = masked_lm::<B>();
    let images = masked_lm_images::<B>(&reference).slice(0..1);
    let tokens = Tensor::<B, 2, Int>::from_ints([[1, 11, 23, 2]], &Default::default());
    let changed = Tensor::<B, 2, Int>::from_ints([[1, 11, 24, 2]], &Default::default());
    let lengths = Tensor::<B, 1, Int>::from_ints([4], &Default::default());
    let first = |tokens| {
        model
            .forward(images.clone(), tokens, lengths.clone())
            .slice([0..1, 0..1])
            .into_data()
    };
    assert!(max_abs_diff(&first(tokens), &first(changed)) > 1e-4);
}

#[test]
fn our_format_round_trips_and_the_backbone_exports() {
    // Saved and loaded weights are bit-identical, but an imported linear weight is a transposed
    // view while a loaded one is contiguous, and the matrix product may sum in another order.
    let directory = tempfile::tempdir().unwrap();
    let reference = reference(REFERENCE);
    let images: Tensor<B, 4> = float(&reference["images"]);
    let device = Default::default();

    for kind in [ClassificationKind::Token, ClassificationKind::Multilabel] {
        let model = classification::<B>(kind);
        let path = directory
            .path()
            .join(format!("{}.safetensors", kind.name()));
        model.save(&path).unwrap();
        let loaded = ClassificationModel::<B>::load(&path, &device).unwrap();
        assert_eq!(loaded.config.kind, kind);
        let diff = max_abs_diff(
            &loaded.forward(images.clone()).into_data(),
            &model.forward(images.clone()).into_data(),
        );
        assert!(diff < 1e-5, "{diff}");
        // Into an existing model of the same architecture, but not of another vocabulary.
        let mut same = model.config.init::<B>(&device).unwrap();
        same.load_weights(&path).unwrap();
        assert!(
            max_abs_diff(
                &same.forward(images.clone()).into_data(),
                &model.forward(images.clone()).into_data()
            ) < 1e-5
        );
        let mut config = model.config.clone();
        config.vocab_size += 1;
        let mut wider = config.init::<B>(&device).unwrap();
        match wider.load_weights(&path) {
            Err(VirtexError::ArchitectureMismatch { key, .. }) => assert_eq!(key, "vocab_size"),
            other => panic!("unexpected {other:?}"),
        }
        // A classification file is not a masked LM one.
        assert!(matches!(
            MaskedLmModel::<B>::load(&path, &device),
            Err(VirtexError::WrongModelKind { .. })
        ));

        let exported = directory
            .path()
            .join(format!("{}_backbone.pth", kind.name()));
        model.save_torchvision_backbone(&exported).unwrap();
        let mut cnn = model.config.backbone.init::<B>(&device);
        cnn.load_weights(&exported).unwrap();
        let diff = max_abs_diff(
            &cnn.forward(images.clone()).into_data(),
            &model.visual_features(images.clone()).into_data(),
        );
        assert!(diff < 1e-5, "{diff}");
        model
            .save_detectron2_backbone(directory.path().join("detectron2.pth"))
            .unwrap();
    }

    let model = masked_lm::<B>();
    let path = directory.path().join("masked_lm.safetensors");
    model.save(&path).unwrap();
    let loaded = MaskedLmModel::<B>::load(&path, &device).unwrap();
    assert!(!loaded.textual.mask_future_positions);
    // Dropout is not part of the architecture: a model with another one loads the weights.
    let mut config = model.config.clone();
    config.textual.dropout = 0.3;
    config
        .init::<B>(&device)
        .unwrap()
        .load_weights(&path)
        .unwrap();
    let tokens = int::<B, 2>(&reference["masked_lm.caption_tokens"]);
    let lengths = int::<B, 1>(&reference["masked_lm.caption_lengths"]);
    let images3 = masked_lm_images::<B>(&reference);
    let diff = max_abs_diff(
        &loaded
            .forward(images3.clone(), tokens.clone(), lengths.clone())
            .into_data(),
        &model.forward(images3, tokens, lengths).into_data(),
    );
    assert!(diff < 1e-5, "{diff}");
    assert!(matches!(
        ClassificationModel::<B>::load(&path, &device),
        Err(VirtexError::WrongModelKind { .. })
    ));
    let exported = directory.path().join("masked_lm_backbone.pth");
    model.save_torchvision_backbone(&exported).unwrap();
    let mut cnn = model.config.backbone.init::<B>(&device);
    cnn.load_weights(&exported).unwrap();
}

#[test]
fn checkpoints_of_other_models_are_refused_with_the_key() {
    let device = Default::default();
    // A captioning file has a transformer head: not a classification checkpoint.
    match ClassificationModel::<B>::from_official_checkpoint(
        fixture("captioning_tiny.pth"),
        ClassificationKind::Token,
        &device,
    ) {
        Err(VirtexError::UnexpectedTensor { key, .. }) => {
            assert!(key.starts_with("model.textual."))
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    // A bicaptioning file has a backward head: not a masked LM checkpoint.
    match MaskedLmModel::<B>::from_official_checkpoint(
        fixture("bicaptioning_tiny.pth"),
        &masked_lm_options(),
        &device,
    ) {
        Err(VirtexError::UnexpectedTensor { key, .. }) => {
            assert!(key.starts_with("model.backward_textual."), "{key}")
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    // A classification file has no transformer head.
    assert!(matches!(
        MaskedLmModel::<B>::from_official_checkpoint(
            fixture("token_classification_tiny.pth"),
            &masked_lm_options(),
            &device,
        ),
        Err(VirtexError::NotACaptioningCheckpoint { .. })
    ));
    // The masked LM file is not a classification one either.
    assert!(matches!(
        ClassificationModel::<B>::from_official_checkpoint(
            fixture("masked_lm_tiny.pth"),
            ClassificationKind::Token,
            &device,
        ),
        Err(VirtexError::UnexpectedTensor { .. })
    ));
}

/// A caption `[SOS, 4.., EOS]` with `inner` tokens between the boundaries (ids never equal to
/// `[MASK]` or the boundaries).
fn caption(inner: usize) -> Vec<u32> {
    let mut tokens = vec![1];
    tokens.extend((0..inner as u32).map(|i| 4 + i % 90));
    tokens.push(2);
    tokens
}

#[test]
fn masking_follows_upstreams_rule_in_distribution() {
    let mut rng = StdRng::seed_from_u64(2021);
    let vocab = 100;
    let (mut chosen_total, mut masked_total, mut replaced_total) = (0usize, 0usize, 0usize);
    for round in 0..4000 {
        let inner = 7 + round % 22; // lengths 9..=30: always ≥ 2 chosen
        let tokens = caption(inner);
        let (masked, labels) = mask_tokens(&tokens, vocab, MASK_INDEX, &mut rng);
        assert_eq!((masked.len(), labels.len()), (tokens.len(), tokens.len()));
        assert_eq!(masked[0], 1, "[SOS] is never chosen");
        assert_eq!(*masked.last().unwrap(), 2, "[EOS] is never chosen");
        let expected = (inner as f64 * 0.15).ceil() as usize;
        let mut masks = 0;
        let mut others = 0;
        for i in 0..tokens.len() {
            if labels[i] != 0 {
                // Labels only on [MASK]ed positions, holding the original token.
                assert_eq!((masked[i], labels[i]), (MASK_INDEX, tokens[i]));
                masks += 1;
            } else {
                // Unlabelled: unchanged, or replaced by a random id (which may be [MASK]'s).
                if masked[i] != tokens[i] {
                    assert!((masked[i] as usize) < vocab);
                    others += 1;
                }
            }
        }
        // Every [MASK] or replaced token is one of the ceil(0.15·(len − 2)) chosen ones.
        assert!(masks + others <= expected);
        chosen_total += expected;
        masked_total += masks;
        replaced_total += others;
    }
    let mask_rate = masked_total as f64 / chosen_total as f64;
    // Replacements that draw the original id are invisible: 1/V of 10 %.
    let replace_rate = replaced_total as f64 / chosen_total as f64;
    // ~12,000 chosen tokens: the binomial standard deviation is ~0.003.
    assert!((mask_rate - 0.85).abs() < 0.015, "mask rate {mask_rate}");
    assert!(
        (replace_rate - 0.099).abs() < 0.015,
        "replace rate {replace_rate}"
    );
}

#[test]
fn one_chosen_token_is_always_masked_and_counts_follow_the_length() {
    let mut rng = StdRng::seed_from_u64(7);
    for inner in 0..40 {
        let tokens = caption(inner);
        let expected = (inner as f64 * 0.15).ceil() as usize;
        for _ in 0..50 {
            let (masked, labels) = mask_tokens(&tokens, 100, MASK_INDEX, &mut rng);
            let changed = (0..tokens.len())
                .filter(|&i| masked[i] != tokens[i])
                .count();
            assert!(changed <= expected);
            if expected == 1 {
                assert_eq!(changed, 1);
                let i = (0..tokens.len()).find(|&i| masked[i] != tokens[i]).unwrap();
                assert_eq!((masked[i], labels[i]), (MASK_INDEX, tokens[i]));
            }
        }
    }
    // With every chosen token masked, the count is exactly ceil(0.15·(len − 2)).
    let always = MaskingConfig::new(100).with_mask_probability(1.0);
    for inner in 0..40 {
        let tokens = caption(inner);
        let (masked, _) = mask_tokens_with(&tokens, &always, &mut rng);
        let count = masked.iter().filter(|&&t| t == MASK_INDEX).count();
        assert_eq!(
            count,
            (inner as f64 * 0.15).ceil() as usize,
            "length {}",
            inner + 2
        );
    }
}
