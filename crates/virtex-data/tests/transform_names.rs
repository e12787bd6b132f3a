//! Upstream's `name::{kwargs}` transform names: what each transform accepts, the typed errors,
//! and the canonical text that reads back to the same pipeline.

use proptest::prelude::*;
use virtex_data::{
    ColorJitter, DataError, FlipCaption, ImageTransforms, Normalize, ResizeMode, TransformStep,
};

fn names(list: &[&str]) -> Result<ImageTransforms, DataError> {
    ImageTransforms::from_names(list, 224, FlipCaption::WholeWord)
}

fn one(text: &str) -> TransformStep {
    names(&[text])
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .steps()[0]
        .clone()
}

/// The message of the `InvalidTransform` that `text` gives, checking it names `text`.
fn invalid(text: &str) -> String {
    match names(&[text]) {
        Err(DataError::InvalidTransform { text: t, message }) => {
            assert_eq!(t, text);
            let shown = DataError::InvalidTransform {
                text: t,
                message: message.clone(),
            }
            .to_string();
            assert!(shown.contains(text), "{shown}");
            message
        }
        other => panic!("{text}: expected InvalidTransform, got {other:?}"),
    }
}

#[test]
fn upstream_examples() {
    assert_eq!(
        one("random_resized_crop::{'scale': (0.08, 1.0)}"),
        TransformStep::RandomResizedCrop {
            size: 224,
            scale: (0.08, 1.0),
            ratio: (0.75, 4.0 / 3.0),
        }
    );
    assert_eq!(
        one("smallest_resize::{'max_size': 256}"),
        TransformStep::SmallestMaxSize { size: 256 }
    );
    assert_eq!(
        one("center_crop::{'height': 200, 'width': 200}"),
        TransformStep::CenterCrop { size: 200 }
    );
    assert_eq!(
        one("global_resize"),
        TransformStep::GlobalResize { size: 224 }
    );
    assert_eq!(
        one("horizontal_flip::{'p': 1}"),
        TransformStep::HorizontalFlip {
            p: 1.0,
            caption: FlipCaption::WholeWord
        }
    );
    assert_eq!(
        one("color_jitter::{'brightness': 0.2, 'hue': 5e-2, 'p': 1.0}"),
        TransformStep::ColorJitter(ColorJitter {
            brightness: 0.2,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.05,
            p: 1.0,
        })
    );
    assert_eq!(
        one("normalize::{'mean': [0.5, 0.5, 0.5], 'std': 0.25}"),
        TransformStep::Normalize(Normalize {
            mean: [0.5; 3],
            std: [0.25; 3],
        })
    );
    // max_pixel_value m folds into mean and std: (x − m·mean) / (m·std).
    assert_eq!(
        one("normalize::{'mean': 0.5, 'std': 0.25, 'max_pixel_value': 1.0}"),
        TransformStep::Normalize(Normalize {
            mean: [0.5 / 255.0; 3],
            std: [0.25 / 255.0; 3],
        })
    );
    // albumentations' own keywords, at the values that change nothing here.
    assert_eq!(
        one("random_resized_crop::{'interpolation': 1, 'p': 1.0, 'always_apply': False}"),
        one("random_resized_crop")
    );
    // always_apply makes p irrelevant (and a random step certain).
    assert_eq!(
        one("center_crop::{'p': 0.5, 'always_apply': True}"),
        one("center_crop")
    );
    assert_eq!(
        one("horizontal_flip::{'p': 0.1, 'always_apply': True}"),
        one("horizontal_flip::{'p': 1.0}")
    );
}

#[test]
fn presets_are_expressible_as_names() {
    assert_eq!(
        names(&[
            "random_resized_crop",
            "horizontal_flip",
            "color_jitter",
            "normalize"
        ])
        .unwrap(),
        ImageTransforms::pretrain_train(224, FlipCaption::WholeWord).unwrap()
    );
    assert_eq!(
        names(&[
            "smallest_resize::{'max_size': 256}",
            "center_crop",
            "normalize"
        ])
        .unwrap(),
        ImageTransforms::downstream_val(256, 224).unwrap()
    );
    assert_eq!(
        ImageTransforms::from_names(
            &[
                "random_resized_crop::{'scale': (0.08, 1.0)}",
                "horizontal_flip",
                "normalize"
            ],
            224,
            FlipCaption::Keep
        )
        .unwrap(),
        ImageTransforms::downstream_train(224).unwrap()
    );
}

#[test]
fn unknown_kwargs_name_the_accepted_ones() {
    match names(&[
        "center_crop",
        "random_resized_crop::{'scales': (0.08, 1.0)}",
    ]) {
        Err(e @ DataError::UnknownTransformKwarg { .. }) => {
            let shown = e.to_string();
            let DataError::UnknownTransformKwarg {
                text,
                transform,
                kwarg,
                accepted,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(text, "random_resized_crop::{'scales': (0.08, 1.0)}");
            assert_eq!(transform, "random_resized_crop");
            assert_eq!(kwarg, "scales");
            assert!(accepted.contains(&"scale".to_string()));
            assert!(
                shown.contains("'scales'") && shown.contains("'scale', 'ratio'"),
                "{shown}"
            );
        }
        other => panic!("expected UnknownTransformKwarg, got {other:?}"),
    }
    for (text, kwarg) in [
        ("horizontal_flip::{'caption': 'keep'}", "caption"),
        ("smallest_resize::{'size': 256}", "size"),
        ("normalize::{'max_pixel': 1}", "max_pixel"),
        ("color_jitter::{'Hue': 0.1}", "Hue"),
    ] {
        assert!(
            matches!(names(&[text]), Err(DataError::UnknownTransformKwarg { kwarg: k, .. }) if k == kwarg),
            "{text}"
        );
    }
}

#[test]
fn bad_values_are_refused_with_the_text_and_the_reason() {
    for (text, expected) in [
        // Ranges, checked as for hand-built steps.
        (
            "random_resized_crop::{'scale': (0.5, 0.2)}",
            "RandomResizedCrop.scale",
        ),
        (
            "random_resized_crop::{'scale': (0, 1)}",
            "0 < min <= max <= 1",
        ),
        (
            "random_resized_crop::{'scale': (0.5, 1.5)}",
            "0 < min <= max <= 1",
        ),
        (
            "random_resized_crop::{'ratio': (1.5, 0.5)}",
            "RandomResizedCrop.ratio",
        ),
        ("horizontal_flip::{'p': 1.5}", "HorizontalFlip.p"),
        ("color_jitter::{'p': -0.1}", "ColorJitter.p"),
        ("color_jitter::{'hue': 0.7}", "ColorJitter.hue"),
        ("color_jitter::{'contrast': -1}", "ColorJitter.contrast"),
        ("center_crop::{'size': 0}", "must be positive"),
        ("normalize::{'std': (1, 0, 1)}", "Normalize.std"),
        // Types and forms.
        ("random_resized_crop::{'scale': 0.5}", "(min, max) pair"),
        (
            "random_resized_crop::{'scale': (0.1, 0.5, 1.0)}",
            "(min, max) pair",
        ),
        (
            "random_resized_crop::{'scale': ('a', 1)}",
            "(min, max) pair",
        ),
        (
            "horizontal_flip::{'p': True}",
            "expected a number, not bool",
        ),
        (
            "horizontal_flip::{'p': None}",
            "expected a number, not None",
        ),
        (
            "center_crop::{'size': 224.0}",
            "int number of pixels, not float",
        ),
        (
            "smallest_resize::{'max_size': -1}",
            "positive number of pixels",
        ),
        ("center_crop::{'height': 224, 'width': 200}", "must agree"),
        ("center_crop::{'size': 224, 'width': 200}", "must agree"),
        (
            "color_jitter::{'brightness': (0.5, 1.5)}",
            "(min, max) range is not supported",
        ),
        ("normalize::{'mean': (0.5, 0.5)}", "three numbers"),
        ("normalize::{'max_pixel_value': 0}", "positive number"),
        ("horizontal_flip::{'always_apply': 1}", "True or False"),
        // Steps that run on every image.
        ("center_crop::{'p': 0.5}", "only p = 1.0"),
        ("random_resized_crop::{'p': 0.9}", "only p = 1.0"),
        ("smallest_resize::{'p': 0}", "only p = 1.0"),
        ("normalize::{'p': 0.5}", "only p = 1.0"),
        ("global_resize::{'interpolation': 2}", "cv2.INTER_LINEAR"),
        // Names and syntax.
        ("sharpen", "unknown transform `sharpen`"),
        (
            "sharpen::{'p': 1}",
            "expected random_resized_crop, center_crop",
        ),
        (
            "random_resized_crop::{'scale': (0.08, 1.0)",
            "expected `,` or `}`",
        ),
        (
            "random_resized_crop::{scale: (0.08, 1.0)}",
            "quoted keyword name",
        ),
        (
            "random_resized_crop::{'scale': __import__('os')}",
            "not a literal",
        ),
        (
            "random_resized_crop::dict(scale=(0.08, 1.0))",
            "expected a dict",
        ),
    ] {
        let message = invalid(text);
        assert!(message.contains(expected), "{text}: {message}");
        eprintln!("{text}\n    → {message}");
    }
    // A bad `crop` given to plain names stays an InvalidConfig naming the setting.
    assert!(matches!(
        ImageTransforms::from_names(&["center_crop"], 0, FlipCaption::Keep),
        Err(DataError::InvalidConfig { what, .. }) if what == "CenterCrop.size"
    ));
    // Normalize must still come last.
    assert!(names(&["normalize", "center_crop"])
        .unwrap_err()
        .to_string()
        .contains("last"));
}

#[test]
fn canonical_names_read_back() {
    let pretrain = ImageTransforms::pretrain_train(224, FlipCaption::Substring).unwrap();
    assert_eq!(
        pretrain.canonical_names(),
        [
            "random_resized_crop::{'size': 224, 'scale': (0.2, 1.0), 'ratio': (0.75, 1.3333333333333333)}",
            "horizontal_flip::{'p': 0.5}",
            "color_jitter::{'brightness': 0.4, 'contrast': 0.4, 'saturation': 0.4, 'hue': 0.1, 'p': 0.8}",
            "normalize::{'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)}",
        ]
    );
    for t in [
        pretrain,
        ImageTransforms::pretrain_val(224).unwrap(),
        ImageTransforms::downstream_val(256, 224).unwrap(),
        ImageTransforms::downstream_train(192).unwrap(),
        names(&[
            "global_resize::{'size': 300}",
            "color_jitter::{'brightness': 0.123456789, 'hue': 0.5, 'p': 0.3}",
            "normalize::{'mean': 0.5, 'std': 0.25, 'max_pixel_value': 1.0}",
        ])
        .unwrap(),
    ] {
        let flip = t
            .steps()
            .iter()
            .find_map(|s| match s {
                TransformStep::HorizontalFlip { caption, .. } => Some(*caption),
                _ => None,
            })
            .unwrap_or(FlipCaption::Keep);
        // Any crop: every size is explicit in the text.
        let back = ImageTransforms::from_names(&t.canonical_names(), 17, flip).unwrap();
        assert_eq!(back, t, "{:?}", t.canonical_names());
    }
    // The mode is not part of the names.
    let upstream = ImageTransforms::pretrain_val(224)
        .unwrap()
        .with_resize_mode(ResizeMode::Upstream);
    assert_eq!(
        upstream.canonical_names(),
        ImageTransforms::pretrain_val(224)
            .unwrap()
            .canonical_names()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any valid values survive canonical text → from_names exactly (f32 and f64 alike).
    #[test]
    fn canonical_text_round_trips(
        size in 1u32..2000,
        lo in 0.001f64..1.0,
        hi_frac in 0.0f64..1.0,
        r_lo in 0.1f64..1.0,
        r_hi in 1.0f64..10.0,
        p in 0.0f64..=1.0,
        jitter in proptest::array::uniform3(0.0f32..5.0),
        hue in 0.0f32..=0.5,
        mean in proptest::array::uniform3(-2.0f32..2.0),
        std in proptest::array::uniform3(0.01f32..3.0),
    ) {
        let steps = vec![
            TransformStep::RandomResizedCrop { size, scale: (lo, lo + (1.0 - lo) * hi_frac), ratio: (r_lo, r_hi) },
            TransformStep::HorizontalFlip { p, caption: FlipCaption::WholeWord },
            TransformStep::ColorJitter(ColorJitter {
                brightness: jitter[0], contrast: jitter[1], saturation: jitter[2], hue, p,
            }),
            TransformStep::SmallestMaxSize { size },
            TransformStep::CenterCrop { size },
            TransformStep::GlobalResize { size },
            TransformStep::Normalize(Normalize { mean, std }),
        ];
        let t = ImageTransforms::new(steps).unwrap();
        let back = ImageTransforms::from_names(&t.canonical_names(), 7, FlipCaption::WholeWord).unwrap();
        prop_assert_eq!(back, t);
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,60}", tail in "[{}()\\[\\]'\",:0-9eE.+_ -]{0,40}") {
        let _ = ImageTransforms::from_names(&[text.as_str()], 224, FlipCaption::Keep);
        let _ = ImageTransforms::from_names(&[format!("random_resized_crop::{{{tail}")], 224, FlipCaption::Keep);
    }
}

#[test]
fn readme_example() {
    let names = [
        "smallest_resize::{'max_size': 256}",
        "center_crop",
        "normalize",
    ];
    let val = ImageTransforms::from_names(&names, 224, FlipCaption::Keep)
        .unwrap()
        .with_resize_mode("upstream".parse().unwrap());
    assert_eq!(
        val,
        ImageTransforms::downstream_val(256, 224)
            .unwrap()
            .with_resize_mode(ResizeMode::Upstream)
    );
    assert_eq!(
        val.canonical_names(),
        [
            "smallest_resize::{'max_size': 256}",
            "center_crop::{'size': 224}",
            "normalize::{'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)}",
        ]
    );
}
