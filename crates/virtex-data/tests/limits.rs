//! The pixel limit under its default value: decompression bombs are refused from their header,
//! without allocating their claimed size; transform sizes that cannot work are refused before
//! anything is allocated. Nothing here changes the process-wide limit (`image_limit_setting.rs`
//! does, in its own test binary).

mod common;

use std::time::{Duration, Instant};

use common::{jpeg_bomb, largest_allocation, png_bomb, TempCoco, BOMB_SIDE};
use image::RgbImage;
use virtex_data::{
    decode_image, decode_image_with_limits, image_limits, load_image, CaptioningDataset,
    CocoCaptions, CocoOptions, DataError, DataLoader, FlipCaption, ImageLimits, ImageTransforms,
    LoaderConfig, LoaderPosition, SampleRng, SentencePieceBpeTokenizer, Split, TransformStep,
};

#[global_allocator]
static ALLOC: common::Meter = common::Meter;

/// Far below the 12.7 GB a 65000² RGB image takes, far above what a header needs.
const SMALL_ALLOCATION: usize = 16 << 20;

fn assert_bomb_refused(bytes: &[u8], name: &str) {
    let started = Instant::now();
    let (result, largest) = largest_allocation(|| decode_image(bytes, name));
    let elapsed = started.elapsed();
    match result {
        Err(DataError::ImageTooLarge {
            ref path,
            width,
            height,
            max_pixels,
        }) => {
            assert_eq!(path.to_str(), Some(name));
            assert_eq!(
                (width, height),
                (u64::from(BOMB_SIDE), u64::from(BOMB_SIDE))
            );
            assert_eq!(max_pixels, ImageLimits::DEFAULT_MAX_PIXELS);
        }
        ref other => panic!("{name}: {other:?}"),
    }
    let err = result.unwrap_err();
    assert!(err.is_bad_image(), "skip_bad_images must skip it: {err}");
    let message = err.to_string();
    for part in [name, "65000x65000", "178956970", "set_image_limits"] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    assert!(
        largest < SMALL_ALLOCATION,
        "{name}: allocated {largest} bytes at once"
    );
    assert!(elapsed < Duration::from_secs(2), "{name}: took {elapsed:?}");
}

#[test]
fn the_default_limit_is_pils_decompression_bomb_threshold() {
    assert_eq!(ImageLimits::default().max_pixels, 178_956_970);
    assert_eq!(image_limits(), ImageLimits::default());
    let limits = ImageLimits::default();
    assert!(limits.allows(13_000, 13_000));
    assert!(!limits.allows(u64::from(BOMB_SIDE), u64::from(BOMB_SIDE)));
    assert!(!limits.allows(u64::MAX, 2), "the product saturates");
    assert_eq!(limits.max_alloc_bytes(), 8 * 178_956_970);
    assert!(matches!(
        ImageLimits::new(0),
        Err(DataError::InvalidConfig { .. })
    ));
    assert_eq!(ImageLimits::new(5).unwrap().max_pixels, 5);
}

#[test]
fn a_png_claiming_65000_squared_is_refused_from_its_header() {
    let bomb = png_bomb(BOMB_SIDE, BOMB_SIDE);
    assert!(bomb.len() < 100, "{} bytes", bomb.len());
    assert_bomb_refused(&bomb, "bomb.png");
    // The same header at a size within the limit gets past the check and fails on its
    // (empty) pixel data instead.
    let err = decode_image(&png_bomb(64, 32), "small.png").unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TruncatedImage { .. } | DataError::CorruptImage { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn a_jpeg_claiming_65000_squared_is_refused_from_its_header() {
    let bomb = jpeg_bomb();
    assert!(bomb.len() < 5000, "{} bytes", bomb.len());
    assert_bomb_refused(&bomb, "bomb.jpg");
}

#[test]
fn load_image_refuses_bombs_on_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("bomb.png", png_bomb(BOMB_SIDE, 3)),
        ("bomb.jpg", jpeg_bomb()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        // 65000 × 3 is fine for the pixel count, 65000² is not.
        let result = load_image(&path);
        if name == "bomb.jpg" {
            assert!(
                matches!(result, Err(DataError::ImageTooLarge { ref path, .. }) if path.ends_with(name)),
                "{result:?}"
            );
        } else {
            assert!(
                !matches!(result, Err(DataError::ImageTooLarge { .. })),
                "{result:?}"
            );
        }
    }
}

#[test]
fn explicit_limits_apply_to_one_call_only() {
    let jpeg = common::small_jpeg(); // 400 × 300
    let tight = ImageLimits::new(400 * 300 - 1).unwrap();
    match decode_image_with_limits(&jpeg, "a.jpg", tight) {
        Err(DataError::ImageTooLarge {
            width: 400,
            height: 300,
            max_pixels,
            ..
        }) => assert_eq!(max_pixels, 119_999),
        other => panic!("{other:?}"),
    }
    let exact = ImageLimits::new(400 * 300).unwrap();
    let (decoded, largest) =
        largest_allocation(|| decode_image_with_limits(&jpeg, "a.jpg", exact).unwrap());
    assert_eq!(decoded.dimensions(), (400, 300));
    // The meter sees real decodes (so its small readings for bombs mean something).
    assert!(largest >= 400 * 300 * 3, "{largest}");
    assert_eq!(image_limits(), ImageLimits::default());
}

#[test]
fn a_skipped_bomb_is_named_with_its_reason_at_load_time_and_in_batches() {
    let good = common::small_jpeg();
    let coco = TempCoco::new(&[
        ("1.jpg", good.clone()),
        ("bomb.png", png_bomb(BOMB_SIDE, BOMB_SIDE)),
        ("3.jpg", good.clone()),
        ("4.jpg", good),
    ]);
    let bomb = coco.image("bomb.png");
    // Found at load time with verify_images.
    let verified = CocoCaptions::load(
        coco.root(),
        Split::Train,
        &CocoOptions {
            skip_bad_images: true,
            verify_images: true,
        },
    )
    .unwrap();
    assert_eq!(verified.len(), 3);
    let skipped = verified.skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].path, bomb);
    assert!(
        skipped[0].reason.contains("bomb.png"),
        "{}",
        skipped[0].reason
    );
    assert!(
        skipped[0].reason.contains("pixels"),
        "{}",
        skipped[0].reason
    );
    // Found by the loader otherwise: the batch lists it.
    let lazy = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default()).unwrap();
    assert_eq!(lazy.len(), 4);
    let tokenizer = SentencePieceBpeTokenizer::from_file(virtex_data::sample_vocab_path()).unwrap();
    let dataset =
        CaptioningDataset::new(lazy, tokenizer, ImageTransforms::pretrain_val(32).unwrap())
            .unwrap();
    let config = LoaderConfig {
        batch_size: 4,
        num_workers: 2,
        shuffle: false,
        drop_last: false,
        skip_bad_images: true,
        ..LoaderConfig::default()
    };
    let loader = DataLoader::new(dataset.clone(), config.clone()).unwrap();
    // One epoch of one batch: workers cannot prepare (and count) later batches ahead.
    let batch = loader.iter_epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.batch_size(), 3);
    assert_eq!(batch.skipped.len(), 1);
    assert_eq!(batch.skipped[0].path, bomb);
    assert!(
        batch.skipped[0].reason.contains("bomb.png") && batch.skipped[0].reason.contains("pixels"),
        "{}",
        batch.skipped[0].reason
    );
    assert_eq!(loader.skipped_images(), 1);
    // Without skip_bad_images the batch is the error.
    let strict = DataLoader::new(
        dataset,
        LoaderConfig {
            skip_bad_images: false,
            ..config
        },
    )
    .unwrap();
    assert!(matches!(
        strict.load_batch(LoaderPosition::default()),
        Err(DataError::ImageTooLarge { ref path, .. }) if *path == bomb
    ));
}

#[test]
fn every_constructor_refuses_a_zero_size() {
    let zero_errors = [
        ImageTransforms::downstream_val(0, 224).unwrap_err(),
        ImageTransforms::downstream_val(256, 0).unwrap_err(),
        ImageTransforms::downstream_train(0).unwrap_err(),
        ImageTransforms::pretrain_train(0, FlipCaption::WholeWord).unwrap_err(),
        ImageTransforms::pretrain_val(0).unwrap_err(),
        ImageTransforms::no_augmentation(0).unwrap_err(),
        ImageTransforms::from_names(&["smallest_resize", "center_crop"], 0, FlipCaption::Keep)
            .unwrap_err(),
    ];
    let settings = [
        "SmallestMaxSize.size",
        "CenterCrop.size",
        "RandomResizedCrop.size",
        "RandomResizedCrop.size",
        "SmallestMaxSize.size",
        "SmallestMaxSize.size",
        "SmallestMaxSize.size",
    ];
    for (err, setting) in zero_errors.iter().zip(settings) {
        match err {
            DataError::InvalidConfig { what, message } => {
                assert_eq!(what, setting);
                assert!(message.contains("positive"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn sizes_above_the_pixel_limit_are_refused_when_the_pipeline_is_built() {
    for err in [
        ImageTransforms::downstream_val(100_000, 224).unwrap_err(),
        ImageTransforms::downstream_val(256, 100_000).unwrap_err(),
        ImageTransforms::pretrain_train(100_000, FlipCaption::WholeWord).unwrap_err(),
        ImageTransforms::downstream_train(u32::MAX).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(matches!(err, DataError::InvalidConfig { .. }), "{err:?}");
        assert!(
            message.contains("pixel limit") && message.contains("178956970"),
            "{message}"
        );
    }
    // The largest square within the limit is accepted.
    ImageTransforms::downstream_val(13_377, 13_377).unwrap();
}

#[test]
fn deserialising_a_pipeline_validates_it() {
    let good = ImageTransforms::downstream_val(256, 224).unwrap();
    let json = serde_json::to_string(&good).unwrap();
    assert_eq!(
        serde_json::from_str::<ImageTransforms>(&json).unwrap(),
        good
    );
    for bad in [
        r#"{"steps":[{"type":"center_crop","size":0}]}"#,
        r#"{"steps":[{"type":"smallest_max_size","size":100000}]}"#,
        r#"{"steps":[{"type":"horizontal_flip","p":2.0,"caption":"keep"}]}"#,
    ] {
        let err = serde_json::from_str::<ImageTransforms>(bad).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{bad}: {err}");
    }
}

#[test]
fn a_resize_past_the_limit_is_refused_before_allocating_naming_the_image() {
    // SmallestMaxSize(224) on a 5000 × 1 strip: 1 120 000 × 224 = 250 million pixels.
    let strip = RgbImage::new(5000, 1);
    let transforms = ImageTransforms::downstream_val(224, 224).unwrap();
    let path = std::path::Path::new("photos/strip.png");
    let mut rng = SampleRng::seed_from_u64(0);
    let (result, largest) =
        largest_allocation(|| transforms.try_apply_image(&strip, &mut rng, Some(path)));
    match result {
        Err(DataError::TransformTooLarge {
            path: Some(ref p),
            ref step,
            width,
            height,
            max_pixels,
        }) => {
            assert_eq!(p, path);
            assert_eq!(step, "SmallestMaxSize(224)");
            assert_eq!((width, height), (1_120_000, 224));
            assert_eq!(max_pixels, ImageLimits::DEFAULT_MAX_PIXELS);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(
        largest < SMALL_ALLOCATION,
        "allocated {largest} bytes at once"
    );
    let err = result.unwrap_err();
    assert!(err.is_bad_image());
    let message = err.to_string();
    assert!(
        message.contains("photos/strip.png") && message.contains("1120000x224"),
        "{message}"
    );
    // Without a path the message still reads.
    let err = transforms
        .try_apply_image(&strip, &mut rng, None)
        .unwrap_err();
    assert!(err.to_string().contains("the image"), "{err}");
    // A step size that overflows `u32` once scaled (1 × 65535 strip to 100 000 wide): built
    // directly (`new` refuses 100 000² already), it is refused at apply time as well.
    let tall = RgbImage::new(1, 65_535);
    let wide_resize =
        ImageTransforms::new(vec![TransformStep::SmallestMaxSize { size: 10_000 }]).unwrap();
    assert!(matches!(
        wide_resize.try_apply_image(&tall, &mut rng, None),
        Err(DataError::TransformTooLarge {
            width: 10_000,
            height: 655_350_000,
            ..
        })
    ));
    // Ordinary images go through unchanged.
    let photo = RgbImage::new(640, 480);
    let out = transforms
        .try_apply_image(&photo, &mut rng, Some(path))
        .unwrap();
    assert_eq!((out.width, out.height), (224, 224));
    assert_eq!(out, transforms.apply_image(&photo, &mut rng));
}

#[test]
fn the_loader_skips_an_image_whose_resize_would_pass_the_limit() {
    let good = common::small_jpeg();
    let coco = TempCoco::new(&[
        ("1.jpg", good.clone()),
        ("strip.png", common::encode_png(&RgbImage::new(5000, 1))),
    ]);
    let tokenizer = SentencePieceBpeTokenizer::from_file(virtex_data::sample_vocab_path()).unwrap();
    let data = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default()).unwrap();
    let dataset =
        CaptioningDataset::new(data, tokenizer, ImageTransforms::pretrain_val(224).unwrap())
            .unwrap();
    assert!(matches!(
        dataset.get(1, 0, 0),
        Err(DataError::TransformTooLarge { path: Some(ref p), .. }) if *p == coco.image("strip.png")
    ));
    let loader = DataLoader::new(
        dataset,
        LoaderConfig {
            batch_size: 2,
            num_workers: 0,
            shuffle: false,
            drop_last: false,
            skip_bad_images: true,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let batch = loader.load_batch(LoaderPosition::default()).unwrap();
    assert_eq!(batch.batch_size(), 1);
    assert_eq!(batch.skipped.len(), 1);
    assert_eq!(batch.skipped[0].path, coco.image("strip.png"));
    assert!(
        batch.skipped[0].reason.contains("SmallestMaxSize(224)"),
        "{}",
        batch.skipped[0].reason
    );
}

#[test]
fn zero_sized_headers_and_images_do_not_panic() {
    for (w, h) in [(400u16, 0u16), (0, 300), (0, 0)] {
        let bytes = common::patch_jpeg_size(&common::small_jpeg(), w, h);
        let err = decode_image(&bytes, "zero.jpg").unwrap_err();
        assert!(err.is_bad_image(), "{w}x{h}: {err:?}");
    }
    for (w, h) in [(400u32, 0u32), (0, 300)] {
        let err = decode_image(&png_bomb(w, h), "zero.png").unwrap_err();
        assert!(err.is_bad_image(), "{w}x{h}: {err:?}");
    }
    // An empty image handed to the transforms directly: a black crop, not a panic.
    for empty in [
        RgbImage::new(0, 5),
        RgbImage::new(5, 0),
        RgbImage::new(0, 0),
    ] {
        for t in [
            ImageTransforms::pretrain_train(8, FlipCaption::WholeWord).unwrap(),
            ImageTransforms::downstream_train(8).unwrap(),
            ImageTransforms::downstream_val(8, 8).unwrap(),
        ] {
            let out = t
                .try_apply_image(&empty, &mut SampleRng::seed_from_u64(0), None)
                .unwrap();
            assert_eq!((out.width, out.height), (8, 8));
        }
    }
}
