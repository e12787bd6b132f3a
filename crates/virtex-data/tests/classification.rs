//! Classification datasets: image folders (torchvision's class order), ImageNet's flat
//! validation directory with either label format, iNaturalist 2018's JSON, and the errors.

use std::path::Path;

use image::RgbImage;
use virtex_data::{ClassificationDataset, DataError};

fn write_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::new(4, 4).save(path).unwrap();
}

#[test]
fn image_folders_sort_classes_as_torchvision_does() {
    let root = tempfile::tempdir().unwrap();
    for (class, file) in [
        ("b", "2.png"),
        ("B", "1.png"),
        ("a", "3.png"),
        ("a", "1.png"),
    ] {
        write_image(&root.path().join("train").join(class).join(file));
    }
    let train = ClassificationDataset::image_folder(root.path().join("train")).unwrap();
    // Byte order: upper case first, as Python's sorted() and torchvision's ImageFolder.
    assert_eq!(train.classes, vec!["B", "a", "b"]);
    let labels: Vec<(String, u32)> = train
        .images
        .iter()
        .map(|image| {
            (
                image.path.file_name().unwrap().to_string_lossy().into(),
                image.label,
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            ("1.png".into(), 0),
            ("1.png".into(), 1),
            ("3.png".into(), 1),
            ("2.png".into(), 2)
        ]
    );

    // A validation directory with a class the training set lacks is refused, naming it.
    write_image(&root.path().join("val").join("c").join("1.png"));
    let err =
        ClassificationDataset::image_folder_with_classes(root.path().join("val"), &train.classes)
            .unwrap_err();
    assert!(
        matches!(err, DataError::Classes { .. }) && err.to_string().contains("`c`"),
        "{err}"
    );
    // An empty class directory too (it would shift every later label).
    std::fs::create_dir_all(root.path().join("empty/x")).unwrap();
    write_image(&root.path().join("empty/y/1.png"));
    assert!(ClassificationDataset::image_folder(root.path().join("empty")).is_err());
}

#[test]
fn flat_imagenet_validation_with_either_label_file() {
    let root = tempfile::tempdir().unwrap();
    let classes = vec!["n01".to_string(), "n02".to_string()];
    for name in [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000002.JPEG",
    ] {
        // PNG bytes under a .JPEG name are still an image file by extension.
        write_image(&root.path().join("val").join(name.replace("JPEG", "png")));
    }
    std::fs::write(
        root.path().join("LOC_val_solution.csv"),
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n01 1 2 3 4 n01 5 6 7 8\n\
         ILSVRC2012_val_00000001,n02 1 2 3 4\n",
    )
    .unwrap();
    let val = ClassificationDataset::imagenet_val(root.path().join("val"), None, &classes).unwrap();
    let labels: Vec<u32> = val.images.iter().map(|image| image.label).collect();
    assert_eq!(labels, vec![1, 0]);

    let text = root.path().join("labels.txt");
    std::fs::write(
        &text,
        "ILSVRC2012_val_00000001.JPEG n01\nILSVRC2012_val_00000002.JPEG n02\n",
    )
    .unwrap();
    let val = ClassificationDataset::imagenet_val(root.path().join("val"), Some(&text), &classes)
        .unwrap();
    let labels: Vec<u32> = val.images.iter().map(|image| image.label).collect();
    assert_eq!(labels, vec![0, 1]);

    std::fs::write(&text, "ILSVRC2012_val_00000001.JPEG n09\n").unwrap();
    let err = ClassificationDataset::imagenet_val(root.path().join("val"), Some(&text), &classes)
        .unwrap_err();
    assert!(matches!(err, DataError::LabelLine { line: 1, .. }), "{err}");
}

#[test]
fn inaturalist_json_maps_categories_in_id_order() {
    let root = tempfile::tempdir().unwrap();
    write_image(&root.path().join("train_val2018/Plantae/7/a.png"));
    write_image(&root.path().join("train_val2018/Aves/3/b.png"));
    let json = root.path().join("train2018.json");
    std::fs::write(
        &json,
        r#"{"images": [{"id": 10, "file_name": "train_val2018/Plantae/7/a.png"},
                      {"id": 11, "file_name": "train_val2018/Aves/3/b.png"}],
            "annotations": [{"image_id": 10, "category_id": 7}, {"image_id": 11, "category_id": 3}],
            "categories": [{"id": 7, "name": "Plantae 7"}, {"id": 3, "name": "Aves 3"}]}"#,
    )
    .unwrap();
    let train = ClassificationDataset::inaturalist(&json, None).unwrap();
    assert_eq!(train.classes, vec!["Aves 3", "Plantae 7"]);
    assert_eq!(train.images[0].label, 1);
    assert_eq!(train.images[1].label, 0);
    assert!(train.images[0]
        .path
        .ends_with("train_val2018/Plantae/7/a.png"));

    std::fs::write(
        &json,
        r#"{"images": [], "annotations": [], "categories": [}"#,
    )
    .unwrap();
    let err = ClassificationDataset::inaturalist(&json, None).unwrap_err();
    assert!(matches!(err, DataError::Json { .. }), "{err}");
}
