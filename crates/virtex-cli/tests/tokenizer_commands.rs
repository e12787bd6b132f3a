//! `virtex train-tokenizer` / `virtex tokenize` through the library's own command-line parser
//! ([`virtex_cli::Cli`]), with the output captured (`run_to`).

use clap::Parser;
use virtex_cli::{Cli, CliError, Command};
use virtex_data::{sample_data_root, sample_vocab_path, DataError, SentencePieceBpeTokenizer};

fn run(args: &[&str]) -> Result<String, CliError> {
    let cli = Cli::try_parse_from(std::iter::once("virtex").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    match cli.command {
        Command::TrainTokenizer(a) => a.run_to(&mut out)?,
        Command::Tokenize(a) => a.run_to(&mut out).map_err(CliError::from)?,
        other => panic!("not a tokenizer command: {other:?}"),
    }
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn train_then_tokenize_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    let captions = sample_data_root().join("annotations/captions_train2017.json");
    let vocab = dir.path().join("vocab.json");
    let log = run(&[
        "train-tokenizer",
        "--captions",
        captions.to_str().unwrap(),
        "--vocab-size",
        "250",
        "--out",
        vocab.to_str().unwrap(),
    ])
    .unwrap();
    assert!(log.contains("250 pieces on 50 captions"), "{log}");
    // Written atomically: the vocabulary and nothing else (no `.partial-*` left behind).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vocab.json"]);
    let v = vocab.to_str().unwrap();
    let ids: Vec<u32> =
        serde_json::from_str(&run(&["tokenize", "--vocab", v, "a cat on a table"]).unwrap())
            .unwrap();
    let tokenizer = SentencePieceBpeTokenizer::from_file(&vocab).unwrap();
    assert_eq!(ids, tokenizer.encode("a cat on a table"));
    let text = run(&[
        "tokenize",
        "--vocab",
        v,
        "--decode",
        &serde_json::to_string(&ids).unwrap(),
    ])
    .unwrap();
    assert_eq!(text.trim(), "\"a cat on a table\"");
    // Plain space-separated ids work too; --caption adds [SOS]/[EOS] after normalisation.
    let plain: Vec<String> = ids.iter().map(u32::to_string).collect();
    let mut args = vec!["tokenize", "--vocab", v, "--decode"];
    args.extend(plain.iter().map(String::as_str));
    assert_eq!(run(&args).unwrap().trim(), "\"a cat on a table\"");
    let with_specials: Vec<u32> = serde_json::from_str(
        &run(&["tokenize", "--vocab", v, "--caption", "A Cat on a TABLE"]).unwrap(),
    )
    .unwrap();
    assert_eq!(with_specials.first(), Some(&1));
    assert_eq!(with_specials.last(), Some(&2));
    assert_eq!(&with_specials[1..with_specials.len() - 1], &ids[..]);
}

#[test]
fn official_model_and_errors() {
    let model = sample_vocab_path();
    let m = model.to_str().unwrap();
    let out = run(&["tokenize", "--vocab", m, "a", "rocket"]).unwrap();
    let ids: Vec<u32> = serde_json::from_str(&out).unwrap();
    assert!(!ids.is_empty());
    assert!(matches!(
        run(&["tokenize", "--vocab", m, "--decode", "[1, 99999]"]),
        Err(CliError::Data(DataError::UnknownTokenId { .. }))
    ));
    assert!(matches!(
        run(&["tokenize", "--vocab", m, "--decode", "1 x"]),
        Err(CliError::Data(DataError::InvalidConfig { .. }))
    ));
    assert!(matches!(
        run(&["tokenize", "--vocab", "/nonexistent.model", "a"]),
        Err(CliError::Data(DataError::Io { .. }))
    ));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("captions.json");
    std::fs::write(&bad, "{\"annotations\": [").unwrap();
    let out = dir.path().join("v.json");
    assert!(matches!(
        run(&[
            "train-tokenizer",
            "--captions",
            bad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap()
        ]),
        Err(CliError::Data(DataError::Json { line: 1, .. }))
    ));
}
