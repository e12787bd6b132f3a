//! A PTB-style caption tokenizer that stands in for Stanford CoreNLP 3.4.1's
//! `PTBTokenizer -preserveLines -lowerCase`, as coco-caption runs it.
//!
//! What it reproduces (checked against the real jar, `tests/fixtures/ptb_tokenizer.json`):
//! - punctuation split off words: `. , ; : ? !`, runs such as `!!!` or `?!` as one token,
//!   `..`/`...` as ellipsis tokens, while `3:30`, `2,000`, `5.50`, `dogs.cats` stay whole;
//! - clitics: `n't` (`do n't`, `ca n't`, `wo n't`), `'s 'm 'd 're 've 'll`, plural possessive
//!   `dogs '`, `'t is` for `'tis`, and `can not`, `gon na`, `wan na`, `got ta`, `lem me`,
//!   `gim me`; `o'clock`, `'90s` and `'n'` stay whole;
//! - abbreviations keep their period: single letters joined by periods (`u.s.`, `p.m.`,
//!   `e.g.`) and a list of common abbreviations (`mr.`, `dr.`, `st.`, `etc.`, `vs.`, months…);
//! - brackets become `-LRB- -RRB- -LSB- -RSB- -LCB- -RCB-`, straight and curly quotes become
//!   `` `` `` / `''` / `` ` `` / `'`, en/em dashes `--`, `…` `...`, `½ ¼ ¾` `1/2 1/4 3/4`;
//! - `$`, `#` and `%` split from numbers, `&` split unless between capitals (`AT&T`), a
//!   trailing `-` or `/` split (`well -`, `w /`);
//! - everything lower-cased *after* tokenisation, as `-lowerCase` does.
//!
//! [`coco_tokenize`] then drops the tokens in [`COCO_PUNCTUATIONS`], exactly the list
//! coco-caption drops. Because the jar's output is lower-cased but the list holds the upper-case
//! bracket names, bracket tokens (`-lrb-`…) survive in coco-caption — and here.
//!
//! Where it can differ from the jar (none of it occurs in the parity fixtures; see
//! `docs/evaluation.md`): abbreviations outside our list, or listed abbreviations that the jar
//! only recognises in some contexts (`no.`, `jan.` before a capital); SGML tags, URLs and
//! e-mail addresses with punctuation inside; `y'all`, `d'ye` and other rare clitics; clitics
//! followed by a hyphen (`man's-hat`); times followed by letters (`10:00am`); other Unicode
//! normalisation than the characters listed above; and the jar's Americanisation, which
//! CoreNLP 3.4.1 does not apply with these options either.

/// The tokens coco-caption's `PTBTokenizer` wrapper removes (`PUNCTUATIONS` in
/// `pycocoevalcap/tokenizer/ptbtokenizer.py`, the same list as VirTex's `PUNCTS`).
pub const COCO_PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Abbreviations that keep their final period (compared lower-case, without the period).
const ABBREVIATIONS: [&str; 52] = [
    "mr", "mrs", "ms", "dr", "drs", "prof", "st", "jr", "sr", "gen", "sen", "rep", "gov", "lt",
    "col", "capt", "sgt", "rev", "hon", "mt", "ft", "ave", "rd", "blvd", "etc", "vs", "inc", "co",
    "corp", "ltd", "bros", "al", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "no",
];

/// Words the PTB tokenizer splits in two, with the split position.
const SPLIT_WORDS: [(&str, usize); 6] = [
    ("cannot", 3),
    ("gonna", 3),
    ("gotta", 3),
    ("wanna", 3),
    ("lemme", 3),
    ("gimme", 3),
];

/// PTB tokens of `text`, lower-cased, punctuation kept (what the jar prints for one line).
pub fn ptb_tokenize(text: &str) -> Vec<String> {
    let normalised = normalise(text);
    let mut tokens = Vec::new();
    for chunk in normalised.split_whitespace() {
        split_chunk(chunk, &mut tokens);
    }
    tokens.into_iter().map(|t| t.to_lowercase()).collect()
}

/// coco-caption's caption preprocessing: PTB tokens without [`COCO_PUNCTUATIONS`], joined by
/// single spaces.
pub fn coco_tokenize(caption: &str) -> String {
    ptb_tokenize(caption)
        .into_iter()
        .filter(|token| !COCO_PUNCTUATIONS.contains(&token.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{201C}' | '\u{201E}' | '\u{00AB}' => out.push_str(" `` "),
            '\u{201D}' | '\u{00BB}' => out.push_str(" '' "),
            '\u{2018}' | '\u{201A}' => out.push('`'),
            '\u{2019}' => out.push('\''),
            '\u{2013}' | '\u{2014}' => out.push_str(" -- "),
            '\u{2026}' => out.push_str(" ... "),
            '\u{00BD}' => out.push_str("1/2"),
            '\u{00BC}' => out.push_str("1/4"),
            '\u{00BE}' => out.push_str("3/4"),
            '\u{00A0}' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-LRB-",
        ')' => "-RRB-",
        '[' => "-LSB-",
        ']' => "-RSB-",
        '{' => "-LCB-",
        '}' => "-RCB-",
        _ => return None,
    })
}

fn is_abbreviation(base: &str) -> bool {
    let lower = base.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    // Single letters joined by periods: u.s, p.m, e.g, a.b.c
    let parts: Vec<&str> = lower.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphabetic))
}

/// Tokenises one whitespace-free chunk.
fn split_chunk(chunk: &str, out: &mut Vec<String>) {
    let mut s = chunk;
    // Leading symbols.
    loop {
        if s.is_empty() {
            return;
        }
        let first = s.chars().next().unwrap_or(' ');
        let rest = &s[first.len_utf8()..];
        if s.starts_with("``") || s.starts_with("''") {
            out.push(s[..2].to_string());
            s = &s[2..];
        } else if first == '"' {
            out.push("``".into());
            s = rest;
        } else if first == '`' {
            out.push("`".into());
            s = rest;
        } else if let Some(name) = bracket(first) {
            out.push(name.into());
            s = rest;
        } else if s.starts_with("--") {
            out.push("--".into());
            s = &s[2..];
        } else if (first == '$' || first == '#') && !rest.is_empty() {
            out.push(first.to_string());
            s = rest;
        } else if first == '\'' && !rest.is_empty() {
            let lower = s.to_lowercase();
            if lower.starts_with("'n'") && s.len() == 3
                || rest.starts_with(|c: char| c.is_ascii_digit())
            {
                break;
            }
            if lower == "'tis" || lower == "'twas" {
                out.push(s[..2].to_string());
                s = &s[2..];
                break;
            }
            // An opening single quote.
            out.push("`".into());
            s = rest;
        } else {
            break;
        }
    }
    // Trailing symbols, collected in reverse order.
    let mut suffix: Vec<String> = Vec::new();
    loop {
        if s.is_empty() {
            break;
        }
        let last = s.chars().next_back().unwrap_or(' ');
        let head = &s[..s.len() - last.len_utf8()];
        if s.ends_with("''") && s.len() > 2 {
            suffix.push("''".into());
            s = &s[..s.len() - 2];
        } else if last == '"' {
            suffix.push("''".into());
            s = head;
        } else if let Some(name) = bracket(last) {
            suffix.push(name.into());
            s = head;
        } else if matches!(last, ',' | ';' | ':' | '%') {
            suffix.push(last.to_string());
            s = head;
        } else if last == '!' || last == '?' {
            let run_start = s
                .char_indices()
                .rev()
                .take_while(|(_, c)| *c == '!' || *c == '?')
                .last()
                .map_or(0, |(i, _)| i);
            suffix.push(s[run_start..].to_string());
            s = &s[..run_start];
        } else if last == '.' {
            let dots = s.chars().rev().take_while(|&c| c == '.').count();
            if dots >= 3 {
                suffix.push("...".into());
                s = &s[..s.len() - dots];
            } else if dots == 1 && is_abbreviation(head) {
                break;
            } else {
                suffix.push(".".into());
                s = head;
            }
        } else if last == '-' && s.len() > 1 {
            if s.ends_with("--") {
                suffix.push("--".into());
                s = &s[..s.len() - 2];
            } else {
                suffix.push("-".into());
                s = head;
            }
        } else if last == '/' && s.len() > 1 {
            suffix.push("/".into());
            s = head;
        } else if last == '`' && s.len() > 1 {
            suffix.push("`".into());
            s = head;
        } else if last == '\''
            && s.len() > 1
            && s.to_lowercase() != "'n'"
            && head
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_ascii_digit())
        {
            suffix.push("'".into());
            s = head;
        } else {
            break;
        }
    }
    if !s.is_empty() {
        split_middle(s, out);
    }
    out.extend(suffix.into_iter().rev());
}

/// Splits a chunk whose ends are clean at internal delimiters, then handles clitics.
fn split_middle(s: &str, out: &mut Vec<String>) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let before = k.checked_sub(1).map(|j| chars[j].1);
        let after = chars.get(k + 1).map(|&(_, a)| a);
        let digit_around =
            before.is_some_and(|b| b.is_ascii_digit()) && after.is_some_and(|a| a.is_ascii_digit());
        let between_capitals =
            before.is_some_and(char::is_uppercase) && after.is_some_and(char::is_uppercase);
        let delimiter_len = if s[i..].starts_with("...") {
            Some(3)
        } else if s[i..].starts_with("--") {
            Some(2)
        } else if c == ';'
            || c == '"'
            || bracket(c).is_some()
            || ((c == ',' || c == ':') && !digit_around)
            || (c == '&' && !between_capitals)
        {
            Some(1)
        } else {
            None
        };
        if let Some(len) = delimiter_len {
            if len == s.len() {
                out.push(s.to_string());
                return;
            }
            if i > 0 {
                split_chunk(&s[..i], out);
            }
            split_chunk(&s[i..i + len], out);
            if i + len < s.len() {
                split_chunk(&s[i + len..], out);
            }
            return;
        }
    }
    split_clitics(s, out);
}

fn split_clitics(word: &str, out: &mut Vec<String>) {
    let lower = word.to_lowercase();
    if lower.len() == word.len() {
        for (special, at) in SPLIT_WORDS {
            if lower == special {
                out.push(word[..at].to_string());
                out.push(word[at..].to_string());
                return;
            }
        }
        if lower.len() > 3 && lower.ends_with("n't") {
            let at = word.len() - 3;
            out.push(word[..at].to_string());
            out.push(word[at..].to_string());
            return;
        }
        for clitic in ["'s", "'m", "'d", "'re", "'ve", "'ll"] {
            if lower.len() > clitic.len() && lower.ends_with(clitic) {
                let at = word.len() - clitic.len();
                out.push(word[..at].to_string());
                out.push(word[at..].to_string());
                return;
            }
        }
    }
    out.push(word.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_captions() {
        assert_eq!(
            coco_tokenize("A man riding a wave on top of a surfboard."),
            "a man riding a wave on top of a surfboard"
        );
        assert_eq!(
            ptb_tokenize("Two dogs' toys aren't here, they're over there!").join(" "),
            "two dogs ' toys are n't here , they 're over there !"
        );
        assert_eq!(
            ptb_tokenize("The cat's bowl (empty) is on the table; it can't eat.").join(" "),
            "the cat 's bowl -lrb- empty -rrb- is on the table ; it ca n't eat ."
        );
        assert_eq!(
            coco_tokenize("The cat's bowl (empty) is on the table."),
            "the cat 's bowl -lrb- empty -rrb- is on the table"
        );
        assert_eq!(
            ptb_tokenize("He paid $5.50 for 2,000 apples & 50% of them were bad...").join(" "),
            "he paid $ 5.50 for 2,000 apples & 50 % of them were bad ..."
        );
    }
}
