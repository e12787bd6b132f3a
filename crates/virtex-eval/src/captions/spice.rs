//! SPICE (Anderson et al., ECCV 2016), upstream's third caption metric, through Stanford's
//! Java jar — the one metric this crate cannot compute by itself.
//!
//! pycocoevalcap's `Spice.compute_score` (and VirTex's `virtex/utils/metrics.py::spice`, its
//! copy) write a JSON list of `{"image_id", "test", "refs"}` — the captions already tokenised
//! by the PTB tokenizer and stripped of punctuation, as for every other metric — run
//!
//! ```text
//! java -jar -Xmx8G spice-1.0.jar INPUT.json -cache CACHE_DIR -out OUTPUT.json -subset -silent
//! ```
//!
//! in the jar's directory, and average the per-image `scores.All.f` of the output. This module
//! does the same: [`spice_entries`] (our [`coco_tokenize`](crate::coco_tokenize) standing in for the CoreNLP
//! tokenizer), [`spice_input_json`] (byte for byte what Python's `json.dump(…, indent=2)`
//! writes, non-ASCII escaped), [`Spice::score`] (the child process) and [`parse_spice_output`]
//! (pycocoevalcap's `float_convert` and `np.mean`). [`spice_availability`] says whether the jar
//! and Java are there, and why not.
//!
//! Image order is the ground truth's, as VirTex's evaluator writes it (pycocoevalcap sorts the
//! ids); SPICE scores every image on its own, so the order changes no score.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::captions::coco::{prepare_captions, ImageId};
use crate::error::{EvalError, Result};

/// The environment variable that names the SPICE jar when no path is given explicitly.
pub const SPICE_JAR_ENV: &str = "VIRTEX_SPICE_JAR";

/// The Java heap pycocoevalcap gives the jar (`-Xmx8G`).
pub const SPICE_DEFAULT_MAX_HEAP: &str = "8G";

/// Lines of the jar's stderr kept in [`EvalError::SpiceFailed`].
const STDERR_TAIL_LINES: usize = 20;
/// Characters of the jar's stderr kept in [`EvalError::SpiceFailed`].
const STDERR_TAIL_CHARS: usize = 4000;

/// One element of the jar's input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiceEntry {
    /// The image.
    pub image_id: ImageId,
    /// The tokenised candidate caption (empty when the image has no prediction).
    pub test: String,
    /// The tokenised reference captions.
    pub refs: Vec<String>,
}

/// The jar's input for predictions scored against a ground truth, preprocessed exactly as
/// [`crate::evaluate_captions`] does for CIDEr-D and BLEU: one entry per ground-truth image in
/// ground-truth order, candidate and references [`coco_tokenize`](crate::coco_tokenize)d, an image without a
/// prediction given the empty caption, predictions outside the ground truth dropped.
pub fn spice_entries(
    predictions: &[(ImageId, String)],
    ground_truth: &[(ImageId, Vec<String>)],
) -> Vec<SpiceEntry> {
    let prepared = prepare_captions(predictions, ground_truth);
    ground_truth
        .iter()
        .zip(prepared.candidates)
        .zip(prepared.references)
        .map(|(((image_id, _), test), refs)| SpiceEntry {
            image_id: image_id.clone(),
            test,
            refs,
        })
        .collect()
}

/// The input file's text, as pycocoevalcap writes it with `json.dump(input_data, f, indent=2)`:
/// two-space indentation, `,` at line ends and `": "` after keys, and Python's
/// `ensure_ascii` — every character outside printable ASCII written as `\uXXXX` (surrogate
/// pairs above U+FFFF), so the jar reads the same captions whatever Java's default charset.
pub fn spice_input_json(entries: &[SpiceEntry]) -> String {
    // serde_json's pretty printer has Python's layout for lists of objects of strings and
    // integers; only the non-ASCII escaping differs. Outside strings JSON is ASCII, so every
    // non-ASCII character (and DEL, which Python escapes too) is inside a string literal.
    let pretty = serde_json::to_string_pretty(entries)
        .expect("serialising integers, strings and lists of strings cannot fail");
    let mut out = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Writes [`spice_input_json`] to `path`.
pub fn write_spice_input(path: &Path, entries: &[SpiceEntry]) -> Result<()> {
    std::fs::write(path, spice_input_json(entries)).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// F-score, precision and recall of one tuple category of one image. `NaN` where the jar wrote
/// `null` (a subset category without reference tuples) or anything else that is not a number,
/// as pycocoevalcap's `float_convert` does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpicePrf {
    /// F1 score.
    pub f: f64,
    /// Precision.
    pub pr: f64,
    /// Recall.
    pub re: f64,
}

/// SPICE scores of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpiceImageScore {
    /// The image.
    pub image_id: ImageId,
    /// All tuples: `all.f` is the image's SPICE.
    pub all: SpicePrf,
    /// The `-subset` categories the jar reported (`Object`, `Attribute`, `Relation`,
    /// `Cardinality`, `Color`, `Size`), by name.
    pub categories: BTreeMap<String, SpicePrf>,
}

/// The outcome of a SPICE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpiceScores {
    /// The mean of `All.f` over the images (coco-caption scale; VirTex prints `100 ×` this).
    /// `NaN` when any image's `All.f` is not a number, or without images, as `np.mean` gives.
    pub spice: f64,
    /// Per-image scores: in the output file's order from [`parse_spice_output`], in the input's
    /// order from [`Spice::score`].
    pub per_image: Vec<SpiceImageScore>,
}

impl SpiceScores {
    /// Images whose `All.f` is `NaN` (the reason [`SpiceScores::spice`] is `NaN`). The real jar
    /// never writes one: it scores "All" with `allowNan = false`.
    pub fn nan_images(&self) -> usize {
        self.per_image.iter().filter(|s| s.all.f.is_nan()).count()
    }
}

/// pycocoevalcap's `Spice.float_convert`: `float(obj)`, `NaN` when that raises.
fn float_convert(value: Option<&Value>) -> f64 {
    match value {
        Some(Value::Number(number)) => number.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(text)) => text.trim().parse().unwrap_or(f64::NAN),
        Some(Value::Bool(flag)) => f64::from(u8::from(*flag)),
        _ => f64::NAN,
    }
}

fn prf(category: &serde_json::Map<String, Value>) -> SpicePrf {
    SpicePrf {
        f: float_convert(category.get("f")),
        pr: float_convert(category.get("pr")),
        re: float_convert(category.get("re")),
    }
}

/// Parses the jar's `-out` file: a JSON list of `{"image_id", "scores": {"All": {"f", "pr",
/// "re", "tp", …}, "Object": {…}, …}}` (any key order, `null` for the jar's `NaN`s). The mean
/// is pycocoevalcap's: `np.mean` of `float_convert(item["scores"]["All"]["f"])` over the list,
/// so one non-numeric `All.f` makes it `NaN`. An item without `image_id`, `scores`, `All` or
/// `All.f` (a `KeyError` in pycocoevalcap) is an error naming `path` and the item.
pub fn parse_spice_output(text: &str, path: &Path) -> Result<SpiceScores> {
    let unusable = |message: String| EvalError::SpiceOutput {
        path: path.to_path_buf(),
        message,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|err| unusable(format!("not JSON ({err})")))?;
    let Value::Array(items) = value else {
        return Err(unusable("not a JSON list".into()));
    };
    let mut per_image = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |what: &str| unusable(format!("item {index}: {what}"));
        let image_id = item.get("image_id").ok_or_else(|| at("no `image_id`"))?;
        let image_id: ImageId = serde_json::from_value(image_id.clone()).map_err(|_| {
            at(&format!(
                "`image_id` {image_id} is not an integer or a string"
            ))
        })?;
        let scores = item
            .get("scores")
            .and_then(Value::as_object)
            .ok_or_else(|| at("no `scores` object"))?;
        let all = scores
            .get("All")
            .and_then(Value::as_object)
            .ok_or_else(|| at("no `scores.All` object"))?;
        if !all.contains_key("f") {
            return Err(at("no `scores.All.f`"));
        }
        let categories = scores
            .iter()
            .filter(|(name, _)| name.as_str() != "All")
            .map(|(name, category)| {
                let category = category
                    .as_object()
                    .ok_or_else(|| at(&format!("`scores.{name}` is not an object")))?;
                Ok((name.clone(), prf(category)))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        per_image.push(SpiceImageScore {
            image_id,
            all: prf(all),
            categories,
        });
    }
    let spice = if per_image.is_empty() {
        f64::NAN
    } else {
        per_image.iter().map(|s| s.all.f).sum::<f64>() / per_image.len() as f64
    };
    Ok(SpiceScores { spice, per_image })
}

/// Reads and parses the jar's `-out` file ([`parse_spice_output`]).
pub fn read_spice_output(path: &Path) -> Result<SpiceScores> {
    let text = std::fs::read_to_string(path).map_err(|err| EvalError::SpiceOutput {
        path: path.to_path_buf(),
        message: format!("cannot read it ({err})"),
    })?;
    parse_spice_output(&text, path)
}

/// Where a SPICE jar path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JarOrigin {
    /// Given explicitly (an argument, `--spice-jar`).
    Explicit,
    /// From the [`SPICE_JAR_ENV`] environment variable.
    Environment,
}

impl fmt::Display for JarOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Explicit => f.write_str("given explicitly"),
            Self::Environment => write!(f, "from {SPICE_JAR_ENV}"),
        }
    }
}

/// Why SPICE cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiceUnavailable {
    /// No jar path was given and [`SPICE_JAR_ENV`] is unset or empty.
    #[error("no SPICE jar given (a path, or {SPICE_JAR_ENV})")]
    NoJar,
    /// A jar path was given but there is no file there.
    #[error("the SPICE jar `{}` ({origin}) does not exist or is not a file", path.display())]
    JarNotFound {
        /// The path.
        path: PathBuf,
        /// Where it came from.
        origin: JarOrigin,
    },
    /// Neither `$JAVA_HOME/bin/java` nor a `java` on `PATH` exists.
    #[error("no Java found: {0}")]
    NoJava(String),
}

/// The environment variables SPICE's availability depends on (a value, so tests need not
/// change the process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpiceEnvironment {
    /// [`SPICE_JAR_ENV`].
    pub jar: Option<OsString>,
    /// `JAVA_HOME`.
    pub java_home: Option<OsString>,
    /// `PATH`.
    pub path: Option<OsString>,
}

impl SpiceEnvironment {
    /// The current process's environment.
    pub fn current() -> Self {
        Self {
            jar: std::env::var_os(SPICE_JAR_ENV),
            java_home: std::env::var_os("JAVA_HOME"),
            path: std::env::var_os("PATH"),
        }
    }
}

fn non_empty(value: Option<&OsString>) -> Option<&OsString> {
    value.filter(|v| !v.is_empty())
}

/// The Java executable: `$JAVA_HOME/bin/java` when that file exists, else the first `java` on
/// `PATH` (`java.exe` on Windows), the one pycocoevalcap's bare `java` would start.
pub fn find_java(env: &SpiceEnvironment) -> std::result::Result<PathBuf, SpiceUnavailable> {
    let name = format!("java{}", std::env::consts::EXE_SUFFIX);
    let mut tried = Vec::new();
    match non_empty(env.java_home.as_ref()) {
        Some(home) => {
            let java = Path::new(home).join("bin").join(&name);
            if java.is_file() {
                return Ok(java);
            }
            tried.push(format!(
                "`{}` (from JAVA_HOME) does not exist",
                java.display()
            ));
        }
        None => tried.push("JAVA_HOME is not set".to_string()),
    }
    match non_empty(env.path.as_ref()) {
        Some(path) => {
            if let Some(java) = std::env::split_paths(path)
                .filter(|dir| !dir.as_os_str().is_empty())
                .map(|dir| dir.join(&name))
                .find(|java| java.is_file())
            {
                return Ok(java);
            }
            tried.push(format!("no `{name}` on PATH"));
        }
        None => tried.push("PATH is not set".to_string()),
    }
    Err(SpiceUnavailable::NoJava(tried.join(" and ")))
}

/// Whether SPICE can run with `jar` (or, without one, [`SPICE_JAR_ENV`]) in the current
/// environment: the runner, or why not. See [`spice_availability_in`].
pub fn spice_availability(jar: Option<&Path>) -> std::result::Result<Spice, SpiceUnavailable> {
    spice_availability_in(jar, &SpiceEnvironment::current())
}

/// Whether SPICE can run in `env`: the jar is `jar`, else `env.jar`; it must be a file (checked
/// first, so a wrong path is reported even where Java is missing); Java is [`find_java`]'s.
pub fn spice_availability_in(
    jar: Option<&Path>,
    env: &SpiceEnvironment,
) -> std::result::Result<Spice, SpiceUnavailable> {
    let (jar, origin) = match (jar, non_empty(env.jar.as_ref())) {
        (Some(jar), _) => (jar.to_path_buf(), JarOrigin::Explicit),
        (None, Some(jar)) => (PathBuf::from(jar), JarOrigin::Environment),
        (None, None) => return Err(SpiceUnavailable::NoJar),
    };
    if !jar.is_file() {
        return Err(SpiceUnavailable::JarNotFound { path: jar, origin });
    }
    let java = find_java(env)?;
    Ok(Spice::new(java, jar))
}

/// Runs Stanford's SPICE jar the way pycocoevalcap does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spice {
    java: PathBuf,
    jar: PathBuf,
    cache_dir: Option<PathBuf>,
    max_heap: String,
}

impl Spice {
    /// A runner for `jar` started with `java`, with pycocoevalcap's defaults: the parse cache in
    /// `cache/` next to the jar, an 8 GB heap.
    pub fn new(java: impl Into<PathBuf>, jar: impl Into<PathBuf>) -> Self {
        let jar = jar.into();
        let cache_dir = Some(jar_directory(&jar).join("cache"));
        Self {
            java: java.into(),
            jar,
            cache_dir,
            max_heap: SPICE_DEFAULT_MAX_HEAP.to_string(),
        }
    }

    /// Caches reference parses in `cache_dir` (created when missing; repeated evaluations get
    /// much faster), or not at all with `None` (no `-cache` argument).
    pub fn with_cache_dir(mut self, cache_dir: Option<PathBuf>) -> Self {
        self.cache_dir = cache_dir;
        self
    }

    /// The `-Xmx` heap size, e.g. `"8G"`.
    pub fn with_max_heap(mut self, max_heap: impl Into<String>) -> Self {
        self.max_heap = max_heap.into();
        self
    }

    /// The Java executable.
    pub fn java(&self) -> &Path {
        &self.java
    }

    /// The jar.
    pub fn jar(&self) -> &Path {
        &self.jar
    }

    /// The parse cache directory, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// The arguments given to Java: pycocoevalcap's
    /// `-jar -Xmx8G JAR INPUT -cache CACHE -out OUTPUT -subset -silent`.
    pub fn arguments(&self, input: &Path, output: &Path) -> Vec<OsString> {
        let mut arguments: Vec<OsString> = vec![
            "-jar".into(),
            format!("-Xmx{}", self.max_heap).into(),
            self.jar.clone().into(),
            input.into(),
        ];
        if let Some(cache) = &self.cache_dir {
            arguments.push("-cache".into());
            arguments.push(cache.into());
        }
        arguments.extend([
            "-out".into(),
            output.into(),
            "-subset".into(),
            "-silent".into(),
        ]);
        arguments
    }

    /// SPICE of predictions against a ground truth: [`spice_entries`] then [`Spice::score`].
    pub fn evaluate(
        &self,
        predictions: &[(ImageId, String)],
        ground_truth: &[(ImageId, Vec<String>)],
    ) -> Result<SpiceScores> {
        self.score(&spice_entries(predictions, ground_truth))
    }

    /// Runs the jar on `entries` (in a temporary directory, removed afterwards; the working
    /// directory is the jar's, as pycocoevalcap's) and returns the scores in `entries` order.
    ///
    /// Errors: [`EvalError::SpiceUnavailable`] when the jar is not a file,
    /// [`EvalError::SpiceJava`] when Java cannot be started, [`EvalError::SpiceFailed`] with
    /// the command and the end of its stderr on a failure exit, [`EvalError::SpiceOutput`] when
    /// the output is missing, not the jar's JSON, or does not hold exactly the input's images.
    pub fn score(&self, entries: &[SpiceEntry]) -> Result<SpiceScores> {
        if entries.is_empty() {
            return Err(EvalError::Shape("SPICE needs at least one image".into()));
        }
        if !self.jar.is_file() {
            return Err(SpiceUnavailable::JarNotFound {
                path: self.jar.clone(),
                origin: JarOrigin::Explicit,
            }
            .into());
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EvalError::Io { path, source }
        };
        // The child runs in the jar's directory: every path it gets must be absolute.
        let absolute = |path: &Path| std::path::absolute(path).map_err(io(path));
        let runner = Self {
            java: self.java.clone(),
            jar: absolute(&self.jar)?,
            cache_dir: self.cache_dir.as_deref().map(absolute).transpose()?,
            max_heap: self.max_heap.clone(),
        };
        if let Some(cache) = &runner.cache_dir {
            std::fs::create_dir_all(cache).map_err(io(cache))?;
        }
        let temporary = tempfile::Builder::new()
            .prefix("virtex-spice-")
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let input = temporary.path().join("input_file.json");
        let output = temporary.path().join("output_file.json");
        write_spice_input(&input, entries)?;

        let arguments = runner.arguments(&input, &output);
        let mut command = Command::new(&runner.java);
        command
            .args(&arguments)
            .current_dir(jar_directory(&runner.jar))
            .stdin(Stdio::null());
        let finished = command.output().map_err(|source| EvalError::SpiceJava {
            java: runner.java.clone(),
            source,
        })?;
        if !finished.status.success() {
            let stderr = String::from_utf8_lossy(&finished.stderr);
            let text = if stderr.trim().is_empty() {
                String::from_utf8_lossy(&finished.stdout)
            } else {
                stderr
            };
            return Err(EvalError::SpiceFailed {
                command: command_line(&runner.java, &arguments),
                status: finished.status.to_string(),
                stderr_tail: tail(&text),
            });
        }
        if !output.is_file() {
            return Err(EvalError::SpiceOutput {
                path: output,
                message: format!(
                    "`{}` exited successfully but wrote no output file",
                    command_line(&runner.java, &arguments)
                ),
            });
        }
        let scores = read_spice_output(&output)?;
        in_input_order(scores, entries, &output)
    }
}

/// The directory the jar lies in (`.` for a bare file name).
fn jar_directory(jar: &Path) -> PathBuf {
    match jar.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `scores.per_image` reordered as `entries`; every input image exactly once.
fn in_input_order(
    scores: SpiceScores,
    entries: &[SpiceEntry],
    output: &Path,
) -> Result<SpiceScores> {
    let unusable = |message: String| EvalError::SpiceOutput {
        path: output.to_path_buf(),
        message,
    };
    let mut by_id: HashMap<ImageId, SpiceImageScore> = HashMap::new();
    for score in scores.per_image {
        let id = score.image_id.clone();
        if by_id.insert(id.clone(), score).is_some() {
            return Err(unusable(format!("image {id} is scored twice")));
        }
    }
    let mut per_image = Vec::with_capacity(entries.len());
    for entry in entries {
        let score = by_id
            .remove(&entry.image_id)
            .ok_or_else(|| unusable(format!("input image {} is not scored", entry.image_id)))?;
        per_image.push(score);
    }
    if let Some(id) = by_id.keys().next() {
        return Err(unusable(format!("image {id} was not in the input")));
    }
    Ok(SpiceScores {
        spice: scores.spice,
        per_image,
    })
}

/// A readable command line (arguments with spaces in single quotes).
fn command_line(program: &Path, arguments: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(arguments.iter().map(OsString::as_os_str))
        .map(|part| {
            let part = part.to_string_lossy();
            if part.is_empty() || part.contains(char::is_whitespace) {
                format!("'{part}'")
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last [`STDERR_TAIL_LINES`] lines of `text`, at most [`STDERR_TAIL_CHARS`] characters.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let kept = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    let count = kept.chars().count();
    if count <= STDERR_TAIL_CHARS {
        kept
    } else {
        let skipped: String = kept.chars().skip(count - STDERR_TAIL_CHARS).collect();
        format!("…{skipped}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_convert_is_python_float_or_nan() {
        let v = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(float_convert(Some(&v("0.25"))), 0.25);
        assert_eq!(float_convert(Some(&v("1"))), 1.0);
        assert_eq!(float_convert(Some(&v("\" 0.5 \""))), 0.5);
        assert_eq!(float_convert(Some(&v("true"))), 1.0);
        assert!(float_convert(Some(&v("\"NaN\""))).is_nan());
        assert!(float_convert(Some(&v("null"))).is_nan());
        assert!(float_convert(Some(&v("\"n/a\""))).is_nan());
        assert!(float_convert(Some(&v("[1]"))).is_nan());
        assert!(float_convert(None).is_nan());
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let kept = tail(&text);
        assert!(
            kept.starts_with("line 10\n") && kept.ends_with("line 29"),
            "{kept}"
        );
        let long = "x".repeat(STDERR_TAIL_CHARS + 10);
        assert_eq!(tail(&long).chars().count(), STDERR_TAIL_CHARS + 1);
    }

    #[test]
    fn command_lines_quote_arguments_with_spaces() {
        let line = command_line(
            Path::new("/usr/bin/java"),
            &["-jar".into(), "/my jars/spice-1.0.jar".into()],
        );
        assert_eq!(line, "/usr/bin/java -jar '/my jars/spice-1.0.jar'");
    }
}
