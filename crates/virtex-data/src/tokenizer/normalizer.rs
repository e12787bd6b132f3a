//! SentencePiece's text normaliser: a precompiled character map (a darts-clone double-array trie
//! over UTF-8 bytes plus a blob of replacement strings) applied by longest prefix match, then the
//! whitespace rules (drop leading/trailing and repeated spaces, add the "▁" dummy prefix, escape
//! spaces as "▁").
//!
//! This follows `normalizer.cc` of sentencepiece (`Normalizer::NormalizePrefix` and
//! `Normalizer::Normalize`) step by step; `tokenizers`' `Precompiled` normaliser is not used here
//! because it matches per grapheme cluster rather than by longest byte prefix, which differs from
//! sentencepiece on some inputs.

/// The `nmt_nfkc` character map that every SentencePiece model trained with the default
/// normaliser carries (extracted from a model trained by `tools/reference/tokenizer.py`).
pub(crate) const NMT_NFKC_CHARSMAP: &[u8] = include_bytes!("../../assets/nmt_nfkc.charsmap");

/// The escaped whitespace symbol U+2581.
pub(crate) const SPACE_SYMBOL: &str = "\u{2581}";

/// A parsed precompiled character map.
#[derive(Debug, Clone)]
pub(crate) struct CharsMap {
    blob: Vec<u8>,
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    /// Parses `<trie size: u32 LE><double-array units><NUL-terminated replacement strings>`.
    pub(crate) fn parse(blob: &[u8]) -> Result<Self, String> {
        if blob.len() < 4 {
            return Err(format!(
                "precompiled_charsmap of {} bytes is too short",
                blob.len()
            ));
        }
        let trie_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if !trie_size.is_multiple_of(4) || trie_size == 0 || 4 + trie_size > blob.len() {
            return Err(format!(
                "precompiled_charsmap: trie size {trie_size} is invalid for a blob of {} bytes",
                blob.len()
            ));
        }
        let units = blob[4..4 + trie_size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            blob: blob.to_vec(),
            units,
            normalized: blob[4 + trie_size..].to_vec(),
        })
    }

    /// The serialized map, byte-identical to the input of [`CharsMap::parse`].
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.blob.clone()
    }

    fn offset(unit: u32) -> usize {
        ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
    }

    fn label(unit: u32) -> u32 {
        unit & ((1 << 31) | 0xFF)
    }

    fn has_leaf(unit: u32) -> bool {
        (unit >> 8) & 1 == 1
    }

    fn value(unit: u32) -> usize {
        (unit & ((1 << 31) - 1)) as usize
    }

    /// darts-clone `commonPrefixSearch`, keeping only the longest match: `(length, value)`.
    fn longest_prefix(&self, key: &[u8]) -> Option<(usize, usize)> {
        let mut id = Self::offset(*self.units.first()?);
        let mut best = None;
        for (i, &byte) in key.iter().enumerate() {
            id ^= byte as usize;
            let unit = *self.units.get(id)?;
            if Self::label(unit) != u32::from(byte) {
                return best;
            }
            id ^= Self::offset(unit);
            if Self::has_leaf(unit) {
                let leaf = *self.units.get(id)?;
                best = Some((i + 1, Self::value(leaf)));
            }
        }
        best
    }

    /// The replacement string stored at `offset` (NUL-terminated), if valid.
    fn replacement(&self, offset: usize) -> Option<&str> {
        let rest = self.normalized.get(offset..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// The normaliser of a model: its character map (if any) and whitespace flags.
#[derive(Debug, Clone)]
pub(crate) struct Normalizer {
    pub charsmap: Option<CharsMap>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Normalizer {
    /// `Normalizer::NormalizePrefix`: the normalised form of the longest matching prefix of
    /// `input` and the number of bytes it consumes.
    fn normalize_prefix<'a>(&'a self, input: &'a str) -> (&'a str, usize) {
        if let Some(map) = &self.charsmap {
            if let Some((len, value)) = map.longest_prefix(input.as_bytes()) {
                // A match that ends inside a UTF-8 sequence or points outside the blob comes
                // from a damaged map; fall back to copying one character.
                if input.is_char_boundary(len) {
                    if let Some(replacement) = map.replacement(value) {
                        return (replacement, len);
                    }
                }
            }
        }
        let len = input.chars().next().map_or(0, char::len_utf8);
        (&input[..len], len)
    }

    /// `Normalizer::Normalize` (without the alignment bookkeeping).
    pub(crate) fn normalize(&self, mut input: &str) -> String {
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, consumed) = self.normalize_prefix(input);
                if piece != " " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let mut out = String::with_capacity(input.len() * 3);
        let space = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        if self.add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, consumed) = self.normalize_prefix(input);
            while is_prev_space && piece.starts_with(' ') {
                piece = &piece[1..];
            }
            if !piece.is_empty() {
                for c in piece.chars() {
                    if self.escape_whitespaces && c == ' ' {
                        out.push_str(SPACE_SYMBOL);
                    } else {
                        out.push(c);
                    }
                }
                is_prev_space = piece.ends_with(' ');
            }
            input = &input[consumed..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nmt_nfkc() -> Normalizer {
        Normalizer {
            charsmap: Some(CharsMap::parse(NMT_NFKC_CHARSMAP).unwrap()),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }

    #[test]
    fn whitespace_rules() {
        let n = nmt_nfkc();
        assert_eq!(n.normalize(""), "");
        assert_eq!(n.normalize("   "), "");
        assert_eq!(n.normalize("a"), "▁a");
        assert_eq!(n.normalize("  two  dogs  "), "▁two▁dogs");
        assert_eq!(n.normalize("tab\tand\nnewline"), "▁tab▁and▁newline");
    }

    #[test]
    fn nfkc_mappings() {
        let n = nmt_nfkc();
        assert_eq!(n.normalize("ＦＵＬＬ １２３"), "▁FULL▁123");
        assert_eq!(n.normalize("ﬁsh"), "▁fish");
        assert_eq!(n.normalize("non\u{a0}breaking"), "▁non▁breaking");
    }

    #[test]
    fn damaged_maps_are_rejected() {
        assert!(CharsMap::parse(&[1, 0]).is_err());
        assert!(CharsMap::parse(&[8, 0, 0, 0, 1, 2, 3]).is_err());
        assert!(CharsMap::parse(&[3, 0, 0, 0, 1, 2, 3, 4]).is_err());
    }
}
