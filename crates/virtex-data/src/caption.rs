//! Caption text processing: upstream's normalisation and the left/right swap of the flip.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::UnicodeNormalization;

/// Normalises a caption as upstream's `CocoCaptionsDataset` does: `lower()`, Unicode NFKD, then
/// every combining character dropped (accents stripped). Punctuation is kept; the tokenizer's own
/// `nmt_nfkc` normaliser does the rest.
///
/// ```
/// assert_eq!(virtex_data::normalize_caption("A Café, NEAR the Crème!"), "a cafe, near the creme!");
/// ```
pub fn normalize_caption(caption: &str) -> String {
    // Python's `unicodedata.combining(c)` is the canonical combining class.
    caption
        .to_lowercase()
        .nfkd()
        .filter(|&c| canonical_combining_class(c) == 0)
        .collect()
}

/// How a horizontal flip rewrites "left" and "right" in the caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipCaption {
    /// Swap the whole words "left" and "right" only ("bright" stays "bright"). The default.
    #[default]
    WholeWord,
    /// Upstream's plain substring replacement, kept for bit-compatibility:
    /// `replace("left", "[TMP]").replace("right", "left").replace("[TMP]", "right")`, which also
    /// turns "bright" into "bleft" and "leftover" into "rightover".
    Substring,
    /// Leave the caption unchanged.
    Keep,
}

fn whole_word_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b(left|right)\b").expect("static regex"))
}

/// Swaps "left" and "right" in a caption according to `mode` (see [`FlipCaption`]).
///
/// ```
/// use virtex_data::{swap_left_right, FlipCaption};
/// let c = "a bright lamp on the left, a door to the right";
/// assert_eq!(swap_left_right(c, FlipCaption::WholeWord), "a bright lamp on the right, a door to the left");
/// assert_eq!(swap_left_right(c, FlipCaption::Substring), "a bleft lamp on the right, a door to the left");
/// ```
pub fn swap_left_right(caption: &str, mode: FlipCaption) -> String {
    match mode {
        FlipCaption::Keep => caption.to_string(),
        FlipCaption::Substring => caption
            .replace("left", "[TMP]")
            .replace("right", "left")
            .replace("[TMP]", "right"),
        FlipCaption::WholeWord => whole_word_regex()
            .replace_all(
                caption,
                |caps: &regex::Captures<'_>| {
                    if &caps[1] == "left" {
                        "right"
                    } else {
                        "left"
                    }
                },
            )
            .into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_python() {
        // Expected values computed with Python 3.11:
        // "".join(c for c in unicodedata.normalize("NFKD", s.lower()) if not unicodedata.combining(c))
        assert_eq!(normalize_caption("Naïve FAÇADE"), "naive facade");
        assert_eq!(normalize_caption("ﬁsh ½"), "fish 1\u{2044}2");
        assert_eq!(normalize_caption("e\u{301}"), "e");
        assert_eq!(normalize_caption("Straße ΣΑΣ"), "straße σας");
        assert_eq!(normalize_caption("  two  spaces "), "  two  spaces ");
    }

    #[test]
    fn swaps() {
        assert_eq!(
            swap_left_right("left-hand right", FlipCaption::WholeWord),
            "right-hand left"
        );
        assert_eq!(
            swap_left_right("upright leftover", FlipCaption::WholeWord),
            "upright leftover"
        );
        assert_eq!(
            swap_left_right("upright leftover", FlipCaption::Substring),
            "upleft rightover"
        );
        assert_eq!(swap_left_right("left", FlipCaption::Keep), "left");
        // Swapping twice restores the caption (whole words).
        let c = "the left cat and the right dog, left again";
        let twice = swap_left_right(
            &swap_left_right(c, FlipCaption::WholeWord),
            FlipCaption::WholeWord,
        );
        assert_eq!(twice, c);
    }
}
