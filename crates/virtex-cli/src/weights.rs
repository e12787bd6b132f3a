//! `virtex weights`: the released VirTex checkpoints (upstream's model zoo and the Torch Hub
//! backbone), a local download cache, and the resolution of a released name given to
//! `--weights`.
//!
//! Upstream publishes its weights on Dropbox (`virtex/model_zoo/model_zoo.py`,
//! `hubconf.py`) with neither sizes nor checksums, and those links have moved before (upstream
//! issues #13, #21, #22). So this module trusts on first use: the SHA-256 of each file is
//! recorded next to it at its first download and checked every time the file is used
//! afterwards; `--sha256` pins a digest known from elsewhere; `VIRTEX_WEIGHTS_MIRROR` replaces
//! the Dropbox host for networks that cannot reach it.
//!
//! Cache layout (`WeightsCache::dir`):
//!
//! ```text
//! bicaptioning_R_50_L1_H2048.pth          the checkpoint, renamed into place once complete
//! bicaptioning_R_50_L1_H2048.pth.sha256   its digest, `sha256sum` format (`HEX  NAME.pth`)
//! bicaptioning_R_50_L1_H2048.pth.part     an unfinished download, resumed with a Range request
//! bicaptioning_R_50_L1_H2048.pth.rejected a download whose digest was not the pinned one
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::CliError;

/// Environment variable: the cache directory (default `$XDG_CACHE_HOME/virtex/weights`, else
/// `~/.cache/virtex/weights`).
pub const CACHE_DIR_ENV: &str = "VIRTEX_CACHE_DIR";

/// Environment variable: a base URL that replaces Dropbox; `NAME` is fetched from
/// `{mirror}/NAME.pth`.
pub const MIRROR_ENV: &str = "VIRTEX_WEIGHTS_MIRROR";

/// What a released file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleasedKind {
    /// A full VirTex checkpoint (`torch.save` dict, key `"model"`: visual and textual weights).
    Checkpoint,
    /// The Torch Hub backbone: a plain torchvision ResNet-50 state dict, no prefix, no `fc`.
    HubBackbone,
}

/// One released weights file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReleasedWeights {
    /// The name used on the command line and in the cache: upstream's config basename (the
    /// file is `{name}.pth`).
    pub name: &'static str,
    /// Upstream's config file under `configs/` (for the hub backbone, the model it comes from).
    pub config: &'static str,
    /// The pretext task it was trained with.
    pub pretext: &'static str,
    /// PASCAL VOC07 linear-SVM mAP upstream reports for it.
    pub voc07_map: f32,
    /// ImageNet-1k linear-probe top-1 accuracy upstream reports for it.
    pub imagenet_top1: f32,
    /// The Dropbox share id in upstream's download URL.
    pub dropbox_id: &'static str,
    /// What the file holds.
    pub kind: ReleasedKind,
}

impl ReleasedWeights {
    /// The file name in the cache and on a mirror: `{name}.pth`.
    pub fn file_name(&self) -> String {
        format!("{}.pth", self.name)
    }

    /// Upstream's download URL: `https://www.dropbox.com/s/{id}/{name}.pth?dl=1`.
    pub fn dropbox_url(&self) -> String {
        format!(
            "https://www.dropbox.com/s/{}/{}.pth?dl=1",
            self.dropbox_id, self.name
        )
    }
}

const fn checkpoint(
    config: &'static str,
    name: &'static str,
    pretext: &'static str,
    voc07_map: f32,
    imagenet_top1: f32,
    dropbox_id: &'static str,
) -> ReleasedWeights {
    ReleasedWeights {
        name,
        config,
        pretext,
        voc07_map,
        imagenet_top1,
        dropbox_id,
        kind: ReleasedKind::Checkpoint,
    }
}

/// Upstream's model zoo (`docs/virtex/usage/model_zoo.rst`, ids from
/// `virtex/model_zoo/model_zoo.py`, v1.0 weights) and the Torch Hub backbone (`hubconf.py`).
///
/// `width_ablations/bicaptioning_R_50_L1_H2048` is the same file as the task-ablation
/// bicaptioning model (same Dropbox id), so it appears once; the H1024 width ablation is also
/// upstream's base, depth-L1 and backbone-R50 model.
pub const RELEASED_WEIGHTS: &[ReleasedWeights] = &[
    checkpoint(
        "task_ablations/bicaptioning_R_50_L1_H2048",
        "bicaptioning_R_50_L1_H2048",
        "bicaptioning",
        88.7,
        53.8,
        "mbeeso8wyieq8wy",
    ),
    checkpoint(
        "task_ablations/captioning_R_50_L1_H2048",
        "captioning_R_50_L1_H2048",
        "forward captioning",
        88.6,
        50.8,
        "r6zen9k43m5oo58",
    ),
    checkpoint(
        "task_ablations/token_classification_R_50",
        "token_classification_R_50",
        "token classification",
        88.8,
        48.6,
        "o4p9lki505r0mef",
    ),
    checkpoint(
        "task_ablations/multilabel_classification_R_50",
        "multilabel_classification_R_50",
        "multilabel classification",
        86.2,
        46.2,
        "hbspp3jv3u8h3bc",
    ),
    checkpoint(
        "task_ablations/masked_lm_R_50_L1_H2048",
        "masked_lm_R_50_L1_H2048",
        "masked LM",
        86.4,
        46.7,
        "ldzrk6vem4mg6bl",
    ),
    checkpoint(
        "width_ablations/bicaptioning_R_50_L1_H512",
        "bicaptioning_R_50_L1_H512",
        "bicaptioning",
        88.4,
        51.8,
        "o9fr69jjqfn8a65",
    ),
    checkpoint(
        "width_ablations/bicaptioning_R_50_L1_H768",
        "bicaptioning_R_50_L1_H768",
        "bicaptioning",
        88.3,
        52.3,
        "1zxglqrrbfufv9d",
    ),
    checkpoint(
        "width_ablations/bicaptioning_R_50_L1_H1024",
        "bicaptioning_R_50_L1_H1024",
        "bicaptioning",
        88.3,
        53.2,
        "pdat4tvhnqxel64",
    ),
    checkpoint(
        "depth_ablations/bicaptioning_R_50_L2_H1024",
        "bicaptioning_R_50_L2_H1024",
        "bicaptioning",
        88.8,
        53.8,
        "ft1vtt4okirzjgo",
    ),
    checkpoint(
        "depth_ablations/bicaptioning_R_50_L3_H1024",
        "bicaptioning_R_50_L3_H1024",
        "bicaptioning",
        88.7,
        53.9,
        "5ldo1rcsnrshmjr",
    ),
    checkpoint(
        "depth_ablations/bicaptioning_R_50_L4_H1024",
        "bicaptioning_R_50_L4_H1024",
        "bicaptioning",
        88.7,
        53.9,
        "zgiit2wcluuq3xh",
    ),
    checkpoint(
        "backbone_ablations/bicaptioning_R_50W2X_L1_H1024",
        "bicaptioning_R_50W2X_L1_H1024",
        "bicaptioning, wide ResNet-50 x2",
        88.5,
        52.9,
        "5o198ux709r6376",
    ),
    checkpoint(
        "backbone_ablations/bicaptioning_R_101_L1_H1024",
        "bicaptioning_R_101_L1_H1024",
        "bicaptioning, ResNet-101",
        88.7,
        52.1,
        "bb74jubt68cpn80",
    ),
    // The backbone of the H2048 bicaptioning model, so its VOC07 / IN-1k numbers are that
    // model's.
    ReleasedWeights {
        name: "backbone_bicaptioning_R_50_L1_H2048",
        config: "task_ablations/bicaptioning_R_50_L1_H2048",
        pretext: "bicaptioning (torch hub backbone)",
        voc07_map: 88.7,
        imagenet_top1: 53.8,
        dropbox_id: "pxgjxcva7oypf12",
        kind: ReleasedKind::HubBackbone,
    },
];

/// The released weights called `name` (`bicaptioning_R_50_L1_H2048`; a trailing `.pth` is
/// accepted), if any.
pub fn released_weights(name: &str) -> Option<&'static ReleasedWeights> {
    let name = name.strip_suffix(".pth").unwrap_or(name);
    RELEASED_WEIGHTS.iter().find(|weights| weights.name == name)
}

/// A local cache of released weights and where to download them from. Built from the
/// environment by [`WeightsCache::from_env`]; tests and programs can build one explicitly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightsCache {
    /// The cache directory (created on the first download).
    pub dir: PathBuf,
    /// A base URL replacing Dropbox: files are fetched from `{mirror}/{name}.pth`.
    pub mirror: Option<String>,
}

/// How [`WeightsCache::fetch`] fetches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// A pinned SHA-256 (64 hex digits, any case): the file must have this digest.
    pub sha256: Option<String>,
    /// Download again even if the file is cached (the cached file, its recorded digest and any
    /// partial download are removed first).
    pub force: bool,
}

/// The cache state of one released file, as `virtex weights list` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheEntry {
    /// The released file.
    pub weights: &'static ReleasedWeights,
    /// Where it is (or would be) cached.
    pub path: PathBuf,
    /// Where it would be downloaded from.
    pub url: String,
    /// Its size in bytes, if cached (upstream publishes no sizes).
    pub size: Option<u64>,
    /// The SHA-256 recorded at its download, if any.
    pub recorded_sha256: Option<String>,
    /// Bytes of an unfinished download (`.part`), if any.
    pub partial: Option<u64>,
}

impl WeightsCache {
    /// The cache of this user: `$VIRTEX_CACHE_DIR` if set, else `$XDG_CACHE_HOME/virtex/weights`,
    /// else `~/.cache/virtex/weights` (the platform's cache directory outside Linux), with the
    /// mirror from `$VIRTEX_WEIGHTS_MIRROR`. Empty variables count as unset.
    pub fn from_env() -> Result<Self, CliError> {
        let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let dir = match non_empty(CACHE_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            // `dirs::cache_dir` reads `$XDG_CACHE_HOME` and falls back to `~/.cache` on Linux.
            None => dirs::cache_dir()
                .map(|cache| cache.join("virtex").join("weights"))
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "no cache directory for released weights: set {CACHE_DIR_ENV} (no home \
                         or XDG cache directory is known)"
                    ))
                })?,
        };
        let mirror = non_empty(MIRROR_ENV).map(|mirror| mirror.to_string_lossy().into_owned());
        Ok(Self { dir, mirror })
    }

    /// The cached file of `weights`: `{dir}/{name}.pth`.
    pub fn path(&self, weights: &ReleasedWeights) -> PathBuf {
        self.dir.join(weights.file_name())
    }

    /// Where `weights` is downloaded from: `{mirror}/{name}.pth` with a mirror, else upstream's
    /// Dropbox URL.
    pub fn url(&self, weights: &ReleasedWeights) -> String {
        match &self.mirror {
            Some(mirror) => format!("{}/{}", mirror.trim_end_matches('/'), weights.file_name()),
            None => weights.dropbox_url(),
        }
    }

    /// The cache state of every released file, in [`RELEASED_WEIGHTS`] order.
    pub fn entries(&self) -> Result<Vec<CacheEntry>, CliError> {
        RELEASED_WEIGHTS
            .iter()
            .map(|weights| {
                let path = self.path(weights);
                let size = file_len(&path);
                let recorded_sha256 = read_record(&digest_path(&path))?;
                Ok(CacheEntry {
                    weights,
                    url: self.url(weights),
                    size,
                    recorded_sha256,
                    partial: file_len(&part_path(&path)),
                    path,
                })
            })
            .collect()
    }

    /// Resolves a `--weights` argument: an existing path is returned as is; a released name
    /// (with or without `.pth`) gives its cached file, verified, and downloaded first if absent
    /// (progress on stderr).
    ///
    /// # Errors
    /// [`CliError::UnknownWeights`] when `arg` is neither; download and checksum errors of
    /// [`WeightsCache::fetch`].
    pub fn resolve(&self, arg: &Path) -> Result<PathBuf, CliError> {
        if arg.exists() {
            return Ok(arg.to_path_buf());
        }
        let weights = released_name(arg)?;
        self.fetch(weights, &FetchOptions::default())
    }

    /// Makes `weights` available in the cache and returns its path. A cached file is verified
    /// against its recorded digest (and the pinned one); an absent one is downloaded, resuming
    /// a `.part` left by an interrupted download, and its digest recorded.
    ///
    /// A pinned digest that a fresh download does not match moves the download to
    /// `{name}.pth.rejected` (the next fetch starts over) and fails; a cached file that does
    /// not match is never deleted, only refused.
    pub fn fetch(
        &self,
        weights: &ReleasedWeights,
        options: &FetchOptions,
    ) -> Result<PathBuf, CliError> {
        let pinned = options.sha256.as_deref().map(parse_sha256).transpose()?;
        let path = self.path(weights);
        let record = digest_path(&path);
        let part = part_path(&path);
        if options.force {
            for stale in [&path, &record, &part] {
                remove_if_present(stale)?;
            }
        }
        if path.exists() {
            self.verify(weights, pinned.as_deref())?;
            return Ok(path);
        }
        fs::create_dir_all(&self.dir).map_err(|err| cache_error(&self.dir, err))?;
        let url = self.url(weights);
        eprintln!("weights: downloading {} from {url}", weights.name);
        download(&url, &part, weights.name)?;
        let actual = sha256_file(&part)?;
        // A digest recorded by an earlier download (the file since deleted, the record kept)
        // binds the new download too: the same name must keep meaning the same bytes.
        let expected = match pinned {
            Some(pinned) => Some((pinned, "pinned with --sha256")),
            None => {
                read_record(&record)?.map(|recorded| (recorded, "recorded at an earlier download"))
            }
        };
        if let Some((expected, origin)) = expected {
            if expected != actual {
                let rejected = path.with_file_name(format!("{}.rejected", weights.file_name()));
                fs::rename(&part, &rejected).map_err(|err| cache_error(&part, err))?;
                return Err(CliError::ChecksumMismatch {
                    path: rejected.clone(),
                    expected,
                    actual,
                    hint: format!(
                        "the expected digest was {origin}; the download from {url} was kept as \
                         `{}` for inspection and is not used (delete it; the next fetch starts \
                         over)",
                        rejected.display()
                    ),
                });
            }
        }
        fs::rename(&part, &path).map_err(|err| cache_error(&part, err))?;
        write_record(&record, &actual, &weights.file_name())?;
        eprintln!(
            "weights: {} SHA-256 {actual} (recorded in `{}`)",
            weights.name,
            record.display()
        );
        Ok(path)
    }

    /// Checks the cached file of `weights` against the digest recorded at its download (and
    /// `pinned`, if given) and returns that digest. A file with no record (copied in by hand,
    /// or a record lost) has its digest recorded now: trust on first use, as for a download.
    ///
    /// # Errors
    /// [`CliError::ChecksumMismatch`] naming the file, the expected and the actual digest; the
    /// file is left in place.
    pub fn verify(
        &self,
        weights: &ReleasedWeights,
        pinned: Option<&str>,
    ) -> Result<String, CliError> {
        let path = self.path(weights);
        let record = digest_path(&path);
        let actual = sha256_file(&path)?;
        let mismatch = |expected: String, origin: &str| CliError::ChecksumMismatch {
            path: path.clone(),
            expected,
            actual: actual.clone(),
            hint: format!(
                "the expected digest was {origin}; the file was left in place and is not used: \
                 delete it or run `virtex weights fetch {} --force` to download it again",
                weights.name
            ),
        };
        match read_record(&record)? {
            Some(recorded) if recorded != actual => {
                return Err(mismatch(
                    recorded,
                    &format!("recorded at download in `{}`", record.display()),
                ))
            }
            Some(_) => {}
            None => write_record(&record, &actual, &weights.file_name())?,
        }
        if let Some(pinned) = pinned {
            let pinned = parse_sha256(pinned)?;
            if pinned != actual {
                return Err(mismatch(pinned, "pinned with --sha256"));
            }
        }
        Ok(actual)
    }
}

/// Resolves a `--weights` argument with the user's cache ([`WeightsCache::from_env`]): an
/// existing path is returned as is; a released name (`bicaptioning_R_50_L1_H2048`, also with
/// `.pth`) gives the cached file, verified against its recorded SHA-256 and downloaded first if
/// absent (progress on stderr).
///
/// # Errors
/// [`CliError::UnknownWeights`] when `arg` is neither an existing file nor a released name;
/// download and checksum errors otherwise.
pub fn resolve_weights(arg: &Path) -> Result<PathBuf, CliError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    // The name is checked before the environment so that a mistyped path is reported as such
    // even where no cache directory can be found.
    released_name(arg)?;
    WeightsCache::from_env()?.resolve(arg)
}

/// The released weights `arg` names: a bare file name, with or without `.pth`.
fn released_name(arg: &Path) -> Result<&'static ReleasedWeights, CliError> {
    let bare = arg
        .parent()
        .is_none_or(|parent| parent.as_os_str().is_empty());
    arg.to_str()
        .filter(|_| bare)
        .and_then(released_weights)
        .ok_or_else(|| CliError::UnknownWeights {
            argument: arg.to_path_buf(),
        })
}

/// Arguments of `virtex weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: WeightsCommand,
}

/// The subcommands of `virtex weights`.
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Print the released checkpoints: name, pretext, VOC07 mAP, IN-1k top-1, size and SHA-256
    /// when cached, and the download URL.
    List,
    /// Download a released checkpoint into the cache (resuming an interrupted download), or
    /// verify the cached one; prints its path on stdout.
    Fetch(WeightsFetchArgs),
}

/// Arguments of `virtex weights fetch`.
#[derive(Debug, Args)]
pub struct WeightsFetchArgs {
    /// A released name, as `virtex weights list` prints it (`bicaptioning_R_50_L1_H2048`).
    pub name: String,
    /// The SHA-256 the file must have (64 hex digits). Without it the digest of the first
    /// download is recorded and later uses are checked against it.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Download again even if cached (removes the cached file, its recorded digest and any
    /// partial download first).
    #[arg(long)]
    pub force: bool,
}

impl WeightsArgs {
    /// Runs the command with the user's cache ([`WeightsCache::from_env`]).
    pub fn run(self) -> Result<(), CliError> {
        let cache = WeightsCache::from_env()?;
        match self.command {
            WeightsCommand::List => {
                print!("{}", format_list(&cache.entries()?));
                eprintln!("cache directory: {}", cache.dir.display());
                if let Some(mirror) = &cache.mirror {
                    eprintln!("mirror ({MIRROR_ENV}): {mirror}");
                }
                Ok(())
            }
            WeightsCommand::Fetch(args) => {
                let weights = released_name(Path::new(&args.name))?;
                let options = FetchOptions {
                    sha256: args.sha256,
                    force: args.force,
                };
                let path = cache.fetch(weights, &options)?;
                println!("{}", path.display());
                Ok(())
            }
        }
    }
}

/// The table `virtex weights list` prints: one line per released file.
pub fn format_list(entries: &[CacheEntry]) -> String {
    let name_width = entries
        .iter()
        .map(|entry| entry.weights.name.len())
        .max()
        .unwrap_or(4);
    let mut text = format!(
        "{:<name_width$}  {:>5}  {:>5}  {:>11}  {:<12}  {:<64}  url\n",
        "name", "VOC07", "IN-1k", "size", "cached", "sha256"
    );
    for entry in entries {
        let size = entry
            .size
            .map_or_else(|| "?".to_string(), |size| size.to_string());
        let cached = match (entry.size, entry.partial) {
            (Some(_), _) => "yes".to_string(),
            (None, Some(bytes)) => format!("partial {}", human_bytes(bytes)),
            (None, None) => "no".to_string(),
        };
        let sha256 = match (&entry.recorded_sha256, entry.size) {
            (Some(digest), Some(_)) => digest.as_str(),
            _ => "-",
        };
        text.push_str(&format!(
            "{:<name_width$}  {:>5.1}  {:>5.1}  {:>11}  {:<12}  {:<64}  {}\n",
            entry.weights.name,
            entry.weights.voc07_map,
            entry.weights.imagenet_top1,
            size,
            cached,
            sha256,
            entry.url
        ));
    }
    text
}

/// The SHA-256 of a file, 64 lowercase hex digits.
pub fn sha256_file(path: &Path) -> Result<String, CliError> {
    let mut file = File::open(path).map_err(|err| cache_error(path, err))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|err| cache_error(path, err))?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn parse_sha256(hex: &str) -> Result<String, CliError> {
    let hex = hex.trim();
    if hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(CliError::InvalidArgument {
            option: "--sha256",
            value: hex.to_string(),
            reason: "expected 64 hexadecimal digits".into(),
        })
    }
}

fn digest_path(path: &Path) -> PathBuf {
    append_extension(path, "sha256")
}

fn part_path(path: &Path) -> PathBuf {
    append_extension(path, "part")
}

fn append_extension(path: &Path, extension: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
}

/// The digest in a `sha256sum`-format record (`HEX  NAME`), if the record exists.
fn read_record(record: &Path) -> Result<Option<String>, CliError> {
    let text = match fs::read_to_string(record) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(cache_error(record, err)),
    };
    let digest = text.split_whitespace().next().unwrap_or_default();
    parse_sha256(digest)
        .map(Some)
        .map_err(|_| CliError::WeightsCache {
            path: record.to_path_buf(),
            message: format!(
                "not a SHA-256 record (expected `HEX  NAME`, found {:?}); delete it to record the \
             digest again",
                text.trim()
            ),
        })
}

fn write_record(record: &Path, digest: &str, file_name: &str) -> Result<(), CliError> {
    // `sha256sum` format, so that `sha256sum -c *.sha256` in the cache directory checks it too.
    virtex_device::write_atomically(record, |temporary| {
        fs::write(temporary, format!("{digest}  {file_name}\n"))
    })
    .map_err(|err| cache_error(record, err))
}

fn remove_if_present(path: &Path) -> Result<(), CliError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(cache_error(path, err)),
        _ => Ok(()),
    }
}

fn cache_error(path: &Path, err: io::Error) -> CliError {
    CliError::WeightsCache {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// Downloads `url` into `part`, resuming from the bytes already there.
///
/// With `N > 0` bytes in `part` the request asks for `Range: bytes=N-`; a `206` whose
/// `Content-Range` starts at `N` is appended, a `200` (a server ignoring ranges) or a `206`
/// starting elsewhere restarts from zero, and a `416` (nothing left at `N`: the part is
/// complete or the file changed) restarts from zero once. A connection lost mid-body leaves
/// `part` with what arrived, for the next call.
fn download(url: &str, part: &Path, name: &str) -> Result<(), CliError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        // A stalled transfer fails (and can be resumed) instead of hanging forever.
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("virtex-cli/", env!("CARGO_PKG_VERSION")))
        .build();
    let network = |message: String| CliError::WeightsNetwork {
        url: url.to_string(),
        message,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|err| cache_error(part, err))?;
    // Two processes appending to the same `.part` would interleave bytes: hold a lock on it for
    // the whole transfer, and refuse rather than wait (a download can take minutes).
    file.try_lock().map_err(|err| CliError::WeightsCache {
        path: part.to_path_buf(),
        message: format!("another process is downloading this file ({err}); wait for it to finish"),
    })?;
    let mut retried_unsatisfiable = false;
    loop {
        let offset = file.metadata().map_err(|err| cache_error(part, err))?.len();
        let mut request = agent.get(url);
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, _)) if offset > 0 && !retried_unsatisfiable => {
                retried_unsatisfiable = true;
                file.set_len(0).map_err(|err| cache_error(part, err))?;
                continue;
            }
            Err(ureq::Error::Status(status, response)) => {
                return Err(CliError::WeightsHttp {
                    url: url.to_string(),
                    status,
                    reason: response.status_text().to_string(),
                })
            }
            Err(ureq::Error::Transport(transport)) => return Err(network(transport.to_string())),
        };
        let status = response.status();
        let content_length = response
            .header("Content-Length")
            .and_then(|length| length.trim().parse::<u64>().ok());
        let (start, total) = match status {
            206 => match response
                .header("Content-Range")
                .and_then(parse_content_range)
            {
                Some((start, total)) if start == offset => (start, total),
                // A range we did not ask for: start over rather than splice mismatched bytes.
                _ => {
                    file.set_len(0).map_err(|err| cache_error(part, err))?;
                    continue;
                }
            },
            200 => {
                if offset > 0 {
                    eprintln!(
                        "weights: the server does not resume downloads; restarting {name} from \
                         the beginning"
                    );
                }
                file.set_len(0).map_err(|err| cache_error(part, err))?;
                (0, content_length)
            }
            _ => {
                return Err(CliError::WeightsHttp {
                    url: url.to_string(),
                    status,
                    reason: response.status_text().to_string(),
                })
            }
        };
        let progress = download_bar(name, total, start);
        let mut reader = response.into_reader();
        let mut writer = BufWriter::new(&file);
        let mut received = start;
        let mut buffer = vec![0u8; 64 * 1024];
        let outcome = loop {
            match reader.read(&mut buffer) {
                Ok(0) => break Ok(()),
                Ok(count) => {
                    if let Err(err) = writer.write_all(&buffer[..count]) {
                        break Err(cache_error(part, err));
                    }
                    received += count as u64;
                    progress.set_position(received);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(network(interrupted(received, total, &err.to_string()))),
            }
        };
        // Whatever arrived is kept (flushed and synced) for the next attempt to resume from.
        let flushed = writer
            .flush()
            .and_then(|()| file.sync_all())
            .map_err(|err| cache_error(part, err));
        progress.finish_and_clear();
        outcome?;
        flushed?;
        if let Some(total) = total {
            if received != total {
                return Err(network(interrupted(
                    received,
                    Some(total),
                    "connection closed",
                )));
            }
        }
        return Ok(());
    }
}

fn interrupted(received: u64, total: Option<u64>, cause: &str) -> String {
    let of = total.map_or_else(String::new, |total| format!(" of {total}"));
    format!(
        "download interrupted after {received}{of} bytes ({cause}); run the command again to \
         resume"
    )
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (start, _end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

fn download_bar(name: &str, total: Option<u64>, position: u64) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match total {
        Some(_) => "{msg} [{bar:40}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}",
        None => "{msg} {bytes}, {bytes_per_sec}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    bar.set_position(position);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_urls_follow_upstream() {
        for (index, weights) in RELEASED_WEIGHTS.iter().enumerate() {
            assert!(RELEASED_WEIGHTS[index + 1..]
                .iter()
                .all(|other| other.name != weights.name));
            assert!(
                weights.config.ends_with(weights.name) || weights.kind == ReleasedKind::HubBackbone
            );
        }
        let bicap = released_weights("bicaptioning_R_50_L1_H2048.pth").unwrap();
        assert_eq!(
            bicap.dropbox_url(),
            "https://www.dropbox.com/s/mbeeso8wyieq8wy/bicaptioning_R_50_L1_H2048.pth?dl=1"
        );
        let hub = released_weights("backbone_bicaptioning_R_50_L1_H2048").unwrap();
        assert_eq!(
            hub.dropbox_url(),
            "https://www.dropbox.com/s/pxgjxcva7oypf12/backbone_bicaptioning_R_50_L1_H2048.pth?dl=1"
        );
    }

    #[test]
    fn mirror_replaces_the_host() {
        let cache = WeightsCache {
            dir: PathBuf::from("/cache"),
            mirror: Some("http://mirror.example/virtex/".into()),
        };
        let weights = released_weights("captioning_R_50_L1_H2048").unwrap();
        assert_eq!(
            cache.url(weights),
            "http://mirror.example/virtex/captioning_R_50_L1_H2048.pth"
        );
        assert_eq!(
            cache.path(weights),
            Path::new("/cache/captioning_R_50_L1_H2048.pth")
        );
    }

    #[test]
    fn only_bare_names_are_released_names() {
        assert!(released_name(Path::new("bicaptioning_R_50_L1_H2048")).is_ok());
        assert!(released_name(Path::new("models/bicaptioning_R_50_L1_H2048.pth")).is_err());
        assert!(released_name(Path::new("bicaptioning_R_50")).is_err());
    }

    #[test]
    fn content_range_and_digest_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert!(parse_sha256("ABCDEF").is_err());
        assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }
}
