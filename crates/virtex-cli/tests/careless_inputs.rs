//! Hostile and careless inputs through the real `virtex` binary: outputs that would overwrite an
//! input or a checkpoint, sizes that cannot work, a tokenizer that does not fit the checkpoint,
//! duplicate predictions. Every refusal comes before any expensive work and leaves the files as
//! they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_checkpoint() -> PathBuf {
    workspace().join("crates/virtex/tests/fixtures/bicaptioning_tiny.pth")
}

fn sample_images() -> PathBuf {
    workspace().join("crates/virtex-data/sample/val2017")
}

/// Runs `virtex` with `args`.
fn virtex<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_virtex"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `virtex` with `args`, expects a failure and returns its stderr.
fn failing<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = virtex(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A directory `inputs/` with a (fake) weights file, a tokenizer, a captions file, an image
/// folder with one image, and a run directory with a checkpoint. The guard runs before any
/// input is read, so the weights need not be real.
struct Files {
    _directory: tempfile::TempDir,
    root: PathBuf,
    weights: PathBuf,
    images: PathBuf,
    image: PathBuf,
    checkpoint_dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().to_path_buf();
        let weights = root.join("weights.pth");
        std::fs::write(&weights, b"precious weights").unwrap();
        let images = root.join("images");
        std::fs::create_dir(&images).unwrap();
        let image = images.join("000000000011.jpg");
        std::fs::copy(sample_images().join("000000000011.jpg"), &image).unwrap();
        let checkpoint_dir = root.join("run/checkpoint_00000010");
        std::fs::create_dir_all(&checkpoint_dir).unwrap();
        std::fs::write(checkpoint_dir.join("model.safetensors"), b"model").unwrap();
        std::fs::write(checkpoint_dir.join("state.json"), b"{}").unwrap();
        Self {
            _directory: directory,
            root,
            weights,
            images,
            image,
            checkpoint_dir,
        }
    }

    /// Every file under the root with its content, to show nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(directory: &Path, into: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(directory)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    walk(&path, into);
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    into.push((path, bytes));
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        files
    }
}

#[test]
fn features_refuses_outputs_that_destroy_an_input_or_a_checkpoint() {
    let files = Files::new();
    let before = files.snapshot();
    let features = |out: &Path| {
        failing([
            "features",
            "--arch",
            "resnet18",
            "--weights",
            p(&files.weights),
            "--images",
            p(&files.images),
            "--out",
            p(out),
        ])
    };

    let stderr = features(&files.weights);
    assert!(
        stderr.contains("weights.pth") && stderr.contains("overwritten"),
        "{stderr}"
    );
    // Spelt differently, through `..` and `.`.
    let detour = files.images.join("..").join(".").join("weights.pth");
    let stderr = features(&detour);
    assert!(stderr.contains("is the input"), "{stderr}");

    let stderr = features(&files.image);
    assert!(stderr.contains("000000000011.jpg"), "{stderr}");

    let stderr = features(&files.images.join("features.safetensors"));
    assert!(
        stderr.contains("inside the input directory") && stderr.contains("images"),
        "{stderr}"
    );

    let stderr = features(&files.checkpoint_dir.join("features.safetensors"));
    assert!(
        stderr.contains("checkpoint_00000010") && stderr.contains("training checkpoint"),
        "{stderr}"
    );
    assert_eq!(files.snapshot(), before, "a refused run changed a file");
}

#[test]
fn caption_tokenizer_and_eval_commands_refuse_to_overwrite_their_inputs() {
    let files = Files::new();
    let vocab = files.root.join("vocab.json");
    std::fs::write(&vocab, b"{}").unwrap();
    let captions = files.root.join("captions.json");
    std::fs::write(&captions, br#"{"annotations": []}"#).unwrap();
    let predictions = files.root.join("predictions.json");
    std::fs::write(&predictions, b"[]").unwrap();
    let before = files.snapshot();

    let caption = |out: &Path| {
        failing([
            "caption",
            "--checkpoint",
            p(&files.weights),
            "--vocab",
            p(&vocab),
            "--images",
            p(&files.image),
            "--out",
            p(out),
        ])
    };
    for (out, name) in [
        (&files.weights, "weights.pth"),
        (&vocab, "vocab.json"),
        (&files.image, "000000000011.jpg"),
    ] {
        let stderr = caption(out);
        assert!(
            stderr.contains(name) && stderr.contains("overwritten"),
            "{stderr}"
        );
    }
    let stderr = caption(&files.checkpoint_dir.join("captions.json"));
    assert!(stderr.contains("training checkpoint"), "{stderr}");

    let stderr = failing([
        "train-tokenizer",
        "--captions",
        p(&captions),
        "--vocab-size",
        "100",
        "--out",
        p(&captions),
    ]);
    assert!(
        stderr.contains("captions.json") && stderr.contains("overwritten"),
        "{stderr}"
    );

    for out in [&predictions, &captions] {
        let stderr = failing([
            "eval-captions",
            "--predictions",
            p(&predictions),
            "--annotations",
            p(&captions),
            "--out",
            p(out),
        ]);
        assert!(stderr.contains("overwritten"), "{stderr}");
    }

    let voc_root = files.root.join("VOC2007");
    std::fs::create_dir(&voc_root).unwrap();
    for out in [files.weights.clone(), voc_root.join("voc07.json")] {
        let stderr = failing([
            "eval-voc07",
            "--weights",
            p(&files.weights),
            "--voc-root",
            p(&voc_root),
            "--out",
            p(&out),
        ]);
        assert!(
            stderr.contains("overwritten") || stderr.contains("inside the input directory"),
            "{stderr}"
        );
    }
    std::fs::remove_dir(&voc_root).unwrap();
    assert_eq!(files.snapshot(), before, "a refused run changed a file");
}

#[test]
fn sizes_that_cannot_work_are_refused_with_a_message() {
    let files = Files::new();
    let out = files.root.join("out.json");
    let features = |extra: &[&str]| {
        let mut args = vec![
            "features",
            "--arch",
            "resnet18",
            "--weights",
            p(&files.weights),
            "--images",
            p(&files.images),
            "--out",
            p(&out),
        ];
        args.extend_from_slice(extra);
        failing(args)
    };
    for (extra, expected) in [
        (&["--crop", "0"][..], "--crop"),
        (&["--short-side", "0"][..], "--short-side"),
        (&["--short-side", "100000"][..], "--short-side"),
        (&["--crop", "5000"][..], "--crop"),
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--batch-size=-1"][..], "--batch-size"),
        (&["--crop", "x"][..], "--crop"),
    ] {
        let stderr = features(extra);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    // Within range each, but the crop larger than the resized image.
    let stderr = features(&["--short-side", "64", "--crop", "128"]);
    assert!(
        stderr.contains("--crop 128") && stderr.contains("--short-side (64)"),
        "{stderr}"
    );

    let caption = |extra: &[&str]| {
        let mut args = vec![
            "caption",
            "--checkpoint",
            p(&files.weights),
            "--vocab",
            p(&files.weights),
            "--images",
            p(&files.images),
            "--out",
            p(&out),
        ];
        args.extend_from_slice(extra);
        failing(args)
    };
    for (extra, expected) in [
        (&["--crop", "0"][..], "--crop"),
        (&["--short-side", "100000"][..], "--short-side"),
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--beam-size", "0"][..], "--beam-size"),
        (&["--short-side", "64", "--crop", "65"][..], "--crop 65"),
    ] {
        let stderr = caption(extra);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    assert!(!out.exists());

    // The library checks the same limits when the arguments are built in code.
    let err = virtex_cli::FeaturesArgs {
        weights: files.weights.clone(),
        weights_format: None,
        images: vec![files.images.clone()],
        arch: "resnet18".into(),
        short_side: 256,
        crop: 0,
        pooled: false,
        l2_normalize: false,
        batch_size: 1,
        device: virtex_device::DeviceSpec::Cpu,
        max_image_pixels: None,
        out: out.clone(),
    }
    .run()
    .unwrap_err();
    assert!(
        matches!(
            err,
            virtex_cli::CliError::InvalidArgument {
                option: "--crop",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The tiny official-layout checkpoint predicts over 50 ids.
const TINY_CHECKPOINT_VOCAB: usize = 50;

/// A tokenizer of another size than the checkpoint's vocabulary (smaller: fails after inference;
/// larger: garbage captions) is refused right after both are loaded, before any image is read
/// (the image folder holds a corrupt file that would fail otherwise).
#[test]
fn caption_refuses_a_tokenizer_that_does_not_fit_the_checkpoint() {
    let directory = tempfile::tempdir().unwrap();
    let train = |size: usize| {
        let vocab = directory.path().join(format!("vocab_{size}.json"));
        let output = virtex([
            "train-tokenizer",
            "--captions",
            p(&virtex_data::sample_data_root().join("annotations/captions_train2017.json")),
            "--vocab-size",
            &size.to_string(),
            "--out",
            p(&vocab),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        vocab
    };
    let smaller = train(40);
    let fitting = train(TINY_CHECKPOINT_VOCAB);
    let larger = virtex_data::sample_vocab_path();

    let images = directory.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let out = directory.path().join("captions.json");
    let caption = |vocab: &Path| {
        let output = virtex([
            "caption",
            "--attention-heads",
            "2",
            "--short-side",
            "64",
            "--crop",
            "64",
            "--checkpoint",
            p(&tiny_checkpoint()),
            "--vocab",
            p(vocab),
            "--images",
            p(&images),
            "--out",
            p(&out),
        ]);
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for vocab in [&smaller, &larger] {
        let size = virtex_data::SentencePieceBpeTokenizer::from_file(vocab)
            .unwrap()
            .vocab_size();
        assert_ne!(size, TINY_CHECKPOINT_VOCAB);
        let name = vocab.file_name().unwrap().to_str().unwrap();
        let stderr = caption(vocab);
        assert!(
            stderr.contains(name)
                && stderr.contains("bicaptioning_tiny.pth")
                && stderr.contains(&format!("has {size} pieces"))
                && stderr.contains(&format!("vocabulary of {TINY_CHECKPOINT_VOCAB}")),
            "{stderr}"
        );
        assert!(!stderr.contains("broken.jpg"), "{stderr}");
        assert!(!out.exists());
    }

    // The fitting tokenizer passes the check and reaches the corrupt image.
    let stderr = caption(&fitting);
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn eval_captions_warns_about_duplicate_predictions_and_scores_the_last() {
    let directory = tempfile::tempdir().unwrap();
    let annotations = directory.path().join("captions.json");
    let references = serde_json::json!({"annotations": [
        {"image_id": 1, "id": 1, "caption": "A dog lying on a couch."},
        {"image_id": 1, "id": 2, "caption": "A brown dog sleeps on the sofa."},
        {"image_id": 2, "id": 3, "caption": "A cat sitting on a window sill."},
        {"image_id": 2, "id": 4, "caption": "A grey cat looks out of the window."},
        {"image_id": 3, "id": 5, "caption": "A red bus on a city street."},
        {"image_id": 3, "id": 6, "caption": "A double decker bus driving down the road."},
    ]});
    std::fs::write(&annotations, references.to_string()).unwrap();
    let write_predictions = |name: &str, entries: &[(u64, &str)]| {
        let path = directory.path().join(name);
        let list: Vec<_> = entries
            .iter()
            .map(|(id, caption)| serde_json::json!({"image_id": id, "caption": caption}))
            .collect();
        std::fs::write(&path, serde_json::Value::from(list).to_string()).unwrap();
        path
    };
    let duplicated = write_predictions(
        "duplicated.json",
        &[
            (1, "a plane in the sky"),
            (2, "a cat on a window sill"),
            (1, "a car on a road"),
            (3, "a bird"),
            (1, "a dog lying on a couch"),
            (3, "a red bus on a street"),
        ],
    );
    let unique = write_predictions(
        "unique.json",
        &[
            (1, "a dog lying on a couch"),
            (2, "a cat on a window sill"),
            (3, "a red bus on a street"),
        ],
    );
    let evaluate = |predictions: &Path, out: &Path| {
        let output = virtex([
            "eval-captions",
            "--predictions",
            p(predictions),
            "--annotations",
            p(&annotations),
            "--out",
            p(out),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        (String::from_utf8_lossy(&output.stderr).into_owned(), report)
    };
    let (stderr, with_duplicates) = evaluate(&duplicated, &directory.path().join("a.json"));
    assert!(
        stderr.contains("warning: 2 image ids have several predictions")
            && stderr.contains("duplicated.json")
            && stderr.contains("3 extra")
            && stderr.contains("1 (3×), 3 (2×)")
            && stderr.contains("last prediction"),
        "{stderr}"
    );
    let (stderr, without) = evaluate(&unique, &directory.path().join("b.json"));
    assert!(!stderr.contains("several predictions"), "{stderr}");
    for metric in ["CIDEr", "Bleu_1", "Bleu_4"] {
        assert_eq!(with_duplicates[metric], without[metric], "{metric}");
    }
    assert!(with_duplicates["CIDEr"].as_f64().unwrap() > 0.0);
}

/// CRC-32 (ISO-HDLC, as PNG chunks use).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A real 16×16 PNG whose IHDR claims `side × side` pixels, with a correct CRC: what a
/// decompression bomb's header looks like.
fn png_claiming(side: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(16, 16)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // Signature (8), chunk length (4), "IHDR" (4), then width, height and 5 more bytes; CRC.
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A real 16×16 baseline JPEG whose SOF0 claims `side × side` pixels.
fn jpeg_claiming(side: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(16, 16)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    // Walk the marker segments after SOI to the frame header: FF C0, length, precision,
    // height, width.
    let mut at = 2;
    loop {
        assert_eq!(bytes[at], 0xFF, "not a marker at {at}");
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if bytes[at + 1] == 0xC0 {
            bytes[at + 5..at + 7].copy_from_slice(&side.to_be_bytes());
            bytes[at + 7..at + 9].copy_from_slice(&side.to_be_bytes());
            return bytes;
        }
        at += 2 + length;
    }
}

/// Runs `virtex` under an 8 GB address-space limit, so that a broken guard fails this test
/// instead of taking the machine's memory (65000² RGB is 12.7 GB).
fn virtex_capped(args: &[&str]) -> (Output, std::time::Duration) {
    let start = std::time::Instant::now();
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 8000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_virtex"))
        .args(args)
        .output()
        .unwrap();
    (output, start.elapsed())
}

/// A PNG or JPEG whose header claims 65000 × 65000 pixels is refused from its header by
/// `caption` and `features`, at once, naming the file, the size and the limit; and
/// `--max-image-pixels` sets that limit.
#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let directory = tempfile::tempdir().unwrap();
    let weights = directory.path().join("resnet18.safetensors");
    virtex_backbone::ResNetConfig::resnet18()
        .init::<burn::backend::Flex>(&Default::default())
        .save_torchvision_safetensors(&weights)
        .unwrap();
    let vocab = directory.path().join("vocab.json");
    let trained = virtex([
        "train-tokenizer",
        "--captions",
        p(&virtex_data::sample_data_root().join("annotations/captions_train2017.json")),
        "--vocab-size",
        &TINY_CHECKPOINT_VOCAB.to_string(),
        "--out",
        p(&vocab),
    ]);
    assert!(trained.status.success());
    let out = directory.path().join("out");
    let checkpoint = tiny_checkpoint();
    let caption = |images: &Path, extra: &[&str]| {
        let mut args = vec![
            "caption",
            "--attention-heads",
            "2",
            "--short-side",
            "64",
            "--crop",
            "64",
            "--checkpoint",
            p(&checkpoint),
            "--vocab",
            p(&vocab),
            "--images",
            p(images),
            "--out",
            p(&out),
        ];
        args.extend_from_slice(extra);
        virtex_capped(&args)
    };
    let features = |images: &Path, extra: &[&str]| {
        let mut args = vec![
            "features",
            "--arch",
            "resnet18",
            "--short-side",
            "64",
            "--crop",
            "64",
            "--weights",
            p(&weights),
            "--images",
            p(images),
            "--out",
            p(&out),
        ];
        args.extend_from_slice(extra);
        virtex_capped(&args)
    };

    for (name, bytes) in [
        ("bomb.png", png_claiming(65_000)),
        ("bomb.jpg", jpeg_claiming(65_000)),
    ] {
        let images = directory.path().join(name.replace('.', "_"));
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join(name), &bytes).unwrap();
        assert!(bytes.len() < 4096, "{name}: {} bytes", bytes.len());
        for (command, (output, elapsed)) in [
            ("caption", caption(&images, &[])),
            ("features", features(&images, &[])),
        ] {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} {name}: {stderr}");
            assert!(
                stderr.contains(name)
                    && stderr.contains("65000x65000")
                    && stderr.contains("above the limit of 178956970"),
                "{command} {name}: {stderr}"
            );
            assert!(
                elapsed < std::time::Duration::from_secs(30),
                "{command} {name}: {elapsed:?}"
            );
            assert!(!out.exists());
        }
    }

    // The flag lowers the limit below a real 400 × 300 photograph …
    let photo = sample_images().join("000000000011.jpg");
    for (command, (output, _)) in [
        (
            "caption",
            caption(&photo, &["--max-image-pixels", "100000"]),
        ),
        (
            "features",
            features(&photo, &["--max-image-pixels", "100000"]),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("000000000011.jpg") && stderr.contains("above the limit of 100000"),
            "{command}: {stderr}"
        );
    }
    // … which passes at the default, and 0 is refused while parsing.
    let (output, _) = features(&photo, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (output, _) = features(&photo, &["--max-image-pixels", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--max-image-pixels"),
        "{stderr}"
    );
}
