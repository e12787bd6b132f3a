//! TensorBoard scalars: `events.out.tfevents.*` files next to `metrics.jsonl`, so that
//! `tensorboard --logdir runs` shows every run directory under `runs/` as upstream's
//! `SummaryWriter` did.
//!
//! An event file is a sequence of records, each
//! `u64 length (LE) | u32 masked CRC-32C of the length bytes | data | u32 masked CRC-32C of data`,
//! where `data` is a serialised `tensorflow.Event` protobuf. The first record carries
//! `file_version = "brain.Event:2"`; every later one a `Summary` of `simple_value` scalars at one
//! step. Only the fields written here are declared (prost ignores the others when reading).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::checkpoint::write_file_atomically;
use crate::error::TrainError;

/// `tensorflow.Event` (`tensorflow/core/util/event.proto`), the fields we use. `file_version`
/// and `summary` belong to a `oneof` there: `optional` keeps their presence on the wire.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`; `simple_value` is in a `oneof` (a plain proto3 float would not
/// be written when it is 0.0, and TensorBoard would then see no value at all).
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// What marks an event file in a directory (TensorBoard's own test).
const EVENT_FILE_MARK: &str = "tfevents";

/// The CRC TensorFlow's record framing uses: CRC-32C, rotated and offset so that a CRC of data
/// holding CRCs stays well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One framed record.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn seconds_since_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The machine's name for the event file name, as TensorFlow writes it; only `[A-Za-z0-9._-]`
/// so the name is a plain file name everywhere.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Appends scalar events to a new `events.out.tfevents.<secs>.<host>.virtex` file of a run
/// directory, one flushed record per call (a crash loses nothing written). Each process (a
/// resumed run too) writes its own file: TensorBoard merges the files of a directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates a new event file in `dir` and writes its `file_version` record.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        let now = seconds_since_epoch();
        let stem = format!(
            "events.out.{EVENT_FILE_MARK}.{}.{}",
            now as u64,
            host_name()
        );
        // A resumed run can start within the second its predecessor started in.
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = if attempt == 0 {
                format!("{stem}.virtex")
            } else {
                format!("{stem}.{attempt}.virtex")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1;
                }
                Err(source) => return Err(TrainError::Io { path, source }),
            }
        };
        let mut writer = Self { path, file };
        writer.write(&Event {
            wall_time: now,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        Ok(writer)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `values` (tag, value) as one event at `step`. Values are stored as `f32`
    /// (TensorBoard's `simple_value`); NaN and ±∞ are kept.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), TrainError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: seconds_since_epoch(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, value)| SummaryValue {
                        tag: tag.clone(),
                        simple_value: Some(*value as f32),
                    })
                    .collect(),
            }),
        })
    }

    fn write(&mut self, event: &Event) -> Result<(), TrainError> {
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The iteration.
    pub step: u64,
    /// The tag (`train/loss`, `lr/visual`, …).
    pub tag: String,
    /// The value, as stored (`f32`).
    pub value: f32,
    /// Seconds since the Unix epoch when it was written.
    pub wall_time: f64,
}

/// A record that is not what the framing promises.
#[derive(Debug)]
struct Damage {
    /// Byte offset of the record.
    offset: usize,
    /// What is wrong.
    message: String,
    /// Whether the file merely ends inside the record (a write cut short by a kill), as
    /// opposed to bytes that changed.
    truncated: bool,
}

/// The records of an event file: each record's byte range and decoded event, up to the first
/// damaged record (if any).
fn parse(bytes: &[u8]) -> (Vec<(std::ops::Range<usize>, Event)>, Option<Damage>) {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let start = offset;
        let damage = |message: String, truncated: bool| Damage {
            offset: start,
            message,
            truncated,
        };
        let Some(header) = bytes.get(start..start + 12) else {
            return (
                records,
                Some(damage("the file ends inside a record header".into(), true)),
            );
        };
        let (length_bytes, length_crc) = header.split_at(8);
        let length_crc = u32::from_le_bytes(length_crc.try_into().expect("4 bytes"));
        if masked_crc(length_bytes) != length_crc {
            return (
                records,
                Some(damage("the length's CRC does not match".into(), false)),
            );
        }
        let length = u64::from_le_bytes(length_bytes.try_into().expect("8 bytes"));
        let data_start = start + 12;
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| data_start.checked_add(length))
            .and_then(|data_end| data_end.checked_add(4).map(|end| (data_end, end)));
        let Some((data, data_crc)) = end.and_then(|(data_end, end)| {
            Some((bytes.get(data_start..data_end)?, bytes.get(data_end..end)?))
        }) else {
            return (
                records,
                Some(damage(
                    format!("the file ends inside a record of {length} bytes"),
                    true,
                )),
            );
        };
        let data_crc = u32::from_le_bytes(data_crc.try_into().expect("4 bytes"));
        if masked_crc(data) != data_crc {
            return (
                records,
                Some(damage("the data's CRC does not match".into(), false)),
            );
        }
        let event = match Event::decode(data) {
            Ok(event) => event,
            Err(err) => {
                return (
                    records,
                    Some(damage(format!("not an Event protobuf: {err}"), false)),
                )
            }
        };
        offset = data_start + data.len() + 4;
        records.push((start..offset, event));
    }
    (records, None)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every scalar of an event file, in file order, after checking the framing and both CRCs of
/// every record, and that the first record is the `brain.Event:2` version record.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, TrainError> {
    let bytes = read_bytes(path)?;
    let (records, damage) = parse(&bytes);
    let error = |message: String| TrainError::EventFile {
        path: path.to_path_buf(),
        message,
    };
    if let Some(damage) = damage {
        return Err(error(format!(
            "record at byte {}: {}",
            damage.offset, damage.message
        )));
    }
    match records.first() {
        Some((_, event)) if event.file_version.as_deref() == Some("brain.Event:2") => {}
        _ => {
            return Err(error(
                "the first record is not `file_version: brain.Event:2`".into(),
            ))
        }
    }
    let mut scalars = Vec::new();
    for (_, event) in records {
        for value in event.summary.into_iter().flat_map(|summary| summary.value) {
            if let Some(simple) = value.simple_value {
                scalars.push(Scalar {
                    step: event.step.max(0) as u64,
                    tag: value.tag,
                    value: simple,
                    wall_time: event.wall_time,
                });
            }
        }
    }
    Ok(scalars)
}

/// The event files of a run directory, sorted by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.contains(EVENT_FILE_MARK))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Drops the events after `iteration` from every event file of `dir` (used on resume, as
/// [`crate::metrics::MetricsLog::truncate_after`]: a process killed after its last checkpoint
/// logged iterations the resumed run logs again, and TensorBoard would draw both). A record
/// cut short by the kill is dropped too; a damaged one is dropped with the rest of its file,
/// with a warning. Returns the files rewritten.
pub fn truncate_after(dir: &Path, iteration: u64) -> Result<Vec<PathBuf>, TrainError> {
    let mut rewritten = Vec::new();
    if !dir.is_dir() {
        return Ok(rewritten);
    }
    for path in event_files(dir)? {
        let bytes = read_bytes(&path)?;
        let (records, damage) = parse(&bytes);
        if let Some(damage) = damage.as_ref().filter(|damage| !damage.truncated) {
            eprintln!(
                "warning: {}: record at byte {}: {}; the rest of the file is dropped",
                path.display(),
                damage.offset,
                damage.message
            );
        }
        let kept: Vec<u8> = records
            .iter()
            .filter(|(_, event)| event.step <= iteration as i64)
            .flat_map(|(range, _)| bytes[range.clone()].iter().copied())
            .collect();
        if kept.len() != bytes.len() {
            write_file_atomically(&path, &kept)?;
            rewritten.push(path);
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, v)| (t.to_string(), *v)).collect()
    }

    #[test]
    fn the_masked_crc_matches_tensorflow() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value); masked as TensorFlow's
        // `crc32c::Mask` does, ((crc >> 15) | (crc << 17)) + 0xa282ead8, computed by hand.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn scalars_round_trip_and_zero_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer
            .scalars(1, &values(&[("train/loss", 5.5), ("lr/visual", 0.0)]))
            .unwrap();
        writer
            .scalars(2, &values(&[("train/loss", f64::NAN)]))
            .unwrap();
        let scalars = read_scalars(writer.path()).unwrap();
        assert_eq!(scalars.len(), 3);
        assert_eq!(
            (scalars[0].step, scalars[0].tag.as_str()),
            (1, "train/loss")
        );
        assert_eq!(scalars[0].value, 5.5);
        assert_eq!(
            (scalars[1].tag.as_str(), scalars[1].value),
            ("lr/visual", 0.0)
        );
        assert!(scalars[2].value.is_nan() && scalars[2].step == 2);
        assert_eq!(
            event_files(dir.path()).unwrap(),
            vec![writer.path().to_path_buf()]
        );
        // A second writer in the same second gets a file of its own.
        let second = EventWriter::create(dir.path()).unwrap();
        assert_ne!(second.path(), writer.path());
    }

    #[test]
    fn truncation_drops_later_steps_and_a_cut_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        for step in 1..=4 {
            writer
                .scalars(step, &values(&[("train/loss", step as f64)]))
                .unwrap();
        }
        let path = writer.path().to_path_buf();
        drop(writer);
        // A kill in the middle of the next record.
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(&record(b"unfinished")[..9]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_scalars(&path).is_err());

        assert_eq!(truncate_after(dir.path(), 2).unwrap(), vec![path.clone()]);
        let steps: Vec<u64> = read_scalars(&path)
            .unwrap()
            .iter()
            .map(|s| s.step)
            .collect();
        assert_eq!(steps, vec![1, 2]);
        assert!(std::fs::metadata(&path).unwrap().len() < full as u64);
        // Nothing more to drop: left as it is.
        assert!(truncate_after(dir.path(), 2).unwrap().is_empty());
    }
}
