//! `virtex features` end to end: real image files, a real checkpoint file, the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use virtex_backbone::{l2_normalize, ResNetConfig};

type B = burn::backend::Flex;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn virtex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtex"))
}

/// Three 64×64 images of different colour types (all must become RGB8).
fn write_images(directory: &Path) -> Vec<(PathBuf, image::RgbImage)> {
    let rgb = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(64, 64, |x, y| {
        image::Luma([((x * 64 + y) * 16) as u16])
    });
    let rgba = image::RgbaImage::from_fn(64, 64, |x, y| {
        image::Rgba([255 - (x * 3) as u8, (y * 2) as u8, 100, 128])
    });
    let paths = [
        directory.join("c_rgba.png"),
        directory.join("a_rgb.jpg"),
        directory.join("b_grey16.png"),
    ];
    rgba.save(&paths[0]).unwrap();
    rgb.save(&paths[1]).unwrap();
    grey16.save(&paths[2]).unwrap();
    let mut decoded: Vec<(PathBuf, image::RgbImage)> = paths
        .iter()
        .map(|p| (p.clone(), image::open(p).unwrap().to_rgb8()))
        .collect();
    decoded.sort_by(|a, b| a.0.cmp(&b.0));
    decoded
}

fn normalised(images: &[(PathBuf, image::RgbImage)]) -> Tensor<B, 4> {
    let mut values = Vec::new();
    for (_, image) in images {
        for channel in 0..3 {
            for pixel in image.pixels() {
                values.push((pixel[channel] as f32 / 255.0 - MEAN[channel]) / STD[channel]);
            }
        }
    }
    Tensor::from_data(
        TensorData::new(values, [images.len(), 3, 64, 64]),
        &Default::default(),
    )
}

fn read_features(path: &Path) -> (Vec<usize>, Vec<f32>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files: Vec<String> =
        serde_json::from_str(&metadata.metadata().as_ref().unwrap()["files"]).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor("features").unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values, files)
}

#[test]
fn features_match_the_library_for_every_colour_type() {
    let directory = tempfile::tempdir().unwrap();
    let image_dir = directory.path().join("images");
    std::fs::create_dir(&image_dir).unwrap();
    let images = write_images(&image_dir);
    std::fs::write(image_dir.join("notes.txt"), "not an image").unwrap();

    let config = ResNetConfig::resnet18().with_zero_init_residual(false);
    let model = config.init::<B>(&Default::default());
    let weights = directory.path().join("resnet18.safetensors");
    model.save_torchvision_safetensors(&weights).unwrap();

    let out = directory.path().join("features.safetensors");
    let status = virtex()
        .args([
            "features",
            "--arch",
            "resnet18",
            "--short-side",
            "64",
            "--crop",
            "64",
        ])
        .args(["--batch-size", "2", "--l2-normalize", "--weights"])
        .arg(&weights)
        .arg("--images")
        .arg(&image_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let (shape, values, files) = read_features(&out);
    assert_eq!(shape, vec![3, 512]);
    let expected_files: Vec<String> = images
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(files, expected_files);

    let expected = l2_normalize(model.forward_pooled(normalised(&images)))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let max_diff = values
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff < 1e-5, "max |Δ| = {max_diff}");

    // The grid output keeps the spatial layout.
    let grid_out = directory.path().join("grid.safetensors");
    let status = virtex()
        .args([
            "features",
            "--arch",
            "resnet18",
            "--short-side",
            "64",
            "--crop",
            "64",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--images")
        .arg(&images[0].0)
        .arg("--out")
        .arg(&grid_out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(read_features(&grid_out).0, vec![1, 512, 2, 2]);
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let model = ResNetConfig::resnet18().init::<B>(&Default::default());
    let weights = directory.path().join("resnet18.safetensors");
    model.save_torchvision_safetensors(&weights).unwrap();
    let corrupt = directory.path().join("broken.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();
    let out = directory.path().join("out.safetensors");

    let run = |weights: &Path, images: &Path, extra: &[&str]| {
        let arch = if extra.contains(&"--arch") {
            &[][..]
        } else {
            &["--arch", "resnet18"][..]
        };
        let output = virtex()
            .args(["features", "--short-side", "64", "--crop", "64"])
            .args(arch)
            .args(extra)
            .arg("--weights")
            .arg(weights)
            .arg("--images")
            .arg(images)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };

    let stderr = run(&weights, &corrupt, &[]);
    assert!(stderr.contains("broken.jpg"), "{stderr}");

    let stderr = run(&directory.path().join("missing.pth"), &corrupt, &[]);
    assert!(stderr.contains("missing.pth"), "{stderr}");

    let stderr = run(&corrupt, &corrupt, &["--weights-format", "pytorch"]);
    assert!(stderr.contains("broken.jpg"), "{stderr}");

    let stderr = run(&weights, &corrupt, &["--arch", "resnet50"]);
    assert!(stderr.contains("resnet18.safetensors"), "{stderr}");

    let stderr = run(&weights, &corrupt, &["--device", "cuda"]);
    assert!(
        stderr.contains("CUDA") || stderr.contains("cuda"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// Every command reads images with virtex-data's loader, so `features` refuses a truncated JPEG
/// as training and `caption` do (before, it decoded the missing rows as grey), naming the file,
/// and writes nothing.
#[test]
fn a_truncated_jpeg_is_refused_naming_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let model = ResNetConfig::resnet18().init::<B>(&Default::default());
    let weights = directory.path().join("resnet18.safetensors");
    model.save_torchvision_safetensors(&weights).unwrap();
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../virtex-data/sample/train2017/000000000001.jpg");
    let bytes = std::fs::read(&sample).unwrap();
    let images = directory.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(&sample, images.join("a_whole.jpg")).unwrap();
    let truncated = images.join("b_truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = directory.path().join("features.safetensors");

    let err = virtex_cli::FeaturesArgs {
        weights: weights.clone(),
        weights_format: None,
        images: vec![images.clone()],
        arch: "resnet18".into(),
        short_side: 64,
        crop: 64,
        pooled: true,
        l2_normalize: false,
        batch_size: 2,
        device: virtex_device::DeviceSpec::Cpu,
        max_image_pixels: None,
        out: out.clone(),
    }
    .run()
    .unwrap_err();
    assert!(
        matches!(
            &err,
            virtex_cli::CliError::Data(virtex_data::DataError::TruncatedImage { path, .. })
                if *path == truncated
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("b_truncated.jpg"), "{err}");
    assert!(!out.exists());

    // The binary reports it and exits non-zero.
    let output = virtex()
        .args([
            "features",
            "--arch",
            "resnet18",
            "--short-side",
            "64",
            "--crop",
            "64",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("b_truncated.jpg") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn help_describes_every_command_as_available() {
    let output = virtex().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(!help.contains("later"), "{help}");
    for command in [
        "features",
        "caption",
        "train-tokenizer",
        "tokenize",
        "eval-voc07",
        "eval-captions",
    ] {
        assert!(help.contains(command), "{command}: {help}");
    }
}
