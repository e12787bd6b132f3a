//! Web-scale caption shards: WebDataset tar files, the format CC3M, CC12M, LAION and DataComp
//! are distributed in (e.g. by img2dataset).
//!
//! ```text
//! shards/00000.tar:  000000000.jpg   the image (or .jpeg / .png), bytes as downloaded
//!                    000000000.txt   its caption (img2dataset writes this)
//!                    000000000.json  {"caption": ..., "key": ..., "url": ...} (img2dataset), or
//!                                    {"captions": [...], "image_id": ...} (`write_shards`)
//!                    000000001.jpg   ...
//! ```
//!
//! - A shard list is a brace pattern, `shards/{00000..00123}.tar` or `a/{x,y}.tar`
//!   ([`expand_braces`]; zero padding kept). [`ShardList::open`] expands it, checks every shard
//!   exists and counts its samples from the tar headers alone (seeking over the data), which
//!   also finds corrupt shards and incomplete samples before training starts.
//! - Samples are consecutive members sharing a key (the member name up to the first `.` of its
//!   file name, directories included). A sample needs one image and a caption: a `captions`
//!   list or, failing that, the `.txt` member, or failing that the `caption` field of the
//!   `.json` member. Captions are normalised as COCO's ([`crate::normalize_caption`]).
//! - [`ShardStream`] reads one epoch sequentially, shard after shard, on a reader thread (so
//!   reading overlaps decoding), through a seeded shuffle buffer.
//! - Shards are split statically over ranks and loader workers ([`ShardSplit`]): stream
//!   `rank * num_workers + worker` of `world_size * num_workers` takes shards `i` with
//!   `i % streams == stream`, the same every epoch, so every stream's epoch has a fixed length.
//!   Each epoch shuffles the stream's own shard order (when shuffling).
//! - Resuming: a stream is a pure function of (shard list, split, seed, epoch, shuffle buffer
//!   size). The exact position is `(epoch, samples yielded in the epoch)`; to resume, the epoch's
//!   stream is rebuilt and that many samples are read and dropped (tar bytes read, images not
//!   decoded), which rebuilds the shuffle buffer exactly. Without a shuffle buffer whole shards
//!   are skipped by their counted sizes, without reading them. [`ShardPosition`] also records the
//!   reader's place (shard, samples read from it), which a resumed run compares to tell that
//!   the shards did not change.
//! - [`write_shards`] writes shards from captioned images (COCO or plain captions), each shard
//!   atomically.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::caption::normalize_caption;
use crate::coco::{CaptionedImage, ImageId};
use crate::dataset::{CaptionChoice, CaptioningSample};
use crate::error::{shorten, DataError, Result, MAX_QUOTED_MESSAGE};
use crate::image_io::{decode_image, image_limits};
use crate::rng::{mix_seed, SampleRng};
use crate::tokenizer::{SentencePieceBpeTokenizer, MAX_CAPTION_LENGTH};
use crate::transforms::ImageTransforms;

/// Domain separators of the shard-order and shuffle-buffer draws.
const STREAM_SHARD_ORDER: u64 = 0x5348_4f52; // "SHOR"
const STREAM_BUFFER: u64 = 0x5342_5546; // "SBUF"

/// Image member extensions a sample's image may have (lower case).
pub const SHARD_IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Most shards one pattern may expand to: a typo like `{0..99999999}` should fail, not
/// allocate.
const MAX_EXPANSION: usize = 10_000_000;

/// Expands a brace pattern as bash does for the cases shard lists use: numeric ranges
/// `{000..123}` (zero padding kept: the width of the wider bound when either bound has a leading
/// zero), optionally with a step `{0..10..2}`, and lists `{train,val}`. Several braces multiply
/// out, left to right; nested braces are refused.
///
/// A hand-written expander: the brace crates on crates.io (`brace-expansion`,
/// `brace-expander`) are young one-maintainer crates, and shard lists need only these forms.
///
/// ```
/// let shards = virtex_data::expand_braces("s/{008..011}.tar")?;
/// assert_eq!(shards, ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]);
/// assert_eq!(virtex_data::expand_braces("{a,b}-{1..2}")?, ["a-1", "a-2", "b-1", "b-2"]);
/// # Ok::<(), virtex_data::DataError>(())
/// ```
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let bad = |message: String| DataError::ShardPattern {
        pattern: pattern.to_string(),
        message,
    };
    let mut results = vec![String::new()];
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        let after = &after[1..];
        let close = after
            .find('}')
            .ok_or_else(|| bad("a `{` is never closed".into()))?;
        let body = &after[..close];
        if body.contains('{') {
            return Err(bad("nested braces are not supported".into()));
        }
        let alternatives = expand_group(body).map_err(bad)?;
        if results.len().saturating_mul(alternatives.len()) > MAX_EXPANSION {
            return Err(bad(format!("expands to more than {MAX_EXPANSION} names")));
        }
        results = results
            .iter()
            .flat_map(|prefix| {
                alternatives
                    .iter()
                    .map(move |alternative| format!("{prefix}{literal}{alternative}"))
            })
            .collect();
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(bad("a `}` has no `{`".into()));
    }
    for result in &mut results {
        result.push_str(rest);
    }
    Ok(results)
}

/// The alternatives of one `{...}` body.
fn expand_group(body: &str) -> std::result::Result<Vec<String>, String> {
    if body.contains(',') {
        return Ok(body.split(',').map(str::to_string).collect());
    }
    let parts: Vec<&str> = body.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!(
            "`{{{body}}}` is neither a list `{{a,b}}` nor a range `{{000..123}}`"
        ));
    }
    let number = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("`{text}` in `{{{body}}}` is not a non-negative integer"))
    };
    let (first, last) = (number(parts[0])?, number(parts[1])?);
    let step = match parts.get(2) {
        Some(step) => number(step)?.max(1),
        None => 1,
    };
    let padded = |text: &str| text.len() > 1 && text.starts_with('0');
    let width = if padded(parts[0]) || padded(parts[1]) {
        parts[0].len().max(parts[1].len())
    } else {
        0
    };
    let count = first.abs_diff(last) / step + 1;
    if count as usize > MAX_EXPANSION {
        return Err(format!("`{{{body}}}` has more than {MAX_EXPANSION} values"));
    }
    Ok((0..count)
        .map(|i| {
            let value = if first <= last {
                first + i * step
            } else {
                first - i * step
            };
            format!("{value:0width$}")
        })
        .collect())
}

/// Which shards one reading stream takes: shards are split over `world_size` ranks (processes
/// of a multi-node run, by global rank) and, within a rank, over `num_workers` loader workers.
///
/// Stream `rank * num_workers + worker` of `world_size * num_workers` takes the shards whose
/// index in the expanded list is congruent to it: a partition of the shards, the same every
/// epoch. Every stream needs at least one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardSplit {
    /// Global rank of this process, from 0.
    pub rank: usize,
    /// Number of processes reading the shards (global world size, at least 1).
    pub world_size: usize,
    /// Index of this reading stream among the rank's loader workers, from 0.
    pub worker: usize,
    /// Reading streams per rank (at least 1).
    pub num_workers: usize,
}

impl Default for ShardSplit {
    /// One process, one stream: every shard.
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            worker: 0,
            num_workers: 1,
        }
    }
}

impl ShardSplit {
    /// Rank `rank` of `world_size`, one stream per rank.
    pub fn rank(rank: usize, world_size: usize) -> Self {
        Self {
            rank,
            world_size,
            ..Self::default()
        }
    }

    /// Worker `worker` of `num_workers` within this rank.
    pub fn with_worker(self, worker: usize, num_workers: usize) -> Self {
        Self {
            worker,
            num_workers,
            ..self
        }
    }

    /// Number of streams over all ranks and workers.
    pub fn streams(&self) -> usize {
        self.world_size * self.num_workers
    }

    /// This stream's number among [`ShardSplit::streams`].
    pub fn stream(&self) -> usize {
        self.rank * self.num_workers + self.worker
    }

    /// The indices (in the expanded list) of the shards this stream reads, of `shards` shards.
    pub fn assign(&self, shards: usize) -> Result<Vec<usize>> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DataError::config(
                "ShardSplit.rank",
                format!(
                    "rank {} of world size {} (rank must be below the world size)",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.num_workers == 0 || self.worker >= self.num_workers {
            return Err(DataError::config(
                "ShardSplit.worker",
                format!(
                    "worker {} of {} (worker must be below the number of workers)",
                    self.worker, self.num_workers
                ),
            ));
        }
        let streams = self.streams();
        if shards < streams {
            return Err(DataError::config(
                "shards",
                format!(
                    "{shards} shards cannot be split over {} ranks x {} workers: every reading \
                     stream needs at least one shard (write smaller shards, or use fewer ranks \
                     or workers)",
                    self.world_size, self.num_workers
                ),
            ));
        }
        Ok((self.stream()..shards).step_by(streams).collect())
    }
}

/// The shards of one pattern with their sample counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardList {
    pattern: String,
    shards: Vec<PathBuf>,
    counts: Vec<usize>,
}

impl ShardList {
    /// Expands `pattern` ([`expand_braces`]) and opens every shard: a missing shard is
    /// [`DataError::MissingShard`], a corrupt tar header [`DataError::CorruptShard`], a sample
    /// without image or caption [`DataError::IncompleteShardSample`]. Only headers are read: a
    /// shard cut inside a member's data fails when a [`ShardStream`] reaches the cut.
    pub fn open(pattern: &str) -> Result<Self> {
        let shards: Vec<PathBuf> = expand_braces(pattern)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        Self::from_paths(pattern, shards)
    }

    /// Opens the given shards (`pattern` is only for messages).
    pub fn from_paths(pattern: &str, shards: Vec<PathBuf>) -> Result<Self> {
        if shards.is_empty() {
            return Err(DataError::ShardPattern {
                pattern: pattern.to_string(),
                message: "names no shard".into(),
            });
        }
        let counts = shards
            .iter()
            .map(|shard| count_samples(shard))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pattern: pattern.to_string(),
            shards,
            counts,
        })
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The shard files, in pattern order.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Samples in each shard.
    pub fn sample_counts(&self) -> &[usize] {
        &self.counts
    }

    /// Samples in all shards.
    pub fn total_samples(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Samples in the shards `split` takes: one epoch of its stream.
    pub fn samples_for(&self, split: ShardSplit) -> Result<usize> {
        Ok(split
            .assign(self.shards.len())?
            .iter()
            .map(|&i| self.counts[i])
            .sum())
    }
}

/// The key and lower-cased extension of a member name: `dir/000123.seg.jpg` →
/// (`dir/000123`, `seg.jpg`).
fn split_member(name: &str) -> (&str, String) {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_start..].find('.') {
        Some(dot) => (
            &name[..base_start + dot],
            name[base_start + dot + 1..].to_ascii_lowercase(),
        ),
        None => (name, String::new()),
    }
}

fn is_image_extension(extension: &str) -> bool {
    SHARD_IMAGE_EXTENSIONS.contains(&extension)
}

fn is_caption_extension(extension: &str) -> bool {
    extension == "txt" || extension == "json"
}

fn open_shard(shard: &Path) -> Result<File> {
    File::open(shard).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingShard {
                shard: shard.to_path_buf(),
            }
        } else {
            DataError::io(shard, source)
        }
    })
}

fn corrupt(shard: &Path, member: Option<&str>, message: impl ToString) -> DataError {
    DataError::CorruptShard {
        shard: shard.to_path_buf(),
        member: member.map(str::to_string),
        message: shorten(message.to_string(), MAX_QUOTED_MESSAGE),
    }
}

/// Member names and kinds of one sample while grouping.
#[derive(Default)]
struct Group {
    key: String,
    members: Vec<String>,
    has_image: bool,
    has_caption: bool,
}

impl Group {
    fn check(&self, shard: &Path) -> Result<()> {
        let missing = if !self.has_image {
            "an image (KEY.jpg, KEY.jpeg or KEY.png)"
        } else if !self.has_caption {
            "a caption (KEY.txt, or KEY.json with a `caption` field)"
        } else {
            return Ok(());
        };
        Err(DataError::IncompleteShardSample {
            shard: shard.to_path_buf(),
            key: self.key.clone(),
            missing,
            members: self.members.clone(),
        })
    }
}

/// Counts the samples of a shard from its headers (seeking over the data) and checks each has
/// an image and a caption.
fn count_samples(shard: &Path) -> Result<usize> {
    let file = open_shard(shard)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| corrupt(shard, None, e))?;
    let mut count = 0;
    let mut group: Option<Group> = None;
    let mut last_member: Option<String> = None;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(shard, last_member.as_deref(), e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = member_name(&entry, shard)?;
        let (key, extension) = split_member(&name);
        if group.as_ref().is_none_or(|g| g.key != key) {
            if let Some(done) = group.take() {
                done.check(shard)?;
                count += 1;
            }
            group = Some(Group {
                key: key.to_string(),
                ..Group::default()
            });
        }
        let current = group.as_mut().expect("set above");
        current.has_image |= is_image_extension(&extension);
        current.has_caption |= is_caption_extension(&extension);
        current.members.push(name.clone());
        last_member = Some(name);
    }
    if let Some(done) = group {
        done.check(shard)?;
        count += 1;
    }
    Ok(count)
}

fn member_name<R: Read>(entry: &tar::Entry<'_, R>, shard: &Path) -> Result<String> {
    let bytes = entry.path_bytes();
    String::from_utf8(bytes.into_owned())
        .map_err(|_| corrupt(shard, None, "a member name is not valid UTF-8"))
}

/// One sample as read from a shard (image still encoded).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSample {
    /// The sample key.
    pub key: String,
    /// The image id: the JSON member's `image_id`, else the key (a number when all digits).
    pub image_id: ImageId,
    /// The shard file.
    pub shard: PathBuf,
    /// The image member's name.
    pub image_member: String,
    /// The encoded image.
    pub image: Vec<u8>,
    /// The captions, normalised ([`crate::normalize_caption`]); at least one.
    pub captions: Vec<String>,
}

impl ShardSample {
    /// `SHARD/MEMBER`: how messages name the image.
    pub fn image_path(&self) -> PathBuf {
        self.shard.join(&self.image_member)
    }
}

/// What the reader thread sends: a member, or the end of a shard.
enum Message {
    Member {
        shard: usize,
        name: String,
        data: Vec<u8>,
    },
    ShardEnd {
        shard: usize,
    },
    Error(DataError),
}

/// Members the reader thread may read ahead.
const READ_AHEAD_MEMBERS: usize = 64;

/// Reads `shards` in order on a thread, sending every file member; stops when the receiver is
/// dropped.
fn spawn_reader(shards: Vec<(usize, PathBuf)>) -> (Receiver<Message>, JoinHandle<()>) {
    let (sender, receiver) = sync_channel(READ_AHEAD_MEMBERS);
    let handle = std::thread::Builder::new()
        .name("virtex-shards".into())
        .spawn(move || {
            for (index, shard) in shards {
                let result = (|| -> Result<bool> {
                    let file = open_shard(&shard)?;
                    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
                    let entries = archive.entries().map_err(|e| corrupt(&shard, None, e))?;
                    let mut last: Option<String> = None;
                    for entry in entries {
                        let mut entry = entry.map_err(|e| corrupt(&shard, last.as_deref(), e))?;
                        if !entry.header().entry_type().is_file() {
                            continue;
                        }
                        let name = member_name(&entry, &shard)?;
                        // A corrupt header can claim any size: refuse what no image within the
                        // pixel limit can be, before allocating.
                        let max_bytes = image_limits().max_file_bytes();
                        if entry.size() > max_bytes {
                            return Err(corrupt(
                                &shard,
                                Some(&name),
                                format!(
                                    "the member claims {} bytes, more than the {max_bytes} an \
                                     image within the pixel limit can take",
                                    entry.size()
                                ),
                            ));
                        }
                        let mut data = Vec::with_capacity(entry.size() as usize);
                        entry
                            .read_to_end(&mut data)
                            .map_err(|e| corrupt(&shard, Some(&name), e))?;
                        last = Some(name.clone());
                        let message = Message::Member {
                            shard: index,
                            name,
                            data,
                        };
                        if sender.send(message).is_err() {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })();
                let message = match result {
                    Ok(true) => Message::ShardEnd { shard: index },
                    Ok(false) => return,
                    Err(err) => Message::Error(err),
                };
                let failed = matches!(message, Message::Error(_));
                if sender.send(message).is_err() || failed {
                    return;
                }
            }
        })
        .expect("spawning the shard reader thread");
    (receiver, handle)
}

/// Settings of a [`ShardStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Seed of the shard order and the shuffle buffer.
    pub seed: u64,
    /// Shuffle: each epoch visits the stream's shards in a seeded order and passes samples
    /// through the shuffle buffer. Off: shards in list order, samples in file order.
    pub shuffle: bool,
    /// Samples the shuffle buffer holds (0 or 1: none). Larger mixes better and holds more
    /// encoded images in memory; a resume re-reads the epoch up to its position.
    pub shuffle_buffer: usize,
    /// Which shards this stream reads.
    pub split: ShardSplit,
}

impl Default for StreamOptions {
    /// Seed 0, shuffled with a buffer of 1000 samples, every shard.
    fn default() -> Self {
        Self {
            seed: 0,
            shuffle: true,
            shuffle_buffer: 1000,
            split: ShardSplit::default(),
        }
    }
}

/// Where a [`ShardStream`] stands: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardPosition {
    /// The epoch, from 0.
    pub epoch: u64,
    /// Samples the stream has yielded in this epoch: the exact position (the rest is a
    /// function of it).
    pub sample: u64,
    /// Samples read from the shards in this epoch (`sample` plus those in the shuffle buffer).
    pub read: u64,
    /// Index, in this epoch's shard order, of the shard being read (the number of shards when
    /// all are read).
    pub shard: usize,
    /// That shard's file (`None` when all are read).
    pub shard_path: Option<PathBuf>,
    /// Samples read from that shard.
    pub offset: u64,
}

/// One epoch of samples of one stream ([`ShardSplit`]): sequential reads through a seeded
/// shuffle buffer. An iterator of [`ShardSample`]s.
pub struct ShardStream {
    list: Arc<ShardList>,
    epoch: u64,
    /// Shard indices (into the list), in this epoch's reading order.
    order: Vec<usize>,
    options: StreamOptions,
    receiver: Option<Receiver<Message>>,
    reader: Option<JoinHandle<()>>,
    /// A member read past the end of the previous sample.
    pending: Option<(usize, String, Vec<u8>)>,
    buffer: Vec<ShardSample>,
    rng: SampleRng,
    /// Position in `order` of the shard being read, and samples read from it.
    shard_at: usize,
    offset: u64,
    read: u64,
    yielded: u64,
    /// Shards finished by the reader that the grouping has not passed yet.
    ended: VecDeque<usize>,
    exhausted: bool,
}

impl std::fmt::Debug for ShardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStream")
            .field("pattern", &self.list.pattern())
            .field("position", &self.shard_position())
            .finish()
    }
}

impl ShardStream {
    /// The stream of `epoch` from its start.
    pub fn new(list: Arc<ShardList>, options: StreamOptions, epoch: u64) -> Result<Self> {
        Self::resume(list, options, epoch, 0)
    }

    /// The stream of `epoch` after its first `sample` samples: exactly where a stream that
    /// yielded them stands. With a shuffle buffer the epoch is re-read from its start (bytes
    /// only, images are not decoded); without one, whole shards are skipped unread.
    pub fn resume(
        list: Arc<ShardList>,
        options: StreamOptions,
        epoch: u64,
        sample: u64,
    ) -> Result<Self> {
        let mut order = options.split.assign(list.shards().len())?;
        if options.shuffle {
            let split = options.split;
            SampleRng::seed_from_u64(mix_seed(&[
                STREAM_SHARD_ORDER,
                options.seed,
                epoch,
                split.stream() as u64,
            ]))
            .shuffle(&mut order);
        }
        let buffered = options.shuffle && options.shuffle_buffer > 1;
        // Without a buffer, sample `n` is the `n`-th read: skip the shards before it unread.
        let (mut first_shard, mut skipped) = (0, 0u64);
        if !buffered {
            while first_shard < order.len()
                && skipped + list.sample_counts()[order[first_shard]] as u64 <= sample
            {
                skipped += list.sample_counts()[order[first_shard]] as u64;
                first_shard += 1;
            }
        }
        let to_read = order[first_shard..]
            .iter()
            .map(|&i| (i, list.shards()[i].clone()))
            .collect();
        let (receiver, reader) = spawn_reader(to_read);
        let split = options.split;
        let mut stream = Self {
            rng: SampleRng::seed_from_u64(mix_seed(&[
                STREAM_BUFFER,
                options.seed,
                epoch,
                split.stream() as u64,
            ])),
            list,
            epoch,
            order,
            options,
            receiver: Some(receiver),
            reader: Some(reader),
            pending: None,
            buffer: Vec::new(),
            shard_at: first_shard,
            offset: 0,
            read: skipped,
            yielded: skipped,
            ended: VecDeque::new(),
            exhausted: false,
        };
        while stream.yielded < sample {
            match stream.next() {
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err),
                None => {
                    return Err(DataError::config(
                        "ShardPosition.sample",
                        format!(
                            "{sample} is past the end of epoch {epoch} ({} samples)",
                            stream.yielded
                        ),
                    ))
                }
            }
        }
        Ok(stream)
    }

    /// Samples in one epoch of this stream.
    pub fn samples_per_epoch(&self) -> u64 {
        self.order
            .iter()
            .map(|&i| self.list.sample_counts()[i] as u64)
            .sum()
    }

    /// The shard list.
    pub fn list(&self) -> &ShardList {
        &self.list
    }

    /// The position after the samples yielded so far.
    pub fn shard_position(&self) -> ShardPosition {
        ShardPosition {
            epoch: self.epoch,
            sample: self.yielded,
            read: self.read,
            shard: self.shard_at,
            shard_path: self
                .order
                .get(self.shard_at)
                .map(|&i| self.list.shards()[i].clone()),
            offset: self.offset,
        }
    }

    /// The next member from the reader (`None` at the end of the epoch).
    fn next_member(&mut self) -> Result<Option<(usize, String, Vec<u8>)>> {
        if let Some(member) = self.pending.take() {
            return Ok(Some(member));
        }
        let Some(receiver) = &self.receiver else {
            return Ok(None);
        };
        loop {
            match receiver.recv() {
                Ok(Message::Member { shard, name, data }) => return Ok(Some((shard, name, data))),
                Ok(Message::ShardEnd { shard }) => self.ended.push_back(shard),
                Ok(Message::Error(err)) => {
                    self.receiver = None;
                    return Err(err);
                }
                Err(_) => {
                    self.receiver = None;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads the next sample from the shards (`None` at the end of the epoch).
    fn read_sample(&mut self) -> Result<Option<ShardSample>> {
        let Some((shard, name, data)) = self.next_member()? else {
            return Ok(None);
        };
        // Shards the reader finished before this member's shard are passed.
        while let Some(&done) = self.ended.front() {
            if done == shard {
                break;
            }
            self.ended.pop_front();
            self.shard_at += 1;
            self.offset = 0;
        }
        let key = split_member(&name).0.to_string();
        let mut members = vec![(name, data)];
        loop {
            match self.next_member()? {
                Some((next_shard, next_name, next_data))
                    if next_shard == shard && split_member(&next_name).0 == key =>
                {
                    members.push((next_name, next_data))
                }
                Some(other) => {
                    self.pending = Some(other);
                    break;
                }
                None => break,
            }
        }
        let shard_path = self.list.shards()[shard].clone();
        let sample = parse_sample(&shard_path, key, members)?;
        self.read += 1;
        self.offset += 1;
        // The shard ended with this sample: the position moves to the next one.
        let next_is_elsewhere = self.pending.as_ref().is_none_or(|p| p.0 != shard);
        if next_is_elsewhere && self.ended.front() == Some(&shard) {
            self.ended.pop_front();
            self.shard_at += 1;
            self.offset = 0;
        }
        Ok(Some(sample))
    }

    fn next_sample(&mut self) -> Result<Option<ShardSample>> {
        let capacity = if self.options.shuffle {
            self.options.shuffle_buffer
        } else {
            0
        };
        if capacity <= 1 {
            return self.read_sample();
        }
        while !self.exhausted && self.buffer.len() < capacity {
            match self.read_sample()? {
                Some(sample) => self.buffer.push(sample),
                None => self.exhausted = true,
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        // The buffer is full (or the epoch is drained): hand out a random sample; its slot is
        // refilled by the next call.
        let pick = self.rng.below(self.buffer.len() as u64) as usize;
        Ok(Some(self.buffer.swap_remove(pick)))
    }
}

impl Iterator for ShardStream {
    type Item = Result<ShardSample>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = self.next_sample().transpose()?;
        if result.is_ok() {
            self.yielded += 1;
        }
        Some(result)
    }
}

impl Drop for ShardStream {
    fn drop(&mut self) {
        // Dropping the receiver ends the reader at its next send.
        self.receiver = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[derive(Deserialize)]
struct SampleJson {
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    captions: Option<Vec<String>>,
    #[serde(default)]
    image_id: Option<ImageId>,
}

fn parse_sample(shard: &Path, key: String, members: Vec<(String, Vec<u8>)>) -> Result<ShardSample> {
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut text: Option<String> = None;
    let mut json: Option<SampleJson> = None;
    let names: Vec<String> = members.iter().map(|(name, _)| name.clone()).collect();
    for (name, data) in members {
        let extension = split_member(&name).1;
        if is_image_extension(&extension) && image.is_none() {
            image = Some((name, data));
        } else if extension == "txt" {
            let caption = String::from_utf8(data)
                .map_err(|_| corrupt(shard, Some(&name), "the caption is not valid UTF-8"))?;
            text = Some(caption);
        } else if extension == "json" {
            let parsed: SampleJson = serde_json::from_slice(&data)
                .map_err(|e| corrupt(shard, Some(&name), format!("invalid JSON: {e}")))?;
            json = Some(parsed);
        }
    }
    let incomplete = |missing: &'static str| DataError::IncompleteShardSample {
        shard: shard.to_path_buf(),
        key: key.clone(),
        missing,
        members: names.clone(),
    };
    let Some((image_member, image)) = image else {
        return Err(incomplete("an image (KEY.jpg, KEY.jpeg or KEY.png)"));
    };
    let (listed, single, image_id) = match json {
        Some(json) => (json.captions, json.caption, json.image_id),
        None => (None, None, None),
    };
    let captions: Vec<String> = match (listed, text, single) {
        (Some(list), _, _) if !list.is_empty() => list,
        (_, Some(text), _) => vec![text.trim().to_string()],
        (_, None, Some(caption)) => vec![caption],
        _ => Vec::new(),
    };
    let captions: Vec<String> = captions
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| normalize_caption(c))
        .collect();
    if captions.is_empty() {
        return Err(incomplete(
            "a caption (KEY.txt, or KEY.json with a `caption` field)",
        ));
    }
    let image_id = image_id.unwrap_or_else(|| ImageId::from_file_stem(Path::new(&key)));
    Ok(ShardSample {
        key,
        image_id,
        shard: shard.to_path_buf(),
        image_member,
        image,
        captions,
    })
}

/// What turns a [`ShardSample`] into a training sample: tokenizer, transforms, caption choice
/// (the settings [`crate::CaptioningDataset`] has for indexed data).
#[derive(Debug, Clone)]
pub struct ShardCaptioning {
    tokenizer: Arc<SentencePieceBpeTokenizer>,
    transforms: ImageTransforms,
    caption_choice: CaptionChoice,
    max_caption_length: usize,
    padding_index: u32,
}

impl ShardCaptioning {
    /// Upstream's defaults: a random caption per visit, at most 30 tokens, `<unk>` padding.
    pub fn new(
        tokenizer: impl Into<Arc<SentencePieceBpeTokenizer>>,
        transforms: ImageTransforms,
    ) -> Result<Self> {
        if transforms.output_size().is_none() {
            return Err(DataError::config(
                "ShardCaptioning transforms",
                "the pipeline must end in a fixed-size crop or resize so images can be batched",
            ));
        }
        let tokenizer = tokenizer.into();
        Ok(Self {
            padding_index: tokenizer.special_ids().unk,
            tokenizer,
            transforms,
            caption_choice: CaptionChoice::Random,
            max_caption_length: MAX_CAPTION_LENGTH,
        })
    }

    /// Sets the caption choice.
    pub fn with_caption_choice(mut self, choice: CaptionChoice) -> Self {
        self.caption_choice = choice;
        self
    }

    /// Sets the maximum caption length in tokens (at least 2).
    pub fn with_max_caption_length(mut self, max: usize) -> Result<Self> {
        if max < 2 {
            return Err(DataError::config(
                "max_caption_length",
                format!("{max} is below 2"),
            ));
        }
        self.max_caption_length = max;
        Ok(self)
    }

    /// Sets the token id that pads captions in a batch.
    pub fn with_padding_index(mut self, padding_index: u32) -> Self {
        self.padding_index = padding_index;
        self
    }

    /// The padding token id.
    pub fn padding_index(&self) -> u32 {
        self.padding_index
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &SentencePieceBpeTokenizer {
        &self.tokenizer
    }

    /// Decodes, transforms and tokenises `sample` for visit `(seed, epoch, index)`: the same
    /// computation as [`crate::CaptioningDataset::get`] on the same image and captions, so a
    /// stream index equal to the folder's dataset index gives the same sample. An undecodable
    /// image is [`DataError::BadShardImage`].
    pub fn process(
        &self,
        sample: &ShardSample,
        seed: u64,
        epoch: u64,
        index: u64,
    ) -> Result<CaptioningSample> {
        let mut rng = SampleRng::for_sample(seed, epoch, index);
        let caption = match self.caption_choice {
            CaptionChoice::First => &sample.captions[0],
            CaptionChoice::Random => {
                &sample.captions[rng.below(sample.captions.len() as u64) as usize]
            }
        };
        let path = sample.image_path();
        let bad_image = |err: DataError| DataError::BadShardImage {
            shard: sample.shard.clone(),
            member: sample.image_member.clone(),
            message: err.to_string(),
        };
        let image = decode_image(&sample.image, &path).map_err(bad_image)?;
        let (image, caption) = self
            .transforms
            .try_apply(&image, caption, &mut rng, Some(&path))?;
        let tokens = self
            .tokenizer
            .encode_caption(&caption, self.max_caption_length);
        Ok(CaptioningSample {
            image_id: sample.image_id.clone(),
            image,
            caption,
            tokens,
        })
    }
}

/// A shard list read as training data: what [`crate::DataLoader::from_shards`] takes.
#[derive(Debug, Clone)]
pub struct ShardDataset {
    /// The shards.
    pub list: Arc<ShardList>,
    /// Which of them this process reads: its global rank and world size. (The loader reads its
    /// rank's shards as one stream and decodes on its worker threads, so `worker` /
    /// `num_workers` must be 0 / 1 here; independent per-worker streams are
    /// [`ShardStream`]s of their own.)
    pub split: ShardSplit,
    /// Shuffle buffer size when the loader shuffles (0: none).
    pub shuffle_buffer: usize,
    /// Turns samples into training samples.
    pub captioning: ShardCaptioning,
}

impl ShardDataset {
    /// Samples in one epoch of this process's stream.
    pub fn len(&self) -> usize {
        self.list.samples_for(self.split).unwrap_or(0)
    }

    /// Whether an epoch has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream options for `seed` and `shuffle`.
    pub fn stream_options(&self, seed: u64, shuffle: bool) -> StreamOptions {
        StreamOptions {
            seed,
            shuffle,
            shuffle_buffer: self.shuffle_buffer,
            split: self.split,
        }
    }

    /// The seed of stream index `index`: its place among all streams' samples, so that ranks
    /// draw different augmentations and one rank of one process numbers samples 0, 1, 2, ... as
    /// the folder loader numbers dataset indices.
    pub fn sample_index(&self, index: u64) -> u64 {
        index * self.split.streams() as u64 + self.split.stream() as u64
    }
}

/// Options of [`write_shards`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWriterOptions {
    /// Most samples per shard (img2dataset's default is 10000).
    pub samples_per_shard: usize,
    /// Most bytes per shard file, tar framing included (`None`: no limit). A sample larger than
    /// the limit gets a shard of its own.
    pub max_shard_bytes: Option<u64>,
    /// Shard file names: `{prefix}{00000}.tar`.
    pub prefix: String,
}

impl Default for ShardWriterOptions {
    /// 10000 samples per shard, no size limit, names `00000.tar`, `00001.tar`, ...
    fn default() -> Self {
        Self {
            samples_per_shard: 10_000,
            max_shard_bytes: None,
            prefix: String::new(),
        }
    }
}

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenShards {
    /// The shard files, in order.
    pub shards: Vec<PathBuf>,
    /// Samples written.
    pub samples: usize,
    /// The brace pattern naming them all (`DIR/{00000..00012}.tar`), for `data.shards_train`.
    pub pattern: String,
}

/// Tar bytes of one member of `size` bytes: a header block and the data padded to blocks.
fn member_bytes(size: u64) -> u64 {
    512 + size.div_ceil(512) * 512
}

/// The `.json` member of an image.
fn sample_json(key: &str, image: &CaptionedImage) -> Vec<u8> {
    let value = serde_json::json!({
        "key": key,
        "caption": image.captions[0],
        "captions": image.captions,
        "image_id": image.image_id,
        "source": image.path.to_string_lossy(),
    });
    value.to_string().into_bytes()
}

/// Writes `images` (e.g. [`crate::CaptionSource::images`]) as WebDataset shards in `out_dir`,
/// in order: sample `i` is key `{i:09}` with members `KEY.jpg` (or `.jpeg` / `.png`: the
/// image file's bytes unchanged), `KEY.txt` (the first caption, as img2dataset writes) and
/// `KEY.json` (`key`, `caption`, every caption in `captions`, `image_id`, `source`). A shard
/// ends at `samples_per_shard` samples or before it would pass `max_shard_bytes`. Each shard is
/// written to a temporary file and renamed into place, so a killed writer leaves no partial
/// shard under a shard's name.
pub fn write_shards(
    images: &[CaptionedImage],
    out_dir: &Path,
    options: &ShardWriterOptions,
) -> Result<WrittenShards> {
    if options.samples_per_shard == 0 {
        return Err(DataError::config("samples_per_shard", "must be at least 1"));
    }
    if images.is_empty() {
        return Err(DataError::config("write_shards", "no image to write"));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;

    // Plan the shards first, from file sizes, so that each is written in one go.
    let mut plans: Vec<Vec<usize>> = vec![Vec::new()];
    let mut bytes = 1024u64; // the end-of-archive blocks
    for (index, image) in images.iter().enumerate() {
        let extension = image
            .path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !is_image_extension(&extension) {
            return Err(DataError::config(
                "write_shards",
                format!(
                    "image `{}` is not a .jpg, .jpeg or .png file",
                    image.path.display()
                ),
            ));
        }
        let size = std::fs::metadata(&image.path)
            .map_err(|e| DataError::io(&image.path, e))?
            .len();
        let key = format!("{index:09}");
        let sample_bytes = member_bytes(size)
            + member_bytes(image.captions[0].len() as u64)
            + member_bytes(sample_json(&key, image).len() as u64);
        let current = plans.last_mut().expect("never empty");
        let full = current.len() >= options.samples_per_shard
            || options
                .max_shard_bytes
                .is_some_and(|max| !current.is_empty() && bytes + sample_bytes > max);
        if full {
            plans.push(vec![index]);
            bytes = 1024 + sample_bytes;
        } else {
            current.push(index);
            bytes += sample_bytes;
        }
    }

    let width = plans.len().saturating_sub(1).to_string().len().max(5);
    let mut shards = Vec::with_capacity(plans.len());
    for (number, plan) in plans.iter().enumerate() {
        let path = out_dir.join(format!("{}{number:0width$}.tar", options.prefix));
        let mut failure: Option<DataError> = None;
        virtex_device::write_atomically(&path, |temporary| {
            let file = File::create(temporary)?;
            let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
            for &index in plan {
                let image = &images[index];
                let key = format!("{index:09}");
                let data = match std::fs::read(&image.path) {
                    Ok(data) => data,
                    Err(err) => {
                        let kind = err.kind();
                        failure = Some(DataError::io(&image.path, err));
                        return Err(std::io::Error::new(kind, "reading an image"));
                    }
                };
                let extension = image
                    .path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default();
                let members: [(String, &[u8]); 3] = [
                    (format!("{key}.{extension}"), &data),
                    (format!("{key}.txt"), image.captions[0].as_bytes()),
                    (format!("{key}.json"), &sample_json(&key, image)),
                ];
                for (name, content) in members {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(content.len() as u64);
                    header.set_mode(0o644);
                    // A fixed time, so the same data always gives the same bytes.
                    header.set_mtime(0);
                    header.set_entry_type(tar::EntryType::Regular);
                    builder.append_data(&mut header, &name, content)?;
                }
            }
            builder
                .into_inner()?
                .into_inner()
                .map_err(|e| e.into_error())?;
            Ok(())
        })
        .map_err(|err| failure.take().unwrap_or_else(|| DataError::io(&path, err)))?;
        shards.push(path);
    }
    let last = plans.len() - 1;
    let pattern = if last == 0 {
        out_dir
            .join(format!("{}{:0width$}.tar", options.prefix, 0))
            .to_string_lossy()
            .into_owned()
    } else {
        out_dir
            .join(format!(
                "{}{{{:0width$}..{last:0width$}}}.tar",
                options.prefix, 0
            ))
            .to_string_lossy()
            .into_owned()
    };
    Ok(WrittenShards {
        shards,
        samples: images.len(),
        pattern,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sample_data_root, sample_vocab_path, CaptioningDataset, CocoCaptions, CocoOptions,
        DataLoader, FlipCaption, LoaderConfig, LoaderPosition, Split,
    };

    fn coco_train() -> CocoCaptions {
        CocoCaptions::load(sample_data_root(), Split::Train, &CocoOptions::default()).unwrap()
    }

    /// The sample's train split as shards of `per_shard` samples.
    fn sample_shards(dir: &Path, per_shard: usize) -> (CocoCaptions, Arc<ShardList>) {
        let coco = coco_train();
        let options = ShardWriterOptions {
            samples_per_shard: per_shard,
            ..ShardWriterOptions::default()
        };
        let written = write_shards(coco.images(), dir, &options).unwrap();
        let list = ShardList::open(&written.pattern).unwrap();
        assert_eq!(list.shards(), written.shards.as_slice());
        (coco, Arc::new(list))
    }

    fn keys(stream: ShardStream) -> Vec<String> {
        stream.map(|sample| sample.unwrap().key).collect()
    }

    fn options(shuffle: bool, buffer: usize, seed: u64) -> StreamOptions {
        StreamOptions {
            seed,
            shuffle,
            shuffle_buffer: buffer,
            split: ShardSplit::default(),
        }
    }

    #[test]
    fn braces_expand_ranges_lists_and_keep_zero_padding() {
        assert_eq!(
            expand_braces("shards/{00000..00002}.tar").unwrap(),
            ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]
        );
        assert_eq!(expand_braces("{9..11}").unwrap(), ["9", "10", "11"]);
        assert_eq!(expand_braces("{3..1}").unwrap(), ["3", "2", "1"]);
        assert_eq!(expand_braces("{0..6..3}").unwrap(), ["0", "3", "6"]);
        assert_eq!(expand_braces("{08..10}").unwrap(), ["08", "09", "10"]);
        assert_eq!(
            expand_braces("{a,b}/{1..2}.tar").unwrap(),
            ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in [
            "{0..3",
            "a}b",
            "{{a,b}}",
            "{x..3}",
            "{1..2..3..4}",
            "{0..99999999}",
        ] {
            assert!(
                matches!(expand_braces(bad), Err(DataError::ShardPattern { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rank_and_worker_assignment_partitions_the_shards() {
        for (shards, world, workers) in [(10, 2, 3), (7, 7, 1), (12, 3, 2), (5, 1, 1)] {
            let mut seen = vec![0; shards];
            for rank in 0..world {
                for worker in 0..workers {
                    let split = ShardSplit::rank(rank, world).with_worker(worker, workers);
                    let assigned = split.assign(shards).unwrap();
                    assert!(!assigned.is_empty());
                    for shard in assigned {
                        seen[shard] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "{shards} {world} {workers}: {seen:?}"
            );
        }
        assert!(ShardSplit::rank(0, 4).with_worker(0, 2).assign(7).is_err());
        assert!(ShardSplit::rank(2, 2).assign(7).is_err());
        assert!(ShardSplit::rank(0, 1).with_worker(1, 1).assign(7).is_err());
    }

    #[test]
    fn written_shards_read_back_in_folder_order_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (coco, list) = sample_shards(dir.path(), 4);
        assert_eq!(list.sample_counts(), [4, 4, 2]);
        let stream = ShardStream::new(list.clone(), options(false, 0, 0), 0).unwrap();
        assert_eq!(stream.samples_per_epoch(), 10);
        let samples: Vec<ShardSample> = stream.map(|s| s.unwrap()).collect();
        assert_eq!(samples.len(), coco.len());
        for (sample, image) in samples.iter().zip(coco.images()) {
            assert_eq!(sample.image, std::fs::read(&image.path).unwrap());
            assert_eq!(sample.captions, image.captions);
            assert_eq!(sample.image_id, image.image_id);
        }
        // No partial files are left next to the shards.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".tar")), "{names:?}");
    }

    #[test]
    fn max_shard_bytes_starts_new_shards() {
        let dir = tempfile::tempdir().unwrap();
        let coco = coco_train();
        let options = ShardWriterOptions {
            samples_per_shard: 100,
            max_shard_bytes: Some(1),
            prefix: "part-".into(),
        };
        let written = write_shards(coco.images(), dir.path(), &options).unwrap();
        // Every sample is larger than a byte: one shard each.
        assert_eq!(written.shards.len(), coco.len());
        assert!(written.pattern.ends_with("part-{00000..00009}.tar"));
        assert_eq!(
            ShardList::open(&written.pattern).unwrap().total_samples(),
            10
        );
    }

    #[test]
    fn the_shuffle_buffer_is_seeded_and_a_permutation() {
        let dir = tempfile::tempdir().unwrap();
        let (_, list) = sample_shards(dir.path(), 3);
        let plain = keys(ShardStream::new(list.clone(), options(false, 5, 1), 0).unwrap());
        let a = keys(ShardStream::new(list.clone(), options(true, 5, 1), 0).unwrap());
        let b = keys(ShardStream::new(list.clone(), options(true, 5, 1), 0).unwrap());
        let other_seed = keys(ShardStream::new(list.clone(), options(true, 5, 2), 0).unwrap());
        let other_epoch = keys(ShardStream::new(list.clone(), options(true, 5, 1), 1).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, plain);
        assert_ne!(a, other_seed);
        assert_ne!(a, other_epoch);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, plain);
    }

    #[test]
    fn a_resumed_stream_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (_, list) = sample_shards(dir.path(), 3);
        for opts in [
            options(true, 4, 7),
            options(false, 0, 7),
            options(true, 0, 7),
        ] {
            let mut full = ShardStream::new(list.clone(), opts, 2).unwrap();
            let mut seen = Vec::new();
            for k in 0..=10u64 {
                let resumed = ShardStream::resume(list.clone(), opts, 2, k).unwrap();
                assert_eq!(
                    resumed.shard_position(),
                    full.shard_position(),
                    "{opts:?} {k}"
                );
                let rest = keys(resumed);
                assert_eq!(rest.len() as u64, 10 - k);
                let mut whole = seen.clone();
                whole.extend(rest);
                assert_eq!(whole.len(), 10);
                if let Some(sample) = full.next() {
                    seen.push(sample.unwrap().key);
                }
            }
            assert!(ShardStream::resume(list.clone(), opts, 2, 11).is_err());
        }
    }

    #[test]
    fn missing_corrupt_and_incomplete_shards_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, list) = sample_shards(dir.path(), 5);
        let missing = dir.path().join("{00000..00002}.tar");
        match ShardList::open(missing.to_str().unwrap()) {
            Err(DataError::MissingShard { shard }) => assert!(shard.ends_with("00002.tar")),
            other => panic!("{other:?}"),
        }
        // A truncated shard: its last member's data is cut.
        let good = std::fs::read(&list.shards()[0]).unwrap();
        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
        let stream = ShardStream::new(
            Arc::new(ShardList {
                pattern: "cut.tar".into(),
                shards: vec![cut.clone()],
                counts: vec![5],
            }),
            options(false, 0, 0),
            0,
        )
        .unwrap();
        let last = stream.last().unwrap();
        match last {
            Err(DataError::CorruptShard { shard, .. }) => assert_eq!(shard, cut),
            other => panic!("{other:?}"),
        }
        // Garbage is no tar at all.
        let garbage = dir.path().join("garbage.tar");
        std::fs::write(&garbage, vec![7u8; 2048]).unwrap();
        match ShardList::open(garbage.to_str().unwrap()) {
            Err(DataError::CorruptShard { shard, message, .. }) => {
                assert_eq!(shard, garbage, "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A sample without caption, and one whose image does not decode.
        let odd = dir.path().join("odd.tar");
        let mut builder = tar::Builder::new(File::create(&odd).unwrap());
        for (name, data) in [
            ("a.jpg", b"not a jpeg".as_slice()),
            ("a.txt", b"a caption"),
            ("b.png", b"no caption"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.finish().unwrap();
        drop(builder);
        match ShardList::open(odd.to_str().unwrap()) {
            Err(DataError::IncompleteShardSample {
                shard,
                key,
                missing,
                ..
            }) => {
                assert_eq!((shard, key.as_str()), (odd.clone(), "b"));
                assert!(missing.contains("caption"));
            }
            other => panic!("{other:?}"),
        }
        let odd_list = Arc::new(ShardList {
            pattern: "odd.tar".into(),
            shards: vec![odd.clone()],
            counts: vec![2],
        });
        let mut stream = ShardStream::new(odd_list, options(false, 0, 0), 0).unwrap();
        let first = stream.next().unwrap().unwrap();
        let tokenizer = SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap();
        let transforms = ImageTransforms::pretrain_val(32).unwrap();
        let captioning = ShardCaptioning::new(tokenizer, transforms).unwrap();
        match captioning.process(&first, 0, 0, 0) {
            Err(err @ DataError::BadShardImage { .. }) => {
                assert!(err.is_bad_image());
                let text = err.to_string();
                assert!(text.contains("odd.tar") && text.contains("a.jpg"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            stream.next(),
            Some(Err(DataError::IncompleteShardSample { .. }))
        ));
    }

    /// The loader over shards gives the folder loader's batches (shuffling off), whatever the
    /// number of workers, and resumes at any position.
    #[test]
    fn the_shard_loader_matches_the_folder_loader() {
        let dir = tempfile::tempdir().unwrap();
        let (coco, list) = sample_shards(dir.path(), 3);
        let tokenizer =
            Arc::new(SentencePieceBpeTokenizer::from_file(sample_vocab_path()).unwrap());
        let transforms = ImageTransforms::pretrain_train(32, FlipCaption::WholeWord).unwrap();
        let dataset = CaptioningDataset::new(coco, tokenizer.clone(), transforms.clone()).unwrap();
        let config = LoaderConfig {
            batch_size: 3,
            num_workers: 2,
            prefetch_batches: 2,
            seed: 5,
            shuffle: false,
            ..LoaderConfig::default()
        };
        let folder = DataLoader::new(dataset, config.clone()).unwrap();
        let shards = ShardDataset {
            list: list.clone(),
            split: ShardSplit::default(),
            shuffle_buffer: 0,
            captioning: ShardCaptioning::new(tokenizer, transforms).unwrap(),
        };
        for workers in [0, 2] {
            let config = LoaderConfig {
                num_workers: workers,
                ..config.clone()
            };
            let loader = DataLoader::from_shards(shards.clone(), config).unwrap();
            assert_eq!(loader.batches_per_epoch(), 3);
            let expected: Vec<_> = folder
                .iter_from(LoaderPosition::default())
                .take(7)
                .map(|b| b.unwrap())
                .collect();
            let got: Vec<_> = loader
                .iter_from(LoaderPosition::default())
                .take(7)
                .map(|b| b.unwrap())
                .collect();
            assert_eq!(got, expected);
            let resumed: Vec<_> = loader
                .iter_from(LoaderPosition { epoch: 1, batch: 1 })
                .take(3)
                .map(|b| b.unwrap())
                .collect();
            assert_eq!(resumed, expected[4..7]);
            assert_eq!(
                loader
                    .load_batch(LoaderPosition { epoch: 2, batch: 2 })
                    .unwrap(),
                folder
                    .load_batch(LoaderPosition { epoch: 2, batch: 2 })
                    .unwrap()
            );
        }
        // Shuffled: deterministic, and the position after a batch is where a resumed iterator
        // starts.
        let shuffled = ShardDataset {
            shuffle_buffer: 4,
            ..shards
        };
        let config = LoaderConfig {
            shuffle: true,
            ..config
        };
        let loader_shards = shuffled.clone();
        let loader = DataLoader::from_shards(shuffled, config).unwrap();
        let mut iter = loader.iter_from(LoaderPosition::default());
        let first: Vec<_> = (&mut iter).take(4).map(|b| b.unwrap()).collect();
        let position = (iter.position(), iter.shard_position());
        let iter_position_after_first = position.1.clone();
        let after: Vec<_> = (&mut iter).take(2).map(|b| b.unwrap()).collect();
        let resumed_iter = loader.iter_from(position.0);
        assert_eq!(resumed_iter.shard_position(), position.1);
        let resumed: Vec<_> = resumed_iter.take(2).map(|b| b.unwrap()).collect();
        assert_eq!(resumed, after);
        let again: Vec<_> = loader
            .iter_from(LoaderPosition::default())
            .take(4)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(again, first);
        assert_ne!(first[0].image_ids, first[3].image_ids);
        // A part of each shuffled batch (one node of a multi-node run) reads the same stream
        // and decodes only its rows.
        let part = crate::BatchPart {
            first: 1,
            count: 1,
            parts: 2,
        };
        let partial = DataLoader::from_shards(
            loader_shards,
            LoaderConfig {
                part: Some(part),
                ..loader.config().clone()
            },
        )
        .unwrap();
        let mut partial_iter = partial.iter_from(LoaderPosition::default());
        for whole in &first {
            let got = partial_iter.next().unwrap().unwrap();
            let rows = part.rows(whole.batch_size());
            assert_eq!(got.image_ids, whole.image_ids[rows.clone()]);
            let pixels = 3 * whole.image_size.0 * whole.image_size.1;
            assert_eq!(
                got.images,
                whole.images[rows.start * pixels..rows.end * pixels]
            );
        }
        assert_eq!(partial_iter.shard_position(), iter_position_after_first);
    }
}
