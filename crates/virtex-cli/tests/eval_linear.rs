//! `virtex eval-linear` end to end: an ImageNet-layout set (class folders for training, a flat
//! validation directory labelled by a Kaggle-style `LOC_val_solution.csv`), the probe in quick
//! and full mode, and a run split by `--stop-after` then `--resume`d.

use std::path::Path;
use std::process::Command;

use burn::backend::Flex;
use image::{Rgb, RgbImage};
use virtex_backbone::ResNetConfig;

fn virtex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtex"))
}

/// `train/n01/*.png` (reddish), `train/n02/*.png` (bluish) with a little texture each, and a
/// flat `val/` of both labelled by `LOC_val_solution.csv`.
fn imagenet_layout(root: &Path) {
    let image = |seed: u32, red: bool| {
        RgbImage::from_fn(40, 40, |x, y| {
            let noise = ((x * 7 + y * 13 + seed * 31) % 50) as u8;
            if red {
                Rgb([200 + noise, 30 + noise, 30])
            } else {
                Rgb([30, 30 + noise, 200 + noise])
            }
        })
    };
    let mut solution = String::from("ImageId,PredictionString\n");
    for (wnid, red) in [("n01", true), ("n02", false)] {
        let directory = root.join("train").join(wnid);
        std::fs::create_dir_all(&directory).unwrap();
        for seed in 0..6 {
            image(seed, red)
                .save(directory.join(format!("{wnid}_{seed}.png")))
                .unwrap();
        }
        std::fs::create_dir_all(root.join("val")).unwrap();
        for seed in 10..13 {
            let name = format!("val_{wnid}_{seed}");
            image(seed, red)
                .save(root.join("val").join(format!("{name}.png")))
                .unwrap();
            solution.push_str(&format!("{name},{wnid} 1 2 3 4\n"));
        }
    }
    std::fs::write(root.join("LOC_val_solution.csv"), solution).unwrap();
}

fn probe(root: &Path, weights: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    virtex()
        .args(["eval-linear", "--arch", "resnet18", "--dataset", "imagenet"])
        .arg("--weights")
        .arg(weights)
        .arg("--train")
        .arg(root.join("train"))
        .arg("--val")
        .arg(root.join("val"))
        .arg("--run-dir")
        .arg(run_dir)
        .args([
            "--iterations",
            "12",
            "--batch-size",
            "4",
            "--checkpoint-every",
            "6",
        ])
        .args(["--sizes", "32", "40"])
        .args(extra)
        .output()
        .unwrap()
}

fn result(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap()
}

#[test]
fn a_probe_from_the_command_line_resumes_exactly() {
    let directory = tempfile::tempdir().unwrap();
    imagenet_layout(directory.path());
    let weights = directory.path().join("resnet18.safetensors");
    // One fixed random backbone, so the accuracy asserted below is reproducible.
    <Flex as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
    ResNetConfig::resnet18()
        .init::<Flex>(&Default::default())
        .save_torchvision_safetensors(&weights)
        .unwrap();

    let quick = result(&probe(
        directory.path(),
        &weights,
        &directory.path().join("quick"),
        &["--quick"],
    ));
    assert_eq!(quick["classes"], 2);
    assert_eq!(quick["val_images"], 6);
    assert!(quick["top1"].as_f64().unwrap() > 90.0, "{quick}");
    assert_eq!(quick["quick"], true);

    let whole = result(&probe(
        directory.path(),
        &weights,
        &directory.path().join("whole"),
        &[],
    ));
    let split = directory.path().join("split");
    let first = probe(directory.path(), &weights, &split, &["--stop-after", "6"]);
    assert_eq!(result(&first)["iteration"], 6);
    let resumed = result(&probe(directory.path(), &weights, &split, &["--resume"]));
    assert_eq!(whole["iteration"], 12);
    assert_eq!(
        (whole["top1"].clone(), whole["top5"].clone()),
        (resumed["top1"].clone(), resumed["top5"].clone())
    );
    let losses = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record["kind"] == "train")
            .map(|record| record["loss"].as_f64().unwrap())
            .collect()
    };
    // Logged every 20 iterations and at the end of each invocation: both have iteration 12.
    assert_eq!(
        losses(&directory.path().join("whole")).last(),
        losses(&split).last()
    );

    // A flat validation image without a label is named.
    RgbImage::new(8, 8)
        .save(directory.path().join("val").join("unlabelled.png"))
        .unwrap();
    let output = probe(
        directory.path(),
        &weights,
        &directory.path().join("bad"),
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unlabelled.png") && stderr.contains("no label"),
        "{stderr}"
    );
}
