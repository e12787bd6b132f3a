//! Atomic file writes: the one mechanism every writer of the workspace uses (weights, model
//! checkpoints, the training program's config and metrics files).

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
