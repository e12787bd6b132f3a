//! `CaptioningModel::init_from`: fine-tuning a checkpoint into a textual head of another depth
//! loads what matches, initialises the rest, and names both lists.

mod common;

use burn::prelude::*;
use common::*;
use virtex::{infer_official_config, CaptioningModel, ImportOptions, VirtexError};

const BICAPTIONING: &str = "bicaptioning_tiny.pth";
const CAPTIONING: &str = "captioning_tiny.pth";

/// The fixtures' H = 16 needs the heads given (2, as generated).
fn options() -> ImportOptions {
    ImportOptions {
        attention_heads: Some(2),
        ..ImportOptions::default()
    }
}

/// A model of the fixture's architecture with `layers` decoder layers (the fixture has 1).
fn model_with_layers(layers: usize, backward: bool) -> CaptioningModel<B> {
    let (mut config, _) = infer_official_config(fixture(BICAPTIONING), &options()).unwrap();
    config.textual.num_layers = layers;
    config.caption_backward = backward;
    config.init(&Default::default()).unwrap()
}

fn values<const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn a_one_layer_checkpoint_initialises_a_three_layer_head() {
    let mut model = model_with_layers(3, true);
    let fresh_layer_2 = values(model.textual.transformer.layers[2].linear1.weight.val());
    let report = model.init_from(fixture(BICAPTIONING)).unwrap();

    // Every parameter of the file's layer 0 (forward and backward) is loaded, and the shared
    // parts once; layers 1 and 2 of both stacks are initialised; nothing is unused.
    assert!(report.cnn_tensors > 0);
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    // 2 attentions × (in_proj weight/bias, out_proj weight/bias) + 2 linears × 2 + 3 norms × 2.
    let per_layer = 18;
    let layer_keys = |stack: &str, layer: usize| format!("{stack}transformer.layers.{layer}.");
    for stack in ["textual.", "backward_textual."] {
        let loaded = report
            .loaded
            .iter()
            .filter(|key| key.starts_with(&layer_keys(stack, 0)))
            .count();
        assert_eq!(loaded, per_layer, "{stack}: {:?}", report.loaded);
        for layer in 1..3 {
            let initialised = report
                .initialised
                .iter()
                .filter(|key| key.starts_with(&layer_keys(stack, layer)))
                .count();
            assert_eq!(initialised, per_layer, "{stack} layer {layer}");
        }
    }
    assert_eq!(report.initialised.len(), 2 * 2 * per_layer);
    for key in [
        "textual.embedding.words.weight",
        "textual.visual_projection.weight",
        "textual.output.bias",
    ] {
        assert!(report.loaded.iter().any(|k| k == key), "{key}");
    }

    // Loaded values are the file's (as a strict import of the same file gives them);
    // initialised ones are untouched.
    let (reference, _) = CaptioningModel::<B>::from_official_checkpoint(
        fixture(BICAPTIONING),
        &options(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        values(model.textual.transformer.layers[0].linear1.weight.val()),
        values(reference.textual.transformer.layers[0].linear1.weight.val())
    );
    let backward = |m: &CaptioningModel<B>| {
        values(
            m.backward_textual.as_ref().unwrap().transformer.layers[0]
                .linear2
                .weight
                .val(),
        )
    };
    assert_eq!(backward(&model), backward(&reference));
    assert_eq!(
        values(model.textual.embedding.words.weight.val()),
        values(reference.textual.embedding.words.weight.val())
    );
    assert_eq!(
        values(model.textual.transformer.layers[2].linear1.weight.val()),
        fresh_layer_2
    );
}

#[test]
fn a_captioning_checkpoint_leaves_the_backward_stack_initialised_and_a_forward_model_skips_it() {
    let mut bidirectional = model_with_layers(1, true);
    let report = bidirectional.init_from(fixture(CAPTIONING)).unwrap();
    assert!(report.unused.is_empty());
    assert!(!report.initialised.is_empty());
    assert!(report
        .initialised
        .iter()
        .all(|key| key.starts_with("backward_textual.transformer.layers.0.")));

    let mut forward = model_with_layers(1, false);
    let report = forward.init_from(fixture(BICAPTIONING)).unwrap();
    assert!(report.initialised.is_empty());
    assert!(!report.unused.is_empty());
    assert!(report
        .unused
        .iter()
        .all(|key| key.contains("backward_textual.")));
}

#[test]
fn our_format_into_a_shallower_head_leaves_the_deeper_layers_unused() {
    let directory = tempfile::tempdir().unwrap();
    let deep = model_with_layers(2, true);
    let path = directory.path().join("deep.safetensors");
    deep.save(&path).unwrap();

    let mut shallow = model_with_layers(1, true);
    let report = shallow.init_from(&path).unwrap();
    assert!(report.initialised.is_empty());
    assert_eq!(report.unused.len(), 2 * 18, "{:?}", report.unused);
    assert!(report
        .unused
        .iter()
        .all(|key| key.contains("transformer.layers.1.")));
    assert_eq!(
        values(shallow.textual.transformer.layers[0].linear1.weight.val()),
        values(deep.textual.transformer.layers[0].linear1.weight.val())
    );
    // The same depth loads everything.
    let mut same = model_with_layers(2, true);
    let report = same.init_from(&path).unwrap();
    assert!(report.initialised.is_empty() && report.unused.is_empty());
}

#[test]
fn anything_but_the_depth_must_match() {
    let (mut config, _) = infer_official_config(fixture(BICAPTIONING), &options()).unwrap();
    config.textual.feedforward_size = 32;
    config.textual.num_layers = 2;
    let mut model: CaptioningModel<B> = config.init(&Default::default()).unwrap();
    let err = model.init_from(fixture(BICAPTIONING)).unwrap_err();
    assert!(
        matches!(err, VirtexError::ArchitectureMismatch { .. })
            && err.to_string().contains("feedforward_size"),
        "{err}"
    );
}
