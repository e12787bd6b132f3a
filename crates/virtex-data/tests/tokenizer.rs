//! Tokenizer parity against the `sentencepiece` library (fixtures from
//! `tools/reference/tokenizer.py`), vocabulary round trips and training.

use std::path::PathBuf;

use serde_json::Value;
use virtex_data::{
    normalize_caption, sample_data_root, sample_vocab_path, CocoCaptions, CocoOptions, DataError,
    PieceKind, SentencePieceBpeTokenizer, Split, TrainerConfig, MAX_CAPTION_LENGTH,
};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("tests/fixtures/spm_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Checks every fixture case of one model against `tokenizer`; returns the number of checks.
fn check_model(model: &Value, tokenizer: &SentencePieceBpeTokenizer) -> usize {
    let mut checked = 0;
    let pieces = model["pieces"].as_array().unwrap();
    assert_eq!(tokenizer.vocab_size(), pieces.len());
    for (id, p) in pieces.iter().enumerate() {
        let ours = &tokenizer.pieces()[id];
        assert_eq!(ours.piece, p["piece"].as_str().unwrap(), "piece {id}");
        assert_eq!(
            ours.score,
            p["score"].as_f64().unwrap() as f32,
            "score of piece {id}"
        );
        assert_eq!(
            ours.kind == PieceKind::Control,
            p["control"].as_bool().unwrap(),
            "piece {id}"
        );
        assert_eq!(
            ours.kind == PieceKind::Unknown,
            p["unknown"].as_bool().unwrap(),
            "piece {id}"
        );
    }
    for case in model["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text), ids(&case["ids"]), "ids of {text:?}");
        assert_eq!(
            tokenizer.encode_as_pieces(text),
            strings(&case["pieces"]),
            "pieces of {text:?}"
        );
        assert_eq!(
            tokenizer.decode(&ids(&case["ids"])).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode(encode({text:?}))"
        );
        checked += 3;
    }
    for case in model["decode"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        assert_eq!(
            tokenizer.decode(&input).unwrap(),
            case["text"].as_str().unwrap(),
            "decode {input:?}"
        );
        checked += 1;
    }
    for case in model["captions"].as_array().unwrap() {
        let caption = case["caption"].as_str().unwrap();
        let normalised = normalize_caption(caption);
        assert_eq!(
            normalised,
            case["normalised"].as_str().unwrap(),
            "normalise {caption:?}"
        );
        let tokens = tokenizer.encode_caption(&normalised, MAX_CAPTION_LENGTH);
        assert_eq!(
            tokens.caption_tokens,
            ids(&case["caption_tokens"]),
            "caption {caption:?}"
        );
        assert_eq!(
            tokens.noitpac_tokens,
            ids(&case["noitpac_tokens"]),
            "noitpac {caption:?}"
        );
        checked += 3;
    }
    checked
}

#[test]
fn official_models_match_sentencepiece() {
    let cases = cases();
    let models = cases["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let mut total = 0;
    for model in models {
        let path = crate_dir().join(model["model"].as_str().unwrap());
        let tokenizer = SentencePieceBpeTokenizer::from_file(&path).unwrap();
        let special = tokenizer.special_ids();
        assert_eq!(
            (special.unk, special.sos, special.eos, special.mask),
            (0, 1, 2, Some(3))
        );
        total += check_model(model, &tokenizer);
    }
    assert!(total > 300, "only {total} checks");
}

#[test]
fn sample_vocab_is_the_fixture_model() {
    let cases = cases();
    assert_eq!(
        crate_dir().join(cases["models"][1]["model"].as_str().unwrap()),
        sample_vocab_path()
    );
}

#[test]
fn json_and_model_round_trips_keep_every_id() {
    let cases = cases();
    let model = &cases["models"][0];
    let tokenizer =
        SentencePieceBpeTokenizer::from_file(crate_dir().join(model["model"].as_str().unwrap()))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("vocab.json");
    tokenizer.save(&json).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    // The built-in nmt_nfkc map is referenced by name, not copied.
    assert!(text.len() < 100_000, "{} bytes", text.len());
    let from_json = SentencePieceBpeTokenizer::from_file(&json).unwrap();
    check_model(model, &from_json);
    let proto = dir.path().join("vocab.model");
    from_json.save_sentencepiece_model(&proto).unwrap();
    check_model(
        model,
        &SentencePieceBpeTokenizer::from_file(&proto).unwrap(),
    );
}

#[test]
fn training_gives_upstream_special_ids_and_is_deterministic() {
    let coco =
        CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default()).unwrap();
    let captions: Vec<&str> = coco.captions().collect();
    let config = TrainerConfig {
        vocab_size: 300,
        ..TrainerConfig::default()
    };
    let a = SentencePieceBpeTokenizer::train(&captions, &config).unwrap();
    let b = SentencePieceBpeTokenizer::train(&captions, &config).unwrap();
    assert_eq!(a.pieces(), b.pieces());
    assert_eq!(a.vocab_size(), 300);
    let names: Vec<&str> = (0..4).map(|i| a.id_to_piece(i).unwrap()).collect();
    assert_eq!(names, ["<unk>", "[SOS]", "[EOS]", "[MASK]"]);
    let special = a.special_ids();
    assert_eq!(
        (special.unk, special.sos, special.eos, special.mask),
        (0, 1, 2, Some(3))
    );
    // Every training caption survives encode → decode, and merges actually happened.
    let mut tokens = 0;
    for caption in &captions {
        let ids = a.encode(caption);
        assert!(!ids.contains(&0), "{caption:?} has an unknown piece");
        assert_eq!(a.decode(&ids).unwrap(), *caption);
        tokens += ids.len();
    }
    let chars: usize = captions.iter().map(|c| c.chars().count()).sum();
    assert!(tokens * 2 < chars, "{tokens} tokens for {chars} characters");
    // Save and load back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.json");
    a.save(&path).unwrap();
    let c = SentencePieceBpeTokenizer::from_file(&path).unwrap();
    assert_eq!(c.pieces(), a.pieces());
    for caption in &captions {
        assert_eq!(c.encode(caption), a.encode(caption));
    }
}

#[test]
fn caption_truncation_cuts_eos() {
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    let long = "a cat ".repeat(40);
    let t = tokenizer.encode_caption(&long, MAX_CAPTION_LENGTH);
    assert_eq!(t.caption_tokens.len(), MAX_CAPTION_LENGTH);
    assert_eq!(t.caption_tokens[0], 1);
    assert_ne!(
        *t.caption_tokens.last().unwrap(),
        2,
        "a truncated caption loses its [EOS]"
    );
    assert_eq!(t.noitpac_tokens[MAX_CAPTION_LENGTH - 1], 1);
    let short = tokenizer.encode_caption("a cat", MAX_CAPTION_LENGTH);
    assert_eq!(short.caption_tokens.first(), Some(&1));
    assert_eq!(short.caption_tokens.last(), Some(&2));
    assert_eq!(short.noitpac_tokens.first(), Some(&2));
    let empty = tokenizer.encode_caption("", MAX_CAPTION_LENGTH);
    assert_eq!(empty.caption_tokens, vec![1, 2]);
}

#[test]
fn bad_model_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.model");
    std::fs::write(&garbage, [0x0a, 0xff, 0xff, 0x01]).unwrap();
    match SentencePieceBpeTokenizer::from_file(&garbage) {
        Err(DataError::InvalidModel { path, .. }) => assert_eq!(path, garbage),
        other => panic!("{other:?}"),
    }
    let bad_json = dir.path().join("vocab.json");
    std::fs::write(
        &bad_json,
        "{\n  \"format\": \"virtex-sentencepiece-bpe\",\n  \"version\": 1,\n  oops\n}",
    )
    .unwrap();
    match SentencePieceBpeTokenizer::from_file(&bad_json) {
        Err(DataError::Json {
            path, line, column, ..
        }) => {
            assert_eq!(path, bad_json);
            assert_eq!((line, column), (4, 3));
        }
        other => panic!("{other:?}"),
    }
    match SentencePieceBpeTokenizer::from_file(dir.path().join("absent.model")) {
        Err(DataError::Io { .. }) => {}
        other => panic!("{other:?}"),
    }
    let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
    assert!(matches!(
        tokenizer.decode(&[5, 100_000]),
        Err(DataError::UnknownTokenId { id: 100_000, .. })
    ));
}
