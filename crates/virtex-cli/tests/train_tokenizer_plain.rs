//! `virtex train-tokenizer` on plain captions files (JSON lines, TSV): the same vocabulary as
//! from the COCO file holding the same captions, and line errors passed through.

use std::path::Path;

use clap::Parser;
use virtex_cli::{Cli, CliError, Command};
use virtex_data::{sample_data_root, CaptionLineProblem, DataError};

fn train_tokenizer(args: &[&str]) -> Result<String, CliError> {
    let argv = ["virtex", "train-tokenizer"]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut log = Vec::new();
    match cli.command {
        Command::TrainTokenizer(a) => a.run_to(&mut log)?,
        other => panic!("not train-tokenizer: {other:?}"),
    }
    Ok(String::from_utf8(log).unwrap())
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The sample's raw training captions, in annotation order.
fn sample_captions() -> Vec<String> {
    let file = sample_data_root().join("annotations/captions_train2017.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    json["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ann| ann["caption"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn jsonl_and_tsv_train_the_same_vocabulary_as_coco() {
    let dir = tempfile::tempdir().unwrap();
    let captions = sample_captions();
    // Images are not read: the paths need not exist.
    let jsonl = dir.path().join("train.jsonl");
    let lines: String = captions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{}\n",
                serde_json::json!({"image": format!("{}.jpg", i / 5), "caption": c})
            )
        })
        .collect();
    std::fs::write(&jsonl, lines).unwrap();
    // TSV under a name whose extension says nothing: `--format tsv`.
    let tsv = dir.path().join("captions.txt");
    let lines: String = captions
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}.jpg\t{c}\r\n", i / 5))
        .collect();
    std::fs::write(&tsv, format!("image\tcaption\r\n{lines}")).unwrap();

    let coco_vocab = dir.path().join("coco.json");
    let jsonl_vocab = dir.path().join("jsonl.json");
    let tsv_vocab = dir.path().join("tsv.json");
    let coco = sample_data_root().join("annotations/captions_train2017.json");
    train_tokenizer(&[
        "--captions",
        arg(&coco),
        "--vocab-size",
        "250",
        "--out",
        arg(&coco_vocab),
    ])
    .unwrap();
    let log = train_tokenizer(&[
        "--captions",
        arg(&jsonl),
        "--vocab-size",
        "250",
        "--out",
        arg(&jsonl_vocab),
    ])
    .unwrap();
    assert!(log.contains("250 pieces on 50 captions"), "{log}");
    train_tokenizer(&[
        "--captions",
        arg(&tsv),
        "--format",
        "tsv",
        "--vocab-size",
        "250",
        "--out",
        arg(&tsv_vocab),
    ])
    .unwrap();
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(
        read(&coco_vocab) == read(&jsonl_vocab),
        "JSON lines vocabulary differs"
    );
    assert!(
        read(&coco_vocab) == read(&tsv_vocab),
        "TSV vocabulary differs"
    );

    // Without --format the .txt file is read as COCO JSON, and fails as such.
    assert!(matches!(
        train_tokenizer(&[
            "--captions",
            arg(&tsv),
            "--out",
            arg(&dir.path().join("x.json"))
        ]),
        Err(CliError::Data(DataError::Json { .. }))
    ));
}

#[test]
fn a_bad_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("train.jsonl");
    std::fs::write(
        &jsonl,
        "{\"image\": \"a.jpg\", \"caption\": \"a dog\"}\n{\"image\": \"b.jpg\"}\n",
    )
    .unwrap();
    let out = dir.path().join("vocab.json");
    match train_tokenizer(&["--captions", arg(&jsonl), "--out", arg(&out)]) {
        Err(CliError::Data(DataError::CaptionLine {
            line: 2,
            problem: CaptionLineProblem::MissingField { field: "caption" },
            ..
        })) => {}
        other => panic!("expected a line-2 missing-caption error, got {other:?}"),
    }
    assert!(!out.exists());
}
