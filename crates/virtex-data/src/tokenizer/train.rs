//! Vocabulary training with the `tokenizers` crate's BPE trainer.

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::{AddedToken, Trainer};

use super::normalizer::{CharsMap, Normalizer, NMT_NFKC_CHARSMAP, SPACE_SYMBOL};
use super::{
    Piece, PieceKind, SentencePieceBpeTokenizer, EOS_PIECE, MASK_PIECE, SOS_PIECE, UNK_PIECE,
};
use crate::caption::normalize_caption;
use crate::error::{DataError, Result};

/// Settings of [`SentencePieceBpeTokenizer::train`]. The defaults follow upstream's
/// `scripts/build_vocabulary.py` (vocabulary 10,000, special ids `<unk>` 0, `[SOS]` 1, `[EOS]` 2,
/// `[MASK]` 3, nmt_nfkc normalisation, every character kept, pieces of at most 16 characters).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerConfig {
    /// Target vocabulary size, special pieces included. A small corpus can end below it.
    pub vocab_size: usize,
    /// Apply upstream's caption normalisation (lower-case, NFKD, accents stripped) first, as
    /// `build_vocabulary.py --do-lower-case` without `--keep-accents` does.
    pub normalize_captions: bool,
    /// Longest piece, in characters (sentencepiece's `max_sentencepiece_length`, default 16).
    pub max_piece_length: usize,
    /// Pairs seen fewer times are never merged.
    pub min_frequency: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 10_000,
            normalize_captions: true,
            max_piece_length: 16,
            min_frequency: 0,
        }
    }
}

/// Splits normalised text ("▁a▁man") into words that each start with "▁" (sentencepiece's
/// `split_by_whitespace`): pieces never span two words.
fn words(normalized: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in normalized.chars() {
        if c == '\u{2581}' && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

pub(crate) fn train<I, S>(captions: I, config: &TrainerConfig) -> Result<SentencePieceBpeTokenizer>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    const SPECIALS: [&str; 4] = [UNK_PIECE, SOS_PIECE, EOS_PIECE, MASK_PIECE];
    if config.vocab_size <= SPECIALS.len() {
        return Err(DataError::config(
            "TrainerConfig.vocab_size",
            format!(
                "{} leaves no room beside the 4 special pieces",
                config.vocab_size
            ),
        ));
    }
    if config.max_piece_length == 0 {
        return Err(DataError::config(
            "TrainerConfig.max_piece_length",
            "must be at least 1",
        ));
    }
    let normalizer = Normalizer {
        charsmap: Some(CharsMap::parse(NMT_NFKC_CHARSMAP).map_err(DataError::Training)?),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut corpus = Vec::new();
    for caption in captions {
        let caption = caption.as_ref();
        let text = if config.normalize_captions {
            normalize_caption(caption)
        } else {
            caption.to_string()
        };
        let normalized = normalizer.normalize(&text);
        if !normalized.is_empty() {
            corpus.push(normalized);
        }
    }
    if corpus.is_empty() {
        return Err(DataError::Training(
            "no non-empty caption to train on".into(),
        ));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .show_progress(false)
        .max_token_length(Some(config.max_piece_length))
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    trainer
        .feed(corpus.iter(), |text| Ok(words(text)))
        .map_err(|e| DataError::Training(e.to_string()))?;
    let mut model = BPE::default();
    trainer
        .train(&mut model)
        .map_err(|e| DataError::Training(e.to_string()))?;
    let mut vocab: Vec<(String, u32)> = model.get_vocab().into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    for (expected, (piece, id)) in vocab.iter().enumerate() {
        if *id as usize != expected {
            return Err(DataError::Training(format!(
                "trainer returned non-contiguous ids: `{piece}` has id {id}, expected {expected}"
            )));
        }
    }
    let pieces = vocab
        .into_iter()
        .map(|(piece, id)| {
            let kind = match piece.as_str() {
                UNK_PIECE if id == 0 => PieceKind::Unknown,
                SOS_PIECE | EOS_PIECE | MASK_PIECE if id < 4 => PieceKind::Control,
                _ => PieceKind::Normal,
            };
            // The trainer appends each merged piece after the ones merged before it, so a
            // score decreasing with the id replays the merges in training order, which is how
            // sentencepiece scores BPE pieces too.
            let score = if kind == PieceKind::Normal {
                -(id as f32)
            } else {
                0.0
            };
            Piece { piece, score, kind }
        })
        .collect();
    let tokenizer = SentencePieceBpeTokenizer::from_pieces_nmt_nfkc(pieces)?;
    debug_assert!(tokenizer.piece_to_id(SPACE_SYMBOL).is_some());
    Ok(tokenizer)
}
