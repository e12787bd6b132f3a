//! Official-checkpoint import and parity with our PyTorch reference model
//! (fixtures from `tools/reference/textual.py`).

mod common;

use burn::prelude::*;
use common::*;
use virtex::backbone::BlockKind;
use virtex::textual::{NormType, TextualError};
use virtex::{
    infer_official_config, BeamSearchMode, CaptioningModel, CaptioningModelConfig, DecodingConfig,
    ImportOptions, VirtexError,
};

const REFERENCE: &str = "bicaptioning_tiny_reference.safetensors";
const BICAPTIONING: &str = "bicaptioning_tiny.pth";
const CAPTIONING: &str = "captioning_tiny.pth";

/// The fixture's H = 16 is not a multiple of 64, so the heads are given (2, as generated).
/// Dropout 0 makes training-mode outputs deterministic, as in the reference.
fn options() -> ImportOptions {
    ImportOptions {
        attention_heads: Some(2),
        dropout: 0.0,
        ..ImportOptions::default()
    }
}

/// [`options`] for a model of the given kind, whatever the file holds.
fn options_with_backward(caption_backward: bool) -> ImportOptions {
    ImportOptions {
        caption_backward: Some(caption_backward),
        ..options()
    }
}

fn bicaptioning<Bk: Backend>() -> CaptioningModel<Bk> {
    let (model, report) = CaptioningModel::from_official_checkpoint(
        fixture(BICAPTIONING),
        &options(),
        &Default::default(),
    )
    .unwrap();
    assert!(report.has_backward);
    model
}

#[test]
fn the_architecture_is_read_from_the_tensors() {
    let (config, bidirectional) = infer_official_config(fixture(BICAPTIONING), &options()).unwrap();
    assert!(bidirectional);
    assert_eq!(config.backbone.block, BlockKind::Bottleneck);
    assert_eq!(config.backbone.layers, [1, 1, 1, 1]);
    assert_eq!(config.backbone.stem_channels, 4);
    assert_eq!(config.backbone.width_per_group, 64);
    let textual = &config.textual;
    assert_eq!(
        (
            textual.visual_feature_size,
            textual.vocab_size,
            textual.hidden_size
        ),
        (128, 50, 16)
    );
    assert_eq!(
        (
            textual.num_layers,
            textual.attention_heads,
            textual.feedforward_size
        ),
        (1, 2, 64)
    );
    assert_eq!(
        (textual.max_caption_length, textual.norm_type),
        (30, NormType::Post)
    );

    let (_, bidirectional) = infer_official_config(fixture(CAPTIONING), &options()).unwrap();
    assert!(!bidirectional);

    // Without the override, A = H / 64 is impossible for H = 16.
    let err = infer_official_config(fixture(BICAPTIONING), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("attention_heads"), "{err}");
}

#[test]
fn reversed_captions_match_the_reference_batch() {
    let reference = reference(REFERENCE);
    let reversed = virtex::reverse_captions(
        int::<B, 2>(&reference["input.caption_tokens"]),
        int::<B, 1>(&reference["input.caption_lengths"]),
    );
    assert_eq!(
        reversed
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap(),
        reference["input.noitpac_tokens"].to_vec::<i64>().unwrap()
    );
}

#[test]
fn import_reports_what_it_loaded() {
    let (_, report) = CaptioningModel::<B>::from_official_checkpoint(
        fixture(BICAPTIONING),
        &options(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(report.prefix, "model.");
    // conv1 + bn1 (4) + 4 bottlenecks × (3 convs + 3 BNs × 4 + downsample conv + BN × 4).
    assert_eq!(report.cnn_tensors, 5 + 4 * (3 + 12 + 1 + 4));
    // projection 2, embedding 4, one layer (2 attentions × 4, 2 linears × 2, 3 norms × 2),
    // output bias 1 (the tied weight once).
    assert_eq!(report.textual_tensors, 2 + 4 + 18 + 1);
    assert_eq!(report.backward_tensors, 18);
    // visual_projection ×2, embedding ×4, output ×2 duplicated under backward_textual.
    assert_eq!(report.duplicates_checked, 8);
}

#[test]
fn train_loss_components_and_gradients_match_torch() {
    let reference = reference(REFERENCE);
    let model = bicaptioning::<AB>();
    let output = model.forward_train(
        float(&reference["input.images"]),
        int(&reference["input.caption_tokens"]),
        int(&reference["input.noitpac_tokens"]),
        int(&reference["input.caption_lengths"]),
    );
    for (name, value) in [
        ("loss", output.loss.clone()),
        ("captioning_forward", output.captioning_forward.clone()),
        (
            "captioning_backward",
            output.captioning_backward.clone().unwrap(),
        ),
    ] {
        let error = relative_error(&value.into_data(), &reference[&format!("train.{name}")]);
        println!("train.{name}: rel {error:e}");
        assert!(error <= 1e-5, "{name}: rel {error:e}");
    }

    let gradients = output.loss.backward();
    let by_path = gradients_by_path(&model, &gradients);
    let mut checked = 0;
    for (key, expected) in reference
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("grad.")?, v)))
    {
        let (path, grad) = by_path
            .iter()
            .find(|(path, _)| torch_name(path) == key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let grad = if is_linear_weight(key) {
            transposed(grad)
        } else {
            grad.clone()
        };
        let error = relative_error(&grad, expected);
        println!("grad {key} ({path}): rel {error:e}");
        assert!(error <= 1e-4, "grad {key}: rel {error:e}");
        checked += 1;
    }
    assert_eq!(checked, 13);
}

#[test]
fn eval_features_and_logits_match_torch() {
    let reference = reference(REFERENCE);
    let model = bicaptioning::<B>();
    let features = model.visual_features(float(&reference["input.images"]));
    let error = relative_error(&features.clone().into_data(), &reference["eval.features"]);
    println!("eval.features: rel {error:e}");
    assert!(error <= 1e-4);
    let (forward, backward) = model.logits(
        features,
        int(&reference["input.caption_tokens"]),
        int(&reference["input.noitpac_tokens"]),
        int(&reference["input.caption_lengths"]),
    );
    for (name, logits) in [
        ("forward_logits", forward),
        ("backward_logits", backward.unwrap()),
    ] {
        let diff = max_abs_diff(&logits.into_data(), &reference[&format!("eval.{name}")]);
        println!("eval.{name}: max |Δ| {diff:e}");
        assert!(diff <= 1e-4, "{name}: {diff:e}");
    }
}

fn expected_tokens(
    reference: &std::collections::HashMap<String, TensorData>,
    name: &str,
) -> Vec<Vec<u32>> {
    let data = &reference[&format!("decode.{name}")];
    let width = data.shape[1];
    data.to_vec::<i64>()
        .unwrap()
        .chunks(width)
        .map(|row| row.iter().map(|&t| t as u32).collect())
        .collect()
}

/// Beam search (both modes) and greedy reproduce the reference decoder token for token, from
/// the reference features and end to end from the images, with and without the cache.
#[test]
fn decoding_matches_torch() {
    let reference = reference(REFERENCE);
    let model = bicaptioning::<B>();
    for (name, config) in [
        (
            "upstream",
            DecodingConfig::beam_search(BeamSearchMode::Upstream),
        ),
        (
            "correct",
            DecodingConfig::beam_search(BeamSearchMode::Correct),
        ),
        ("greedy", DecodingConfig::greedy()),
    ] {
        let expected = expected_tokens(&reference, name);
        for use_cache in [true, false] {
            let config = config.clone().with_cache(use_cache);
            let captions = model
                .decode_features(float(&reference["eval.features"]), &config)
                .unwrap();
            assert_eq!(captions.tokens, expected, "{name}, cache {use_cache}");
            let log_probs = TensorData::new(captions.log_probs.clone().unwrap(), [2]);
            let diff = max_abs_diff(&log_probs, &reference[&format!("decode.{name}_logprob")]);
            println!("decode.{name} (cache {use_cache}): log-prob max |Δ| {diff:e}");
            assert!(diff <= 1e-4, "{name}: {diff:e}");
        }
        let end_to_end = model
            .decode(float(&reference["input.images"]), &config)
            .unwrap();
        assert_eq!(end_to_end.tokens, expected, "{name} from images");
    }
}

#[test]
fn forward_only_checkpoints_and_models() {
    let reference = reference(REFERENCE);
    let device = Default::default();
    let (model, report) =
        CaptioningModel::<B>::from_official_checkpoint(fixture(CAPTIONING), &options(), &device)
            .unwrap();
    assert!(!report.has_backward);
    assert!(!model.has_backward() && !model.config.caption_backward);
    let logits = model.textual.forward(
        float(&reference["eval.features"]),
        int(&reference["input.caption_tokens"]),
        int(&reference["input.caption_lengths"]),
    );
    assert!(max_abs_diff(&logits.into_data(), &reference["eval.forward_logits"]) <= 1e-4);

    // A bicaptioning checkpoint captions with its forward head; the backward stack is skipped.
    let (forward_only, report) = CaptioningModel::<B>::from_official_checkpoint(
        fixture(BICAPTIONING),
        &options_with_backward(false),
        &device,
    )
    .unwrap();
    assert!(report.has_backward);
    assert!(!forward_only.has_backward());
    // The backward layer (18), the 8 duplicates, and 17 BatchNorm `num_batches_tracked`.
    assert_eq!(report.ignored, 18 + 8 + 17);

    // A forward-only checkpoint cannot fill a backward stack.
    let err = CaptioningModel::<B>::from_official_checkpoint(
        fixture(CAPTIONING),
        &options_with_backward(true),
        &device,
    )
    .unwrap_err();
    assert!(
        matches!(&err, VirtexError::MissingTensor { key, .. } if key.starts_with("model.backward_textual.transformer.")),
        "{err}"
    );
}

#[test]
fn a_mismatched_model_names_the_first_key_and_both_shapes() {
    let device = Default::default();
    let (config, _) = infer_official_config(fixture(BICAPTIONING), &options()).unwrap();

    // A wider head.
    let mut wide = config.clone();
    wide.textual.hidden_size = 32;
    let mut model = wide.init::<B>(&device).unwrap();
    let err = model
        .load_official_weights(fixture(BICAPTIONING))
        .unwrap_err();
    match err {
        VirtexError::TextualWeights {
            source:
                TextualError::ShapeMismatch {
                    key,
                    expected,
                    found,
                },
            ..
        } => {
            assert_eq!(key, "model.textual.visual_projection.weight");
            assert_eq!((expected, found), (vec![32, 128], vec![16, 128]));
        }
        other => panic!("unexpected error: {other}"),
    }

    // A deeper head: the missing layer is named.
    let mut deep = config.clone();
    deep.textual.num_layers = 2;
    let mut model = deep.init::<B>(&device).unwrap();
    let err = model
        .load_official_weights(fixture(BICAPTIONING))
        .unwrap_err();
    assert!(
        matches!(&err, VirtexError::TextualWeights { source: TextualError::MissingTensor { key, .. }, .. }
            if key == "model.textual.transformer.layers.1.self_attn.in_proj_weight"),
        "{err}"
    );

    // A different backbone: the backbone loader names the key.
    let mut wide_cnn = config.clone();
    wide_cnn.backbone.stem_channels = 8;
    wide_cnn.textual.visual_feature_size = wide_cnn.backbone.output_channels();
    let mut model = wide_cnn.init::<B>(&device).unwrap();
    let err = model
        .load_official_weights(fixture(BICAPTIONING))
        .unwrap_err();
    assert!(err.to_string().contains("conv1.weight"), "{err}");
    assert!(
        err.to_string().contains("[8, 3, 7, 7]") && err.to_string().contains("[4, 3, 7, 7]"),
        "{err}"
    );
}

/// Import → save in our format → load: identical parameters, logits and captions.
#[test]
fn our_format_round_trips() {
    let reference = reference(REFERENCE);
    let device = Default::default();
    let model = bicaptioning::<B>();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bicaptioning.safetensors");
    model.save(&path).unwrap();
    let loaded = CaptioningModel::<B>::load(&path, &device).unwrap();
    assert_eq!(loaded.config.textual.hidden_size, 16);

    let features = float::<B, 4>(&reference["eval.features"]);
    let inputs = || {
        (
            int::<B, 2>(&reference["input.caption_tokens"]),
            int::<B, 2>(&reference["input.noitpac_tokens"]),
            int::<B, 1>(&reference["input.caption_lengths"]),
        )
    };
    let (c, n, l) = inputs();
    let (before_f, before_b) = model.logits(features.clone(), c, n, l);
    let (c, n, l) = inputs();
    let (after_f, after_b) = loaded.logits(features, c, n, l);
    assert_eq!(
        max_abs_diff(&before_f.into_data(), &after_f.into_data()),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &before_b.unwrap().into_data(),
            &after_b.unwrap().into_data()
        ),
        0.0
    );
    let images = float::<B, 4>(&reference["input.images"]);
    assert_eq!(
        max_abs_diff(
            &model.visual_features(images.clone()).into_data(),
            &loaded.visual_features(images.clone()).into_data()
        ),
        0.0
    );
    let config = DecodingConfig::beam_search(BeamSearchMode::Upstream);
    assert_eq!(
        loaded.decode(images, &config).unwrap().tokens,
        expected_tokens(&reference, "upstream")
    );

    // The kind is checked.
    assert!(loaded.has_backward());

    // The forward-only model round-trips too.
    let forward = model.without_backward();
    let path = directory.path().join("captioning.safetensors");
    forward.save(&path).unwrap();
    let loaded = CaptioningModel::<B>::load(&path, &device).unwrap();
    assert!(!loaded.has_backward());
    let captions = loaded
        .decode_features(
            float(&reference["eval.features"]),
            &DecodingConfig::greedy(),
        )
        .unwrap();
    assert_eq!(captions.tokens, expected_tokens(&reference, "greedy"));
    let _: CaptioningModelConfig = loaded.config;
}

/// `load_weights` keeps the configured dropout and names the first architecture difference.
#[test]
fn load_weights_keeps_the_configured_dropout_and_checks_the_architecture() {
    let device = Default::default();
    let model = bicaptioning::<B>();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bicaptioning.safetensors");
    model.save(&path).unwrap();

    let mut config = model.config.clone();
    config.textual.dropout = 0.3;
    let mut target = config.init::<B>(&device).unwrap();
    target.load_weights(&path).unwrap();
    assert_eq!(target.config.textual.dropout, 0.3);
    let images = float::<B, 4>(&reference(REFERENCE)["input.images"]);
    assert_eq!(
        max_abs_diff(
            &model.visual_features(images.clone()).into_data(),
            &target.visual_features(images).into_data()
        ),
        0.0
    );

    let mut other = model.config.clone();
    other.textual.max_caption_length += 1;
    let mut target = other.init::<B>(&device).unwrap();
    let err = target.load_weights(&path).unwrap_err();
    assert!(
        matches!(&err, VirtexError::ArchitectureMismatch { key, .. } if key == "textual.max_caption_length"),
        "{err}"
    );
    let mut forward = model
        .config
        .clone()
        .with_caption_backward(false)
        .init::<B>(&device)
        .unwrap();
    let err = forward.load_weights(&path).unwrap_err();
    assert!(matches!(err, VirtexError::WrongModelKind { .. }), "{err}");
}

#[test]
fn files_that_are_not_captioning_checkpoints_are_named() {
    let device = Default::default();
    let backbone_only =
        fixture("../../../virtex-backbone/tests/fixtures/resnet_bottleneck_tiny.pth");
    let err = CaptioningModel::<B>::from_official_checkpoint(&backbone_only, &options(), &device)
        .unwrap_err();
    assert!(
        matches!(err, VirtexError::NotACaptioningCheckpoint { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("resnet_bottleneck_tiny.pth"),
        "{err}"
    );

    let err =
        CaptioningModel::<B>::from_official_checkpoint(fixture("absent.pth"), &options(), &device)
            .unwrap_err();
    assert!(matches!(err, VirtexError::Io { .. }), "{err}");
}
