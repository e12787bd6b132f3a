//! COCO instances files: category remapping as upstream (ids 1..90 with gaps → labels 1..80,
//! 0 = background), distinct sorted labels per image, and the embedded sample's files.

use virtex_data::{sample_data_root, CocoInstances, DataError, ImageId};

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
