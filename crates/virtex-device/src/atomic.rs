//! Atomic file writes: the one mechanism every writer of the workspace uses (weights, model
//! checkpoints, the training program's config and metrics files, the CLI's outputs, tokenizer
//! files).

use std::fs::File;
use std::io;
use std::path::Path;

/// What the temporary files of [`write_atomically`] start with; a cleanup of files left by a
/// killed process looks for it.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// Writes `path` atomically: `write` fills a temporary file (`.partial-*`) in the same
/// directory, which is fsynced, renamed over `path`, and then the directory is fsynced. A kill
/// at any moment leaves the old file or the new one under `path`, never a truncated one.
///
/// The file is created with mode 0666 less the user's umask, as `File::create` would give
/// (tempfile's default is owner-only).
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(PARTIAL_PREFIX);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let temporary = builder.tempfile_in(directory)?;
    write(temporary.path())?;
    File::open(temporary.path())?.sync_all()?;
    temporary.persist(path).map_err(|err| err.error)?;
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn partial_files(directory: &Path) -> Vec<String> {
        fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(PARTIAL_PREFIX))
            .collect()
    }

    #[test]
    fn writes_a_new_file_and_replaces_an_old_one() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.txt");
        write_atomically(&path, |temporary| fs::write(temporary, b"first")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_atomically(&path, |temporary| fs::write(temporary, b"second")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(partial_files(directory.path()).is_empty());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_partial_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.txt");
        fs::write(&path, b"old").unwrap();
        let result = write_atomically(&path, |temporary| {
            fs::write(temporary, b"half")?;
            Err(io::Error::other("killed"))
        });
        assert_eq!(result.unwrap_err().to_string(), "killed");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(partial_files(directory.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_gets_the_mode_file_create_would_give() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let reference = directory.path().join("reference");
        fs::File::create(&reference).unwrap();
        let path = directory.path().join("atomic");
        write_atomically(&path, |temporary| fs::write(temporary, b"x")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&reference));
    }
}
