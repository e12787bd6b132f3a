//! COCO reading, image decoding and the typed errors for bad input.

use std::path::{Path, PathBuf};

use serde_json::Value;
use virtex_data::{
    load_image, sample_data_root, CocoCaptions, CocoOptions, DataError, ImageDirectory, ImageId,
    Split,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies the embedded sample into a temporary directory that a test may damage.
fn sample_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["annotations", "train2017", "val2017"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(sample_data_root().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn sample_loads_with_normalised_grouped_captions() {
    let train =
        CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default()).unwrap();
    let val = CocoCaptions::load(sample_data_root(), Split::Val, &CocoOptions::default()).unwrap();
    assert_eq!((train.len(), val.len()), (10, 3));
    assert!(train
        .images()
        .iter()
        .chain(val.images())
        .all(|im| im.captions.len() == 5));
    let ids: Vec<ImageId> = train
        .images()
        .iter()
        .map(|im| im.image_id.clone())
        .collect();
    assert_eq!(ids, (1..=10).map(ImageId::Int).collect::<Vec<_>>());
    // Lower-cased, accent stripped ("café" → "cafe"), punctuation kept.
    let coffee = &train.images()[3].captions;
    assert_eq!(
        coffee[2],
        "an espresso in a white and red cup, served at a cafe."
    );
    assert!(train.captions().all(|c| c == c.to_lowercase()));
    assert!(val.images()[2].path.ends_with("val2017/000000000013.png"));
    // Every sample image decodes to RGB8 (grayscale JPEGs and a grayscale PNG among them).
    for im in train.images().iter().chain(val.images()) {
        let rgb = load_image(&im.path).unwrap();
        assert!(rgb.width() >= 100 && rgb.height() >= 100, "{:?}", im.path);
    }
}

#[test]
fn image_order_follows_first_annotation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("annotations")).unwrap();
    std::fs::create_dir_all(dir.path().join("val2017")).unwrap();
    for name in ["a.jpg", "b.jpg"] {
        std::fs::copy(
            sample_data_root().join("val2017/000000000011.jpg"),
            dir.path().join("val2017").join(name),
        )
        .unwrap();
    }
    let json = r#"{"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "none.jpg"}],
        "annotations": [{"image_id": 9, "id": 1, "caption": "B one"}, {"image_id": 7, "id": 2, "caption": "A one"},
                        {"image_id": 9, "id": 3, "caption": "B two"}]}"#;
    std::fs::write(dir.path().join("annotations/captions_val2017.json"), json).unwrap();
    let d = CocoCaptions::load(dir.path(), Split::Val, &CocoOptions::default()).unwrap();
    let got: Vec<(ImageId, Vec<String>)> = d
        .images()
        .iter()
        .map(|im| (im.image_id.clone(), im.captions.clone()))
        .collect();
    // Image 3 has no caption and is left out (its missing file is never looked at).
    assert_eq!(
        got,
        vec![
            (
                ImageId::Int(9),
                vec!["b one".to_string(), "b two".to_string()]
            ),
            (ImageId::Int(7), vec!["a one".to_string()]),
        ]
    );
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let dir = sample_copy();
    let path = dir.path().join("annotations/captions_train2017.json");
    std::fs::write(
        &path,
        "{\n  \"images\": [\n    {\"id\": 1, \"file_name\": \"x.jpg\"},,\n  ]\n}",
    )
    .unwrap();
    match CocoCaptions::load(dir.path(), Split::Train, &CocoOptions::default()) {
        Err(DataError::Json {
            path: p,
            line,
            column,
            message,
        }) => {
            assert_eq!(p, path);
            assert_eq!((line, column), (3, 37), "{message}");
            let shown = DataError::Json {
                path: p,
                line,
                column,
                message,
            }
            .to_string();
            assert!(
                shown.contains("captions_train2017.json`:3:37: expected value"),
                "{shown}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Valid JSON with the wrong structure is reported the same way.
    std::fs::write(
        &path,
        "{\"images\": [{\"id\": \"one\", \"file_name\": \"x.jpg\"}], \"annotations\": []}",
    )
    .unwrap();
    assert!(matches!(
        CocoCaptions::load(dir.path(), Split::Train, &CocoOptions::default()),
        Err(DataError::Json { line: 1, .. })
    ));
}

#[test]
fn unknown_image_id_is_an_error() {
    let dir = sample_copy();
    let path = dir.path().join("annotations/captions_val2017.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["annotations"][0]["image_id"] = Value::from(424242);
    std::fs::write(&path, doc.to_string()).unwrap();
    match CocoCaptions::load(dir.path(), Split::Val, &CocoOptions::default()) {
        Err(DataError::UnknownImageId {
            image_id,
            annotation_id,
            ..
        }) => {
            assert_eq!(image_id, ImageId::Int(424242));
            assert_eq!(annotation_id, "1050");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_and_empty_images_fail_or_are_skipped_and_counted() {
    let dir = sample_copy();
    let missing = dir.path().join("train2017/000000000004.jpg");
    std::fs::remove_file(&missing).unwrap();
    match CocoCaptions::load(dir.path(), Split::Train, &CocoOptions::default()) {
        Err(DataError::MissingImage {
            annotations,
            image_id,
            path,
        }) => {
            assert!(annotations.ends_with("annotations/captions_train2017.json"));
            assert_eq!(image_id, ImageId::Int(4));
            assert_eq!(path, missing);
        }
        other => panic!("{other:?}"),
    }
    let empty = dir.path().join("train2017/000000000007.jpg");
    std::fs::write(&empty, b"").unwrap();
    let skip = CocoOptions {
        skip_bad_images: true,
        verify_images: false,
    };
    let d = CocoCaptions::load(dir.path(), Split::Train, &skip).unwrap();
    assert_eq!(d.len(), 8);
    let skipped: Vec<ImageId> = d.skipped().iter().map(|s| s.image_id.clone()).collect();
    assert_eq!(skipped, vec![ImageId::Int(4), ImageId::Int(7)]);
    assert!(
        d.skipped()[1].reason.contains("empty"),
        "{}",
        d.skipped()[1].reason
    );
    std::fs::copy(
        sample_data_root().join("train2017/000000000004.jpg"),
        &missing,
    )
    .unwrap();
    assert!(matches!(
        CocoCaptions::load(dir.path(), Split::Train, &CocoOptions::default()),
        Err(DataError::EmptyImage { path }) if path == empty
    ));
}

#[test]
fn corrupt_and_truncated_images_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(sample_data_root().join("train2017/000000000001.jpg")).unwrap();
    let png = std::fs::read(sample_data_root().join("val2017/000000000013.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("half.jpg", jpeg[..jpeg.len() / 2].to_vec()),
        ("no_eoi.jpg", jpeg[..jpeg.len() - 2].to_vec()),
        ("half.png", png[..png.len() / 2].to_vec()),
        ("header_only.png", png[..40].to_vec()),
        ("text.jpg", b"this is not an image at all".to_vec()),
        ("zero.png", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = load_image(&path).unwrap_err();
        assert!(err.is_bad_image(), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
        match (name, &err) {
            (
                "half.jpg" | "no_eoi.jpg" | "half.png" | "header_only.png",
                DataError::TruncatedImage { .. },
            ) => {}
            ("text.jpg", DataError::CorruptImage { .. }) => {}
            ("zero.png", DataError::EmptyImage { .. }) => {}
            _ => panic!("{name}: unexpected {err:?}"),
        }
    }
    // verify_images finds a truncated file at load time; skip_bad_images skips it.
    let copy = sample_copy();
    std::fs::write(
        copy.path().join("val2017/000000000012.jpg"),
        &jpeg[..jpeg.len() / 3],
    )
    .unwrap();
    let strict = CocoOptions {
        skip_bad_images: false,
        verify_images: true,
    };
    assert!(matches!(
        CocoCaptions::load(copy.path(), Split::Val, &strict),
        Err(DataError::TruncatedImage { .. })
    ));
    let lenient = CocoOptions {
        skip_bad_images: true,
        verify_images: true,
    };
    let d = CocoCaptions::load(copy.path(), Split::Val, &lenient).unwrap();
    assert_eq!((d.len(), d.skipped().len()), (2, 1));
}

#[test]
fn every_colour_type_becomes_rgb8() {
    let dir = fixtures().join("images");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("images.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (name, want) in expected.as_object().unwrap() {
        let image = load_image(dir.join(name)).unwrap();
        let (h, w) = (
            want["height"].as_u64().unwrap() as u32,
            want["width"].as_u64().unwrap() as u32,
        );
        assert_eq!(
            (image.height(), image.width()),
            (h, w),
            "{name} (EXIF orientation applied)"
        );
        // Pillow clamps 16-bit samples to 255 instead of scaling them; the file holds
        // `gray * 257`, so its 8-bit content is that of gray.png.
        let reference = if name == "gray16.png" {
            &expected["gray.png"]
        } else {
            want
        };
        let pil: Vec<u8> = reference["rgb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let max_diff = image
            .as_raw()
            .iter()
            .zip(&pil)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        // Lossless PNGs decode exactly as Pillow; JPEG decoders (zune-jpeg vs libjpeg) differ by
        // IDCT rounding and chroma upsampling: measured 4 on exif_rotated.jpg, 0 on the others.
        let tolerance = if name.ends_with(".png") { 0 } else { 8 };
        assert!(
            max_diff <= tolerance,
            "{name}: max |Δ| {max_diff} against Pillow"
        );
        eprintln!("{name}: max |Δ| {max_diff} against Pillow");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn image_directory_sorts_and_derives_ids() {
    let dir = tempfile::tempdir().unwrap();
    let src = sample_data_root().join("val2017/000000000011.jpg");
    for name in [
        "000000000139.jpg",
        "dog.JPG",
        "0042.png",
        "notes.txt",
        "b.jpeg",
    ] {
        std::fs::copy(&src, dir.path().join(name)).unwrap();
    }
    let d = ImageDirectory::open(dir.path()).unwrap();
    let ids: Vec<ImageId> = d.entries().iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids,
        vec![
            ImageId::Int(139),
            ImageId::Int(42),
            ImageId::Name("b".into()),
            ImageId::Name("dog".into())
        ]
    );
    assert_eq!(
        serde_json::to_string(&ids).unwrap(),
        r#"[139,42,"b","dog"]"#
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        ImageDirectory::open(empty.path()),
        Err(DataError::EmptyDataset { .. })
    ));
    assert!(matches!(
        ImageDirectory::open(Path::new("/nonexistent/dir")),
        Err(DataError::Io { .. })
    ));
}
