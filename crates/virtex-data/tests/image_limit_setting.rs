//! The process-wide pixel limit: `set_image_limits` changes the decision for every later decode,
//! transform and loader thread. One test in its own binary, because the limit is process state;
//! it restores the default at the end.

use std::fs::File;

use virtex_data::{
    image_limits, load_image, sample_data_root, sample_vocab_path, set_image_limits,
    CaptioningDataset, CocoCaptions, CocoOptions, DataError, DataLoader, ImageLimits,
    ImageTransforms, LoaderConfig, SentencePieceBpeTokenizer, Split,
};

/// Restores the default limit even when an assertion fails half-way.
struct RestoreDefault;

impl Drop for RestoreDefault {
    fn drop(&mut self) {
        set_image_limits(ImageLimits::default());
    }
}

#[test]
fn setting_the_limit_changes_every_later_decision() {
    let _restore = RestoreDefault;
    let photo = sample_data_root().join("val2017/000000000011.jpg"); // 400 × 300
    assert_eq!(load_image(&photo).unwrap().dimensions(), (400, 300));

    // Below the image: refused, naming the limit in force.
    set_image_limits(ImageLimits::new(100_000).unwrap());
    assert_eq!(image_limits().max_pixels, 100_000);
    match load_image(&photo) {
        Err(DataError::ImageTooLarge {
            width: 400,
            height: 300,
            max_pixels: 100_000,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Transforms built now are held to it too.
    assert!(ImageTransforms::no_augmentation(400).is_err());
    let small = ImageTransforms::pretrain_val(32).unwrap();

    // Loader worker threads see the process-wide value: val2017 holds 400 × 300, 480 × 480 and
    // 448 × 172 images; with 150 000 pixels only the 480 × 480 one is refused.
    set_image_limits(ImageLimits::new(150_000).unwrap());
    let val = CocoCaptions::load(sample_data_root(), Split::Val, &CocoOptions::default()).unwrap();
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let dataset = CaptioningDataset::new(val, tokenizer, small).unwrap();
    let config = LoaderConfig {
        batch_size: 3,
        num_workers: 2,
        shuffle: false,
        drop_last: false,
        skip_bad_images: true,
        ..LoaderConfig::default()
    };
    let loader = DataLoader::new(dataset, config).unwrap();
    let batch = loader.iter_epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.batch_size(), 2);
    assert_eq!(batch.skipped.len(), 1);
    assert!(batch.skipped[0].path.ends_with("000000000012.jpg"));
    assert!(
        batch.skipped[0].reason.contains("150000"),
        "{}",
        batch.skipped[0].reason
    );

    // Raised again: the same image decodes.
    set_image_limits(ImageLimits::new(120_000).unwrap());
    assert_eq!(load_image(&photo).unwrap().dimensions(), (400, 300));

    // The file-size cap follows the limit: with 1 pixel it is 8 bytes + 64 MiB, and a larger
    // file is refused from its length, before it is read (the file is sparse: no disk used).
    set_image_limits(ImageLimits::new(1).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.jpg");
    File::create(&huge)
        .unwrap()
        .set_len(ImageLimits::new(1).unwrap().max_file_bytes() + 1)
        .unwrap();
    match load_image(&huge) {
        Err(err @ DataError::ImageFileTooLarge { .. }) => {
            assert!(err.is_bad_image());
            assert!(err.to_string().contains("huge.jpg"), "{err}");
        }
        other => panic!("{other:?}"),
    }

    set_image_limits(ImageLimits::default());
    assert_eq!(image_limits(), ImageLimits::default());
}
