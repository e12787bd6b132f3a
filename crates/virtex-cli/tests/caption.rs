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

/// A 50-piece tokenizer for the tiny checkpoint, trained on the sample captions.
fn vocab_50(directory: &std::path::Path) -> PathBuf {
    let vocab = directory.join("vocab_50.json");
    let trained = Command::new(env!("CARGO_BIN_EXE_virtex"))
        .arg("train-tokenizer")
        .arg("--captions")
        .arg(workspace().join("crates/virtex-data/sample/annotations/captions_train2017.json"))
        .args(["--vocab-size", "50", "--out"])
        .arg(&vocab)
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    vocab
}

/// `virtex caption --greedy` of the sample images from `checkpoint`, with `extra` arguments.
fn caption(
    checkpoint: &std::path::Path,
    vocab: &std::path::Path,
    extra: &[&std::path::Path],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_virtex"))
        .args([
            "caption",
            "--short-side",
            "64",
            "--crop",
            "64",
            "--attention-heads",
            "2",
            "--greedy",
            "--batch-size",
            "2",
        ])
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--vocab")
        .arg(vocab)
        .arg("--images")
        .arg(workspace().join("crates/virtex-data/sample/val2017"))
        .args(extra)
        .output()
        .unwrap()
}

/// The JSON lines of a successful run's stdout.
fn json_lines(output: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn captions_to_stdout_from_files_checkpoint_and_run_directories() {
    let directory = tempfile::tempdir().unwrap();
    let vocab = vocab_50(directory.path());
    let fixture = workspace().join("crates/virtex/tests/fixtures/bicaptioning_tiny.pth");

    // Without --out: one JSON object a line on stdout, the same fields as the --out file.
    let from_file = json_lines(&caption(&fixture, &vocab, &[]));
    let ids: Vec<u64> = from_file
        .iter()
        .map(|r| r["image_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![11, 12, 13]);
    for result in &from_file {
        let object = result.as_object().unwrap();
        assert_eq!(object.len(), 2, "{result}");
        assert!(result["caption"].is_string(), "{result}");
    }
    let out = directory.path().join("captions.json");
    let output = caption(&fixture, &vocab, &["--out".as_ref(), out.as_path()]);
    assert!(json_lines(&output).is_empty(), "--out keeps stdout empty");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, serde_json::Value::Array(from_file.clone()));

    // A run directory: two checkpoints, and a newer directory without `state.json` that is
    // no checkpoint (its garbage model would fail to load).
    let run = directory.path().join("run");
    for name in ["checkpoint_00000001", "checkpoint_00000002"] {
        let checkpoint = run.join(name);
        std::fs::create_dir_all(&checkpoint).unwrap();
        std::fs::copy(&fixture, checkpoint.join("model.safetensors")).unwrap();
        std::fs::write(checkpoint.join("state.json"), b"{}").unwrap();
    }
    let partial = run.join("checkpoint_00000003");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"not a model").unwrap();

    let newest = run.join("checkpoint_00000002");
    for checkpoint in [&newest, &run] {
        let output = caption(checkpoint, &vocab, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            stderr.contains(&format!(
                "using checkpoint {}",
                newest.join("model.safetensors").display()
            )),
            "{stderr}"
        );
        assert_eq!(json_lines(&output), from_file, "{}", checkpoint.display());
    }

    // The output check sees the resolved checkpoint directory.
    let inside = newest.join("captions.json");
    let output = caption(&run, &vocab, &["--out".as_ref(), inside.as_path()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing") && stderr.contains("checkpoint_00000002"),
        "{stderr}"
    );
    assert!(!inside.exists());

    // A directory without a checkpoint: an error naming it.
    let empty = directory.path().join("empty_run");
    std::fs::create_dir(&empty).unwrap();
    let output = caption(&empty, &vocab, &[]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no checkpoint") && stderr.contains("empty_run"),
        "{stderr}"
    );
}

/// Every `src="…"` / `href="…"` target of an HTML page.
fn links(page: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = page;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("attribute closed");
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn attention_maps_and_their_gallery() {
    let directory = tempfile::tempdir().unwrap();
    let vocab = vocab_50(directory.path());
    let fixture = workspace().join("crates/virtex/tests/fixtures/bicaptioning_tiny.pth");
    let maps = directory.path().join("maps");
    let output = caption(
        &fixture,
        &vocab,
        &["--attention".as_ref(), maps.as_path(), "--html".as_ref()],
    );
    let captions = json_lines(&output);
    assert_eq!(captions.len(), 3, "captions still go to stdout");

    // One strip per image: the 64² crop and one tile per word, 6 tiles a row, each with a
    // 22-pixel band for its word.
    let page = std::fs::read_to_string(maps.join("index.html")).unwrap();
    for (index, stem) in ["000000000011", "000000000012", "000000000013"]
        .iter()
        .enumerate()
    {
        let name = format!("{index:04}_{stem}");
        let strip = image::open(maps.join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let words: Vec<_> = std::fs::read_dir(maps.join(&name))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|file| file != "crop.png")
            .collect();
        let tiles = 1 + words.len() as u32;
        assert_eq!(
            strip.dimensions(),
            (64 * tiles.min(6), (64 + 22) * tiles.div_ceil(6)),
            "{name}: {words:?}"
        );
        let caption = captions[index]["caption"].as_str().unwrap();
        assert!(page.contains(caption), "the gallery shows `{caption}`");
        assert!(page.contains(&format!("{name}/crop.png")));
    }
    // Every link resolves to a PNG that decodes.
    let targets = links(&page);
    assert!(targets.len() >= 6, "{targets:?}");
    for target in &targets {
        let file = maps.join(target);
        image::open(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    }

    // --html needs --attention; the maps directory may not lie inside an input.
    let output = caption(&fixture, &vocab, &["--html".as_ref()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--attention"));
    let inside = workspace().join("crates/virtex-data/sample/val2017/maps");
    let output = caption(
        &fixture,
        &vocab,
        &["--attention".as_ref(), inside.as_path()],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing"));
    assert!(!inside.exists());
}
