//! `cargo bench --bench data_pipeline`: the VirTex training input pipeline on one core —
//! JPEG decode (640×480) → RandomResizedCrop(224) → flip → colour jitter → normalise to
//! `[3, 224, 224]` f32 — in images/s (criterion's element throughput), plus decode alone.
//!
//! The JPEGs are the embedded sample's photographs resized to 640×480 and re-encoded at quality
//! 90 in memory (COCO images are ~640×480 JPEGs). One thread runs the whole pipeline, so the
//! rate is per core; the loader scales it with `num_workers`. The Python side (PIL +
//! torchvision) is `tools/bench/data_pipeline.py`; numbers go to `docs/performance.md`.
//!
//! `data_source`: one epoch of the loader (one thread, `num_workers = 0`: images/s per core)
//! over the same 64 JPEGs as a folder (a plain captions file naming the files) and as WebDataset
//! shards (`write_shards`, 16 samples per shard), with the training transforms, and each
//! source's reads alone (file reads vs the shard stream, no decoding). The files are in the page
//! cache after the first epoch, so this measures the CPU cost of each format, not a disk.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use std::sync::Arc;
use virtex_data::transforms::{resize_region, CropBox};

use virtex_data::{
    decode_image, load_image, sample_data_root, sample_vocab_path, write_shards, CaptioningDataset,
    CocoCaptions, CocoOptions, DataLoader, FlipCaption, ImageTransforms, LoaderConfig,
    PlainCaptions, PlainOptions, SampleRng, SentencePieceBpeTokenizer, ShardCaptioning,
    ShardDataset, ShardList, ShardSplit, ShardStream, ShardWriterOptions, Split,
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

/// Images in the folder-vs-shards comparison.
const SOURCE_IMAGES: usize = 64;

fn data_source(c: &mut Criterion) {
    let files = jpegs();
    let dir = std::env::temp_dir().join(format!("virtex-bench-shards-{}", std::process::id()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images).expect("bench directory");
    let mut tsv = String::new();
    for i in 0..SOURCE_IMAGES {
        let path = images.join(format!("{i:05}.jpg"));
        std::fs::write(&path, &files[i % files.len()]).expect("bench image");
        tsv.push_str(&format!(
            "images/{i:05}.jpg\ta photo number {i} of a dog on the left\n"
        ));
    }
    let captions = dir.join("train.tsv");
    std::fs::write(&captions, tsv).expect("bench captions");
    let plain = PlainCaptions::load(&captions, &PlainOptions::default()).expect("captions");
    let options = ShardWriterOptions {
        samples_per_shard: 16,
        ..ShardWriterOptions::default()
    };
    let written = write_shards(plain.images(), &dir.join("shards"), &options).expect("shards");
    let list = Arc::new(ShardList::open(&written.pattern).expect("shard list"));

    let tokenizer =
        Arc::new(SentencePieceBpeTokenizer::from_file(sample_vocab_path()).expect("vocab"));
    let train = ImageTransforms::pretrain_train(224, FlipCaption::WholeWord).expect("preset");
    let config = LoaderConfig {
        batch_size: 16,
        num_workers: 0,
        shuffle: true,
        ..LoaderConfig::default()
    };
    let folder = DataLoader::new(
        CaptioningDataset::new(plain.clone(), tokenizer.clone(), train.clone()).expect("dataset"),
        config.clone(),
    )
    .expect("folder loader");
    let shards = DataLoader::from_shards(
        ShardDataset {
            list: list.clone(),
            split: ShardSplit::default(),
            shuffle_buffer: 32,
            captioning: ShardCaptioning::new(tokenizer, train).expect("captioning"),
        },
        config,
    )
    .expect("shard loader");

    let mut group = c.benchmark_group("data_source");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SOURCE_IMAGES as u64));
    let mut epoch = 0;
    group.bench_function("folder_epoch_decode_train_224", |b| {
        b.iter(|| {
            epoch += 1;
            for batch in folder.iter_epoch(epoch) {
                black_box(batch.expect("batch"));
            }
        })
    });
    let mut epoch = 0;
    group.bench_function("shards_epoch_decode_train_224", |b| {
        b.iter(|| {
            epoch += 1;
            for batch in shards.iter_epoch(epoch) {
                black_box(batch.expect("batch"));
            }
        })
    });
    group.bench_function("folder_read_only", |b| {
        b.iter(|| {
            for image in plain.images() {
                black_box(std::fs::read(&image.path).expect("read"));
            }
        })
    });
    let mut epoch = 0;
    group.bench_function("shards_read_only", |b| {
        b.iter(|| {
            epoch += 1;
            let stream_options = virtex_data::StreamOptions {
                seed: 0,
                shuffle: true,
                shuffle_buffer: 32,
                split: ShardSplit::default(),
            };
            for sample in ShardStream::new(list.clone(), stream_options, epoch).expect("stream") {
                black_box(sample.expect("sample"));
            }
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, data_pipeline, data_source);
criterion_main!(benches);
