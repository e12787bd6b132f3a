//! The run directory: a unique name per run, one process at a time, and never over another
//! run's results.
//!
//! - [`claim_unique_dir`] / [`default_run_dir`]: `runs/<UTC timestamp>` created with
//!   `create_dir` (atomic), with `-2`, `-3`, … appended when two runs start in the same second,
//!   so two processes never share a directory.
//! - [`RunLock`]: an exclusive advisory lock on `<run_dir>/.lock`, held by the training process
//!   for as long as it runs; a second process on the same directory is refused with the first
//!   one's process id.
//! - [`results_in`]: what a finished or killed run left (config, metrics, plot, backbone,
//!   sample captions, TensorBoard event files, `init_from.json`, checkpoints); a new run refuses
//!   such a directory instead of overwriting it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::checkpoint::list_checkpoints;
use crate::error::TrainError;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// The files a run writes into its directory besides checkpoints. A directory holding any of
/// them (or a checkpoint) belongs to a run.
pub const RESULT_FILES: [&str; 7] = [
    "config.json",
    "metrics.jsonl",
    "loss.png",
    "backbone.safetensors",
    "samples.html",
    "samples",
    "init_from.json",
];

/// Creates and returns a new directory `parent/stem`, or `parent/stem-2`, `parent/stem-3`, …
/// when the name is taken. `create_dir` either creates the directory or fails because it
/// exists, so concurrent callers never get the same one.
pub fn claim_unique_dir(parent: &Path, stem: &str) -> Result<PathBuf, TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    for attempt in 1..=10_000u32 {
        let name = if attempt == 1 {
            stem.to_string()
        } else {
            format!("{stem}-{attempt}")
        };
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io(&path)(err)),
        }
    }
    Err(TrainError::Config(format!(
        "could not find a free run directory `{stem}-N` under `{}`",
        parent.display()
    )))
}

/// A new, unique `runs/<UTC timestamp>` (colons replaced by `-`), created.
pub fn default_run_dir() -> Result<PathBuf, TrainError> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "-");
    claim_unique_dir(Path::new("runs"), &stamp)
}

/// What a run left in `run_dir`: the [`RESULT_FILES`] present and its `checkpoint_N`
/// directories, by name. Empty for a missing directory.
pub fn results_in(run_dir: &Path) -> Result<Vec<String>, TrainError> {
    if !run_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<String> = RESULT_FILES
        .iter()
        .filter(|name| run_dir.join(name).exists())
        .map(|name| name.to_string())
        .collect();
    // TensorBoard merges every event file of a directory: a new run beside an old one's would
    // draw both runs as one.
    found.extend(
        crate::tensorboard::event_files(run_dir)?
            .into_iter()
            .filter_map(|path| Some(path.file_name()?.to_string_lossy().into_owned())),
    );
    found.extend(list_checkpoints(run_dir)?.into_iter().map(|(_, path)| {
        path.file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }));
    Ok(found)
}

/// An exclusive lock on a run directory, released when dropped (or when the process dies:
/// the operating system drops advisory locks with their file descriptors, so a `kill -9` never
/// leaves a directory locked).
#[derive(Debug)]
pub struct RunLock {
    /// Holds the lock.
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `run_dir` (which must exist), writing this process's id into the lock file.
    /// Another process holding it gives [`TrainError::RunDirLocked`] with its process id.
    pub fn acquire(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join(LOCK_FILE);
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TrainError::RunDirLocked {
                    path: run_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_started_in_the_same_second_get_their_own_directories() {
        let parent = tempfile::tempdir().unwrap();
        let claimed: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| claim_unique_dir(parent.path(), "2026-12-05T17-00-00Z")))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap().unwrap())
                .collect()
        });
        let mut names: Vec<String> = claimed
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "2026-12-05T17-00-00Z",
                "2026-12-05T17-00-00Z-2",
                "2026-12-05T17-00-00Z-3",
                "2026-12-05T17-00-00Z-4"
            ]
        );
    }

    #[test]
    fn a_second_lock_on_a_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert!(message.contains("in use"), "{message}");
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn results_are_the_files_a_run_writes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(results_in(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join(LOCK_FILE), "1").unwrap();
        std::fs::write(dir.path().join(".partial-x"), "1").unwrap();
        assert!(results_in(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join("loss.png"), "png").unwrap();
        assert_eq!(results_in(dir.path()).unwrap(), ["loss.png"]);
        let events = "events.out.tfevents.1.host.virtex";
        std::fs::write(dir.path().join(events), "").unwrap();
        std::fs::create_dir(dir.path().join("samples")).unwrap();
        assert_eq!(
            results_in(dir.path()).unwrap(),
            ["loss.png", "samples", events]
        );
    }
}
