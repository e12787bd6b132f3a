//! Careless and hostile datasets: annotation `file_name`s that leave the image directory are
//! refused without reading the file, and no error ever quotes a file's contents.

mod common;

use common::TempCoco;
use virtex_data::{decode_image, load_image, CocoCaptions, CocoOptions, DataError, ImageId, Split};

/// A string that must never appear in an error message.
const SECRET: &str = "TOP-SECRET-7f3a9c";

/// Writes a "private" file next to (outside) the dataset, holding [`SECRET`].
fn private_file(coco: &TempCoco) -> std::path::PathBuf {
    let path = coco.root().join("private.txt");
    std::fs::write(&path, format!("{SECRET}\nroot:x:0:0\n")).unwrap();
    path
}

fn assert_no_secret(message: &str) {
    assert!(!message.contains(SECRET), "leaks the file: {message}");
    assert!(!message.contains("root:x"), "leaks the file: {message}");
    // Nor its bytes in hex ("TOP-" = 54 4f 50 2d).
    let lower = message.to_lowercase();
    assert!(
        !lower.contains("54, 4f") && !lower.contains("0x54") && !lower.contains("544f"),
        "leaks the file's bytes: {message}"
    );
}

#[test]
fn file_names_leaving_the_image_directory_are_refused() {
    let good = common::small_jpeg();
    let coco = TempCoco::new(&[("1.jpg", good)]);
    let private = private_file(&coco);
    let absolute = private.to_str().unwrap().to_string();
    let cases = [
        ("../private.txt", "`..`"),
        ("../../../../../../etc/passwd", "`..`"),
        ("sub/../../private.txt", "`..`"),
        (absolute.as_str(), "absolute"),
        ("/etc/passwd", "absolute"),
        ("", "names no file"),
        (".", "names no file"),
    ];
    for (file_name, problem) in cases {
        coco.write_annotations(&["1.jpg", file_name]);
        for options in [
            CocoOptions::default(),
            CocoOptions {
                skip_bad_images: true,
                verify_images: true,
            },
        ] {
            let err = CocoCaptions::load(coco.root(), Split::Train, &options).unwrap_err();
            match &err {
                DataError::UnsafeImagePath {
                    annotations,
                    image_id,
                    file_name: named,
                    problem: why,
                } => {
                    assert_eq!(*annotations, coco.annotations());
                    assert_eq!(*image_id, ImageId::Int(2));
                    assert_eq!(named, file_name);
                    assert!(why.contains(problem), "{file_name:?}: {why}");
                }
                other => panic!("{file_name:?}: {other:?}"),
            }
            assert!(!err.is_bad_image(), "skip_bad_images must not hide it");
            let message = err.to_string();
            assert!(message.contains("captions_train2017.json"), "{message}");
            assert!(message.contains("image 2"), "{message}");
            assert_no_secret(&message);
        }
    }
}

#[test]
fn file_names_with_control_characters_are_quoted_in_errors() {
    let coco = TempCoco::new(&[("1.jpg", common::small_jpeg())]);
    coco.write_annotations(&["1.jpg", "../\u{1b}[31mred"]);
    let message = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(!message.contains('\u{1b}'), "raw escape in: {message}");
    assert!(message.contains("\\u{1b}"), "{message}");
}

#[test]
fn relative_names_and_symlinks_inside_the_dataset_stay_allowed() {
    let good = common::small_jpeg();
    let coco = TempCoco::new(&[("1.jpg", good.clone())]);
    std::fs::create_dir_all(coco.image_dir().join("sub")).unwrap();
    std::fs::write(coco.image_dir().join("sub/2.jpg"), &good).unwrap();
    let mut names = vec!["1.jpg", "./sub/2.jpg"];
    #[cfg(unix)]
    {
        // COCO setups link image directories in from elsewhere; following them is expected.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("3.jpg"), &good).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), coco.image_dir().join("linked")).unwrap();
        names.push("linked/3.jpg");
        coco.write_annotations(&names);
        let options = CocoOptions {
            skip_bad_images: false,
            verify_images: true,
        };
        let loaded = CocoCaptions::load(coco.root(), Split::Train, &options).unwrap();
        assert_eq!(loaded.len(), 3);
        assert!(loaded
            .images()
            .iter()
            .all(|im| im.path.starts_with(coco.image_dir())));
    }
    coco.write_annotations(&names[..2]);
    let loaded = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default()).unwrap();
    assert_eq!(loaded.len(), 2);
}

#[test]
fn a_directory_named_as_an_image_is_a_bad_image() {
    let coco = TempCoco::new(&[("1.jpg", common::small_jpeg())]);
    std::fs::create_dir(coco.image_dir().join("folder.jpg")).unwrap();
    coco.write_annotations(&["1.jpg", "folder.jpg"]);
    let err = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::CorruptImage { ref path, .. } if *path == coco.image("folder.jpg")),
        "{err:?}"
    );
    let skip = CocoOptions {
        skip_bad_images: true,
        verify_images: false,
    };
    let loaded = CocoCaptions::load(coco.root(), Split::Train, &skip).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.skipped()[0].path, coco.image("folder.jpg"));
    assert!(loaded.skipped()[0].reason.contains("directory"));
    let line = loaded.skipped()[0].to_string();
    assert!(
        line.starts_with("image 2 (`") && line.contains("folder.jpg") && line.contains("directory"),
        "{line}"
    );
}

#[test]
fn an_unrecognised_file_is_refused_without_quoting_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd.jpg");
    std::fs::write(&path, format!("{SECRET}\nroot:x:0:0\n")).unwrap();
    let err = load_image(&path).unwrap_err();
    match &err {
        DataError::CorruptImage { message, .. } => {
            assert_eq!(message, "not a JPEG or PNG file (unrecognised signature)");
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("passwd.jpg"), "{message}");
    assert_no_secret(&message);
    // A recognised but unsupported format is named, not dumped.
    let err = decode_image(b"GIF89a\x01\x00\x01\x00TOP-SECRET-7f3a9c", "a.gif").unwrap_err();
    assert!(err.to_string().contains("Gif"), "{err}");
    assert_no_secret(&err.to_string());
}

#[test]
fn decoder_errors_do_not_quote_the_file_either() {
    // Valid signatures followed by a secret: whatever the decoder reports, not the secret.
    let mut jpeg = vec![0xFF, 0xD8, 0xFF];
    jpeg.extend_from_slice(SECRET.as_bytes());
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(common::png_chunk(b"tEXt", SECRET.as_bytes()));
    for (name, bytes) in [("a.jpg", jpeg), ("a.png", png)] {
        let err = decode_image(&bytes, name).unwrap_err();
        assert!(err.is_bad_image(), "{name}: {err:?}");
        assert_no_secret(&err.to_string());
    }
}

#[test]
fn long_json_values_are_not_echoed_whole() {
    let coco = TempCoco::new(&[("1.jpg", common::small_jpeg())]);
    let blob = "x".repeat(100_000);
    std::fs::write(
        coco.annotations(),
        format!(r#"{{"images": [{{"id": "{blob}", "file_name": "1.jpg"}}], "annotations": []}}"#),
    )
    .unwrap();
    let err = CocoCaptions::load(coco.root(), Split::Train, &CocoOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Json { .. }), "{err:?}");
    assert!(
        err.to_string().len() < 1000,
        "{} bytes",
        err.to_string().len()
    );
}
