//! Is a `.pth` zip archive whole? Checked before burn-store reads it, because burn-store's
//! reader turns every failure to read a storage (a missing entry, a CRC error from bit rot, an
//! entry cut short) into a tensor of zeros, and a truncated archive into "Invalid pickle
//! opcode" (it falls back to reading the file as a pickle). PyTorch itself refuses such files
//! ("PytorchStreamReader failed reading zip archive", "CRC-32 check failed").
//!
//! What is checked: the end-of-central-directory record exists (it is written last, so a
//! truncated file has none); the central directory lies before it; every entry's local header
//! and data lie inside the file; the CRC-32 of every stored (uncompressed, as `torch.save`
//! writes them) entry matches. Archives in zip64 form (over 4 GiB) are checked only up to the
//! first zip64 field.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// Size of the end-of-central-directory record without its comment.
const END_RECORD: usize = 22;
/// A central-directory entry without its name, extra field and comment.
const DIRECTORY_ENTRY: usize = 46;
/// A local file header without its name and extra field.
const LOCAL_HEADER: usize = 30;

/// Why the archive is not whole, or `None`.
pub(crate) fn zip_problem(file: &mut File, length: u64) -> std::io::Result<Option<String>> {
    if length < END_RECORD as u64 {
        return Ok(Some(format!(
            "{length} bytes, fewer than an empty archive (the file ends early)"
        )));
    }
    let tail_length = length.min(65_535 + END_RECORD as u64);
    file.seek(SeekFrom::Start(length - tail_length))?;
    let mut tail = Vec::with_capacity(tail_length as usize);
    file.take(tail_length).read_to_end(&mut tail)?;
    let Some(at) = (0..=tail.len() - END_RECORD)
        .rev()
        .find(|&at| tail[at..].starts_with(b"PK\x05\x06"))
    else {
        return Ok(Some(format!(
            "no end-of-central-directory record in its last {tail_length} bytes (the file ends \
             early: an interrupted download or copy?)"
        )));
    };
    let record = &tail[at..];
    let entries = u16_at(record, 10);
    let (directory_size, directory_offset) = (u32_at(record, 12), u32_at(record, 16));
    let record_offset = length - tail_length + at as u64;
    // 0xFFFF / 0xFFFFFFFF: the real values are in the zip64 record; not checked.
    if entries == u16::MAX || directory_size == u32::MAX || directory_offset == u32::MAX {
        return Ok(None);
    }
    let directory_end = u64::from(directory_offset) + u64::from(directory_size);
    if directory_end > record_offset {
        return Ok(Some(format!(
            "its central directory ({directory_size} bytes at offset {directory_offset}) runs \
             past the end-of-central-directory record at {record_offset} (the file is cut or \
             damaged)"
        )));
    }
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(u64::from(directory_offset)))?;
    let mut directory = vec![0u8; directory_size as usize];
    reader.read_exact(&mut directory)?;
    check_entries(
        &mut reader,
        &directory,
        entries,
        u64::from(directory_offset),
    )
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Walks the central directory: each entry's local header and data inside the file (before
/// the directory), and the CRC of each stored entry.
fn check_entries(
    reader: &mut BufReader<&mut File>,
    directory: &[u8],
    entries: u16,
    data_end: u64,
) -> std::io::Result<Option<String>> {
    let mut at = 0usize;
    for index in 0..entries {
        let Some(entry) = directory
            .get(at..at + DIRECTORY_ENTRY)
            .filter(|entry| entry.starts_with(b"PK\x01\x02"))
        else {
            return Ok(Some(format!(
                "central-directory entry {index} of {entries} is damaged"
            )));
        };
        let method = u16_at(entry, 10);
        let crc = u32_at(entry, 16);
        let size = u32_at(entry, 20);
        let name_length = usize::from(u16_at(entry, 28));
        let variable =
            name_length + usize::from(u16_at(entry, 30)) + usize::from(u16_at(entry, 32));
        let local = u32_at(entry, 42);
        let name = directory
            .get(at + DIRECTORY_ENTRY..at + DIRECTORY_ENTRY + name_length)
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned();
        at += DIRECTORY_ENTRY + variable;
        if size == u32::MAX || local == u32::MAX {
            return Ok(None); // zip64 entry
        }
        let damaged = |what: &str| Some(format!("entry `{name}`: {what}"));
        let mut header = [0u8; LOCAL_HEADER];
        if u64::from(local) + LOCAL_HEADER as u64 > data_end {
            return Ok(damaged("its header lies outside the file"));
        }
        reader.seek(SeekFrom::Start(u64::from(local)))?;
        reader.read_exact(&mut header)?;
        if !header.starts_with(b"PK\x03\x04") {
            return Ok(damaged("its local header is damaged"));
        }
        let start = u64::from(local)
            + LOCAL_HEADER as u64
            + u64::from(u16_at(&header, 26))
            + u64::from(u16_at(&header, 28));
        if start + u64::from(size) > data_end {
            return Ok(damaged("its data runs past the end of the archive's data"));
        }
        // Only stored entries can be checked without inflating; `torch.save` stores all.
        if method != 0 {
            continue;
        }
        reader.seek(SeekFrom::Start(start))?;
        if crc32(&mut (&mut *reader).take(u64::from(size)))? != crc {
            return Ok(damaged("CRC-32 mismatch (its data is damaged)"));
        }
    }
    Ok(None)
}

/// CRC-32 (IEEE, as zip uses) of everything `reader` yields.
fn crc32(reader: &mut impl Read) -> std::io::Result<u32> {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut crc = n as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[n] = crc;
            n += 1;
        }
        table
    };
    let mut crc = !0u32;
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(!crc);
        }
        for &byte in &buffer[..read] {
            crc = TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_the_check_string() {
        assert_eq!(crc32(&mut &b"123456789"[..]).unwrap(), 0xCBF4_3926);
    }
}
