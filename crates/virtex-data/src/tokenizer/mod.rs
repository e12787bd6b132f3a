//! The SentencePiece-compatible BPE tokenizer (upstream `SentencePieceBPETokenizer`).
//!
//! - [`SentencePieceBpeTokenizer::from_file`] loads an official SentencePiece `.model` (protobuf;
//!   e.g. VirTex's `coco_10k.model`) or our own JSON vocabulary, and [`encode`] yields the ids the
//!   `sentencepiece` library yields: nmt_nfkc normalisation by longest byte prefix, the "▁" dummy
//!   prefix, BPE merges applied by piece score with ties broken leftmost-first (sentencepiece's
//!   `bpe_model.cc`), characters outside the vocabulary mapped to `<unk>` and runs of `<unk>`
//!   fused into one.
//! - [`SentencePieceBpeTokenizer::train`] learns a new vocabulary with the `tokenizers` crate's
//!   BPE trainer (special ids as upstream: `<unk>` 0, `[SOS]` 1, `[EOS]` 2, `[MASK]` 3) and
//!   [`save`] writes it as JSON (or as a `.model` that `sentencepiece` itself loads, with
//!   [`save_sentencepiece_model`]).
//!
//! Why the encoder is a port rather than `tokenizers`' `BPE` model: `BPE` ranks every
//! `(left, right)` merge separately, whereas sentencepiece ranks the *merged piece* by its score
//! and breaks ties by position. When two different pairs form the same piece and overlap
//! (`[ab][a][ba]` → "aba" either way), the two algorithms can choose differently.
//!
//! [`encode`]: SentencePieceBpeTokenizer::encode
//! [`save`]: SentencePieceBpeTokenizer::save
//! [`save_sentencepiece_model`]: SentencePieceBpeTokenizer::save_sentencepiece_model

mod base64;
mod normalizer;
mod proto;
mod train;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

pub use proto::PieceKind;
pub use train::TrainerConfig;

use crate::error::{DataError, Result};
use normalizer::{CharsMap, Normalizer, NMT_NFKC_CHARSMAP, SPACE_SYMBOL};

/// Upstream's maximum caption length, `[SOS]` and `[EOS]` included (`DATA.MAX_CAPTION_LENGTH`).
pub const MAX_CAPTION_LENGTH: usize = 30;

/// The unknown piece, id 0 (`DATA.UNK_INDEX`, also the padding id).
pub const UNK_PIECE: &str = "<unk>";
/// The start-of-sentence control piece, id 1 (`DATA.SOS_INDEX`).
pub const SOS_PIECE: &str = "[SOS]";
/// The end-of-sentence control piece, id 2 (`DATA.EOS_INDEX`).
pub const EOS_PIECE: &str = "[EOS]";
/// The mask control piece, id 3 (`DATA.MASK_INDEX`).
pub const MASK_PIECE: &str = "[MASK]";

/// sentencepiece's default `unk_surface`: how `<unk>` decodes.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    /// The piece text, with "▁" for a space.
    pub piece: String,
    /// Its score: merges that form higher-scoring pieces are applied first.
    pub score: f32,
    /// What kind of entry it is.
    pub kind: PieceKind,
}

/// Caption tokens for both decoding directions (upstream `caption_tokens` / `noitpac_tokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionTokens {
    /// `[SOS] + encode(caption) + [EOS]`, truncated from the right to the maximum length (so a
    /// truncated caption has no `[EOS]`).
    pub caption_tokens: Vec<u32>,
    /// `caption_tokens` reversed: `[EOS] + reversed pieces + [SOS]`.
    pub noitpac_tokens: Vec<u32>,
}

/// The special ids of a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// `<unk>` (also used as padding).
    pub unk: u32,
    /// `[SOS]`.
    pub sos: u32,
    /// `[EOS]`.
    pub eos: u32,
    /// `[MASK]`, when the vocabulary has it.
    pub mask: Option<u32>,
}

/// A SentencePiece BPE tokenizer that produces exactly the ids of the `sentencepiece` library.
#[derive(Debug, Clone)]
pub struct SentencePieceBpeTokenizer {
    pieces: Vec<Piece>,
    /// Pieces that BPE may produce (sentencepiece's `pieces_`: normal pieces only here).
    mergeable: HashMap<String, u32>,
    normalizer: Normalizer,
    normalizer_name: String,
    unk_surface: String,
    special: SpecialIds,
}

/// The JSON vocabulary format written by [`SentencePieceBpeTokenizer::save`].
#[derive(serde::Serialize, serde::Deserialize)]
struct VocabFile {
    format: String,
    version: u32,
    normalizer: NormalizerFile,
    unk_surface: String,
    pieces: Vec<Piece>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NormalizerFile {
    /// `nmt_nfkc` (the built-in map is used when `precompiled_charsmap` is absent),
    /// `identity` (no map), or any other name with an explicit map.
    name: String,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    /// Base64 of sentencepiece's `precompiled_charsmap`, when it is not the built-in nmt_nfkc one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precompiled_charsmap: Option<String>,
}

const VOCAB_FORMAT: &str = "virtex-sentencepiece-bpe";

/// A BPE merge candidate: sentencepiece's `SymbolPair`.
#[derive(Debug)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SentencePieceBpeTokenizer {
    /// Loads a tokenizer: a SentencePiece `.model` (protobuf) or our JSON vocabulary, told apart by
    /// content.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            Self::from_json_bytes(&bytes, path)
        } else {
            Self::from_sentencepiece_bytes(&bytes, path)
        }
    }

    /// Parses a serialized SentencePiece `ModelProto`; `origin` names it in errors.
    pub fn from_sentencepiece_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let invalid = |message: String| DataError::InvalidModel {
            path: origin.to_path_buf(),
            message,
        };
        let unsupported = |message: String| DataError::UnsupportedModel {
            path: origin.to_path_buf(),
            message,
        };
        let model = proto::parse_model(bytes).map_err(invalid)?;
        if model.model_type != proto::MODEL_TYPE_BPE {
            let name = match model.model_type {
                1 => "unigram",
                3 => "word",
                4 => "char",
                _ => "unknown",
            };
            return Err(unsupported(format!(
                "model_type is {name} ({}); only BPE models (model_type 2) are supported",
                model.model_type
            )));
        }
        if model.byte_fallback {
            return Err(unsupported("byte_fallback is enabled".into()));
        }
        if model.treat_whitespace_as_suffix {
            return Err(unsupported("treat_whitespace_as_suffix is enabled".into()));
        }
        let charsmap = if model.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(CharsMap::parse(&model.precompiled_charsmap).map_err(invalid)?)
        };
        let normalizer = Normalizer {
            charsmap,
            add_dummy_prefix: model.add_dummy_prefix,
            remove_extra_whitespaces: model.remove_extra_whitespaces,
            escape_whitespaces: model.escape_whitespaces,
        };
        let pieces = model
            .pieces
            .into_iter()
            .map(|p| Piece {
                piece: p.piece,
                score: p.score,
                kind: p.kind,
            })
            .collect();
        let unk_surface = model
            .unk_surface
            .unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_string());
        Self::assemble(
            pieces,
            normalizer,
            model.normalizer_name,
            unk_surface,
            origin,
        )
    }

    fn from_json_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let file: VocabFile =
            serde_json::from_slice(bytes).map_err(|e| DataError::json(origin, &e))?;
        let invalid = |message: String| DataError::InvalidModel {
            path: origin.to_path_buf(),
            message,
        };
        if file.format != VOCAB_FORMAT || file.version != 1 {
            return Err(invalid(format!(
                "format `{}` version {} (expected `{VOCAB_FORMAT}` version 1)",
                file.format, file.version
            )));
        }
        let n = &file.normalizer;
        let charsmap = match (&n.precompiled_charsmap, n.name.as_str()) {
            (Some(encoded), _) => {
                let blob = base64::decode(encoded)
                    .map_err(|e| invalid(format!("normalizer.precompiled_charsmap: {e}")))?;
                Some(CharsMap::parse(&blob).map_err(invalid)?)
            }
            (None, "nmt_nfkc") => Some(CharsMap::parse(NMT_NFKC_CHARSMAP).map_err(invalid)?),
            (None, "identity") => None,
            (None, other) => {
                return Err(invalid(format!(
                    "normalizer `{other}` needs a precompiled_charsmap (only nmt_nfkc and identity are built in)"
                )))
            }
        };
        let normalizer = Normalizer {
            charsmap,
            add_dummy_prefix: n.add_dummy_prefix,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            escape_whitespaces: n.escape_whitespaces,
        };
        let name = n.name.clone();
        Self::assemble(file.pieces, normalizer, name, file.unk_surface, origin)
    }

    /// Checks the vocabulary and builds the lookup tables.
    fn assemble(
        pieces: Vec<Piece>,
        normalizer: Normalizer,
        normalizer_name: String,
        unk_surface: String,
        origin: &Path,
    ) -> Result<Self> {
        let invalid = |message: String| DataError::InvalidModel {
            path: origin.to_path_buf(),
            message,
        };
        let unsupported = |message: String| DataError::UnsupportedModel {
            path: origin.to_path_buf(),
            message,
        };
        if pieces.len() > u32::MAX as usize {
            return Err(invalid("more than 2^32 pieces".into()));
        }
        let mut mergeable = HashMap::with_capacity(pieces.len());
        let mut unk = None;
        let mut by_name: HashMap<&str, u32> = HashMap::new();
        for (id, piece) in pieces.iter().enumerate() {
            let id = id as u32;
            if piece.piece.is_empty() {
                return Err(invalid(format!("piece {id} is empty")));
            }
            if by_name.insert(piece.piece.as_str(), id).is_some() {
                return Err(invalid(format!("piece `{}` appears twice", piece.piece)));
            }
            match piece.kind {
                PieceKind::Normal => {
                    mergeable.insert(piece.piece.clone(), id);
                }
                PieceKind::Unknown => {
                    if unk.replace(id).is_some() {
                        return Err(invalid("more than one unknown piece".into()));
                    }
                }
                PieceKind::Control => {}
                PieceKind::UserDefined | PieceKind::Byte | PieceKind::Unused => {
                    return Err(unsupported(format!(
                        "piece {id} `{}` is of kind {:?}; VirTex vocabularies have only normal, unknown and control pieces",
                        piece.piece, piece.kind
                    )))
                }
            }
        }
        let unk = unk.ok_or_else(|| invalid("no unknown (`<unk>`) piece".into()))?;
        let control = |name: &str| -> Option<u32> {
            by_name
                .get(name)
                .copied()
                .filter(|&id| pieces[id as usize].kind == PieceKind::Control)
        };
        let sos = control(SOS_PIECE).ok_or_else(|| {
            invalid(format!(
                "no `{SOS_PIECE}` control symbol (train with --control_symbols=[SOS],[EOS],[MASK])"
            ))
        })?;
        let eos = control(EOS_PIECE).ok_or_else(|| {
            invalid(format!(
                "no `{EOS_PIECE}` control symbol (train with --control_symbols=[SOS],[EOS],[MASK])"
            ))
        })?;
        let mask = control(MASK_PIECE);
        Ok(Self {
            mergeable,
            normalizer,
            normalizer_name,
            unk_surface,
            special: SpecialIds {
                unk,
                sos,
                eos,
                mask,
            },
            pieces,
        })
    }

    /// Trains a new vocabulary on captions (see [`TrainerConfig`]).
    pub fn train<I, S>(captions: I, config: &TrainerConfig) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        train::train(captions, config)
    }

    /// Builds a tokenizer with the built-in nmt_nfkc normaliser from pieces in id order.
    pub(crate) fn from_pieces_nmt_nfkc(pieces: Vec<Piece>) -> Result<Self> {
        let normalizer = Normalizer {
            charsmap: Some(CharsMap::parse(NMT_NFKC_CHARSMAP).map_err(|message| {
                DataError::InvalidModel {
                    path: PathBuf::from("<built-in nmt_nfkc>"),
                    message,
                }
            })?),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        Self::assemble(
            pieces,
            normalizer,
            "nmt_nfkc".into(),
            DEFAULT_UNK_SURFACE.into(),
            Path::new("<trained vocabulary>"),
        )
    }

    /// Writes the vocabulary as JSON (our format; [`from_file`](Self::from_file) reads it back),
    /// atomically ([`virtex_device::write_atomically`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let builtin = self.normalizer_name == "nmt_nfkc"
            && self.normalizer.charsmap.is_some()
            && self.charsmap_bytes() == NMT_NFKC_CHARSMAP;
        let precompiled_charsmap = match (&self.normalizer.charsmap, builtin) {
            (Some(_), false) => Some(base64::encode(&self.charsmap_bytes())),
            _ => None,
        };
        let name = match (&self.normalizer.charsmap, builtin) {
            (None, _) => "identity".to_string(),
            _ => self.normalizer_name.clone(),
        };
        let file = VocabFile {
            format: VOCAB_FORMAT.into(),
            version: 1,
            normalizer: NormalizerFile {
                name,
                add_dummy_prefix: self.normalizer.add_dummy_prefix,
                remove_extra_whitespaces: self.normalizer.remove_extra_whitespaces,
                escape_whitespaces: self.normalizer.escape_whitespaces,
                precompiled_charsmap,
            },
            unk_surface: self.unk_surface.clone(),
            pieces: self.pieces.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| DataError::json(path, &e))?;
        virtex_device::write_atomically(path, |temporary| std::fs::write(temporary, text + "\n"))
            .map_err(|e| DataError::io(path, e))
    }

    /// Writes the vocabulary as a SentencePiece `.model` protobuf that the `sentencepiece`
    /// library loads (and that [`from_file`](Self::from_file) reads back), atomically.
    pub fn save_sentencepiece_model(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let model = proto::ModelProto {
            pieces: self
                .pieces
                .iter()
                .map(|p| proto::ProtoPiece {
                    piece: p.piece.clone(),
                    score: p.score,
                    kind: p.kind,
                })
                .collect(),
            model_type: proto::MODEL_TYPE_BPE,
            unk_id: i64::from(self.special.unk),
            unk_surface: Some(self.unk_surface.clone()),
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            normalizer_name: if self.normalizer.charsmap.is_some() {
                self.normalizer_name.clone()
            } else {
                "identity".into()
            },
            precompiled_charsmap: self.charsmap_bytes(),
            add_dummy_prefix: self.normalizer.add_dummy_prefix,
            remove_extra_whitespaces: self.normalizer.remove_extra_whitespaces,
            escape_whitespaces: self.normalizer.escape_whitespaces,
        };
        let bytes = proto::write_model(&model);
        virtex_device::write_atomically(path, |temporary| std::fs::write(temporary, bytes))
            .map_err(|e| DataError::io(path, e))
    }

    fn charsmap_bytes(&self) -> Vec<u8> {
        self.normalizer
            .charsmap
            .as_ref()
            .map(CharsMap::to_bytes)
            .unwrap_or_default()
    }

    /// Number of pieces (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The special ids (`<unk>` 0, `[SOS]` 1, `[EOS]` 2, `[MASK]` 3 in VirTex vocabularies).
    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    /// All pieces in id order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The piece of an id.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The id of a piece (control and unknown pieces included), `None` if absent.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        if let Some(&id) = self.mergeable.get(piece) {
            return Some(id);
        }
        self.pieces
            .iter()
            .position(|p| p.piece == piece)
            .map(|i| i as u32)
    }

    /// The normalised text the BPE model sees ("▁" for spaces, with the dummy prefix).
    pub fn normalize(&self, text: &str) -> String {
        self.normalizer.normalize(text)
    }

    /// Encodes text to ids exactly as sentencepiece's `EncodeAsIds`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with_pieces(text)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// Encodes text to pieces (sentencepiece's `EncodeAsPieces`; a fused run of unknown
    /// characters is one piece holding those characters).
    pub fn encode_as_pieces(&self, text: &str) -> Vec<String> {
        self.encode_with_pieces(text)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn encode_with_pieces(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = self.normalizer.normalize(text);
        let mut out: Vec<(String, u32)> = Vec::new();
        for (piece, id) in self.bpe(&normalized) {
            // sentencepiece fuses a run of unknown pieces into one.
            if id == self.special.unk {
                if let Some(last) = out.last_mut() {
                    if last.1 == self.special.unk {
                        last.0.push_str(piece);
                        continue;
                    }
                }
            }
            out.push((piece.to_string(), id));
        }
        out
    }

    /// sentencepiece's `bpe::Model::Encode` on normalised text.
    fn bpe<'a>(&self, normalized: &'a str) -> Vec<(&'a str, u32)> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(normalized.len());
        for (start, c) in normalized.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                symbols[index - 1].next = Some(index);
            }
        }
        let mut agenda = BinaryHeap::new();
        let push_pair =
            |agenda: &mut BinaryHeap<Candidate>, symbols: &[Symbol], left: usize, right: usize| {
                let (l, r) = (symbols[left], symbols[right]);
                let merged = &normalized[l.start..l.start + l.len + r.len];
                if let Some(&id) = self.mergeable.get(merged) {
                    agenda.push(Candidate {
                        score: self.pieces[id as usize].score,
                        left,
                        right,
                        size: merged.len(),
                    });
                }
            };
        for i in 1..symbols.len() {
            push_pair(&mut agenda, &symbols, i - 1, i);
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            // Stale entry: one side was merged away or changed since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size || l.next != Some(top.right) {
                continue;
            }
            symbols[top.left].len += r.len;
            symbols[top.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(top.left);
            }
            symbols[top.right].len = 0;
            if let Some(prev) = symbols[top.left].prev {
                push_pair(&mut agenda, &symbols, prev, top.left);
            }
            if let Some(next) = symbols[top.left].next {
                push_pair(&mut agenda, &symbols, top.left, next);
            }
        }
        symbols
            .iter()
            .filter(|s| s.len > 0)
            .map(|s| {
                let piece = &normalized[s.start..s.start + s.len];
                (
                    piece,
                    self.mergeable
                        .get(piece)
                        .copied()
                        .unwrap_or(self.special.unk),
                )
            })
            .collect()
    }

    /// Decodes ids as sentencepiece's `DecodeIds`: control pieces become "", `<unk>` becomes
    /// " ⁇ ", "▁" becomes a space, and the leading space of the text is dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::new();
        let mut at_start = true;
        for &id in ids {
            let piece = self
                .pieces
                .get(id as usize)
                .ok_or(DataError::UnknownTokenId {
                    id: i64::from(id),
                    vocab_size: self.pieces.len(),
                })?;
            let surface = match piece.kind {
                PieceKind::Control => String::new(),
                PieceKind::Unknown => self.unk_surface.clone(),
                _ => {
                    let mut p = piece.piece.as_str();
                    if at_start {
                        p = p.strip_prefix(SPACE_SYMBOL).unwrap_or(p);
                    }
                    p.replace(SPACE_SYMBOL, " ")
                }
            };
            // The start lasts until some piece produced text (a bare "▁" or a control symbol
            // does not end it), as in sentencepiece.
            if !surface.is_empty() {
                at_start = false;
            }
            text.push_str(&surface);
        }
        Ok(text)
    }

    /// Upstream's caption encoding: `[SOS] + encode(caption) + [EOS]` truncated from the right to
    /// `max_length` (which can cut `[EOS]`), and its reverse for the backward model. The caption
    /// should already be normalised ([`normalize_caption`](crate::normalize_caption)), as the
    /// dataset does.
    pub fn encode_caption(&self, caption: &str, max_length: usize) -> CaptionTokens {
        let mut caption_tokens = Vec::with_capacity(max_length.min(64));
        caption_tokens.push(self.special.sos);
        caption_tokens.extend(self.encode(caption));
        caption_tokens.push(self.special.eos);
        caption_tokens.truncate(max_length);
        let noitpac_tokens = caption_tokens.iter().rev().copied().collect();
        CaptionTokens {
            caption_tokens,
            noitpac_tokens,
        }
    }
}
