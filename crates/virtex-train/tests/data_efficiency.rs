//! Data efficiency: `data.image_fraction` / `data.image_count` and `data.captions_per_image`
//! reach the training loader (and only it), a run trains on the subset, and the config refuses
//! values out of range with the key named.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex_data::{
    sample_data_root, swap_left_right, CaptionSource, CocoCaptions, CocoOptions, FlipCaption,
    ImageId, ImageSubset, LoaderPosition, Split,
};
use virtex_train::checkpoint::checkpoint_name;
use virtex_train::{training_data, PretrainConfig, RunOptions};

use common::tiny_config;

type B = Autodiff<Flex>;

/// The sample's train split as the COCO reader gives it: 10 images, 5 captions each.
fn sample_train() -> CaptionSource {
    CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default())
        .unwrap()
        .into()
}

/// [`tiny_config`] for a two-iteration run with a checkpoint at its end (warmup shortened to
/// stay below the iteration count, as validation requires).
fn tiny() -> PretrainConfig {
    let mut config = tiny_config(2, 2);
    config.optim.warmup_steps = 1;
    config
}

fn half_one_caption() -> PretrainConfig {
    tiny()
        .apply_overrides(&[
            "data.image_fraction=0.5".into(),
            "data.captions_per_image=1".into(),
        ])
        .unwrap()
}

#[test]
fn a_run_trains_on_the_subset_only() {
    let config = half_one_caption();
    let full = sample_train();
    let expected = full
        .clone()
        .with_image_subset(ImageSubset::Fraction(0.5), 0)
        .unwrap();
    let expected_ids: Vec<ImageId> = expected
        .images()
        .iter()
        .map(|im| im.image_id.clone())
        .collect();

    // The loaders the run builds: 5 of the 10 train images with their first caption; the
    // validation split whole.
    let data = training_data(&config).unwrap();
    let train = data.train.dataset().source();
    assert_eq!(train.len(), 5);
    assert_eq!(train.captions().count(), 5);
    for (image, wanted) in train.images().iter().zip(expected.images()) {
        assert_eq!(image.image_id, wanted.image_id);
        assert_eq!(image.captions, wanted.captions[..1]);
    }
    let val = data.val.dataset().source();
    assert_eq!((val.len(), val.captions().count()), (3, 15));

    // The batches of the two iterations: only subset images, each with its one caption (or
    // its left/right swap, when the flip drew it).
    assert_eq!(data.train.batches_per_epoch(), 1, "5 images, batches of 4");
    for step in 0..2 {
        let batch = data
            .train
            .load_batch(LoaderPosition::from_step(step, 1))
            .unwrap();
        for (id, caption) in batch.image_ids.iter().zip(&batch.captions) {
            let image = expected
                .images()
                .iter()
                .find(|im| &im.image_id == id)
                .unwrap_or_else(|| panic!("image {id} is not in the subset {expected_ids:?}"));
            let first = &image.captions[0];
            assert!(
                caption == first || *caption == swap_left_right(first, FlipCaption::WholeWord),
                "image {id}: `{caption}` is not its first caption `{first}`"
            );
        }
    }

    // The loop: two iterations, and the checkpoint's loader position counts epochs of the
    // subset (one batch each), where the whole split would still be in its first epoch.
    let run_dir = tempfile::tempdir().unwrap();
    let summary = virtex_train::train::<B>(
        RunOptions::new(config, run_dir.path()),
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(summary.iteration, 2);
    assert!(summary.losses.iter().all(|loss| loss.is_finite()));
    let state_file = run_dir.path().join(checkpoint_name(2)).join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let position: LoaderPosition =
        serde_json::from_value(state["loader_position"].clone()).unwrap();
    assert_eq!(position, LoaderPosition { epoch: 2, batch: 0 });
    assert_eq!(state["config"]["data"]["image_fraction"], 0.5);
    assert_eq!(state["config"]["data"]["captions_per_image"], 1);
}

#[test]
fn a_count_selects_like_a_fraction_and_is_checked_against_the_split() {
    let by_count = tiny()
        .apply_overrides(&["data.image_count=5".into()])
        .unwrap();
    let by_fraction = half_one_caption();
    let ids = |config: &PretrainConfig| -> Vec<ImageId> {
        training_data(config)
            .unwrap()
            .train
            .dataset()
            .source()
            .images()
            .iter()
            .map(|im| im.image_id.clone())
            .collect()
    };
    // 5 images either way, by the same rule and seed: the same images.
    assert_eq!(ids(&by_count), ids(&by_fraction));
    // Five captions each without data.captions_per_image.
    let data = training_data(&by_count).unwrap();
    assert_eq!(data.train.dataset().source().captions().count(), 25);

    let too_many = tiny()
        .apply_overrides(&["data.image_count=11".into()])
        .unwrap();
    let err = training_data(&too_many).err().unwrap().to_string();
    assert!(err.contains("data.image_count is 11"), "{err}");

    // A different subset seed, different images (fixed by the generator, not by chance).
    let other_seed = tiny()
        .apply_overrides(&["data.image_count=5".into(), "data.subset_seed=1".into()])
        .unwrap();
    assert_ne!(ids(&other_seed), ids(&by_count));
}

#[test]
fn out_of_range_settings_name_their_key() {
    let refused = |overrides: &[&str], key: &str| {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let err = tiny()
            .apply_overrides(&overrides)
            .err()
            .unwrap_or_else(|| panic!("{overrides:?} was accepted"))
            .to_string();
        assert!(err.contains(key), "{overrides:?}: {err}");
    };
    for fraction in ["0", "-0.5", "1.5"] {
        refused(
            &[&format!("data.image_fraction={fraction}")],
            "data.image_fraction",
        );
    }
    refused(&["data.image_count=0"], "data.image_count");
    refused(&["data.image_count=-3"], "data.image_count");
    refused(
        &["data.image_fraction=0.5", "data.image_count=5"],
        "both set",
    );
    for k in ["0", "6"] {
        refused(
            &[&format!("data.captions_per_image={k}")],
            "data.captions_per_image",
        );
    }
    // A config file from before these keys still loads, with every image and caption.
    let mut tree = serde_json::to_value(PretrainConfig::base()).unwrap();
    let data = tree["data"].as_object_mut().unwrap();
    for key in [
        "image_fraction",
        "image_count",
        "captions_per_image",
        "subset_seed",
    ] {
        data.remove(key);
    }
    let old: PretrainConfig = serde_json::from_value(tree).unwrap();
    assert_eq!(old.data.image_subset(), ImageSubset::All);
    assert_eq!(old.data.captions_per_image, None);
}
