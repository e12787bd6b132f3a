//! Checkpoint directories written atomically, and the "keep the last K" policy.
//!
//! A checkpoint is a directory `checkpoint_{iteration:08}/` holding the model, the optimizer
//! (with Lookahead's slow weights and counter), and `state.json` (iteration, scheduler and
//! data-loader positions, RNG state, the resolved config). It is first written under a hidden
//! temporary name in the run directory, every file is fsynced, then the directory is renamed into
//! place and the run directory fsynced. A kill at any moment leaves either the previous set of
//! checkpoints or the new one, never a half-written `checkpoint_*` directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::TrainError;

const PREFIX: &str = "checkpoint_";
const TEMPORARY_PREFIX: &str = ".partial-checkpoint_";
/// What every temporary of a run directory starts with (see [`remove_stale_temporaries`]).
const STALE_PREFIX: &str = virtex_device::PARTIAL_PREFIX;

/// The directory name of the checkpoint of `iteration`.
pub fn checkpoint_name(iteration: u64) -> String {
    format!("{PREFIX}{iteration:08}")
}

/// Completed checkpoints of a run directory, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let entries = fs::read_dir(run_dir).map_err(|source| TrainError::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if let Ok(iteration) = number.parse::<u64>() {
            if entry.path().join("state.json").is_file() {
                found.push((iteration, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The newest completed checkpoint of a run directory.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<(u64, PathBuf)>, TrainError> {
    Ok(list_checkpoints(run_dir)?.pop())
}

/// Writes a checkpoint directory atomically: `write` fills a temporary directory, which is then
/// synced and renamed to `checkpoint_{iteration}`. Keeps only the newest `keep_last`.
pub fn write_checkpoint(
    run_dir: &Path,
    iteration: u64,
    keep_last: usize,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let started_writing = SystemTime::now();
    let temporary = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .tempdir_in(run_dir)
        .map_err(io(run_dir))?;
    write(temporary.path())?;
    for entry in fs::read_dir(temporary.path()).map_err(io(temporary.path()))? {
        let path = entry.map_err(io(temporary.path()))?.path();
        File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(io(&path))?;
    }
    // The directory's entries too, so that after a power loss the renamed directory is not
    // found empty.
    File::open(temporary.path())
        .and_then(|dir| dir.sync_all())
        .map_err(io(temporary.path()))?;
    let target = run_dir.join(checkpoint_name(iteration));
    // The loop saves an iteration once and refuses to start a new run over old checkpoints, so
    // the name is normally free. If it is not, the old directory is renamed aside (the other
    // checkpoints stay loadable meanwhile) and removed once the new one is in place.
    let replaced = if target.exists() {
        let aside = run_dir.join(format!("{TEMPORARY_PREFIX}replaced-{iteration:08}"));
        fs::rename(&target, &aside).map_err(io(&target))?;
        Some(aside)
    } else {
        None
    };
    let kept = temporary.keep();
    fs::rename(&kept, &target).map_err(io(&target))?;
    File::open(run_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(run_dir))?;
    if let Some(aside) = replaced {
        // The new checkpoint is in place; a copy that cannot be removed now is removed later.
        let _ = fs::remove_dir_all(&aside);
    }

    let checkpoints = list_checkpoints(run_dir)?;
    if checkpoints.len() > keep_last.max(1) {
        for (_, old) in &checkpoints[..checkpoints.len() - keep_last.max(1)] {
            fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    let _ = remove_stale_temporaries(run_dir, started_writing);
    Ok(target)
}

/// Replaces `path` with `contents` atomically ([`virtex_device::write_atomically`]): a kill
/// leaves the old file or the new one.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), TrainError> {
    virtex_device::write_atomically(path, |temporary| fs::write(temporary, contents)).map_err(
        |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// Removes temporaries left by a process killed while writing: checkpoint directories and
/// the files of [`write_file_atomically`] and the model writers (all start with `.partial-`).
/// Only entries last modified before `before` (when this checkpoint began) go, so a file that
/// another process (an export into the run directory) is writing right now is left alone. A
/// checkpoint set aside for replacement whose replacement never arrived is renamed back.
/// Returns what was removed (for the message that says so).
pub(crate) fn remove_stale_temporaries(run_dir: &Path, before: SystemTime) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(run_dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(STALE_PREFIX) {
            continue;
        }
        let path = entry.path();
        let replaced = name
            .strip_prefix(TEMPORARY_PREFIX)
            .and_then(|rest| rest.strip_prefix("replaced-"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(iteration) = replaced {
            let original = run_dir.join(checkpoint_name(iteration));
            if !original.exists() && fs::rename(&path, &original).is_ok() {
                continue;
            }
        }
        let modified = entry.metadata().and_then(|meta| meta.modified());
        if modified.is_ok_and(|time| time >= before) {
            continue;
        }
        let gone = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in a directory, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn write_marker(iteration: u64) -> impl FnOnce(&Path) -> Result<(), TrainError> {
        move |dir: &Path| {
            fs::write(
                dir.join("state.json"),
                format!("{{\"iteration\": {iteration}}}"),
            )
            .map_err(|source| TrainError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }

    #[test]
    fn keeps_the_last_k_in_order() {
        let run = tempfile::tempdir().unwrap();
        for iteration in [10, 20, 30, 40] {
            write_checkpoint(run.path(), iteration, 2, write_marker(iteration)).unwrap();
        }
        let kept: Vec<u64> = list_checkpoints(run.path())
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(kept, vec![30, 40]);
        assert_eq!(latest_checkpoint(run.path()).unwrap().unwrap().0, 40);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        write_checkpoint(run.path(), 10, 3, write_marker(10)).unwrap();
        let failed = write_checkpoint(run.path(), 20, 3, |_| {
            Err(TrainError::Config("simulated crash".into()))
        });
        assert!(failed.is_err());
        assert_eq!(latest_checkpoint(run.path()).unwrap().unwrap().0, 10);
        // No half-written checkpoint is visible, and the temporary directory is gone.
        assert_eq!(entries(run.path()), ["checkpoint_00000010"]);
    }

    #[test]
    fn saving_an_iteration_again_replaces_it() {
        let run = tempfile::tempdir().unwrap();
        write_checkpoint(run.path(), 10, 1, write_marker(10)).unwrap();
        let again = write_checkpoint(run.path(), 10, 1, |dir: &Path| {
            fs::write(dir.join("state.json"), "second").map_err(|source| TrainError::Io {
                path: dir.to_path_buf(),
                source,
            })
        })
        .unwrap();
        let state = fs::read_to_string(again.join("state.json")).unwrap();
        assert_eq!(state, "second");
        assert_eq!(entries(run.path()), ["checkpoint_00000010"]);
    }

    #[test]
    fn atomic_files_are_readable_and_stale_temporaries_go() {
        let run = tempfile::tempdir().unwrap();
        let path = run.path().join("config.json");
        write_file_atomically(&path, b"{}").unwrap();
        write_file_atomically(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\": 1}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Readable by others (tempfile's 0600 would not be), within the umask.
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o600, 0o600);
            assert_eq!(mode & 0o044, 0o044, "{mode:o}");
        }
        // A kill during a write leaves a `.partial-` file; the next checkpoint removes it.
        fs::write(run.path().join(".partial-abc"), "half").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // One set aside for a replacement that never arrived is put back.
        fs::create_dir(run.path().join(".partial-checkpoint_replaced-00000007")).unwrap();
        write_marker(7)(&run.path().join(".partial-checkpoint_replaced-00000007")).unwrap();
        write_checkpoint(run.path(), 10, 2, write_marker(10)).unwrap();
        assert_eq!(
            entries(run.path()),
            ["checkpoint_00000007", "checkpoint_00000010", "config.json"]
        );
    }

    #[test]
    fn directories_without_state_are_not_checkpoints() {
        let run = tempfile::tempdir().unwrap();
        fs::create_dir(run.path().join("checkpoint_00000050")).unwrap();
        assert!(latest_checkpoint(run.path()).unwrap().is_none());
    }
}
