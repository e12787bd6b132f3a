//! `virtex caption` on a tiny official-layout checkpoint and real photographs.

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn captions_real_images_from_an_official_layout_checkpoint() {
    let directory = tempfile::tempdir().unwrap();
    let root = workspace();
    let checkpoint = root.join("crates/virtex/tests/fixtures/bicaptioning_tiny.pth");
    // The tiny checkpoint predicts over 50 ids: a tokenizer of that size from the sample
    // captions (the 400-piece sample vocabulary is refused, see `careless_inputs.rs`).
    let vocab = directory.path().join("vocab_50.json");
    let trained = Command::new(env!("CARGO_BIN_EXE_virtex"))
        .arg("train-tokenizer")
        .arg("--captions")
        .arg(root.join("crates/virtex-data/sample/annotations/captions_train2017.json"))
        .args(["--vocab-size", "50", "--out"])
        .arg(&vocab)
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let images = root.join("crates/virtex-data/sample/val2017");
    for (mode, extra) in [
        (
            "beam",
            vec!["--beam-size", "3", "--decoder-compat", "upstream"],
        ),
        ("greedy", vec!["--greedy"]),
        ("nucleus", vec!["--nucleus", "0.9", "--seed", "7"]),
    ] {
        let out = directory.path().join(format!("{mode}.json"));
        let output = Command::new(env!("CARGO_BIN_EXE_virtex"))
            .args([
                "caption",
                "--short-side",
                "64",
                "--crop",
                "64",
                "--attention-heads",
                "2",
            ])
            .arg("--checkpoint")
            .arg(&checkpoint)
            .arg("--vocab")
            .arg(&vocab)
            .arg("--images")
            .arg(&images)
            .args(&extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let results = results.as_array().unwrap();
        // Sorted file order, numeric ids from the all-digit stems.
        let ids: Vec<u64> = results
            .iter()
            .map(|r| r["image_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![11, 12, 13], "{mode}");
        assert!(results.iter().all(|r| r["caption"].is_string()), "{mode}");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_virtex"))
        .arg("caption")
        .arg("--checkpoint")
        .arg(root.join("crates/virtex-data/sample/val2017/000000000011.jpg"))
        .arg("--vocab")
        .arg(&vocab)
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(directory.path().join("bad.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("000000000011.jpg"));
}
