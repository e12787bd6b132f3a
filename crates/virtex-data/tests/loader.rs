//! The loader: determinism across worker counts, per-epoch shuffling, exact resume, collation
//! into Burn tensors and bad-image skipping — all on the embedded sample.

use burn::backend::Flex;
use burn::tensor::Int;
use virtex_data::{
    sample_data_root, sample_vocab_path, BatchPart, CaptionChoice, CaptioningDataset, CocoCaptions,
    CocoOptions, CollatedBatch, DataError, DataLoader, FlipCaption, ImageTransforms, LoaderConfig,
    LoaderPosition, SentencePieceBpeTokenizer, Split,
};

const CROP: u32 = 32;

fn dataset_at(root: &std::path::Path, split: Split) -> CaptioningDataset {
    let coco = CocoCaptions::load(root, split, &CocoOptions::default()).unwrap();
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let transforms = ImageTransforms::pretrain_train(CROP, FlipCaption::WholeWord).unwrap();
    CaptioningDataset::new(coco, tokenizer, transforms).unwrap()
}

fn loader(workers: usize, batch: usize, drop_last: bool) -> DataLoader {
    let config = LoaderConfig {
        batch_size: batch,
        num_workers: workers,
        prefetch_batches: 2,
        seed: 7,
        shuffle: true,
        drop_last,
        skip_bad_images: false,
        part: None,
    };
    DataLoader::new(dataset_at(&sample_data_root(), Split::Train), config).unwrap()
}

fn take(loader: &DataLoader, start: LoaderPosition, n: usize) -> Vec<CollatedBatch> {
    loader
        .iter_from(start)
        .take(n)
        .map(|b| b.unwrap())
        .collect()
}

#[test]
fn results_do_not_depend_on_the_worker_count() {
    let reference = take(&loader(0, 3, true), LoaderPosition::default(), 7);
    for workers in [1, 3] {
        assert_eq!(
            take(&loader(workers, 3, true), LoaderPosition::default(), 7),
            reference,
            "{workers} workers"
        );
    }
    // 10 images, batch 3, drop_last: 3 batches per epoch, so 7 batches span 3 epochs.
    let l = loader(2, 3, true);
    assert_eq!(l.batches_per_epoch(), 3);
    let mut it = l.iter_from(LoaderPosition::default());
    for _ in 0..7 {
        it.next().unwrap().unwrap();
    }
    assert_eq!(it.position(), LoaderPosition { epoch: 2, batch: 1 });
}

#[test]
fn each_epoch_is_a_new_permutation() {
    let l = loader(0, 5, false);
    let (e0, e1) = (l.epoch_order(0), l.epoch_order(1));
    assert_ne!(e0, e1);
    let mut sorted = (*e0).clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    // An epoch visits every image once.
    let ids: Vec<_> = l.iter_epoch(0).flat_map(|b| b.unwrap().image_ids).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (10, 10));
    // Different seeds shuffle differently.
    let other = DataLoader::new(
        dataset_at(&sample_data_root(), Split::Train),
        LoaderConfig {
            seed: 8,
            ..l.config().clone()
        },
    )
    .unwrap();
    assert_ne!(other.epoch_order(0), e0);
}

#[test]
fn resume_continues_exactly() {
    let l = loader(2, 4, true);
    let straight = take(&l, LoaderPosition::default(), 6);
    let mut first = l.iter_from(LoaderPosition::default());
    for _ in 0..4 {
        first.next().unwrap().unwrap();
    }
    let saved = first.position();
    drop(first);
    let json = serde_json::to_string(&saved).unwrap();
    let restored: LoaderPosition = serde_json::from_str(&json).unwrap();
    let resumed = take(&loader(3, 4, true), restored, 2);
    assert_eq!(&resumed[..], &straight[4..6]);
    assert_eq!(LoaderPosition::from_step(4, l.batches_per_epoch()), saved);
}

#[test]
fn batches_have_the_upstream_layout() {
    let l = loader(1, 4, false);
    let host = l.load_batch(LoaderPosition { epoch: 0, batch: 2 }).unwrap();
    // 10 images with batch 4 and no drop_last: the last batch has 2.
    assert_eq!(host.batch_size(), 2);
    let t = host.max_length;
    for i in 0..host.batch_size() {
        let len = host.caption_lengths[i] as usize;
        let row = &host.caption_tokens[i * t..(i + 1) * t];
        let rev = &host.noitpac_tokens[i * t..(i + 1) * t];
        assert_eq!(row[0], 1);
        assert_eq!(row[len - 1], 2);
        assert!(row[len..].iter().all(|&x| x == 0) && rev[len..].iter().all(|&x| x == 0));
        let reversed: Vec<i64> = row[..len].iter().rev().copied().collect();
        assert_eq!(&rev[..len], &reversed[..]);
        let text = l
            .dataset()
            .tokenizer()
            .decode(&row[..len].iter().map(|&x| x as u32).collect::<Vec<_>>());
        assert_eq!(text.unwrap(), host.captions[i]);
    }
    assert_eq!(*host.caption_lengths.iter().max().unwrap() as usize, t);
    let batch = host.to_device::<Flex>(&Default::default());
    assert_eq!(batch.images.dims(), [2, 3, CROP as usize, CROP as usize]);
    assert_eq!(batch.caption_tokens.dims(), [2, t]);
    assert_eq!(batch.noitpac_tokens.dims(), [2, t]);
    assert_eq!(batch.caption_lengths.dims(), [2]);
    let lengths: Vec<i64> = batch
        .caption_lengths
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    assert_eq!(lengths, host.caption_lengths);
    let _: burn::tensor::Tensor<Flex, 2, Int> = batch.caption_tokens;
    assert_eq!(batch.image_ids, host.image_ids);
}

#[test]
fn first_caption_choice_and_val_transforms_are_deterministic() {
    let coco = CocoCaptions::load(sample_data_root(), Split::Val, &CocoOptions::default()).unwrap();
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let dataset = CaptioningDataset::new(
        coco,
        tokenizer,
        ImageTransforms::pretrain_val(CROP).unwrap(),
    )
    .unwrap()
    .with_caption_choice(CaptionChoice::First);
    let config = LoaderConfig {
        batch_size: 3,
        num_workers: 0,
        shuffle: false,
        drop_last: false,
        ..Default::default()
    };
    let l = DataLoader::new(dataset, config).unwrap();
    let e0: Vec<CollatedBatch> = l.iter_epoch(0).map(|b| b.unwrap()).collect();
    let e5: Vec<CollatedBatch> = l.iter_epoch(5).map(|b| b.unwrap()).collect();
    assert_eq!(e0, e5);
    assert_eq!(
        e0[0].captions[0],
        "a blurry photo of a clock on a white wall."
    );
}

#[test]
fn bad_images_fail_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["annotations", "train2017"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(sample_data_root().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    let bad = dir.path().join("train2017/000000000003.jpg");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let config = LoaderConfig {
        batch_size: 10,
        num_workers: 2,
        drop_last: false,
        ..Default::default()
    };
    let strict = DataLoader::new(dataset_at(dir.path(), Split::Train), config.clone()).unwrap();
    match strict.iter_epoch(0).next().unwrap() {
        Err(DataError::TruncatedImage { path, .. }) => assert_eq!(path, bad),
        other => panic!("{other:?}"),
    }
    let lenient = DataLoader::new(
        dataset_at(dir.path(), Split::Train),
        LoaderConfig {
            skip_bad_images: true,
            ..config
        },
    )
    .unwrap();
    let batch = lenient.iter_epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.batch_size(), 9);
    assert_eq!(batch.skipped.len(), 1);
    assert_eq!(batch.skipped[0].path, bad);
    assert_eq!(lenient.skipped_images(), 1);
}

#[test]
fn config_is_validated() {
    let d = || dataset_at(&sample_data_root(), Split::Train);
    assert!(DataLoader::new(
        d(),
        LoaderConfig {
            batch_size: 0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(DataLoader::new(
        d(),
        LoaderConfig {
            prefetch_batches: 0,
            ..Default::default()
        }
    )
    .is_err());
    // 256 > 10 images with drop_last would never yield a batch.
    let err = DataLoader::new(d(), LoaderConfig::default()).unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
    let l = loader(0, 4, true);
    assert!(l.load_batch(LoaderPosition { epoch: 0, batch: 2 }).is_err());
}

/// Ids, pixels, lengths, captions and unpadded tokens of some rows of a batch.
type Rows = (Vec<String>, Vec<f32>, Vec<i64>, Vec<String>, Vec<Vec<i64>>);

/// The rows `rows` of `batch`: ids, pixels, lengths, captions and tokens up to each caption's
/// length (a part is padded to its own longest caption, the whole batch to its longest).
fn rows_of(batch: &CollatedBatch, rows: std::ops::Range<usize>) -> Rows {
    let pixels = 3 * batch.image_size.0 * batch.image_size.1;
    let t = batch.max_length;
    (
        rows.clone()
            .map(|row| format!("{:?}", batch.image_ids[row]))
            .collect(),
        batch.images[rows.start * pixels..rows.end * pixels].to_vec(),
        batch.caption_lengths[rows.clone()].to_vec(),
        batch.captions[rows.clone()].to_vec(),
        rows.map(|row| {
            let len = batch.caption_lengths[row] as usize;
            batch.caption_tokens[row * t..row * t + len].to_vec()
        })
        .collect(),
    )
}

/// A loader with a part decodes exactly those rows of every batch the whole loader makes (same
/// samples, same augmentation), for every way a node's devices can sit in the world.
#[test]
fn a_part_of_each_batch_is_those_rows_of_the_whole_batch() {
    let whole = take(&loader(2, 5, true), LoaderPosition::default(), 4);
    for (first, count, parts) in [(0, 1, 2), (1, 1, 2), (0, 2, 3), (2, 1, 3), (1, 3, 4)] {
        let part = BatchPart {
            first,
            count,
            parts,
        };
        let config = LoaderConfig {
            part: Some(part),
            ..loader(2, 5, true).config().clone()
        };
        let partial =
            DataLoader::new(dataset_at(&sample_data_root(), Split::Train), config).unwrap();
        let got = take(&partial, LoaderPosition::default(), 4);
        for (whole, got) in whole.iter().zip(&got) {
            let rows = part.rows(whole.batch_size());
            assert_eq!(got.batch_size(), rows.len(), "{part:?}");
            assert_eq!(
                rows_of(got, 0..rows.len()),
                rows_of(whole, rows),
                "{part:?}"
            );
        }
    }
    // The parts of a world cover every row once, larger parts first (as a data-parallel split).
    let rows: Vec<_> = (0..3)
        .map(|first| {
            BatchPart {
                first,
                count: 1,
                parts: 3,
            }
            .rows(8)
        })
        .collect();
    assert_eq!(rows, [0..3, 3..6, 6..8]);
    assert_eq!(
        BatchPart {
            first: 1,
            count: 2,
            parts: 3
        }
        .rows(8),
        3..8
    );
    // Pieces that do not exist, or a batch too small to cut, are refused.
    for part in [
        BatchPart {
            first: 2,
            count: 2,
            parts: 3,
        },
        BatchPart {
            first: 0,
            count: 0,
            parts: 3,
        },
        BatchPart {
            first: 0,
            count: 1,
            parts: 6,
        },
    ] {
        let config = LoaderConfig {
            part: Some(part),
            ..loader(0, 5, true).config().clone()
        };
        let err =
            DataLoader::new(dataset_at(&sample_data_root(), Split::Train), config).unwrap_err();
        assert!(err.to_string().contains("LoaderConfig.part"), "{err}");
    }
}
