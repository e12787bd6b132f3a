//! Plain caption files (JSON lines and TSV): parsing, grouping, paths, splits, every error with
//! its line number, and datasets equal to the COCO reader's on the same images and captions.

use std::path::{Path, PathBuf};

use virtex_data::{
    normalize_caption, read_plain_captions, sample_data_root, sample_vocab_path,
    CaptionLineProblem, CaptionSource, CaptioningDataset, CocoCaptions, CocoOptions, DataError,
    FlipCaption, ImageId, ImageTransforms, PlainCaptions, PlainFormat, PlainOptions,
    SentencePieceBpeTokenizer, Split,
};

fn sample_image(name: &str) -> PathBuf {
    sample_data_root().join("train2017").join(name)
}

/// A directory with two sample images under `images/` and `file` holding `text`.
fn dataset_dir(file: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    for name in ["000000000001.jpg", "000000000002.jpg"] {
        std::fs::copy(sample_image(name), dir.path().join("images").join(name)).unwrap();
    }
    let path = dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn load(path: &Path) -> Result<PlainCaptions, DataError> {
    PlainCaptions::load(path, &PlainOptions::default())
}

#[test]
fn json_lines_are_grouped_per_image_in_order_with_relative_and_absolute_paths() {
    let absolute = sample_image("000000000003.jpg");
    let text = format!(
        "{{\"image\": \"images/000000000002.jpg\", \"caption\": \"A Café.\", \"extra\": 1}}\n\
         {{\"image\": \"images/000000000001.jpg\", \"captions\": [\"one\", \"two\"]}}\n\
         \n\
         {{\"image\": {absolute:?}, \"caption\": \"absolute\"}}\n\
         {{\"image\": \"images/000000000002.jpg\", \"caption\": \"second\", \"captions\": [\"third\"]}}\n"
    );
    let (dir, path) = dataset_dir("train.jsonl", &text);
    let data = load(&path).unwrap();
    assert_eq!(data.split(), "train");
    assert_eq!(data.image_root(), dir.path());
    let summary: Vec<(ImageId, PathBuf, Vec<String>)> = data
        .images()
        .iter()
        .map(|im| (im.image_id.clone(), im.path.clone(), im.captions.clone()))
        .collect();
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        summary,
        vec![
            (
                ImageId::Int(1),
                dir.path().join("images/000000000002.jpg"),
                strings(&["a cafe.", "second", "third"])
            ),
            (
                ImageId::Int(2),
                dir.path().join("images/000000000001.jpg"),
                strings(&["one", "two"])
            ),
            (ImageId::Int(4), absolute, strings(&["absolute"])),
        ]
    );
    // Raw captions for the tokenizer: line order, not normalised, not grouped.
    assert_eq!(
        read_plain_captions(&path, None).unwrap(),
        strings(&["A Café.", "one", "two", "absolute", "second", "third"])
    );
}

#[test]
fn tsv_with_header_gives_the_same_records_as_json_lines() {
    let jsonl = "{\"image\": \"images/000000000001.jpg\", \"caption\": \"A dog.\"}\n\
                 {\"image\": \"images/000000000002.jpg\", \"caption\": \"A cat\\tsleeps.\"}\n\
                 {\"image\": \"images/000000000001.jpg\", \"caption\": \"A brown dog.\"}\n";
    // The header shifts lines by one, and so the ids (line numbers).
    let tsv = "image\tcaption\n\
               images/000000000001.jpg\tA dog.\n\
               images/000000000002.jpg\tA cat\tsleeps.\n\
               images/000000000001.jpg\tA brown dog.\n";
    let (_a, jsonl) = dataset_dir("train.jsonl", jsonl);
    let (_b, tsv) = dataset_dir("train.tsv", tsv);
    let (jsonl, tsv) = (load(&jsonl).unwrap(), load(&tsv).unwrap());
    assert_eq!(jsonl.len(), 2);
    for (j, t) in jsonl.images().iter().zip(tsv.images()) {
        assert_eq!(j.captions, t.captions);
        assert_eq!(j.path.file_name(), t.path.file_name());
    }
    assert_eq!(jsonl.images()[0].captions, ["a dog.", "a brown dog."]);
    // The caption is everything after the first tab.
    assert_eq!(tsv.images()[1].captions, ["a cat\tsleeps."]);
    assert_eq!(
        [&tsv.images()[0].image_id, &tsv.images()[1].image_id],
        [&ImageId::Int(2), &ImageId::Int(3)]
    );
    // A header is only a header on the first line.
    let (_c, late) = dataset_dir(
        "late.tsv",
        "images/000000000001.jpg\tA dog.\nimage\tcaption\n",
    );
    assert!(matches!(
        load(&late),
        Err(DataError::MissingListedImage { line: 2, .. })
    ));
}

#[test]
fn byte_order_mark_and_crlf_line_endings_are_read_like_plain_lines() {
    let plain = "images/000000000001.jpg\tA dog.\nimages/000000000002.jpg\tA cat.\n";
    let windows = "\u{feff}images/000000000001.jpg\tA dog.\r\nimages/000000000002.jpg\tA cat.\r\n";
    let (_a, plain) = dataset_dir("a.tsv", plain);
    let (_b, windows) = dataset_dir("b.tsv", windows);
    let (plain, windows) = (load(&plain).unwrap(), load(&windows).unwrap());
    let names = |d: &PlainCaptions| {
        d.images()
            .iter()
            .map(|im| (im.path.file_name().unwrap().to_owned(), im.captions.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&plain), names(&windows));
    assert_eq!(windows.images()[1].captions, ["a cat."]);

    let jsonl = "\u{feff}{\"image\": \"images/000000000001.jpg\", \"caption\": \"A dog.\"}\r\n";
    let (_c, jsonl) = dataset_dir("c.jsonl", jsonl);
    assert_eq!(load(&jsonl).unwrap().images()[0].captions, ["a dog."]);
    // A header after a byte-order mark is still a header.
    let (_d, header) = dataset_dir(
        "d.tsv",
        "\u{feff}image\tcaption\r\nimages/000000000001.jpg\tA dog.\r\n",
    );
    assert_eq!(load(&header).unwrap().len(), 1);
}

#[test]
fn image_root_overrides_the_captions_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.tsv");
    std::fs::write(&path, "train2017/000000000001.jpg\tA photo.\n").unwrap();
    let options = PlainOptions {
        image_root: Some(sample_data_root()),
        ..PlainOptions::default()
    };
    let data = PlainCaptions::load(&path, &options).unwrap();
    assert_eq!(data.images()[0].path, sample_image("000000000001.jpg"));
    assert_eq!(data.split(), "mine");
}

/// `(file name, contents, expected line, expected problem)`.
fn line_errors() -> Vec<(&'static str, String, usize, CaptionLineProblem)> {
    let ok = "{\"image\": \"images/000000000001.jpg\", \"caption\": \"A dog.\"}\n";
    vec![
        (
            "a.jsonl",
            format!("{ok}{{\"image\": \"x.jpg\", \"caption\": }}\n"),
            2,
            CaptionLineProblem::InvalidJson {
                column: 0,
                message: String::new(),
            },
        ),
        (
            "b.jsonl",
            format!("{ok}\n{{\"caption\": \"no image\"}}\n"),
            3,
            CaptionLineProblem::MissingField { field: "image" },
        ),
        (
            "c.jsonl",
            format!("{ok}{{\"image\": \"x.jpg\", \"captions\": []}}\n"),
            2,
            CaptionLineProblem::MissingField { field: "caption" },
        ),
        (
            "d.jsonl",
            format!("{ok}{ok}{{\"image\": \"x.jpg\", \"caption\": \"  \"}}\n"),
            3,
            CaptionLineProblem::EmptyCaption,
        ),
        (
            "e.jsonl",
            "{\"image\": \" \", \"caption\": \"x\"}\n".into(),
            1,
            CaptionLineProblem::EmptyImagePath,
        ),
        (
            "f.jsonl",
            format!("{ok}{{\"image\": \"x.jpg\", \"captions\": \"not a list\"}}\n"),
            2,
            CaptionLineProblem::InvalidJson {
                column: 0,
                message: String::new(),
            },
        ),
        (
            "g.tsv",
            "image\tcaption\nimages/000000000001.jpg\tA dog.\nimages/000000000002.jpg A cat.\n"
                .into(),
            3,
            CaptionLineProblem::MissingTab,
        ),
        (
            "h.tsv",
            "images/000000000001.jpg\tA dog.\r\nimages/000000000002.jpg\t\r\n".into(),
            2,
            CaptionLineProblem::EmptyCaption,
        ),
        (
            "i.tsv",
            "\timage without a path\n".into(),
            1,
            CaptionLineProblem::EmptyImagePath,
        ),
    ]
}

#[test]
fn every_bad_line_is_reported_with_its_file_and_line_number() {
    for (file, text, line, problem) in line_errors() {
        let (_dir, path) = dataset_dir(file, &text);
        let err = load(&path).unwrap_err();
        let message = err.to_string();
        match &err {
            DataError::CaptionLine {
                path: at,
                line: got,
                problem: got_problem,
            } => {
                assert_eq!(at, &path, "{file}");
                assert_eq!(*got, line, "{file}: {message}");
                match (&problem, got_problem) {
                    (
                        CaptionLineProblem::InvalidJson { .. },
                        CaptionLineProblem::InvalidJson { column, message },
                    ) => assert!(*column > 0 && !message.is_empty(), "{file}: {message}"),
                    _ => assert_eq!(got_problem, &problem, "{file}"),
                }
            }
            other => panic!("{file}: expected a CaptionLine error, got {other:?}"),
        }
        assert!(
            message.contains(&format!("{}`:{line}:", path.display())),
            "{file}: {message}"
        );
        // The tokenizer's reader checks lines the same way.
        assert!(matches!(
            read_plain_captions(&path, None),
            Err(DataError::CaptionLine { line: l, .. }) if l == line
        ));
    }
}

#[test]
fn invalid_utf8_is_a_line_error() {
    let mut bytes =
        b"images/000000000001.jpg\tA dog.\nimages/000000000002.jpg\tA \xff cat.\n".to_vec();
    bytes.extend_from_slice(b"images/000000000002.jpg\tfine\n");
    let (_dir, path) = dataset_dir("u.tsv", "");
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        load(&path),
        Err(DataError::CaptionLine {
            line: 2,
            problem: CaptionLineProblem::NotUtf8,
            ..
        })
    ));
}

#[test]
fn missing_images_name_the_line_and_skip_bad_images_skips_them() {
    let text = "images/000000000001.jpg\tA dog.\n\
                images/gone.jpg\tA ghost.\n\
                images/gone.jpg\tStill a ghost.\n\
                images/empty.jpg\tNothing.\n\
                images/000000000002.jpg\tA cat.\n";
    let (dir, path) = dataset_dir("train.tsv", text);
    std::fs::write(dir.path().join("images/empty.jpg"), b"").unwrap();
    let err = load(&path).unwrap_err();
    assert!(err.is_bad_image());
    match &err {
        DataError::MissingListedImage {
            captions,
            line,
            path: image,
        } => {
            assert_eq!(captions, &path);
            assert_eq!(*line, 2);
            assert_eq!(image, &dir.path().join("images/gone.jpg"));
        }
        other => panic!("expected MissingListedImage, got {other:?}"),
    }
    assert!(err.to_string().contains(":2: image `"), "{err}");

    let skip = PlainOptions {
        skip_bad_images: true,
        ..PlainOptions::default()
    };
    let data = PlainCaptions::load(&path, &skip).unwrap();
    let kept: Vec<_> = data.images().iter().map(|im| im.image_id.clone()).collect();
    assert_eq!(kept, [ImageId::Int(1), ImageId::Int(5)]);
    let skipped: Vec<_> = data.skipped().iter().map(|s| s.image_id.clone()).collect();
    assert_eq!(skipped, [ImageId::Int(2), ImageId::Int(4)]);
    assert!(data.skipped()[1].reason.contains("empty"));

    // With nothing left there is no dataset.
    let (_d, only_bad) = dataset_dir("bad.tsv", "images/gone.jpg\tA ghost.\n");
    assert!(matches!(
        PlainCaptions::load(&only_bad, &skip),
        Err(DataError::EmptyDataset { .. })
    ));
}

#[test]
fn verify_images_finds_corrupt_files_up_front() {
    let (dir, path) = dataset_dir(
        "train.tsv",
        "images/000000000001.jpg\tA dog.\nimages/broken.jpg\tBroken.\n",
    );
    std::fs::write(dir.path().join("images/broken.jpg"), b"not a jpeg at all").unwrap();
    assert_eq!(load(&path).unwrap().len(), 2);
    let verify = PlainOptions {
        verify_images: true,
        ..PlainOptions::default()
    };
    assert!(PlainCaptions::load(&path, &verify)
        .unwrap_err()
        .is_bad_image());
    let both = PlainOptions {
        verify_images: true,
        skip_bad_images: true,
        ..PlainOptions::default()
    };
    assert_eq!(PlainCaptions::load(&path, &both).unwrap().len(), 1);
}

#[test]
fn named_splits_are_found_in_a_directory() {
    let (dir, _) = dataset_dir(
        "train.jsonl",
        "{\"image\": \"images/000000000001.jpg\", \"caption\": \"A dog.\"}\n",
    );
    std::fs::write(
        dir.path().join("val.tsv"),
        "images/000000000002.jpg\tA cat.\n",
    )
    .unwrap();
    let options = PlainOptions::default();
    let train = PlainCaptions::load_split(dir.path(), "train", &options).unwrap();
    let val = PlainCaptions::load_split(dir.path(), "val", &options).unwrap();
    assert_eq!((train.split(), val.split()), ("train", "val"));
    assert_eq!(val.images()[0].captions, ["a cat."]);
    match PlainCaptions::load_split(dir.path(), "test", &options) {
        Err(err @ DataError::MissingSplitFile { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("test.jsonl") && message.contains("test.tsv"),
                "{message}"
            );
        }
        other => panic!("expected MissingSplitFile, got {other:?}"),
    }
}

#[test]
fn the_format_comes_from_the_extension_or_is_named() {
    let (_dir, path) = dataset_dir("captions.txt", "images/000000000001.jpg\tA dog.\n");
    assert!(matches!(load(&path), Err(DataError::InvalidConfig { .. })));
    let named = PlainOptions {
        format: Some("tsv".parse().unwrap()),
        ..PlainOptions::default()
    };
    assert_eq!(PlainCaptions::load(&path, &named).unwrap().len(), 1);
    assert_eq!(
        read_plain_captions(&path, Some(PlainFormat::Tsv)).unwrap(),
        ["A dog."]
    );
    assert!("csv".parse::<PlainFormat>().is_err());
    assert_eq!(
        PlainFormat::from_path(Path::new("a.NDJSON")).unwrap(),
        PlainFormat::JsonLines
    );
}

/// The sample's COCO split written as a plain captions file (absolute image paths, COCO's raw
/// captions in annotation order): the records, and the dataset's samples, equal the COCO
/// reader's except for the image ids.
#[test]
fn a_plain_copy_of_the_coco_sample_gives_the_same_samples() {
    let coco = CocoCaptions::load(sample_data_root(), Split::Val, &CocoOptions::default()).unwrap();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sample_data_root().join("annotations/captions_val2017.json")).unwrap(),
    )
    .unwrap();
    let files: std::collections::HashMap<u64, String> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            (
                im["id"].as_u64().unwrap(),
                im["file_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for ann in json["annotations"].as_array().unwrap() {
        let image = sample_data_root()
            .join("val2017")
            .join(&files[&ann["image_id"].as_u64().unwrap()]);
        let line = serde_json::json!({"image": image, "caption": ann["caption"]});
        lines.push_str(&format!("{line}\n"));
    }
    let path = dir.path().join("val.jsonl");
    std::fs::write(&path, lines).unwrap();
    let plain = load(&path).unwrap();
    assert_eq!(plain.len(), coco.len());
    for (p, c) in plain.images().iter().zip(coco.images()) {
        assert_eq!((&p.path, &p.captions), (&c.path, &c.captions));
    }
    assert!(
        coco.captions().all(|c| normalize_caption(c) == c),
        "normalisation is idempotent"
    );

    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let transforms = ImageTransforms::pretrain_train(32, FlipCaption::WholeWord).unwrap();
    let from_coco = CaptioningDataset::new(coco, tokenizer.clone(), transforms.clone()).unwrap();
    let from_plain = CaptioningDataset::new(plain, tokenizer, transforms).unwrap();
    assert!(matches!(from_plain.source(), CaptionSource::Plain(_)));
    assert_eq!(from_plain.source().annotations_path(), path.as_path());
    for index in 0..from_coco.len() {
        let (a, b) = (
            from_coco.get(index, 7, 1).unwrap(),
            from_plain.get(index, 7, 1).unwrap(),
        );
        assert_eq!(
            (&a.image, &a.caption, &a.tokens),
            (&b.image, &b.caption, &b.tokens)
        );
    }
}
