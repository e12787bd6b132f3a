//! COCO instances files: category remapping as upstream (ids 1..90 with gaps → labels 1..80,
//! 0 = background), distinct sorted labels per image, and the embedded sample's files.

use burn::backend::Flex;
use virtex_data::{
    sample_data_root, sample_vocab_path, CaptionSource, CaptioningDataset, CocoCaptions,
    CocoInstances, CocoOptions, DataError, DataLoader, ImageId, ImageTransforms, LoaderConfig,
    SentencePieceBpeTokenizer, Split,
};

#[test]
fn the_sample_instances_map_coco_ids_to_consecutive_labels() {
    let annotations = sample_data_root().join("annotations");
    let train = CocoInstances::load(annotations.join("instances_train2017.json")).unwrap();
    assert_eq!(train.num_classes(), 81);
    assert_eq!(train.category_names()[0], "background");
    assert_eq!(train.category_names()[1], "person");
    // COCO id 17 (cat) is the 16th category: ids 12 is absent from COCO.
    assert_eq!(train.category_names()[16], "cat");
    assert_eq!(train.category_names()[80], "toothbrush");
    assert_eq!(train.labels(&ImageId::Int(1)), &[1]);
    assert_eq!(train.labels(&ImageId::Int(3)), &[16]);
    // cup (COCO 47 → 42) and spoon (COCO 50 → 45)
    assert_eq!(train.labels(&ImageId::Int(4)), &[42, 45]);
    assert!(train.labels(&ImageId::Int(7)).is_empty());
    assert!(train.labels(&ImageId::Name("x".into())).is_empty());
    assert_eq!(train.annotated_images(), 4);
    let val = CocoInstances::load(annotations.join("instances_val2017.json")).unwrap();
    assert_eq!(val.labels(&ImageId::Int(11)), &[75]); // clock: COCO 85
}

#[test]
fn labels_are_distinct_and_sorted_and_bad_files_are_named() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("instances.json");
    std::fs::write(
        &path,
        r#"{"images": [], "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
            "annotations": [{"image_id": 5, "category_id": 90, "bbox": [0, 0, 1, 1]},
                            {"image_id": 5, "category_id": 1},
                            {"image_id": 5, "category_id": 90}]}"#,
    )
    .unwrap();
    let instances = CocoInstances::load(&path).unwrap();
    assert_eq!(instances.labels(&ImageId::Int(5)), &[1, 2]);

    std::fs::write(
        &path,
        r#"{"categories": [{"id": 1, "name": "person"}],
            "annotations": [{"image_id": 5, "category_id": 3}]}"#,
    )
    .unwrap();
    let err = CocoInstances::load(&path).unwrap_err();
    assert!(
        matches!(err, DataError::Classes { .. }) && err.to_string().contains("category 3"),
        "{err}"
    );
    std::fs::write(&path, "{\"annotations\": [").unwrap();
    assert!(matches!(
        CocoInstances::load(&path).unwrap_err(),
        DataError::Json { .. }
    ));
    assert!(matches!(
        CocoInstances::load(directory.path().join("missing.json")).unwrap_err(),
        DataError::Io { .. }
    ));
}

#[test]
fn padded_labels_pad_with_background_to_the_longest_row() {
    let annotations = sample_data_root().join("annotations");
    let train = CocoInstances::load(annotations.join("instances_train2017.json")).unwrap();
    let ids = [ImageId::Int(1), ImageId::Int(4), ImageId::Int(7)];
    let (matrix, width) = train.padded_labels(&ids);
    assert_eq!(width, 2);
    assert_eq!(matrix, vec![1, 0, 42, 45, 0, 0]);
    // A batch of unlabelled images is one column of background.
    assert_eq!(train.padded_labels(&[ImageId::Int(7)]), (vec![0], 1));
    assert!(train.is_labelled(&ImageId::Int(4)) && !train.is_labelled(&ImageId::Int(5)));
}

/// Upstream's `MultiLabelClassificationDataset` keeps only images with an object label, and its
/// `collate_fn` pads the labels with 0; the loader's batches carry them to the device.
#[test]
fn a_labelled_dataset_keeps_labelled_images_and_batches_carry_their_labels() {
    let root = sample_data_root();
    let coco = CocoCaptions::load(&root, Split::Train, &CocoOptions::default()).unwrap();
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let labels = CocoInstances::load(root.join("annotations/instances_train2017.json")).unwrap();
    let dataset = CaptioningDataset::new(
        coco,
        tokenizer,
        ImageTransforms::no_augmentation(32).unwrap(),
    )
    .unwrap()
    .with_object_labels(labels.clone())
    .unwrap();
    assert_eq!(dataset.len(), 4, "images 1 to 4 have labels");
    assert!(dataset.object_labels().is_some());
    let loader = DataLoader::new(
        dataset,
        LoaderConfig {
            batch_size: 4,
            num_workers: 0,
            shuffle: false,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let batch = loader.load_batch(Default::default()).unwrap();
    let device = Default::default();
    assert!(batch.to_device::<Flex>(&device).object_labels.is_none());
    let on_device = batch.to_device_labelled::<Flex>(
        &device,
        loader.dataset().object_labels().map(|l| l.as_ref()),
    );
    let labels_tensor = on_device.object_labels.expect("labels attached");
    assert_eq!(labels_tensor.dims(), [4, 2]);
    let values: Vec<i64> = labels_tensor.into_data().convert::<i64>().to_vec().unwrap();
    let expected: Vec<i64> = batch
        .image_ids
        .iter()
        .flat_map(|id| {
            let mut row: Vec<i64> = labels.labels(id).iter().map(|&l| i64::from(l)).collect();
            row.resize(2, 0);
            row
        })
        .collect();
    assert_eq!(values, expected);

    // A captions file none of whose images is labelled is refused, naming the instances file.
    let val = CocoCaptions::load(&root, Split::Val, &CocoOptions::default()).unwrap();
    let err = CaptionSource::from(val)
        .with_labelled_images(&labels)
        .unwrap_err();
    assert!(matches!(err, DataError::Classes { .. }), "{err}");
    assert!(
        err.to_string().contains("instances_train2017.json"),
        "{err}"
    );
}
