//! `ResizeMode::Upstream` against upstream's albumentations 0.5.2 on OpenCV 4.10 (fixture from
//! `tools/reference/upstream_resize.py`, on real JPEGs of the sample data), and the default
//! `ResizeMode::Torchvision` unchanged.
//!
//! The fixture carries the decoded source pixels (libjpeg-turbo's), so only resizing and
//! cropping are compared: every output must match exactly (max |Δ| = 0). It also holds
//! `cv2.resize` of small random images between random sizes (1 to 24 pixels) and edge sizes.

use std::collections::HashMap;
use std::path::PathBuf;

use image::RgbImage;
use safetensors::{Dtype, SafeTensors};
use virtex_data::transforms::{
    center_crop, random_resized_crop_params, resize_region, resize_region_opencv, CropBox,
};
use virtex_data::{
    FlipCaption, ImageTransforms, ResizeMode, SampleRng, TransformStep, TransformedImage,
};

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/upstream_resize.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = match view.dtype() {
                    Dtype::U8 => view.data().to_vec(),
                    // Boxes: little-endian i64, small and non-negative.
                    Dtype::I64 => view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u8)
                        .collect(),
                    other => panic!("{name}: unexpected dtype {other:?}"),
                };
                (name, (view.shape().to_vec(), data))
            })
            .collect();
        Self { tensors, metadata }
    }

    fn raw(&self, name: &str) -> &(Vec<usize>, Vec<u8>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
    }

    /// An `[H, W, 3]` tensor, or an `[H, W]` plane repeated into three equal channels.
    fn rgb(&self, name: &str) -> RgbImage {
        let (shape, data) = self.raw(name);
        let (h, w) = (shape[0] as u32, shape[1] as u32);
        let data = match shape.len() {
            3 => data.clone(),
            2 => data.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => panic!("{name}: shape {shape:?}"),
        };
        RgbImage::from_raw(w, h, data).unwrap()
    }

    fn crop_box(&self, name: &str) -> CropBox {
        let (_, b) = self.raw(name);
        CropBox {
            left: f64::from(b[0]),
            top: f64::from(b[1]),
            width: f64::from(b[2]),
            height: f64::from(b[3]),
        }
    }
}

/// A pipeline output without `Normalize` (values 0..=255) back to interleaved RGB8.
fn to_rgb(out: &TransformedImage) -> RgbImage {
    let plane = (out.width * out.height) as usize;
    RgbImage::from_fn(out.width, out.height, |x, y| {
        let i = (y * out.width + x) as usize;
        let v = |c: usize| {
            let f = out.data[c * plane + i];
            assert!(f == f.round() && (0.0..=255.0).contains(&f));
            f as u8
        };
        image::Rgb([v(0), v(1), v(2)])
    })
}

/// `(max |Δ|, number of differing values)`.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    (
        d.iter().copied().max().unwrap_or(0),
        d.iter().filter(|&&x| x > 0).count(),
    )
}

fn assert_exact(what: &str, got: &RgbImage, want: &RgbImage) {
    let (max, count) = diff(got, want);
    eprintln!(
        "{what}: {}x{}, max |Δ| {max} on {count} values",
        got.width(),
        got.height()
    );
    assert_eq!(
        (max, count),
        (0, 0),
        "{what}: max |Δ| {max} on {count} values"
    );
}

fn run(t: &ImageTransforms, image: &RgbImage) -> RgbImage {
    to_rgb(&t.apply_image(image, &mut SampleRng::seed_from_u64(0)))
}

#[test]
fn fixture_records_its_sources() {
    let f = Fixture::load();
    assert_eq!(
        f.metadata.get("generator").map(String::as_str),
        Some("tools/reference/upstream_resize.py")
    );
    assert!(f.metadata["albumentations"].starts_with("0.5"));
    assert!(!f.metadata["opencv"].is_empty());
}

#[test]
fn val_pipeline_matches_albumentations_bit_for_bit() {
    let f = Fixture::load();
    let source = f.rgb("val/source");
    assert_eq!(source.dimensions(), (400, 300));
    // SmallestMaxSize(224): 400 · 224/300 = 298.67 rounds to 299 (torchvision truncates: 298).
    let resize = ImageTransforms::new(vec![TransformStep::SmallestMaxSize { size: 224 }])
        .unwrap()
        .with_resize_mode(ResizeMode::Upstream);
    let resized = run(&resize, &source);
    assert_eq!(resized.dimensions(), (299, 224));
    assert_exact("SmallestMaxSize(224)", &resized, &f.rgb("val/resized"));
    // Then CenterCrop(224) at column (299 − 224) // 2 = 37 (torchvision: 38).
    let val =
        ImageTransforms::from_names(&["smallest_resize", "center_crop"], 224, FlipCaption::Keep)
            .unwrap()
            .with_resize_mode(ResizeMode::Upstream);
    let cropped = run(&val, &source);
    assert_exact(
        "SmallestMaxSize(224) + CenterCrop(224)",
        &cropped,
        &f.rgb("val/cropped"),
    );
    // pretrain_val is the same pipeline (plus Normalize).
    let preset = ImageTransforms::pretrain_val(224)
        .unwrap()
        .with_resize_mode(ResizeMode::Upstream);
    let normalized = preset.apply_image(&source, &mut SampleRng::seed_from_u64(0));
    let mean = virtex_data::transforms::IMAGENET_MEAN[0];
    let std = virtex_data::transforms::IMAGENET_STD[0];
    let first = f.rgb("val/cropped").get_pixel(0, 0)[0];
    assert!((normalized.data[0] - (f32::from(first) / 255.0 - mean) / std).abs() < 1e-5);
}

#[test]
fn colour_resizes_match_opencv_bit_for_bit() {
    let f = Fixture::load();
    let source = f.rgb("colour/source");
    assert_eq!(source.dimensions(), (192, 144));
    let mode = ResizeMode::Upstream;
    // A RandomResizedCrop box (173 × 131) shrunk to 64 × 64.
    let rrc = mode.resize_region(&source, f.crop_box("colour/rrc_box"), 64, 64);
    assert_exact("RandomResizedCrop box → 64²", &rrc, &f.rgb("colour/rrc"));
    // A 23 × 17 box enlarged 3× (borders replicate the box's own edge pixels).
    let up = resize_region_opencv(&source, f.crop_box("colour/upscale_box"), 69, 51);
    assert_exact("23×17 → 69×51", &up, &f.rgb("colour/upscale"));
    // An exact 2× shrink, which OpenCV runs as INTER_AREA.
    let whole = CropBox {
        left: 0.0,
        top: 0.0,
        width: 192.0,
        height: 144.0,
    };
    let half = resize_region_opencv(&source, whole, 96, 72);
    assert_exact("2× shrink", &half, &f.rgb("colour/half"));
    // global_resize (albumentations Resize(64, 64)) through the pipeline and its kwargs.
    let global =
        ImageTransforms::from_names(&["global_resize::{'size': 64}"], 224, FlipCaption::Keep)
            .unwrap()
            .with_resize_mode(ResizeMode::Upstream);
    assert_exact(
        "global_resize → 64²",
        &run(&global, &source),
        &f.rgb("colour/global"),
    );
}

#[test]
fn small_random_images_and_edge_sizes_match_opencv_bit_for_bit() {
    let f = Fixture::load();
    let mut cases = 0;
    for i in 0.. {
        let source = format!("noise/{i:02}/source");
        if !f.tensors.contains_key(&source) {
            break;
        }
        let source = f.rgb(&source);
        let want = f.rgb(&format!("noise/{i:02}/output"));
        let (w, h) = source.dimensions();
        let whole = CropBox {
            left: 0.0,
            top: 0.0,
            width: f64::from(w),
            height: f64::from(h),
        };
        let got = resize_region_opencv(&source, whole, want.width(), want.height());
        assert_exact(&format!("noise {i}: {w}×{h} →"), &got, &want);
        cases += 1;
    }
    assert!(cases >= 30, "{cases} cases");
}

#[test]
fn random_resized_crop_in_upstream_mode_resizes_the_drawn_box_with_opencv() {
    let f = Fixture::load();
    let source = f.rgb("colour/source");
    let t = ImageTransforms::from_names(
        &["random_resized_crop::{'size': 48}"],
        224,
        FlipCaption::Keep,
    )
    .unwrap()
    .with_resize_mode(ResizeMode::Upstream);
    for seed in 0..8 {
        let got = to_rgb(&t.apply_image(&source, &mut SampleRng::seed_from_u64(seed)));
        let mut rng = SampleRng::seed_from_u64(seed);
        let crop = random_resized_crop_params(192, 144, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(
            got,
            resize_region_opencv(&source, crop, 48, 48),
            "seed {seed}"
        );
        // The torchvision mode draws the same box.
        let tv = to_rgb(
            &t.clone()
                .with_resize_mode(ResizeMode::Torchvision)
                .apply_image(&source, &mut SampleRng::seed_from_u64(seed)),
        );
        assert_eq!(tv, resize_region(&source, crop, 48, 48), "seed {seed}");
    }
}

#[test]
fn default_mode_is_unchanged() {
    let f = Fixture::load();
    let source = f.rgb("val/source");
    for t in [
        ImageTransforms::pretrain_val(224).unwrap(),
        ImageTransforms::downstream_val(256, 224).unwrap(),
        ImageTransforms::pretrain_train(224, FlipCaption::WholeWord).unwrap(),
        ImageTransforms::downstream_train(224).unwrap(),
        ImageTransforms::from_names(&["smallest_resize", "center_crop"], 224, FlipCaption::Keep)
            .unwrap(),
    ] {
        assert_eq!(t.resize_mode(), ResizeMode::Torchvision);
        // Serialised as before: no `resize_mode` key in the default mode.
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("resize_mode"), "{json}");
    }
    // The default val pipeline is today's: the anti-aliased resize to 298 × 224 (truncated),
    // then torchvision's centre crop, i.e. the old free functions.
    assert_eq!(
        ResizeMode::Torchvision.smallest_max_size(400, 300, 224),
        (298, 224)
    );
    assert_eq!(
        virtex_data::transforms::smallest_max_size(400, 300, 224),
        (298, 224)
    );
    let val =
        ImageTransforms::from_names(&["smallest_resize", "center_crop"], 224, FlipCaption::Keep)
            .unwrap();
    let whole = CropBox {
        left: 0.0,
        top: 0.0,
        width: 400.0,
        height: 300.0,
    };
    let want = center_crop(&resize_region(&source, whole, 298, 224), 224, 224);
    assert_eq!(run(&val, &source), want);
    // And it differs from upstream's on this photograph (filter, size and offset).
    let upstream = f.rgb("val/cropped");
    let (max, count) = diff(&want, &upstream);
    eprintln!("torchvision vs upstream mode, val 224: max |Δ| {max} on {count} values");
    assert!(max > 0);
}

#[test]
fn sizes_and_offsets_per_mode() {
    use ResizeMode::{Torchvision, Upstream};
    // COCO's 640 × 480: 298.67 → 298 (torchvision) or 299 (upstream).
    assert_eq!(Torchvision.smallest_max_size(640, 480, 224), (298, 224));
    assert_eq!(Upstream.smallest_max_size(640, 480, 224), (299, 224));
    assert_eq!(Upstream.smallest_max_size(480, 640, 224), (224, 299));
    // Half-way cases round to even: 449 · 0.5 = 224.5 → 224; 451 · 0.5 = 225.5 → 226.
    assert_eq!(Upstream.smallest_max_size(449, 448, 224), (224, 224));
    assert_eq!(Upstream.smallest_max_size(451, 448, 224), (226, 224));
    assert_eq!(Torchvision.smallest_max_size(451, 448, 224), (225, 224));
    // Already the right size: unchanged.
    assert_eq!(Upstream.smallest_max_size(333, 224, 224), (333, 224));
    // CenterCrop offsets: 75 / 2 → 38 (half to even) or 37 (floor); 73 / 2 → 36 both.
    assert_eq!(Torchvision.center_crop_offset(299, 224), 38);
    assert_eq!(Upstream.center_crop_offset(299, 224), 37);
    assert_eq!(Torchvision.center_crop_offset(297, 224), 36);
    assert_eq!(Upstream.center_crop_offset(297, 224), 36);
    // Smaller than the crop (padded): floor stays floor.
    assert_eq!(Upstream.center_crop_offset(221, 224), -2);
    assert_eq!(Torchvision.center_crop_offset(221, 224), -2);
}

#[test]
fn resize_mode_parses_prints_and_serialises() {
    for (text, mode) in [
        ("torchvision", ResizeMode::Torchvision),
        ("upstream", ResizeMode::Upstream),
        ("OpenCV", ResizeMode::Upstream),
    ] {
        assert_eq!(text.parse::<ResizeMode>().unwrap(), mode);
    }
    assert!("pil"
        .parse::<ResizeMode>()
        .unwrap_err()
        .to_string()
        .contains("torchvision or upstream"));
    assert_eq!(ResizeMode::Upstream.to_string(), "upstream");
    assert_eq!(ResizeMode::default(), ResizeMode::Torchvision);
    let t = ImageTransforms::pretrain_val(224)
        .unwrap()
        .with_resize_mode(ResizeMode::Upstream);
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""resize_mode":"upstream""#), "{json}");
    let back: ImageTransforms = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    let old: ImageTransforms =
        serde_json::from_str(r#"{"steps":[{"type":"center_crop","size":8}]}"#).unwrap();
    assert_eq!(old.resize_mode(), ResizeMode::Torchvision);
    let alias: ImageTransforms = serde_json::from_str(
        r#"{"steps":[{"type":"global_resize","size":8}],"resize_mode":"opencv"}"#,
    )
    .unwrap();
    assert_eq!(alias.resize_mode(), ResizeMode::Upstream);
    assert_eq!(alias.output_size(), Some((8, 8)));
}
