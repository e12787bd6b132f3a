//! Writes the sample JPEGs, decoded by the `image` crate, and their SmallestMaxSize(224) +
//! CenterCrop(224) and RandomResizedCrop(224) outputs in both resize modes, to a safetensors file
//! (`VIRTEX_RESIZE_DUMP`, default `/tmp/resize_modes.safetensors`) that
//! `tools/reference/upstream_resize.py --features FILE` turns into the feature differences quoted
//! in `docs/upstream.md` § 3:
//!
//! ```sh
//! cargo run --release -p virtex-data --example dump_resize_modes
//! ```

use std::path::PathBuf;

use image::RgbImage;
use safetensors::Dtype;
use virtex_data::transforms::random_resized_crop_params;
use virtex_data::{
    load_image, sample_data_root, FlipCaption, ImageTransforms, ResizeMode, SampleRng,
    TransformedImage,
};

/// A transformed image without normalisation, back to 8-bit RGB.
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

fn run(t: &ImageTransforms, image: &RgbImage) -> RgbImage {
    to_rgb(&t.apply_image(image, &mut SampleRng::seed_from_u64(0)))
}

fn main() {
    let out = std::env::var("VIRTEX_RESIZE_DUMP")
        .unwrap_or_else(|_| "/tmp/resize_modes.safetensors".into());
    let mut files: Vec<PathBuf> = ["train2017", "val2017"]
        .iter()
        .flat_map(|split| std::fs::read_dir(sample_data_root().join(split)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let val =
        ImageTransforms::from_names(&["smallest_resize", "center_crop"], 224, FlipCaption::Keep)
            .unwrap();
    for (i, path) in files.iter().enumerate() {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let image = load_image(path).unwrap();
        let (w, h) = image.dimensions();
        let shape = |img: &RgbImage| vec![img.height() as usize, img.width() as usize, 3];
        tensors.push((
            format!("{name}/source"),
            shape(&image),
            image.as_raw().clone(),
        ));
        for mode in [ResizeMode::Torchvision, ResizeMode::Upstream] {
            let v = run(&val.clone().with_resize_mode(mode), &image);
            tensors.push((format!("{name}/val_{mode}"), shape(&v), v.into_raw()));
        }
        let mut rng = SampleRng::seed_from_u64(1000 + i as u64);
        let crop = random_resized_crop_params(w, h, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        for mode in [ResizeMode::Torchvision, ResizeMode::Upstream] {
            let r = mode.resize_region(&image, crop, 224, 224);
            tensors.push((format!("{name}/rrc_{mode}"), shape(&r), r.into_raw()));
        }
        let b: Vec<u8> = [crop.left, crop.top, crop.width, crop.height]
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        tensors.push((format!("{name}/rrc_box"), vec![4], b));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let dtype = if name.ends_with("rrc_box") {
                Dtype::I64
            } else {
                Dtype::U8
            };
            (
                name.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&out, safetensors::serialize(views, None).unwrap()).unwrap();
    eprintln!("wrote {out}: {} images", files.len());
}
