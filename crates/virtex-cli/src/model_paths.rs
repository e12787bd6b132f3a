//! Where a model argument (`caption --checkpoint`, every `--weights`) points: a file, a
//! released name (from the weights cache), a checkpoint directory, or a training run's newest
//! checkpoint.

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// The model file `--checkpoint` names, and the checkpoint directory it was found in (when the
/// argument was a directory).
#[derive(Debug)]
pub(crate) struct ResolvedCheckpoint {
    /// The model file.
    pub file: PathBuf,
    /// The checkpoint directory holding it, when the argument was a directory.
    pub directory: Option<PathBuf>,
}

/// The file of a checkpoint in a directory.
const MODEL_FILE: &str = "model.safetensors";

/// `--checkpoint` as a model file: a file as given; a directory holding `model.safetensors`
/// (a checkpoint directory) that file; otherwise the directory is a training run, and its newest
/// `checkpoint_<digits>/` holding `model.safetensors` and `state.json` (the highest number) is
/// used, as `pretrain_coco --resume` does.
pub(crate) fn resolve_checkpoint(path: &Path) -> Result<ResolvedCheckpoint, CliError> {
    if !path.is_dir() {
        return Ok(ResolvedCheckpoint {
            file: crate::weights::resolve_weights(path)?,
            directory: None,
        });
    }
    let file = path.join(MODEL_FILE);
    if file.is_file() {
        return Ok(ResolvedCheckpoint {
            file,
            directory: Some(path.to_path_buf()),
        });
    }
    let entries = std::fs::read_dir(path).map_err(|err| {
        CliError::Input(format!(
            "cannot read the directory `{}`: {err}",
            path.display()
        ))
    })?;
    let newest = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix("checkpoint_")?;
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let number: u128 = number.parse().ok()?;
            let directory = entry.path();
            (directory.join(MODEL_FILE).is_file() && directory.join("state.json").is_file())
                .then_some((number, directory))
        })
        .max();
    match newest {
        Some((_, directory)) => Ok(ResolvedCheckpoint {
            file: directory.join(MODEL_FILE),
            directory: Some(directory),
        }),
        None => Err(CliError::NoCheckpoint {
            directory: path.to_path_buf(),
        }),
    }
}

/// [`resolve_checkpoint`]'s model file, saying on stderr which checkpoint a directory gave.
pub(crate) fn resolve_model_file(path: &Path) -> Result<PathBuf, CliError> {
    let resolved = resolve_checkpoint(path)?;
    if resolved.directory.is_some() {
        eprintln!("using checkpoint {}", resolved.file.display());
    }
    Ok(resolved.file)
}
