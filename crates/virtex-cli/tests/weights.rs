//! `virtex weights`: downloads from a local HTTP server (never the internet), the SHA-256
//! recorded at the first download and checked on every later use, pinned digests, resumed and
//! restarted downloads, and the resolution of `--weights` arguments.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};
use virtex_cli::{
    released_weights, resolve_weights, CliError, FetchOptions, ReleasedWeights, WeightsCache,
};

const NAME: &str = "bicaptioning_R_50_L1_H2048";

/// How the test server answers the next requests.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Honours `Range: bytes=N-` with a 206.
    Normal,
    /// Announces the whole file, sends this many bytes, then closes the connection.
    CutAfter(usize),
    /// Answers every request with a 200 and the whole file, as servers without range support do.
    IgnoreRange,
}

/// One request the server received.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    range: Option<String>,
}

/// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1 serving `body` at `/NAME.pth`.
struct Server {
    base_url: String,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (thread_mode, thread_requests) = (mode.clone(), requests.clone());
        // The thread ends with the test process; each test has its own server and port.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mode = *thread_mode.lock().unwrap();
                if let Some(request) = serve(stream, &body, mode) {
                    thread_requests.lock().unwrap().push(request);
                }
            }
        });
        Self {
            base_url,
            mode,
            requests,
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, body: &[u8], mode: Mode) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let request = Request {
        path: path.clone(),
        range: range.clone(),
    };
    let expected_path = format!("/{NAME}.pth");
    let head = |status: &str, extra: &str, length: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\n{extra}Connection: close\r\n\r\n")
    };
    let (header, payload): (String, &[u8]) = if path != expected_path {
        (head("404 Not Found", "", 0), &[])
    } else {
        let start = range
            .as_deref()
            .and_then(|range| range.strip_prefix("bytes="))
            .and_then(|range| range.strip_suffix('-'))
            .and_then(|start| start.parse::<usize>().ok());
        match (mode, start) {
            (Mode::CutAfter(count), _) => (head("200 OK", "", body.len()), &body[..count]),
            (Mode::Normal, Some(start)) if start >= body.len() => {
                let extra = format!("Content-Range: bytes */{}\r\n", body.len());
                (head("416 Range Not Satisfiable", &extra, 0), &[])
            }
            (Mode::Normal, Some(start)) => {
                let extra = format!(
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                let rest = &body[start..];
                (head("206 Partial Content", &extra, rest.len()), rest)
            }
            _ => (head("200 OK", "", body.len()), body),
        }
    };
    let _ = stream.write_all(header.as_bytes());
    let _ = stream.write_all(payload);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    Some(request)
}

/// A few hundred KB of bytes that are not all alike (so a cut at any point is visible).
fn fixture() -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn bicaptioning() -> &'static ReleasedWeights {
    released_weights(NAME).unwrap()
}

struct Fixture {
    body: Vec<u8>,
    server: Server,
    cache: WeightsCache,
    directory: tempfile::TempDir,
}

fn setup() -> Fixture {
    let body = fixture();
    let server = Server::start(body.clone());
    let directory = tempfile::tempdir().unwrap();
    let cache = WeightsCache {
        dir: directory.path().join("cache").join("weights"),
        mirror: Some(format!("{}/", server.base_url)),
    };
    Fixture {
        body,
        server,
        cache,
        directory,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

#[test]
fn fetch_from_the_mirror_records_the_digest() {
    let f = setup();
    let path = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap();
    assert_eq!(path, f.cache.dir.join(format!("{NAME}.pth")));
    assert_eq!(std::fs::read(&path).unwrap(), f.body);
    let record = std::fs::read_to_string(with_suffix(&path, ".sha256")).unwrap();
    assert_eq!(record, format!("{}  {NAME}.pth\n", sha256(&f.body)));
    assert!(!with_suffix(&path, ".part").exists());
    let requests = f.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, format!("/{NAME}.pth"));
    assert_eq!(requests[0].range, None);

    let entries = f.cache.entries().unwrap();
    let entry = entries
        .iter()
        .find(|entry| entry.weights.name == NAME)
        .unwrap();
    assert_eq!(entry.size, Some(f.body.len() as u64));
    assert_eq!(entry.recorded_sha256, Some(sha256(&f.body)));
    let table = virtex_cli::format_list(&entries);
    let line = table.lines().find(|line| line.starts_with(NAME)).unwrap();
    assert!(
        line.contains(&sha256(&f.body)) && line.contains("300000"),
        "{line}"
    );
    // Files not downloaded have no size: upstream publishes none.
    let other = table
        .lines()
        .find(|line| line.starts_with("captioning_R_50_L1_H2048"))
        .unwrap();
    assert!(other.contains(" ? ") && other.contains(" no "), "{other}");
}

#[test]
fn a_second_use_verifies_without_downloading() {
    let f = setup();
    let path = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap();
    for argument in [NAME.to_string(), format!("{NAME}.pth")] {
        assert_eq!(f.cache.resolve(Path::new(&argument)).unwrap(), path);
    }
    let pinned = FetchOptions {
        sha256: Some(sha256(&f.body).to_uppercase()),
        force: false,
    };
    assert_eq!(f.cache.fetch(bicaptioning(), &pinned).unwrap(), path);
    assert_eq!(
        f.server.requests().len(),
        1,
        "the cached file was downloaded again"
    );

    let forced = FetchOptions {
        sha256: None,
        force: true,
    };
    f.cache.fetch(bicaptioning(), &forced).unwrap();
    assert_eq!(f.server.requests().len(), 2, "--force downloads again");
}

#[test]
fn a_file_corrupted_in_the_cache_is_refused_and_kept() {
    let f = setup();
    let path = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap();
    let mut bytes = f.body.clone();
    bytes[1234] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = f.cache.resolve(Path::new(NAME)).unwrap_err();
    match &err {
        CliError::ChecksumMismatch {
            path: at_fault,
            expected,
            actual,
            ..
        } => {
            assert_eq!(at_fault, &path);
            assert_eq!(expected, &sha256(&f.body));
            assert_eq!(actual, &sha256(&bytes));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("--force"), "{message}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file must not be deleted"
    );
    assert_eq!(f.server.requests().len(), 1);
}

#[test]
fn a_wrong_pinned_digest_is_refused() {
    let f = setup();
    let invalid = FetchOptions {
        sha256: Some("not-hex".into()),
        force: false,
    };
    let err = f.cache.fetch(bicaptioning(), &invalid).unwrap_err();
    assert!(
        matches!(
            err,
            CliError::InvalidArgument {
                option: "--sha256",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        f.server.requests().is_empty(),
        "an invalid pin is refused before downloading"
    );

    let wrong = FetchOptions {
        sha256: Some("0".repeat(64)),
        force: false,
    };
    let err = f.cache.fetch(bicaptioning(), &wrong).unwrap_err();
    let path = f.cache.dir.join(format!("{NAME}.pth"));
    let rejected = with_suffix(&path, ".rejected");
    match &err {
        CliError::ChecksumMismatch {
            path: at_fault,
            expected,
            actual,
            ..
        } => {
            assert_eq!(at_fault, &rejected);
            assert_eq!(expected, &"0".repeat(64));
            assert_eq!(actual, &sha256(&f.body));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    // The bad download is kept aside, never under the cache name, and nothing is recorded.
    assert!(!path.exists());
    assert!(!with_suffix(&path, ".sha256").exists());
    assert!(!with_suffix(&path, ".part").exists());
    assert_eq!(std::fs::read(&rejected).unwrap(), f.body);

    let right = FetchOptions {
        sha256: Some(sha256(&f.body)),
        force: false,
    };
    assert_eq!(f.cache.fetch(bicaptioning(), &right).unwrap(), path);
    assert_eq!(f.server.requests().len(), 2);
    assert_eq!(
        f.server.requests()[1].range,
        None,
        "a rejected file is not resumed"
    );

    // A pin that disagrees with an already cached file is refused too, and the file kept.
    let err = f.cache.fetch(bicaptioning(), &wrong).unwrap_err();
    assert!(matches!(err, CliError::ChecksumMismatch { .. }), "{err:?}");
    assert!(path.exists());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let f = setup();
    let half = f.body.len() / 2;
    f.server.set_mode(Mode::CutAfter(half));
    let err = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap_err();
    assert!(matches!(err, CliError::WeightsNetwork { .. }), "{err:?}");
    assert!(err.to_string().contains("resume"), "{err}");
    let path = f.cache.dir.join(format!("{NAME}.pth"));
    let part = with_suffix(&path, ".part");
    let kept = std::fs::read(&part).unwrap();
    assert!(
        !kept.is_empty() && kept.len() <= half,
        "{} bytes kept",
        kept.len()
    );
    assert_eq!(kept[..], f.body[..kept.len()]);
    assert!(!path.exists());

    f.server.set_mode(Mode::Normal);
    let fetched = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap();
    let requests = f.server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", kept.len()).as_str())
    );
    assert_eq!(std::fs::read(&fetched).unwrap(), f.body);
    let record = std::fs::read_to_string(with_suffix(&path, ".sha256")).unwrap();
    assert!(record.starts_with(&sha256(&f.body)));
    assert!(!part.exists());
}

#[test]
fn a_server_ignoring_the_range_restarts_cleanly() {
    let f = setup();
    f.server.set_mode(Mode::CutAfter(f.body.len() / 3));
    f.cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap_err();
    f.server.set_mode(Mode::IgnoreRange);
    let fetched = f
        .cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap();
    let requests = f.server.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].range.is_some(),
        "the second request must ask for a range"
    );
    assert_eq!(std::fs::read(&fetched).unwrap(), f.body);
}

#[test]
fn an_http_error_names_the_url_and_status() {
    let f = setup();
    let cache = WeightsCache {
        dir: f.cache.dir.clone(),
        mirror: Some(format!("{}/moved", f.server.base_url)),
    };
    let err = cache
        .fetch(bicaptioning(), &FetchOptions::default())
        .unwrap_err();
    match &err {
        CliError::WeightsHttp { url, status, .. } => {
            assert_eq!(url, &format!("{}/moved/{NAME}.pth", f.server.base_url));
            assert_eq!(*status, 404);
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn unknown_names_and_existing_paths() {
    let err = resolve_weights(Path::new("bicaptioning_R_50_L9_H2048")).unwrap_err();
    assert!(matches!(err, CliError::UnknownWeights { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("bicaptioning_R_50_L9_H2048"), "{message}");
    assert!(
        message.contains("neither a file nor a released"),
        "{message}"
    );
    assert!(message.contains("virtex weights list"), "{message}");

    // A released name inside a directory is a missing file, not a name.
    let f = setup();
    let err = f
        .cache
        .resolve(Path::new("models/bicaptioning_R_50_L1_H2048.pth"))
        .unwrap_err();
    assert!(matches!(err, CliError::UnknownWeights { .. }), "{err:?}");

    // An existing file is used as is, even if it carries a released name.
    let local = f.directory.path().join(format!("{NAME}.pth"));
    std::fs::write(&local, b"local").unwrap();
    assert_eq!(resolve_weights(&local).unwrap(), local);
    assert!(f.server.requests().is_empty());
}

/// The binary, with the cache directory and mirror from its (child-process) environment.
#[test]
fn the_command_line_fetches_and_lists() {
    let f = setup();
    let run = |args: &[&str]| {
        Process::new(env!("CARGO_BIN_EXE_virtex"))
            .args(args)
            .env("VIRTEX_CACHE_DIR", &f.cache.dir)
            .env("VIRTEX_WEIGHTS_MIRROR", &f.server.base_url)
            .output()
            .unwrap()
    };
    let fetched = run(&["weights", "fetch", NAME]);
    assert!(fetched.status.success(), "{fetched:?}");
    let path = f.cache.dir.join(format!("{NAME}.pth"));
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout).trim(),
        path.display().to_string()
    );

    let listed = run(&["weights", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let table = String::from_utf8_lossy(&listed.stdout);
    let line = table.lines().find(|line| line.starts_with(NAME)).unwrap();
    assert!(line.contains(&sha256(&f.body)), "{line}");
    assert!(
        line.contains(&format!("{}/{NAME}.pth", f.server.base_url)),
        "{line}"
    );
    assert!(
        table.contains("backbone_bicaptioning_R_50_L1_H2048"),
        "{table}"
    );

    let unknown = run(&["weights", "fetch", "resnet50"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("virtex weights list"),
        "{unknown:?}"
    );

    // `features --weights` names an unknown argument before loading anything.
    let images = f.directory.path().join("images");
    std::fs::create_dir(&images).unwrap();
    image::RgbImage::new(8, 8)
        .save(images.join("one.png"))
        .unwrap();
    let out = f.directory.path().join("features.safetensors");
    let features = run(&[
        "features",
        "--weights",
        "no_such_weights",
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!features.status.success());
    let stderr = String::from_utf8_lossy(&features.stderr);
    assert!(
        stderr.contains("`no_such_weights` is neither a file nor a released"),
        "{stderr}"
    );
}

/// A released name works wherever a model path is taken: the mirror serves a real (tiny)
/// VirTex checkpoint under the released file name; `caption --checkpoint NAME` downloads it
/// into the cache and captions; `features --weights NAME` (a ResNet-18 behind the name)
/// downloads once and then uses the cached, verified file, and `features --weights
/// RUN_DIR` takes a run's newest checkpoint.
#[test]
fn released_names_and_run_directories_work_where_a_model_path_is_taken() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let checkpoint = workspace.join("crates/virtex/tests/fixtures/bicaptioning_tiny.pth");
    let server = Server::start(std::fs::read(&checkpoint).unwrap());
    let directory = tempfile::tempdir().unwrap();
    let cache = directory.path().join("cache");
    let run = |args: &[&std::ffi::OsStr]| {
        Process::new(env!("CARGO_BIN_EXE_virtex"))
            .args(args)
            .env("VIRTEX_CACHE_DIR", &cache)
            .env("VIRTEX_WEIGHTS_MIRROR", &server.base_url)
            .output()
            .unwrap()
    };
    let vocab = directory.path().join("vocab.json");
    let trained = run(&[
        "train-tokenizer".as_ref(),
        "--captions".as_ref(),
        workspace
            .join("crates/virtex-data/sample/annotations/captions_train2017.json")
            .as_os_str(),
        "--vocab-size".as_ref(),
        "50".as_ref(),
        "--out".as_ref(),
        vocab.as_os_str(),
    ]);
    assert!(trained.status.success(), "{trained:?}");
    let images = workspace.join("crates/virtex-data/sample/val2017");
    let captioned = run(&[
        "caption".as_ref(),
        "--checkpoint".as_ref(),
        NAME.as_ref(),
        "--vocab".as_ref(),
        vocab.as_os_str(),
        "--images".as_ref(),
        images.as_os_str(),
        "--attention-heads".as_ref(),
        "2".as_ref(),
        "--greedy".as_ref(),
        "--short-side".as_ref(),
        "64".as_ref(),
        "--crop".as_ref(),
        "64".as_ref(),
    ]);
    assert!(captioned.status.success(), "{captioned:?}");
    assert_eq!(
        String::from_utf8_lossy(&captioned.stdout).lines().count(),
        3
    );
    assert_eq!(server.requests().len(), 1, "downloaded once");
    assert!(cache.join(format!("{NAME}.pth.sha256")).is_file());

    // The same name with a (random) ResNet-18 behind it, from a second mirror into a second
    // cache (the test server serves one file name only).
    let backbone_cache = directory.path().join("cache2");
    let backbone = directory.path().join("resnet18.safetensors");
    virtex_backbone::ResNetConfig::resnet18()
        .init::<burn::backend::Flex>(&Default::default())
        .save_torchvision_safetensors(&backbone)
        .unwrap();
    let backbone_server = Server::start(std::fs::read(&backbone).unwrap());
    let features = |weights: &std::ffi::OsStr, out: &Path| {
        let output = Process::new(env!("CARGO_BIN_EXE_virtex"))
            .args(["features", "--arch", "resnet18", "--pooled"])
            .args(["--short-side", "64", "--crop", "64", "--weights"])
            .arg(weights)
            .arg("--images")
            .arg(&images)
            .arg("--out")
            .arg(out)
            .env("VIRTEX_CACHE_DIR", &backbone_cache)
            .env("VIRTEX_WEIGHTS_MIRROR", &backbone_server.base_url)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        std::fs::read(out).unwrap()
    };
    let by_name = features(NAME.as_ref(), &directory.path().join("by_name.safetensors"));
    let again = features(NAME.as_ref(), &directory.path().join("again.safetensors"));
    assert_eq!(by_name, again);
    assert_eq!(
        backbone_server.requests().len(),
        1,
        "the cached file is used"
    );
    let by_file = features(
        backbone.as_os_str(),
        &directory.path().join("by_file.safetensors"),
    );
    assert_eq!(by_name, by_file);

    // A run directory: its newest complete checkpoint.
    let run_dir = directory.path().join("run");
    for name in ["checkpoint_00000001", "checkpoint_00000002"] {
        std::fs::create_dir_all(run_dir.join(name)).unwrap();
        std::fs::copy(&backbone, run_dir.join(name).join("model.safetensors")).unwrap();
        std::fs::write(run_dir.join(name).join("state.json"), "{}").unwrap();
    }
    let by_run = features(
        run_dir.as_os_str(),
        &directory.path().join("by_run.safetensors"),
    );
    assert_eq!(by_run, by_file);
}
