//! `virtex eval-voc07 --run RUN`: the VOC07 linear-SVM mAP of every checkpoint of a training
//! run, to choose the checkpoint as upstream does (it keeps its checkpoints and evaluates VOC07
//! on them).
//!
//! ```text
//! virtex eval-voc07 --run runs/bicaptioning --voc-root VOCdevkit --device cuda [--watch [60]]
//! ```
//!
//! - Checkpoints are the run's `checkpoint_<digits>/` directories holding `state.json` (those
//!   `pretrain_coco` renamed into place; its `.partial-*` temporaries never count), in iteration
//!   order. Each one's backbone comes from its `model.safetensors` with the architecture stored
//!   in that file (`virtex::CaptioningModel::load`).
//! - Each evaluated checkpoint appends one JSON line to `RUN/voc07.jsonl` ([`Voc07Record`]): a
//!   whole line in one write, then an fsync. A line cut short by a killed process is removed
//!   (with a message) when the next sweep opens the file, and its checkpoint evaluated again.
//!   Checkpoints already in the file (by iteration) are skipped: a sweep is resumable and a
//!   re-run without new checkpoints evaluates and writes nothing.
//! - After each evaluation `RUN/voc07_best.json` ([`Voc07Best`]) is replaced atomically
//!   ([`virtex_device::write_atomically`]); at the end a table marks the best with `*`.
//! - `--watch [SECONDS]` polls for new checkpoints until the trainer has exited (it holds an
//!   advisory lock on `RUN/.lock` while it runs) and no checkpoint is left. Ctrl-C (or SIGTERM)
//!   stops between checkpoints or feature batches, leaving every file consistent; a second one
//!   exits at once.
//! - A checkpoint removed by the trainer's `keep_last` before it is read is skipped with a
//!   message. An unreadable checkpoint, a bad VOC root or a damaged `voc07.jsonl` is an error
//!   naming the file.
//! - The first batches of decoded and transformed images of both splits stay in memory between
//!   checkpoints, up to `--image-cache-mib`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use virtex::CaptioningModel;
use virtex_backbone::{global_average_pool, l2_normalize, ResNet};
use virtex_data::{load_image_batch, ImageTransforms};
use virtex_device::{is_checkpoint_dir, with_backend, write_atomically};
use virtex_eval::{evaluate_voc07, Features, Voc07Split, Voc07SvmConfig};

use crate::checks::{apply_image_limit, check_image_sizes, check_output, check_positive};
use crate::error::CliError;
use crate::eval_commands::{read_voc07_splits, EvalVoc07Args};
use crate::features::progress_bar;

/// The per-checkpoint results, one JSON line each, in the run directory.
pub const RECORDS_FILE: &str = "voc07.jsonl";
/// The best checkpoint so far, in the run directory.
pub const BEST_FILE: &str = "voc07_best.json";
/// What a checkpoint directory's name starts with (`checkpoint_00002000`).
const CHECKPOINT_PREFIX: &str = "checkpoint_";
/// The model file of a checkpoint directory.
const MODEL_FILE: &str = "model.safetensors";
/// What makes a `checkpoint_<digits>` directory complete.
const STATE_FILE: &str = "state.json";
/// The trainer's lock file (`virtex_train::run_dir::LOCK_FILE`).
const LOCK_FILE: &str = ".lock";
/// Files a run directory holds besides checkpoints (`virtex_train::run_dir::RESULT_FILES` and
/// the lock).
const RUN_MARKERS: [&str; 4] = [
    "config.json",
    "metrics.jsonl",
    "backbone.safetensors",
    LOCK_FILE,
];

/// The settings a record was made with: records made with other ones are not comparable, and
/// a sweep refuses to mix them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voc07Settings {
    /// `--train-split`.
    pub train_split: String,
    /// `--test-split`.
    pub test_split: String,
    /// `--short-side`.
    pub short_side: u32,
    /// `--crop`.
    pub crop: u32,
    /// `--seed` (the SVM solver's coordinate order).
    pub seed: u32,
}

impl Voc07Settings {
    fn of(args: &EvalVoc07Args) -> Self {
        Self {
            train_split: args.train_split.clone(),
            test_split: args.test_split.clone(),
            short_side: args.short_side,
            crop: args.crop,
            seed: args.seed,
        }
    }

    fn describe(&self) -> String {
        format!(
            "--train-split {} --test-split {} --short-side {} --crop {} --seed {}",
            self.train_split, self.test_split, self.short_side, self.crop, self.seed
        )
    }
}

/// One line of `RUN/voc07.jsonl`: the VOC07 result of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Voc07Record {
    /// The checkpoint's iteration (from its directory name).
    pub iteration: u64,
    /// The checkpoint directory's name, `checkpoint_NNNNNNNN`.
    pub checkpoint: String,
    /// Mean test AP over classes, ×100 (what upstream reports), to 6 decimals.
    pub map: f64,
    /// Test AP of each class, ×100, to 6 decimals.
    pub per_class: BTreeMap<String, f64>,
    /// Wall-clock seconds of the evaluation (loading, features, SVMs).
    pub seconds: f64,
    /// The settings of the evaluation.
    pub settings: Voc07Settings,
}

/// `RUN/voc07_best.json`: the record with the highest mAP (the earliest iteration among equal
/// ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Voc07Best {
    /// Its iteration.
    pub iteration: u64,
    /// Its checkpoint directory's name.
    pub checkpoint: String,
    /// Its mAP.
    pub map: f64,
    /// How many checkpoints have been evaluated.
    pub evaluated: usize,
}

/// The flag Ctrl-C (SIGINT) and SIGTERM set: the sweep stops at the next feature batch or
/// checkpoint. A second signal exits at once (status 130 or 143): every file the sweep writes
/// is consistent at any moment. Installed once per process.
pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so a second signal finds the flag set and exits.
            let _ = signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                flag.clone(),
            );
            let _ = signal_hook::flag::register(signal, flag.clone());
        }
        flag
    })
    .clone()
}

/// `virtex eval-voc07 --run`: evaluates the run's checkpoints not yet recorded (all of them,
/// then, with `--watch`, new ones until the trainer exits), stopping early once `stop` is set.
pub(crate) fn run_sweep(args: &EvalVoc07Args, stop: &AtomicBool) -> Result<(), CliError> {
    let run = args
        .run
        .as_deref()
        .ok_or_else(|| CliError::Usage("eval-voc07 --run needs a run directory".into()))?;
    for (given, option) in [
        (args.weights.is_some(), "--weights"),
        (args.out.is_some(), "--out"),
        (args.weights_format.is_some(), "--weights-format"),
    ] {
        if given {
            return Err(CliError::Usage(format!(
                "--run cannot be combined with {option}: the checkpoints are the run's, the \
                 results go to `{}`",
                run.join(RECORDS_FILE).display()
            )));
        }
    }
    let device = args.device.check()?;
    check_image_sizes(args.short_side, args.crop)?;
    check_positive("--batch-size", args.batch_size)?;
    apply_image_limit(args.max_image_pixels)?;
    check_run_directory(run)?;
    let records_path = run.join(RECORDS_FILE);
    let best_path = run.join(BEST_FILE);
    for output in [&records_path, &best_path] {
        check_output(output, &[&args.voc_root])?;
    }
    let (train, test) = read_voc07_splits(&args.voc_root, &args.train_split, &args.test_split)?;
    let mut log = RecordLog::open(&records_path, &Voc07Settings::of(args))?;
    // A best file from before a crash (or deleted by hand) is brought up to date.
    write_best(&best_path, &log)?;
    let mut sweep = Sweep {
        args,
        run,
        best_path: &best_path,
        transforms: ImageTransforms::downstream_val(args.short_side, args.crop)?,
        svm: Voc07SvmConfig {
            seed: args.seed,
            ..Voc07SvmConfig::default()
        },
        train: SplitImages::new(train),
        test: SplitImages::new(test),
        cache_budget: args.image_cache_mib.saturating_mul(1 << 20),
        stop,
    };
    let outcome = with_backend!(device, |B, burn_device| sweep
        .sweep::<B>(&mut log, &burn_device)?);
    print_table(run, &log);
    match outcome {
        Outcome::Done { trainer_running } => {
            if trainer_running {
                eprintln!(
                    "the run is still training (its trainer holds `{}`): run this again later, \
                     or add --watch to evaluate checkpoints as they appear",
                    run.join(LOCK_FILE).display()
                );
            }
        }
        Outcome::Interrupted { during } => {
            let left = match during {
                Some(name) => format!(" while evaluating {name} (nothing recorded for it)"),
                None => String::new(),
            };
            eprintln!("interrupted{left}: run the same command again to continue where it stopped");
        }
    }
    Ok(())
}

/// Refuses a `--run` that is not a training run directory, saying what it is.
fn check_run_directory(run: &Path) -> Result<(), CliError> {
    let refuse = |reason: String| {
        Err(CliError::NotARunDirectory {
            directory: run.to_path_buf(),
            reason,
        })
    };
    if !run.exists() {
        return refuse("it does not exist".into());
    }
    if !run.is_dir() {
        return refuse(
            "it is a file (to evaluate one weights file, pass it with --weights)".into(),
        );
    }
    if is_checkpoint_dir(run) {
        let parent = run.parent().unwrap_or(Path::new("."));
        return refuse(format!(
            "it is a checkpoint; pass the run directory that holds it (`{}`), or evaluate this \
             checkpoint alone with --weights {}",
            parent.display(),
            run.join(MODEL_FILE).display()
        ));
    }
    let marked = RUN_MARKERS.iter().any(|name| run.join(name).exists())
        || !list_checkpoints(run)?.is_empty();
    if !marked {
        return refuse(format!(
            "it holds none of {} nor a `{CHECKPOINT_PREFIX}<digits>/` directory; pass the \
             directory `pretrain_coco --run-dir` wrote",
            RUN_MARKERS
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// The run's complete checkpoints, `(iteration, directory)` in iteration order: directories
/// named `checkpoint_<digits>` holding `state.json` (as `virtex_train::list_checkpoints`).
fn list_checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>, CliError> {
    let entries = fs::read_dir(run).map_err(|err| {
        CliError::Input(format!(
            "cannot read the run directory `{}`: {err}",
            run.display()
        ))
    })?;
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let digits = name.to_str()?.strip_prefix(CHECKPOINT_PREFIX)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let iteration = digits.parse().ok()?;
            let directory = entry.path();
            directory
                .join(STATE_FILE)
                .is_file()
                .then_some((iteration, directory))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Whether a trainer holds the run's lock (`virtex_train::RunLock`, an exclusive `flock` on
/// `RUN/.lock`): a shared lock is tried and released at once. A missing lock file, or a file
/// system without locks (with a warning), counts as not held.
fn trainer_running(run: &Path) -> bool {
    let path = run.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return false,
        Err(err) => {
            eprintln!(
                "warning: cannot open `{}` ({err}); assuming the run has finished",
                path.display()
            );
            return false;
        }
    };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(err)) => {
            eprintln!(
                "warning: cannot test the lock `{}` ({err}); assuming the run has finished",
                path.display()
            );
            false
        }
    }
}

/// `RUN/voc07.jsonl`, open for appending and locked against a second sweep of the same run,
/// and the records it holds.
struct RecordLog {
    path: PathBuf,
    /// Opened for appending; holds an exclusive lock while the sweep runs.
    file: File,
    /// The records by iteration (a repeated iteration: the last line wins).
    records: BTreeMap<u64, Voc07Record>,
}

impl RecordLog {
    /// Opens (creating) the file, removes an incomplete last line (with a message) and reads
    /// the records, which must have been made with `settings`.
    fn open(path: &Path, settings: &Voc07Settings) -> Result<Self, CliError> {
        let failed = |message: String| CliError::RunFile {
            path: path.to_path_buf(),
            message,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|err| failed(format!("cannot open it: {err}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(failed(
                    "another `virtex eval-voc07 --run` is evaluating this run (it holds this \
                     file's lock); wait for it to finish or stop it"
                        .into(),
                ))
            }
            // A file system without locks: two sweeps of one run are the user's business.
            Err(fs::TryLockError::Error(_)) => {}
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|err| failed(format!("cannot read it: {err}")))?;
        let complete = bytes
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |last| last + 1);
        if complete < bytes.len() {
            eprintln!(
                "`{}`: removing an incomplete last line ({} bytes, left by an interrupted \
                 evaluation); its checkpoint is evaluated again",
                path.display(),
                bytes.len() - complete
            );
            file.set_len(complete as u64)
                .and_then(|()| file.sync_all())
                .map_err(|err| failed(format!("cannot remove the incomplete last line: {err}")))?;
        }
        let mut records = BTreeMap::new();
        for (index, line) in bytes[..complete].split(|&byte| byte == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: Voc07Record = serde_json::from_slice(line).map_err(|err| {
                failed(format!(
                    "line {} is not a VOC07 record ({err}); fix or delete that line",
                    index + 1
                ))
            })?;
            if record.settings != *settings {
                return Err(failed(format!(
                    "line {} ({}) was evaluated with `{}`, not with `{}`; move the file away to \
                     evaluate the run's checkpoints with other settings",
                    index + 1,
                    record.checkpoint,
                    record.settings.describe(),
                    settings.describe()
                )));
            }
            records.insert(record.iteration, record);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    /// Appends `record` as one line (one write, then fsync).
    fn append(&mut self, record: Voc07Record) -> Result<(), CliError> {
        let failed = |message: String| CliError::Output {
            path: self.path.clone(),
            message,
        };
        let mut line = serde_json::to_string(&record).map_err(|err| failed(err.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|err| failed(err.to_string()))?;
        self.records.insert(record.iteration, record);
        Ok(())
    }

    /// The record with the highest mAP, the earliest among equal ones.
    fn best(&self) -> Option<&Voc07Record> {
        self.records.values().fold(None, |best, record| match best {
            Some(best) if best.map >= record.map => Some(best),
            _ => Some(record),
        })
    }
}

/// Replaces `RUN/voc07_best.json` atomically when its content changes (so a re-run that
/// evaluates nothing writes nothing).
fn write_best(path: &Path, log: &RecordLog) -> Result<(), CliError> {
    let Some(best) = log.best() else {
        return Ok(());
    };
    let failed = |message: String| CliError::Output {
        path: path.to_path_buf(),
        message,
    };
    let best = Voc07Best {
        iteration: best.iteration,
        checkpoint: best.checkpoint.clone(),
        map: best.map,
        evaluated: log.records.len(),
    };
    let text = serde_json::to_string_pretty(&best).map_err(|err| failed(err.to_string()))? + "\n";
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    write_atomically(path, |temporary| fs::write(temporary, &text))
        .map_err(|err| failed(err.to_string()))
}

/// Prints the records (iteration, checkpoint, mAP, the best marked with `*`) to stdout.
fn print_table(run: &Path, log: &RecordLog) {
    let Some(best) = log.best() else {
        println!("no checkpoint of `{}` evaluated yet", run.display());
        return;
    };
    println!("{:>10}  {:<20} {:>7}", "iteration", "checkpoint", "mAP");
    for record in log.records.values() {
        let mark = if record.iteration == best.iteration {
            " *"
        } else {
            ""
        };
        let removed = if run.join(&record.checkpoint).is_dir() {
            ""
        } else {
            "  (removed)"
        };
        println!(
            "{:>10}  {:<20} {:>7.2}{mark}{removed}",
            record.iteration, record.checkpoint, record.map
        );
    }
    println!(
        "best: {} (iteration {}), mAP {:.2} of {} evaluated checkpoints; see `{}`",
        best.checkpoint,
        best.iteration,
        best.map,
        log.records.len(),
        run.join(BEST_FILE).display()
    );
    if !run.join(&best.checkpoint).is_dir() {
        eprintln!(
            "warning: the best checkpoint `{}` no longer exists (removed by the trainer's \
             keep_last); keep more checkpoints to keep the best one",
            run.join(&best.checkpoint).display()
        );
    }
}

/// How a sweep ended.
enum Outcome {
    /// Every checkpoint seen is recorded; `trainer_running`: the run's trainer still holds its
    /// lock (without `--watch`).
    Done { trainer_running: bool },
    /// Stopped by Ctrl-C; `during`: the checkpoint abandoned.
    Interrupted { during: Option<String> },
}

/// What became of one checkpoint.
enum Evaluation {
    Recorded(Voc07Record),
    /// Removed (by the trainer's `keep_last`) before it could be read: why it was skipped.
    Removed(String),
    Interrupted,
}

/// A VOC split and the first batches of its images, decoded and transformed, kept in memory
/// between checkpoints.
struct SplitImages {
    split: Voc07Split,
    paths: Vec<PathBuf>,
    /// Batches `0..cached.len()` (of the sweep's batch size), `[B, 3, crop, crop]`.
    cached: Vec<TensorData>,
}

impl SplitImages {
    fn new(split: Voc07Split) -> Self {
        Self {
            paths: split.image_paths(),
            split,
            cached: Vec::new(),
        }
    }
}

/// The state of one sweep.
struct Sweep<'a> {
    args: &'a EvalVoc07Args,
    run: &'a Path,
    best_path: &'a Path,
    transforms: ImageTransforms,
    svm: Voc07SvmConfig,
    train: SplitImages,
    test: SplitImages,
    /// Bytes of images that may still be cached.
    cache_budget: usize,
    stop: &'a AtomicBool,
}

impl Sweep<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Evaluates every checkpoint not in `log`, then, with `--watch`, waits for new ones until
    /// the trainer has exited.
    fn sweep<B: Backend>(
        &mut self,
        log: &mut RecordLog,
        device: &B::Device,
    ) -> Result<Outcome, CliError> {
        let mut announced_waiting = false;
        let mut evaluated = 0usize;
        loop {
            // Tested before listing: once the lock is found free, every checkpoint the trainer
            // wrote is in the listing that follows.
            let trainer_running = trainer_running(self.run);
            let checkpoints = list_checkpoints(self.run)?;
            let pending: Vec<(u64, PathBuf)> = checkpoints
                .iter()
                .filter(|(iteration, _)| !log.records.contains_key(iteration))
                .cloned()
                .collect();
            let watching = self.args.watch.is_some() && trainer_running;
            if pending.is_empty() && evaluated == 0 && !announced_waiting && !watching {
                eprintln!(
                    "nothing to evaluate: {} of the {} checkpoints of `{}` are in `{}`",
                    checkpoints.len() - pending.len(),
                    checkpoints.len(),
                    self.run.display(),
                    log.path.display()
                );
            }
            // Images are kept only when a later checkpoint will read them again.
            let keep_images = self.args.watch.is_some() || pending.len() > 1;
            for (iteration, directory) in pending {
                if self.stopped() {
                    return Ok(Outcome::Interrupted { during: None });
                }
                let name = checkpoint_name(&directory);
                match self.evaluate::<B>(iteration, &directory, keep_images, device)? {
                    Evaluation::Recorded(record) => {
                        eprintln!("{name}: mAP {:.2} ({:.1} s)", record.map, record.seconds);
                        log.append(record)?;
                        write_best(self.best_path, log)?;
                        evaluated += 1;
                        announced_waiting = false;
                    }
                    Evaluation::Removed(why) => eprintln!("skipping {name}: {why}"),
                    Evaluation::Interrupted => {
                        return Ok(Outcome::Interrupted { during: Some(name) })
                    }
                }
            }
            let Some(interval) = self.args.watch else {
                return Ok(Outcome::Done { trainer_running });
            };
            if !trainer_running {
                return Ok(Outcome::Done {
                    trainer_running: false,
                });
            }
            if !announced_waiting {
                eprintln!(
                    "waiting for new checkpoints (polling every {interval} s while the trainer \
                     holds `{}`; Ctrl-C stops)",
                    self.run.join(LOCK_FILE).display()
                );
                announced_waiting = true;
            }
            let until = Instant::now() + Duration::from_secs(interval);
            while Instant::now() < until {
                if self.stopped() {
                    return Ok(Outcome::Interrupted { during: None });
                }
                std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
            }
        }
    }

    /// Loads one checkpoint's backbone, extracts both splits' features and trains the SVMs.
    fn evaluate<B: Backend>(
        &mut self,
        iteration: u64,
        directory: &Path,
        keep_images: bool,
        device: &B::Device,
    ) -> Result<Evaluation, CliError> {
        let started = Instant::now();
        let model_file = directory.join(MODEL_FILE);
        let removed = || -> Option<String> {
            if !directory.is_dir() {
                Some("its directory is gone (removed by the trainer's keep_last?)".into())
            } else if !model_file.is_file() {
                Some(format!(
                    "it has no `{MODEL_FILE}` (being removed by the trainer's keep_last?)"
                ))
            } else {
                None
            }
        };
        if let Some(why) = removed() {
            return Ok(Evaluation::Removed(why));
        }
        let in_checkpoint = |err: CliError| CliError::Checkpoint {
            checkpoint: directory.to_path_buf(),
            source: Box::new(err),
        };
        let model = match CaptioningModel::<B>::load(&model_file, device) {
            Ok(model) => model.visual.cnn,
            Err(err) => {
                return match removed() {
                    Some(why) => Ok(Evaluation::Removed(why)),
                    None => Err(in_checkpoint(err.into())),
                }
            }
        };
        let name = checkpoint_name(directory);
        let Some(train_features) = self
            .features::<B>(&model, Split::Train, keep_images, device, &name)
            .map_err(in_checkpoint)?
        else {
            return Ok(Evaluation::Interrupted);
        };
        let Some(test_features) = self
            .features::<B>(&model, Split::Test, keep_images, device, &name)
            .map_err(in_checkpoint)?
        else {
            return Ok(Evaluation::Interrupted);
        };
        let result = evaluate_voc07(
            &self.svm,
            &self.train.split,
            &train_features,
            &self.test.split,
            &test_features,
        )
        .map_err(|err| in_checkpoint(err.into()))?;
        if !result.map.is_finite() {
            return Err(in_checkpoint(CliError::Input(format!(
                "its VOC07 mAP is {} (non-finite features?)",
                result.map
            ))));
        }
        Ok(Evaluation::Recorded(Voc07Record {
            iteration,
            checkpoint: name,
            map: round_trip(result.map),
            per_class: result
                .classes
                .iter()
                .map(|class| (class.class_name.clone(), round_trip(100.0 * class.test_ap)))
                .collect(),
            seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            settings: Voc07Settings::of(self.args),
        }))
    }

    /// L2-normalised pooled features of one split (as `virtex eval-voc07 --weights`), reading
    /// cached batches from memory and caching new ones while the budget allows (when
    /// `keep_images`). `None` when stopped.
    fn features<B: Backend>(
        &mut self,
        model: &ResNet<B>,
        which: Split,
        keep_images: bool,
        device: &B::Device,
        checkpoint: &str,
    ) -> Result<Option<Features>, CliError> {
        let stop = self.stop;
        let batch_size = self.args.batch_size.max(1);
        let (images, budget, transforms) = match which {
            Split::Train => (&mut self.train, &mut self.cache_budget, &self.transforms),
            Split::Test => (&mut self.test, &mut self.cache_budget, &self.transforms),
        };
        let progress = progress_bar(
            images.paths.len(),
            &format!("{checkpoint} {} features", images.split.split),
        );
        let mut values = Vec::new();
        let mut dim = 0;
        for (index, batch) in images.paths.chunks(batch_size).enumerate() {
            if stop.load(Ordering::SeqCst) {
                progress.finish_and_clear();
                return Ok(None);
            }
            let pixels = match images.cached.get(index) {
                Some(data) => Tensor::<B, 4>::from_data(data.clone(), device),
                None => {
                    let pixels = load_image_batch::<B, _>(batch, transforms, device)?.images;
                    let bytes = pixels.dims().iter().product::<usize>() * size_of::<f32>();
                    if keep_images && index == images.cached.len() && bytes <= *budget {
                        *budget -= bytes;
                        images.cached.push(pixels.to_data());
                    }
                    pixels
                }
            };
            let output = l2_normalize(global_average_pool(model.forward(pixels))).into_data();
            dim = output.shape.get(1).copied().unwrap_or(0);
            values.extend(output.convert::<f32>().into_vec::<f32>().map_err(|err| {
                CliError::Usage(format!("unexpected feature data type: {err:?}"))
            })?);
            progress.inc(batch.len() as u64);
        }
        progress.finish_and_clear();
        Features::from_f32(&values, images.paths.len(), dim)
            .map(Some)
            .map_err(CliError::from)
    }
}

/// Which split [`Sweep::features`] reads.
#[derive(Clone, Copy)]
enum Split {
    Train,
    Test,
}

/// `value` rounded to 6 decimals: its JSON text then reads back as exactly the same number
/// (serde_json's default parser may be one unit in the last place off on 17-digit numbers), so
/// the best record read back from `voc07.jsonl` equals the one just evaluated, and an unchanged
/// `voc07_best.json` is not rewritten.
fn round_trip(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// A checkpoint directory's name.
fn checkpoint_name(directory: &Path) -> String {
    directory
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Voc07Settings {
        Voc07Settings {
            train_split: "trainval".into(),
            test_split: "test".into(),
            short_side: 32,
            crop: 32,
            seed: 0,
        }
    }

    fn record(iteration: u64, map: f64) -> Voc07Record {
        Voc07Record {
            iteration,
            checkpoint: format!("checkpoint_{iteration:08}"),
            map,
            per_class: BTreeMap::from([("cat".to_string(), map)]),
            seconds: 1.0,
            settings: settings(),
        }
    }

    #[test]
    fn the_log_drops_an_incomplete_last_line_and_keeps_the_rest() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(RECORDS_FILE);
        {
            let mut log = RecordLog::open(&path, &settings()).unwrap();
            log.append(record(10, 40.0)).unwrap();
            log.append(record(20, 45.0)).unwrap();
        }
        let whole = fs::read_to_string(&path).unwrap();
        let third = serde_json::to_string(&record(30, 50.0)).unwrap();
        fs::write(&path, format!("{whole}{}", &third[..third.len() / 2])).unwrap();
        let mut log = RecordLog::open(&path, &settings()).unwrap();
        assert_eq!(log.records.keys().copied().collect::<Vec<_>>(), [10, 20]);
        assert_eq!(fs::read_to_string(&path).unwrap(), whole);
        log.append(record(30, 50.0)).unwrap();
        drop(log);
        let log = RecordLog::open(&path, &settings()).unwrap();
        assert_eq!(log.records.len(), 3);
        assert_eq!(log.best().unwrap().iteration, 30);
    }

    #[test]
    fn the_best_is_the_highest_map_and_the_earliest_of_equal_ones() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(RECORDS_FILE);
        let mut log = RecordLog::open(&path, &settings()).unwrap();
        assert!(log.best().is_none());
        for (iteration, map) in [(10, 40.0), (20, 47.5), (30, 47.5), (40, 12.0)] {
            log.append(record(iteration, map)).unwrap();
        }
        assert_eq!(log.best().unwrap().iteration, 20);
        let best_path = directory.path().join(BEST_FILE);
        write_best(&best_path, &log).unwrap();
        let best: Voc07Best =
            serde_json::from_str(&fs::read_to_string(&best_path).unwrap()).unwrap();
        assert_eq!(
            best,
            Voc07Best {
                iteration: 20,
                checkpoint: "checkpoint_00000020".into(),
                map: 47.5,
                evaluated: 4
            }
        );
    }

    #[test]
    fn the_log_refuses_damage_other_settings_and_a_second_sweep() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(RECORDS_FILE);
        let log = RecordLog::open(&path, &settings()).unwrap();
        let err = RecordLog::open(&path, &settings())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("another") && err.contains(RECORDS_FILE),
            "{err}"
        );
        drop(log);

        let mut log = RecordLog::open(&path, &settings()).unwrap();
        log.append(record(10, 40.0)).unwrap();
        drop(log);
        let other = Voc07Settings {
            crop: 28,
            ..settings()
        };
        let err = RecordLog::open(&path, &other).err().unwrap().to_string();
        assert!(
            err.contains("line 1") && err.contains("--crop 32") && err.contains("--crop 28"),
            "{err}"
        );

        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("not json\n{text}")).unwrap();
        let err = RecordLog::open(&path, &settings())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 1 is not a VOC07 record"), "{err}");
    }

    #[test]
    fn only_complete_checkpoint_directories_are_listed_in_iteration_order() {
        let run = tempfile::tempdir().unwrap();
        for name in [
            "checkpoint_00000200",
            "checkpoint_00000100",
            "checkpoint_00000300",
            ".partial-checkpoint_x",
            "checkpoint_abc",
        ] {
            fs::create_dir(run.path().join(name)).unwrap();
            if name != "checkpoint_00000300" {
                fs::write(run.path().join(name).join(STATE_FILE), "{}").unwrap();
            }
        }
        let listed: Vec<u64> = list_checkpoints(run.path())
            .unwrap()
            .into_iter()
            .map(|(iteration, _)| iteration)
            .collect();
        assert_eq!(listed, [100, 200]);
    }

    #[test]
    fn a_lock_held_elsewhere_means_the_trainer_runs() {
        let run = tempfile::tempdir().unwrap();
        assert!(!trainer_running(run.path()));
        let lock = File::create(run.path().join(LOCK_FILE)).unwrap();
        assert!(!trainer_running(run.path()));
        lock.lock().unwrap();
        assert!(trainer_running(run.path()));
        lock.unlock().unwrap();
        assert!(!trainer_running(run.path()));
    }
}
