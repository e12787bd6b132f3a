//! Refusing output paths that would destroy an input or a training checkpoint.
//!
//! `virtex features --weights w.pth --out w.pth` used to replace the weights with the features
//! it had just computed from them. [`check_output_path`] is the one check every writer of the
//! workspace calls before doing any work: the CLI commands against their inputs, the trainer's
//! `--export-backbone` against its run directory.
//!
//! ```
//! use std::path::Path;
//! use virtex_device::{check_output_path, OutputConflict};
//!
//! let directory = tempfile::tempdir().unwrap();
//! let weights = directory.path().join("resnet50.pth");
//! std::fs::write(&weights, b"weights").unwrap();
//!
//! // A new file next to the inputs is fine.
//! let out = directory.path().join("features.safetensors");
//! check_output_path(&out, &[&weights]).unwrap();
//!
//! // The weights themselves, even spelt differently, are not.
//! let same = directory.path().join(".").join("resnet50.pth");
//! let err = check_output_path(&same, &[&weights]).unwrap_err();
//! assert!(matches!(err, OutputConflict::SameFile { .. }));
//! assert!(err.to_string().contains("resnet50.pth"));
//!
//! // Nor is anything inside a training checkpoint.
//! let checkpoint = directory.path().join("checkpoint_00002000");
//! std::fs::create_dir(&checkpoint).unwrap();
//! let err = check_output_path(&checkpoint.join("backbone.pth"), &[]).unwrap_err();
//! assert!(matches!(err, OutputConflict::InsideCheckpoint { .. }));
//! ```

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// Why an output path was refused by [`check_output_path`]. Every variant names the output as
/// given and the input or checkpoint it collides with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputConflict {
    /// The output is one of the inputs (the same path after resolving `.`, `..` and symbolic
    /// links, or the same file through a hard link): writing it would replace the input.
    #[error(
        "refusing to write `{output}`: it is the input `{input}`, which would be overwritten; \
         choose another output path"
    )]
    SameFile {
        /// The output path, as given.
        output: PathBuf,
        /// The input it is, as given.
        input: PathBuf,
    },
    /// The output lies inside a directory that is one of the inputs (e.g. `--images photos/
    /// --out photos/features.safetensors`).
    #[error(
        "refusing to write `{output}` inside the input directory `{input}`; choose an output \
         path outside it"
    )]
    InsideInputDirectory {
        /// The output path, as given.
        output: PathBuf,
        /// The input directory that contains it, as given.
        input: PathBuf,
    },
    /// The output is, or lies inside, a training checkpoint directory (see
    /// [`is_checkpoint_dir`]): writing there would corrupt the checkpoint.
    #[error(
        "refusing to write `{output}`: it lies inside the training checkpoint `{checkpoint}`; \
         writing there would corrupt it, choose an output path outside it"
    )]
    InsideCheckpoint {
        /// The output path, as given.
        output: PathBuf,
        /// The checkpoint directory (resolved).
        checkpoint: PathBuf,
    },
}

/// Checks that writing `output` destroys none of `inputs` and no training checkpoint.
///
/// Refuses, in this order:
/// - [`OutputConflict::SameFile`]: `output` is the same file as an input: equal paths once both
///   are resolved (symbolic links, `.` and `..`; an output that does not exist yet is resolved
///   through its nearest existing parent), or, on Unix, the same inode (a hard link);
/// - [`OutputConflict::InsideInputDirectory`]: an input is a directory that contains `output`;
/// - [`OutputConflict::InsideCheckpoint`]: `output`, or a directory containing it, is a training
///   checkpoint ([`is_checkpoint_dir`]).
///
/// Inputs that do not exist are compared by their lexically resolved path (the command that
/// reads them reports them missing). The check only reads metadata: it creates nothing. Call
/// it before any expensive work, with every file and directory the command reads.
pub fn check_output_path(output: &Path, inputs: &[&Path]) -> Result<(), OutputConflict> {
    let resolved = resolve(output);
    for input in inputs {
        let resolved_input = resolve(input);
        if resolved_input == resolved || same_inode(output, input) {
            return Err(OutputConflict::SameFile {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
        if resolved_input.is_dir() && resolved.starts_with(&resolved_input) {
            return Err(OutputConflict::InsideInputDirectory {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    let containing = resolved
        .ancestors()
        .enumerate()
        // The output itself counts only as an existing directory (a checkpoint it would replace).
        .filter(|(depth, path)| *depth > 0 || path.is_dir())
        .map(|(_, path)| path)
        .find(|path| is_checkpoint_dir(path));
    if let Some(checkpoint) = containing {
        return Err(OutputConflict::InsideCheckpoint {
            output: output.to_path_buf(),
            checkpoint: checkpoint.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether `path` looks like a training checkpoint directory of `virtex-train`: its name is
/// `checkpoint_` followed by digits (`checkpoint_00002000`), or it is a directory holding both
/// `state.json` and `model.safetensors`.
pub fn is_checkpoint_dir(path: &Path) -> bool {
    let named = path
        .file_name()
        .and_then(OsStr::to_str)
        .and_then(|name| name.strip_prefix("checkpoint_"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    named || (path.join("state.json").is_file() && path.join("model.safetensors").is_file())
}

/// `path` made absolute with symbolic links resolved as far as it exists: the longest existing
/// prefix is canonicalised and the rest appended with `.` and `..` folded lexically.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(canonical) = path.canonicalize() {
        return canonical;
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(directory) => directory.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    // Walk up to the nearest existing ancestor, remembering the missing tail.
    let mut tail = Vec::new();
    let mut base = absolute.as_path();
    let mut resolved = loop {
        match base.canonicalize() {
            Ok(canonical) => break canonical,
            Err(_) => match (base.parent(), base.components().next_back()) {
                (Some(parent), Some(last)) => {
                    tail.push(last.as_os_str().to_os_string());
                    base = parent;
                }
                _ => break PathBuf::new(),
            },
        }
    };
    for part in tail.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            _ => resolved.push(part),
        }
    }
    resolved
}

/// Whether both paths exist and are the same file (Unix: device and inode).
#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_new_file_beside_the_inputs_passes() {
        let directory = tempfile::tempdir().unwrap();
        let weights = directory.path().join("w.pth");
        fs::write(&weights, b"w").unwrap();
        let images = directory.path().join("images");
        fs::create_dir(&images).unwrap();
        let out = directory.path().join("features.safetensors");
        check_output_path(&out, &[&weights, &images]).unwrap();
        // An existing output that is no input may be replaced.
        fs::write(&out, b"old").unwrap();
        check_output_path(&out, &[&weights, &images]).unwrap();
        // A sibling directory whose name merely starts like the input's is not inside it.
        let sibling = directory.path().join("images2");
        fs::create_dir(&sibling).unwrap();
        check_output_path(&sibling.join("out.json"), &[&images]).unwrap();
        // No inputs: only the checkpoint rule applies.
        check_output_path(&out, &[]).unwrap();
    }

    #[test]
    fn the_output_may_not_be_an_input() {
        let directory = tempfile::tempdir().unwrap();
        let weights = directory.path().join("w.pth");
        fs::write(&weights, b"w").unwrap();
        let vocab = directory.path().join("vocab.json");
        fs::write(&vocab, b"{}").unwrap();
        let err = check_output_path(&weights, &[&vocab, &weights]).unwrap_err();
        assert_eq!(
            err,
            OutputConflict::SameFile {
                output: weights.clone(),
                input: weights.clone()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("w.pth") && message.contains("overwritten"),
            "{message}"
        );

        // Spelt differently: `.` and `..` components.
        let images = directory.path().join("images");
        fs::create_dir(&images).unwrap();
        let detour = images.join("..").join(".").join("w.pth");
        assert!(matches!(
            check_output_path(&detour, &[&weights]),
            Err(OutputConflict::SameFile { .. })
        ));
        // Relative to the current directory on one side only.
        let relative = Path::new("Cargo.toml");
        let absolute = std::env::current_dir().unwrap().join("Cargo.toml");
        assert!(matches!(
            check_output_path(&absolute, &[relative]),
            Err(OutputConflict::SameFile { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn links_to_an_input_are_the_input() {
        let directory = tempfile::tempdir().unwrap();
        let weights = directory.path().join("w.pth");
        fs::write(&weights, b"w").unwrap();
        let symbolic = directory.path().join("symbolic.pth");
        std::os::unix::fs::symlink(&weights, &symbolic).unwrap();
        assert!(matches!(
            check_output_path(&symbolic, &[&weights]),
            Err(OutputConflict::SameFile { .. })
        ));
        let hard = directory.path().join("hard.pth");
        fs::hard_link(&weights, &hard).unwrap();
        assert!(matches!(
            check_output_path(&hard, &[&weights]),
            Err(OutputConflict::SameFile { .. })
        ));
        // A symbolic link to the directory: a new file through it is still inside.
        let linked_dir = directory.path().join("linked");
        std::os::unix::fs::symlink(directory.path(), &linked_dir).unwrap();
        assert!(matches!(
            check_output_path(&linked_dir.join("w.pth"), &[&weights]),
            Err(OutputConflict::SameFile { .. })
        ));
    }

    #[test]
    fn the_output_may_not_lie_in_an_input_directory() {
        let directory = tempfile::tempdir().unwrap();
        let images = directory.path().join("images");
        fs::create_dir_all(images.join("nested")).unwrap();
        for out in [
            images.join("features.safetensors"),
            images.join("nested/new/features.safetensors"),
        ] {
            let err = check_output_path(&out, &[&images]).unwrap_err();
            assert_eq!(
                err,
                OutputConflict::InsideInputDirectory {
                    output: out.clone(),
                    input: images.clone()
                }
            );
            assert!(err.to_string().contains("images"), "{err}");
        }
        // The directory itself.
        assert!(matches!(
            check_output_path(&images, &[&images]),
            Err(OutputConflict::SameFile { .. })
        ));
    }

    #[test]
    fn the_output_may_not_lie_in_a_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        // By name, whether or not it holds anything yet.
        let named = run.path().join("checkpoint_00000010");
        fs::create_dir(&named).unwrap();
        for out in [named.join("model.safetensors"), named.join("a/b.json")] {
            let err = check_output_path(&out, &[]).unwrap_err();
            assert_eq!(
                err,
                OutputConflict::InsideCheckpoint {
                    output: out.clone(),
                    checkpoint: named.canonicalize().unwrap()
                }
            );
            assert!(err.to_string().contains("checkpoint_00000010"), "{err}");
        }
        // The checkpoint directory itself as the output.
        assert!(matches!(
            check_output_path(&named, &[]),
            Err(OutputConflict::InsideCheckpoint { .. })
        ));
        // By content, whatever its name.
        let renamed = run.path().join("best");
        fs::create_dir(&renamed).unwrap();
        fs::write(renamed.join("state.json"), "{}").unwrap();
        check_output_path(&renamed.join("backbone.pth"), &[]).unwrap();
        fs::write(renamed.join("model.safetensors"), "").unwrap();
        assert!(matches!(
            check_output_path(&renamed.join("backbone.pth"), &[]),
            Err(OutputConflict::InsideCheckpoint { .. })
        ));
        // Beside checkpoints, in the run directory, is fine; so are look-alike names.
        check_output_path(&run.path().join("backbone.pth"), &[]).unwrap();
        for name in [
            "checkpoint_",
            "checkpoint_best",
            "checkpoints",
            "checkpoint_12a",
        ] {
            let directory = run.path().join(name);
            fs::create_dir(&directory).unwrap();
            check_output_path(&directory.join("out.json"), &[]).unwrap();
        }
        // A file (not a directory) named like a checkpoint may be written.
        check_output_path(&run.path().join("x/checkpoint_5"), &[]).unwrap();
    }

    #[test]
    fn recognises_checkpoint_directories() {
        assert!(is_checkpoint_dir(Path::new("/runs/a/checkpoint_00002000")));
        assert!(is_checkpoint_dir(Path::new("checkpoint_7")));
        assert!(!is_checkpoint_dir(Path::new("/runs/a/checkpoint_")));
        assert!(!is_checkpoint_dir(Path::new(
            "/runs/a/.partial-checkpoint_x-1"
        )));
    }
}
