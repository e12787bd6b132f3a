//! Time-boxed fuzzing of the two readers of untrusted files: the image decoder
//! (`decode_image`, and the transforms on whatever it decodes) and the annotation reader
//! (`CocoCaptions::load_files`). Inputs are random
//! bytes and mutations (bit flips, truncation, inserted and overwritten bytes) of valid seeds: the
//! fixture and sample JPEG/PNG images and a valid COCO captions file. Each must come back as `Ok`
//! or a typed error, never a panic.
//!
//! Each target runs for `VIRTEX_FUZZ_SECONDS` seconds (default 10): proptest's `TestRunner` in
//! rounds of 64 cases, each round seeded from its number, so a failure names the round that
//! reproduces it. A panic is shrunk by proptest and reported with its minimal input.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use virtex_data::{
    decode_image, read_caption_file, sample_data_root, set_image_limits, CocoCaptions, CocoOptions,
    DataError, FlipCaption, ImageLimits, ImageTransforms, SampleRng, Split,
};

/// Cases per round; a round is one seeded `TestRunner`.
const CASES_PER_ROUND: u32 = 64;

fn fuzz_duration() -> Duration {
    let seconds = std::env::var("VIRTEX_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    Duration::from_secs_f64(seconds)
}

/// A mutation of a seed file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Keep only a prefix.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Overwrite bytes (the run may reach past the end, which extends the file).
    Overwrite(Index, Vec<u8>),
    /// Set a byte to a value that matters to parsers (0, 0xFF, a marker, a length byte).
    SetByte(Index, u8),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            if let Self::Insert(_, b) | Self::Overwrite(_, b) = self {
                bytes.extend_from_slice(b);
            }
            return;
        }
        match self {
            Self::FlipBit(at, bit) => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << (bit % 8);
            }
            Self::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Self::Insert(at, b) => {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Self::Overwrite(at, b) => {
                let i = at.index(bytes.len());
                for (k, &v) in b.iter().enumerate() {
                    match bytes.get_mut(i + k) {
                        Some(slot) => *slot = v,
                        None => bytes.push(v),
                    }
                }
            }
            Self::SetByte(at, v) => {
                let i = at.index(bytes.len());
                bytes[i] = *v;
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0x00u8),
        Just(0xFF),
        Just(0xD8),
        Just(0xD9),
        Just(0xC0),
        Just(0xC2),
        Just(0xDA),
        Just(0x7F),
        Just(0x80),
        any::<u8>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Overwrite(at, b)),
        3 => (any::<Index>(), interesting).prop_map(|(at, v)| Mutation::SetByte(at, v)),
    ]
}

/// Mutations of one of `seeds`, or random bytes (bare, or behind a JPEG/PNG signature so they
/// reach the decoders).
fn fuzzed_bytes(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..8),
    )
        .prop_map(|(mut bytes, mutations)| {
            for m in &mutations {
                m.apply(&mut bytes);
            }
            bytes
        });
    let random = prop::collection::vec(any::<u8>(), 0..512);
    let signed = (
        prop_oneof![
            Just(vec![0xFF, 0xD8, 0xFF]),
            Just(b"\x89PNG\r\n\x1a\n".to_vec())
        ],
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(mut head, tail)| {
            head.extend(tail);
            head
        });
    prop_oneof![6 => mutated, 1 => random, 1 => signed]
}

/// Runs `test` on values of `strategy` until the fuzzing time is up; panics with the minimal
/// failing input if any case panics.
fn fuzz<S>(target: &str, strategy: S, test: impl Fn(S::Value))
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let deadline = Instant::now() + fuzz_duration();
    let cases = AtomicU64::new(0);
    let mut round: u64 = 0;
    // At least one round, so a zero duration still checks the harness.
    loop {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        for (slot, byte) in seed[8..].iter_mut().zip(target.bytes()) {
            *slot = byte;
        }
        let config = Config {
            cases: CASES_PER_ROUND,
            failure_persistence: None,
            // Shrinking a panic should not take longer than the fuzzing itself.
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&strategy, |value| {
            cases.fetch_add(1, Ordering::Relaxed);
            test(value);
            Ok::<(), TestCaseError>(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, minimal)) => {
                // A mutated seed image is tens of KB; its head is enough to start from, and
                // the round number reproduces it whole.
                let shown: String = format!("{minimal:?}").chars().take(4000).collect();
                panic!("{target}: round {round} panicked: {reason}\nminimal input: {shown}")
            }
            Err(TestError::Abort(reason)) => panic!("{target}: round {round} aborted: {reason}"),
        }
        round += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    println!(
        "{target}: {} cases in {round} rounds ({:.1} s)",
        cases.load(Ordering::Relaxed),
        fuzz_duration().as_secs_f64()
    );
}

/// Every JPEG and PNG of the fixtures and the embedded sample.
fn image_seeds() -> Vec<Vec<u8>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let dirs = [
        fixtures,
        sample_data_root().join("train2017"),
        sample_data_root().join("val2017"),
    ];
    let mut seeds = Vec::new();
    for dir in dirs {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("png"))
            })
            .collect();
        paths.sort();
        seeds.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
    }
    assert!(seeds.len() >= 20, "{} seeds", seeds.len());
    seeds
}

/// A limit well below the default for the fuzzed decodes: a mutated header can claim any size
/// under the limit, and decoding 179 million pixels of garbage takes seconds and gigabytes per
/// case. The code path is the same at any limit. Every test of this binary sets the same value.
fn fuzzing_limits() {
    set_image_limits(ImageLimits::new(1 << 22).unwrap());
}

#[test]
fn fuzz_decode_image() {
    fuzzing_limits();
    // Whatever decodes also goes through both kinds of pipeline: odd shapes (1 × N strips,
    // rotated EXIF) must give an image or a typed error.
    let pipelines = [
        ImageTransforms::pretrain_train(32, FlipCaption::WholeWord).unwrap(),
        ImageTransforms::downstream_val(40, 32).unwrap(),
    ];
    fuzz(
        "decode_image",
        fuzzed_bytes(image_seeds()),
        |bytes| match decode_image(&bytes, "fuzzed.img") {
            Ok(image) => {
                assert!(u64::from(image.width()) * u64::from(image.height()) <= 1 << 22);
                assert_eq!(
                    image.as_raw().len(),
                    3 * image.width() as usize * image.height() as usize
                );
                for pipeline in &pipelines {
                    let mut rng = SampleRng::seed_from_u64(bytes.len() as u64);
                    match pipeline.try_apply_image(&image, &mut rng, None) {
                        Ok(out) => assert_eq!((out.width, out.height), (32, 32)),
                        Err(err) => assert!(
                            matches!(err, DataError::TransformTooLarge { .. }),
                            "{err:?}"
                        ),
                    }
                }
            }
            Err(err) => {
                assert!(err.is_bad_image(), "not an image error: {err:?}");
                assert!(err.to_string().contains("fuzzed.img"), "{err}");
            }
        },
    );
}

/// A valid captions file over one real image.
fn coco_seed() -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "info": {"description": "fuzz seed"},
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 400, "height": 300},
            {"id": 2, "file_name": "sub/2.jpg"},
            {"id": 3, "file_name": "3.jpg"}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A dog on the LEFT of a café."},
            {"id": 11, "image_id": 2, "caption": "Two cats."},
            {"id": 12, "image_id": 1, "caption": "ﬁne ligatures, 数字 and émoji 🐕"},
            {"id": 13, "image_id": 3, "caption": ""}
        ]
    }))
    .unwrap()
}

/// `file_name`s that probe the confinement check, the joins and the filesystem.
fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.jpg".to_string()),
        Just("sub/2.jpg".to_string()),
        Just("../outside.jpg".to_string()),
        Just("/etc/passwd".to_string()),
        Just(String::new()),
        Just(".".to_string()),
        Just("sub".to_string()),
        Just("a\0b.jpg".to_string()),
        Just("sub/./../1.jpg".to_string()),
        "[./a-z\\\\]{0,12}",
        any::<String>(),
    ]
}

/// Structurally valid-looking captions files with hostile values.
fn structured_coco() -> impl Strategy<Value = Vec<u8>> {
    let images = prop::collection::vec((0u64..6, file_name()), 0..5);
    let annotations = prop::collection::vec(
        (
            0u64..6,
            prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(Into::into)
            ],
            any::<String>(),
        ),
        0..6,
    );
    (images, annotations).prop_map(|(images, annotations)| {
        let images: Vec<_> = images
            .into_iter()
            .map(|(id, name)| serde_json::json!({"id": id, "file_name": name}))
            .collect();
        let annotations: Vec<_> = annotations
            .into_iter()
            .map(|(image_id, id, caption)| {
                serde_json::json!({"id": id, "image_id": image_id, "caption": caption})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"images": images, "annotations": annotations}))
            .unwrap()
    })
}

/// A dataset directory with the images the seed names, a file outside `images/` and a
/// truncated image.
fn coco_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    let jpeg = std::fs::read(sample_data_root().join("val2017/000000000011.jpg")).unwrap();
    std::fs::write(images.join("1.jpg"), &jpeg).unwrap();
    std::fs::write(images.join("sub/2.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(images.join("3.jpg"), b"").unwrap();
    std::fs::write(dir.path().join("outside.jpg"), &jpeg).unwrap();
    dir
}

fn check_annotations(dir: &Path, bytes: &[u8], options_bits: u8) {
    let annotations = dir.join("captions.json");
    std::fs::write(&annotations, bytes).unwrap();
    let image_dir = dir.join("images");
    let options = CocoOptions {
        skip_bad_images: options_bits & 1 != 0,
        verify_images: options_bits & 2 != 0,
    };
    match CocoCaptions::load_files(&annotations, &image_dir, Split::Train, &options) {
        Ok(coco) => {
            assert!(!coco.is_empty());
            for image in coco.images() {
                // Confinement: nothing outside the image directory, lexically.
                assert!(image.path.starts_with(&image_dir), "{:?}", image.path);
                assert!(
                    !image
                        .path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir)),
                    "{:?}",
                    image.path
                );
                assert!(!image.captions.is_empty());
            }
            for skipped in coco.skipped() {
                assert!(options.skip_bad_images);
                assert!(!skipped.reason.is_empty());
            }
        }
        Err(err) => {
            // Typed, and naming the annotation file or the image at fault.
            let message = err.to_string();
            assert!(
                message.contains("captions.json") || message.contains("images"),
                "{err:?}"
            );
            if let DataError::UnsafeImagePath { file_name, .. } = &err {
                assert!(
                    file_name.is_empty()
                        || file_name.contains("..")
                        || file_name.starts_with('/')
                        || Path::new(file_name)
                            .components()
                            .all(|c| matches!(c, std::path::Component::CurDir)),
                    "{file_name:?}"
                );
            }
        }
    }
    // The caption-only reader must not panic on the same file either.
    let _ = read_caption_file(&annotations);
}

#[test]
fn fuzz_annotation_reader_with_mutated_files() {
    fuzzing_limits();
    let dir = coco_dir();
    let strategy = (fuzzed_bytes(vec![coco_seed()]), 0u8..4);
    fuzz("load_files (mutated)", strategy, |(bytes, options)| {
        check_annotations(dir.path(), &bytes, options);
    });
}

#[test]
fn fuzz_annotation_reader_with_hostile_values() {
    fuzzing_limits();
    let dir = coco_dir();
    let strategy = (structured_coco(), 0u8..4);
    fuzz("load_files (structured)", strategy, |(bytes, options)| {
        check_annotations(dir.path(), &bytes, options);
    });
}

#[test]
fn the_harness_reports_a_panicking_case() {
    // Half the bytes panic: the first round finds one, shrinks it to 128 and fails.
    let outcome = std::panic::catch_unwind(|| {
        fuzz("self-test", any::<u8>(), |b| assert!(b < 128, "byte {b}"));
    });
    let payload = outcome.expect_err("the harness swallowed a panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("self-test: round 0 panicked"), "{message}");
    assert!(message.contains("minimal input: 128"), "{message}");
}
