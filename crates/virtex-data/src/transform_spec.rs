//! Upstream's transform names with keyword arguments, `name::{kwargs}`.
//!
//! Upstream's `ImageTransformsFactory.create` (`virtex/factories.py`) splits a config name on
//! `::` and `eval`s the rest as a Python dict of keyword arguments that override the product's
//! defaults:
//!
//! ```text
//! random_resized_crop
//! random_resized_crop::{'scale': (0.08, 1.0)}
//! smallest_resize::{'max_size': 256}
//! color_jitter::{"brightness": 0.2, "hue": 5e-2, "p": 1.0}
//! normalize::{'mean': [0.5, 0.5, 0.5], 'std': (0.5, 0.5, 0.5),}
//! ```
//!
//! Nothing is `eval`ed here. [`TransformSpec::parse`] reads the subset of Python literal syntax
//! those dicts use:
//!
//! | value | syntax |
//! |---|---|
//! | dict (the whole kwargs) | `{'key': value, ...}`, string keys, trailing comma allowed |
//! | int | `224`, `-3`, `1_000`, `0x1F`, `0o17`, `0b101` |
//! | float | `0.5`, `.5`, `1.`, `5e-2`, `-1.5E+3`, `1_0.5` |
//! | string | `'text'` or `"text"`, escapes `\\ \' \" \n \r \t` |
//! | bool, none | `True`, `False`, `None` |
//! | tuple, list | `(a, b)`, `(a,)`, `()`, `[a, b]`, nested, trailing comma allowed |
//!
//! Unary `+`/`-` apply to numbers. Whitespace (including newlines) may separate tokens.
//! Anything else (expressions, calls such as `float('inf')`, sets, nested dicts, string prefixes,
//! implicit string concatenation) is refused with [`DataError::InvalidTransform`], which names the
//! whole text and the position. Unlike Python, a key given twice is an error rather than "last
//! one wins", and a float literal that overflows to infinity is refused.
//!
//! What each transform accepts, and how values are checked, is in
//! [`crate::ImageTransforms::from_names`].

use std::fmt;

use crate::error::{DataError, Result};

/// A Python literal value (the subset [`TransformSpec::parse`] reads).
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A string.
    Str(String),
    /// `(a, b, ...)`.
    Tuple(Vec<PyValue>),
    /// `[a, b, ...]`.
    List(Vec<PyValue>),
}

impl PyValue {
    /// The value as a number (ints widen to `f64`; bools are not numbers here).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            PyValue::Int(i) => Some(i as f64),
            PyValue::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_sequence(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::Tuple(items) | PyValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// Python's name for the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Tuple(_) => "tuple",
            PyValue::List(_) => "list",
        }
    }
}

/// Writes a float as Python's `repr` would for the values used here: the shortest text that
/// reads back to the same `f64`, with a `.0` on integral values (`1.0`, not `1`).
pub(crate) fn fmt_py_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    let text = x.to_string();
    if text.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
        write!(f, "{text}.0")
    } else {
        f.write_str(&text)
    }
}

fn fmt_py_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("'")?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\'' => f.write_str("\\'")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("'")
}

/// Python literal syntax, which [`TransformSpec::parse`] reads back to the same value.
impl fmt::Display for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyValue::None => f.write_str("None"),
            PyValue::Bool(true) => f.write_str("True"),
            PyValue::Bool(false) => f.write_str("False"),
            PyValue::Int(i) => write!(f, "{i}"),
            PyValue::Float(x) => fmt_py_float(f, *x),
            PyValue::Str(s) => fmt_py_str(f, s),
            PyValue::Tuple(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                if items.len() == 1 {
                    f.write_str(",")?;
                }
                f.write_str(")")
            }
            PyValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A transform name with its keyword arguments: `name` or `name::{'key': value, ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    /// The transform's name, e.g. `random_resized_crop`.
    pub name: String,
    /// Keyword arguments in the order written (keys are unique).
    pub kwargs: Vec<(String, PyValue)>,
}

/// Canonical text: `name` without kwargs, else `name::{'key': value, ...}` (reads back to an
/// equal spec).
impl fmt::Display for TransformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.kwargs.is_empty() {
            return Ok(());
        }
        f.write_str("::{")?;
        for (i, (key, value)) in self.kwargs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt_py_str(f, key)?;
            write!(f, ": {value}")?;
        }
        f.write_str("}")
    }
}

/// Deepest nesting of tuples and lists accepted (a guard against stack exhaustion).
const MAX_DEPTH: usize = 32;

impl TransformSpec {
    /// Parses `name` or `name::{kwargs}` (see the [module documentation](self)). Surrounding
    /// whitespace is ignored; the name itself must be non-empty and free of whitespace.
    ///
    /// # Errors
    /// [`DataError::InvalidTransform`] naming `text`, with the position and what was expected.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let (name, kwargs) = match trimmed.split_once("::") {
            None => (trimmed, None),
            Some((name, rest)) => (name.trim_end(), Some(rest)),
        };
        if name.is_empty() {
            return Err(invalid(text, "the transform name is empty"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(invalid(
                text,
                format!(
                    "the transform name `{name}` has the character {c:?}; names are letters, \
                     digits and `_`, and keyword arguments follow `::` as a dict"
                ),
            ));
        }
        let kwargs = match kwargs {
            None => Vec::new(),
            Some(rest) => {
                // Positions in errors count from the start of `text`.
                let offset = rest.as_ptr() as usize - text.as_ptr() as usize;
                Parser {
                    text,
                    src: rest,
                    pos: 0,
                    offset,
                }
                .kwargs()?
            }
        };
        Ok(Self {
            name: name.to_string(),
            kwargs,
        })
    }
}

fn invalid(text: &str, message: impl Into<String>) -> DataError {
    DataError::InvalidTransform {
        text: text.to_string(),
        message: message.into(),
    }
}

/// A recursive-descent reader of the dict after `::`.
struct Parser<'a> {
    /// The whole transform text (for errors).
    text: &'a str,
    /// The part after `::`.
    src: &'a str,
    /// Byte position in `src`.
    pos: usize,
    /// Byte offset of `src` in `text`.
    offset: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl fmt::Display) -> DataError {
        let at = self.text[..self.offset + self.pos].chars().count() + 1;
        invalid(self.text, format!("at character {at}: {message}"))
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// What comes next, for "expected …, found …" messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the text".into(),
            Some(_) => {
                let token: String = self.rest().chars().take(12).collect();
                format!("`{token}`")
            }
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn kwargs(mut self) -> Result<Vec<(String, PyValue)>> {
        if !self.eat('{') {
            return Err(self.error(format!(
                "expected a dict of keyword arguments `{{'key': value, ...}}` after `::`, found {}",
                self.found()
            )));
        }
        let mut kwargs: Vec<(String, PyValue)> = Vec::new();
        loop {
            if self.eat('}') {
                break;
            }
            self.skip_ws();
            let key_at = self.pos;
            let key = match self.peek() {
                Some('\'' | '"') => self.string()?,
                _ => {
                    return Err(self.error(format!(
                        "expected a quoted keyword name such as 'p' or `}}`, found {}",
                        self.found()
                    )))
                }
            };
            if kwargs.iter().any(|(k, _)| *k == key) {
                self.pos = key_at;
                return Err(self.error(format!("keyword argument '{key}' is given twice")));
            }
            if !self.eat(':') {
                return Err(self.error(format!(
                    "expected `:` after '{key}', found {}",
                    self.found()
                )));
            }
            let value = self.value(0)?;
            kwargs.push((key, value));
            if self.eat(',') {
                continue;
            }
            if self.eat('}') {
                break;
            }
            return Err(self.error(format!("expected `,` or `}}`, found {}", self.found())));
        }
        self.skip_ws();
        if self.pos < self.src.len() {
            return Err(self.error(format!(
                "unexpected {} after the closing `}}`",
                self.found()
            )));
        }
        Ok(kwargs)
    }

    fn value(&mut self, depth: usize) -> Result<PyValue> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        self.skip_ws();
        match self.peek() {
            Some('\'' | '"') => Ok(PyValue::Str(self.string()?)),
            Some('(') => {
                self.pos += 1;
                self.sequence(')', depth)
            }
            Some('[') => {
                self.pos += 1;
                self.sequence(']', depth)
            }
            Some('{') => Err(self.error("nested dicts and sets are not supported as values")),
            Some('+' | '-') => self.signed(),
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(false),
            Some(c) if c.is_alphabetic() || c == '_' => self.word(),
            _ => Err(self.error(format!("expected a value, found {}", self.found()))),
        }
    }

    /// After `(` or `[`: items up to `close`. `(x)` is `x`, `(x,)` a one-tuple.
    fn sequence(&mut self, close: char, depth: usize) -> Result<PyValue> {
        let tuple = close == ')';
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            if self.eat(close) {
                break;
            }
            items.push(self.value(depth + 1)?);
            if self.eat(',') {
                comma = true;
                continue;
            }
            if self.eat(close) {
                break;
            }
            return Err(self.error(format!("expected `,` or `{close}`, found {}", self.found())));
        }
        Ok(if !tuple {
            PyValue::List(items)
        } else if items.len() == 1 && !comma {
            items.pop().expect("one item")
        } else {
            PyValue::Tuple(items)
        })
    }

    fn string(&mut self) -> Result<String> {
        let quote = self.peek().expect("called on a quote");
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.error("the string is not closed"));
            };
            self.pos += c.len_utf8();
            match c {
                c if c == quote => return Ok(out),
                '\n' => {
                    self.pos = start;
                    return Err(self.error("the string is not closed on its line"));
                }
                '\\' => {
                    let Some(e) = self.peek() else {
                        self.pos = start;
                        return Err(self.error("the string is not closed"));
                    };
                    out.push(match e {
                        '\\' => '\\',
                        '\'' => '\'',
                        '"' => '"',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        other => {
                            self.pos -= 1;
                            return Err(self.error(format!(
                                "unsupported escape `\\{other}` (supported: \\\\ \\' \\\" \\n \\r \\t)"
                            )));
                        }
                    });
                    self.pos += e.len_utf8();
                }
                c => out.push(c),
            }
        }
    }

    /// `+`/`-` signs (any number, as Python's unary operators) before a number.
    fn signed(&mut self) -> Result<PyValue> {
        let mut negative = false;
        loop {
            self.skip_ws();
            match self.peek() {
                Some('-') => negative = !negative,
                Some('+') => {}
                _ => break,
            }
            self.pos += 1;
        }
        match self.peek() {
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(negative),
            _ => Err(self.error(format!(
                "a sign must be followed by a number, found {}",
                self.found()
            ))),
        }
    }

    fn number(&mut self, negative: bool) -> Result<PyValue> {
        let start = self.pos;
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        // An exponent's sign belongs to the literal: `1e-3`, `2.5E+2`.
        let mut token_len = len;
        let bytes = rest.as_bytes();
        if token_len < rest.len()
            && matches!(bytes[token_len], b'+' | b'-')
            && token_len > 0
            && matches!(bytes[token_len - 1], b'e' | b'E')
            && !rest.starts_with("0x")
            && !rest.starts_with("0X")
        {
            let tail = &rest[token_len + 1..];
            let more = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            token_len += 1 + more;
        }
        let token = &rest[..token_len];
        let value = parse_number(token, negative).map_err(|message| self.error(message))?;
        self.pos = start + token_len;
        Ok(value)
    }

    fn word(&mut self) -> Result<PyValue> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..len];
        let value = match word {
            "True" => PyValue::Bool(true),
            "False" => PyValue::Bool(false),
            "None" => PyValue::None,
            "true" | "false" | "none" | "null" => {
                return Err(self.error(format!("`{word}` is not Python; write True, False or None")))
            }
            _ => {
                return Err(self.error(format!(
                    "`{word}` is not a literal (only numbers, strings, True, False, None, tuples \
                     and lists are accepted; nothing is evaluated)"
                )))
            }
        };
        self.pos += len;
        Ok(value)
    }
}

/// Reads one Python number token (its sign given apart): decimal, `0x`/`0o`/`0b` integers, or a
/// float.
fn parse_number(token: &str, negative: bool) -> std::result::Result<PyValue, String> {
    let bad = || format!("`{token}` is not a Python number");
    let sign = if negative { "-" } else { "" };
    let overflow = || format!("{sign}{token} does not fit in a 64-bit integer");
    // Underscores only between digits (Python's rule).
    let check_underscores = |digits: &str| -> std::result::Result<(), String> {
        let b = digits.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'_' {
                let ok = i > 0
                    && i + 1 < b.len()
                    && b[i - 1].is_ascii_alphanumeric()
                    && b[i + 1].is_ascii_alphanumeric();
                if !ok {
                    return Err(bad());
                }
            }
        }
        Ok(())
    };
    let lower = token.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = lower.strip_prefix(prefix) {
            // Python allows `0x_1f`.
            let digits = digits.strip_prefix('_').unwrap_or(digits);
            check_underscores(digits)?;
            let clean: String = digits.chars().filter(|&c| c != '_').collect();
            if clean.is_empty() {
                return Err(bad());
            }
            return i64::from_str_radix(&format!("{sign}{clean}"), radix)
                .map(PyValue::Int)
                .map_err(|e| match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        overflow()
                    }
                    _ => bad(),
                });
        }
    }
    if lower.ends_with('j') {
        return Err(format!("`{token}`: complex numbers are not supported"));
    }
    check_underscores(&lower)?;
    let clean: String = lower.chars().filter(|&c| c != '_').collect();
    let is_float = clean.contains(['.', 'e']);
    // Shape check (Rust's parser also takes `inf`, `nan` and `+1`, which Python literals do not).
    let (mantissa, exponent) = match clean.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (clean.as_str(), None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    let shape_ok = digits(int_part)
        && frac_part.is_none_or(digits)
        && (!int_part.is_empty() || frac_part.is_some_and(|f| !f.is_empty()))
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        });
    if !shape_ok {
        return Err(bad());
    }
    if !is_float {
        if clean.len() > 1 && clean.starts_with('0') && clean.bytes().any(|c| c != b'0') {
            return Err(format!(
                "`{token}`: leading zeros are not allowed in Python integers"
            ));
        }
        return format!("{sign}{clean}")
            .parse::<i64>()
            .map(PyValue::Int)
            .map_err(|_| overflow());
    }
    let value: f64 = clean.parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(format!("{token} is too large for a float"));
    }
    Ok(PyValue::Float(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(text: &str) -> Vec<(String, PyValue)> {
        TransformSpec::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .kwargs
    }

    fn one(value: &str) -> PyValue {
        let mut k = kw(&format!("t::{{'v': {value}}}"));
        assert_eq!(k.len(), 1);
        k.pop().unwrap().1
    }

    fn err(text: &str) -> String {
        match TransformSpec::parse(text) {
            Err(DataError::InvalidTransform { text: t, message }) => {
                assert_eq!(t, text);
                message
            }
            other => panic!("{text}: expected InvalidTransform, got {other:?}"),
        }
    }

    #[test]
    fn names_without_kwargs() {
        let spec = TransformSpec::parse("  center_crop ").unwrap();
        assert_eq!(spec.name, "center_crop");
        assert!(spec.kwargs.is_empty());
        assert!(TransformSpec::parse("center_crop::{}")
            .unwrap()
            .kwargs
            .is_empty());
        assert!(err("").contains("empty"));
        assert!(err("::{'p': 1}").contains("empty"));
        assert!(err("center crop").contains("character ' '"));
        assert!(err("center_crop{'p': 1}").contains("character '{'"));
    }

    #[test]
    fn numbers() {
        assert_eq!(one("224"), PyValue::Int(224));
        assert_eq!(one("-3"), PyValue::Int(-3));
        assert_eq!(one("+ 3"), PyValue::Int(3));
        assert_eq!(one("--3"), PyValue::Int(3));
        assert_eq!(one("1_000"), PyValue::Int(1000));
        assert_eq!(one("0"), PyValue::Int(0));
        assert_eq!(one("00"), PyValue::Int(0));
        assert_eq!(one("0x1F"), PyValue::Int(31));
        assert_eq!(one("0o17"), PyValue::Int(15));
        assert_eq!(one("0b101"), PyValue::Int(5));
        assert_eq!(one("0x_ff"), PyValue::Int(255));
        assert_eq!(one("-9223372036854775808"), PyValue::Int(i64::MIN));
        assert_eq!(one("0.5"), PyValue::Float(0.5));
        assert_eq!(one(".5"), PyValue::Float(0.5));
        assert_eq!(one("1."), PyValue::Float(1.0));
        assert_eq!(one("5e-2"), PyValue::Float(0.05));
        assert_eq!(one("-1.5E+3"), PyValue::Float(-1500.0));
        assert_eq!(one("1e3"), PyValue::Float(1000.0));
        assert_eq!(one("1_0.2_5"), PyValue::Float(10.25));
        assert_eq!(one("1.3333333333333333"), PyValue::Float(4.0 / 3.0));
        for bad in ["1__0", "1_", "1e", "1e+", "1.2.3", "0x", "0xg", "1k"] {
            let m = err(&format!("t::{{'v': {bad}}}"));
            assert!(m.contains("not a Python number"), "{bad}: {m}");
        }
        assert!(err("t::{'v': _1}").contains("not a literal"));
        assert!(err("t::{'v': 01}").contains("leading zeros"));
        assert!(err("t::{'v': 1j}").contains("complex"));
        assert!(err("t::{'v': 1e400}").contains("too large"));
        assert!(err("t::{'v': 9223372036854775808}").contains("64-bit"));
        assert!(err("t::{'v': - True}").contains("sign must be followed by a number"));
        assert!(err("t::{'v': inf}").contains("not a literal"));
        assert!(err("t::{'v': float('inf')}").contains("not a literal"));
    }

    #[test]
    fn strings_words_and_sequences() {
        assert_eq!(one("'a\\'b'"), PyValue::Str("a'b".into()));
        assert_eq!(one("\"x\\ty\""), PyValue::Str("x\ty".into()));
        assert_eq!(one("'é'"), PyValue::Str("é".into()));
        assert_eq!(one("True"), PyValue::Bool(true));
        assert_eq!(one("False"), PyValue::Bool(false));
        assert_eq!(one("None"), PyValue::None);
        assert_eq!(
            one("(0.08, 1)"),
            PyValue::Tuple(vec![PyValue::Float(0.08), PyValue::Int(1)])
        );
        assert_eq!(one("(1,)"), PyValue::Tuple(vec![PyValue::Int(1)]));
        assert_eq!(one("(1)"), PyValue::Int(1));
        assert_eq!(one("()"), PyValue::Tuple(vec![]));
        assert_eq!(one("[]"), PyValue::List(vec![]));
        assert_eq!(
            one("[1, (2, [3],), ]"),
            PyValue::List(vec![
                PyValue::Int(1),
                PyValue::Tuple(vec![PyValue::Int(2), PyValue::List(vec![PyValue::Int(3)])])
            ])
        );
        assert!(err("t::{'v': 'abc}").contains("not closed"));
        assert!(err("t::{'v': '\\x41'}").contains("unsupported escape"));
        assert!(err("t::{'v': true}").contains("write True"));
        assert!(err("t::{'v': {'a': 1}}").contains("nested dicts"));
        assert!(err("t::{'v': (1 2)}").contains("expected `,` or `)`"));
        let deep = format!("t::{{'v': {}1{}}}", "[".repeat(40), "]".repeat(40));
        assert!(err(&deep).contains("nest deeper"));
    }

    #[test]
    fn dicts() {
        let k = kw("random_resized_crop::{'scale': (0.08, 1.0), \"p\": 1.0,}");
        assert_eq!(
            k,
            vec![
                (
                    "scale".to_string(),
                    PyValue::Tuple(vec![PyValue::Float(0.08), PyValue::Float(1.0)])
                ),
                ("p".to_string(), PyValue::Float(1.0)),
            ]
        );
        let k = kw("normalize :: {\n  'mean' : [0.5, 0.5, 0.5] ,\n  'std': 0.5 }\n");
        assert_eq!(k.len(), 2);
        assert!(err("t::{'p': 1, 'p': 0.5}").contains("'p' is given twice"));
        assert!(err("t::{p: 1}").contains("quoted keyword name"));
        assert!(err("t::{1: 1}").contains("quoted keyword name"));
        assert!(err("t::{'p' 1}").contains("expected `:`"));
        assert!(err("t::{'p': 1").contains("expected `,` or `}`"));
        assert!(err("t::{'p': 1} x").contains("after the closing"));
        assert!(err("t::'p'").contains("expected a dict"));
        assert!(err("t::").contains("expected a dict"));
        assert!(err("t::{'p': 1}::{}").contains("after the closing"));
        // Positions count characters of the whole text, from 1.
        let m = err("t::{'p': ?}");
        assert!(m.starts_with("at character 10:"), "{m}");
    }

    #[test]
    fn display_reads_back() {
        for text in [
            "center_crop",
            "random_resized_crop::{'size': 224, 'scale': (0.08, 1.0), 'ratio': (0.75, 1.3333333333333333)}",
            "t::{'a': (1,), 'b': [], 'c': 'x\\'y\\n', 'd': None, 'e': True, 'f': -0.001, 'g': 1e-07}",
        ] {
            let spec = TransformSpec::parse(text).unwrap();
            let shown = spec.to_string();
            assert_eq!(TransformSpec::parse(&shown).unwrap(), spec, "{shown}");
        }
        assert_eq!(
            TransformSpec::parse("t::{ 'a':1.0,'b':(2,) }")
                .unwrap()
                .to_string(),
            "t::{'a': 1.0, 'b': (2,)}"
        );
    }

    #[test]
    fn never_panics_on_prefixes() {
        // Every prefix and every single-byte corruption of valid texts either parses or errs.
        let texts = [
            "random_resized_crop::{'scale': (0.08, 1.0), 'ratio': [3e-1, .5], 'x': -0x1f, 'y': 'é\\n'}",
        ];
        for text in texts {
            for (i, _) in text.char_indices() {
                let _ = TransformSpec::parse(&text[..i]);
                let mut s = text.to_string();
                s.replace_range(i..i + text[i..].chars().next().unwrap().len_utf8(), "}");
                let _ = TransformSpec::parse(&s);
            }
        }
    }
}
