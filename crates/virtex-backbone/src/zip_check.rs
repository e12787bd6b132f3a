//! Is a `.pth` zip archive whole? Checked before burn-store reads it, because burn-store's
//! reader turns every failure to read a storage (a missing entry, a CRC error from bit rot, an
//! entry cut short) into a tensor of zeros, and a truncated archive into "Invalid pickle
//! opcode" (it falls back to reading the file as a pickle). PyTorch itself refuses such files
//! ("PytorchStreamReader failed reading zip archive", "CRC-32 check failed").
//!
//! The `zip` crate (the one burn-store reads `.pth` files with) does the checking: opening the
//! archive finds the end-of-central-directory record (written last, so a truncated file has
//! none) and the directory; reading every entry to its end checks that its data lies inside the
//! file and that its CRC-32 matches.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Seek};

/// Why the archive is not whole, or `None`. Errors reading the file itself are returned as
/// errors, not as problems of the archive.
pub(crate) fn zip_problem(file: &mut File) -> std::io::Result<Option<String>> {
    file.rewind()?;
    let mut archive = match zip::ZipArchive::new(BufReader::new(file)) {
        Ok(archive) => archive,
        Err(zip::result::ZipError::Io(err)) if err.kind() != ErrorKind::UnexpectedEof => {
            return Err(err)
        }
        Err(err) => {
            return Ok(Some(format!(
                "{err} (the file ends early or is damaged: an interrupted download or copy?)"
            )))
        }
    };
    for index in 0..archive.len() {
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(err) => return Ok(Some(format!("entry {index}: {err}"))),
        };
        let name = entry.name().to_string();
        if let Err(err) = std::io::copy(&mut entry, &mut std::io::sink()) {
            let what = if err.kind() == ErrorKind::InvalidData {
                "CRC-32 mismatch (its data is damaged)".to_string()
            } else {
                format!("its data cannot be read: {err}")
            };
            return Ok(Some(format!("entry `{name}`: {what}")));
        }
    }
    Ok(None)
}
