//! `cargo bench --bench data_pipeline`: the VirTex training input pipeline on one core —
//! JPEG decode (640×480) → RandomResizedCrop(224) → flip → colour jitter → normalise to
//! `[3, 224, 224]` f32 — in images/s (criterion's element throughput), plus decode alone.
//!
//! The JPEGs are the embedded sample's photographs resized to 640×480 and re-encoded at quality
//! 90 in memory (COCO images are ~640×480 JPEGs). One thread runs the whole pipeline, so the
//! rate is per core; the loader scales it with `num_workers`. The Python side (PIL +
//! torchvision) is `tools/bench/data_pipeline.py`; numbers go to `docs/performance.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use virtex_data::transforms::{resize_region, CropBox};
use virtex_data::{
    decode_image, load_image, sample_data_root, CocoCaptions, CocoOptions, FlipCaption,
    ImageTransforms, SampleRng, Split,
};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;

/// The sample's train photographs as 640×480 quality-90 JPEG bytes.
fn jpegs() -> Vec<Vec<u8>> {
    let coco = CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default())
        .expect("embedded sample");
    coco.images()
        .iter()
        .map(|entry| {
            let image = load_image(&entry.path).expect("sample image");
            let full = CropBox {
                left: 0.0,
                top: 0.0,
                width: image.width() as f64,
                height: image.height() as f64,
            };
            let resized = resize_region(&image, full, WIDTH, HEIGHT);
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&resized)
                .expect("JPEG encoding");
            bytes
        })
        .collect()
}

fn data_pipeline(c: &mut Criterion) {
    let files = jpegs();
    let train = ImageTransforms::pretrain_train(224, FlipCaption::WholeWord).expect("preset");
    let mut group = c.benchmark_group("data_pipeline");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("decode_640x480_jpeg", |b| {
        b.iter(|| {
            let bytes = &files[(i % files.len() as u64) as usize];
            i += 1;
            black_box(decode_image(black_box(bytes), "bench.jpg").expect("decode"))
        })
    });
    let mut i = 0u64;
    group.bench_function("decode_train_transforms_normalize_224", |b| {
        b.iter(|| {
            let bytes = &files[(i % files.len() as u64) as usize];
            let mut rng = SampleRng::for_sample(0, 0, i);
            i += 1;
            let image = decode_image(black_box(bytes), "bench.jpg").expect("decode");
            black_box(train.apply(&image, "a dog on the left", &mut rng))
        })
    });
    group.finish();
}

criterion_group!(benches, data_pipeline);
criterion_main!(benches);
