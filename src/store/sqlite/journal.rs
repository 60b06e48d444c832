//! The append-only journal in front of SQLite: write batches are appended
//! to a flat file and acknowledged, and merged into SQLite later in large
//! runs. This module is the file format and the file handling; [`replay`]
//! applies what an earlier process left to SQLite.
//!
//! # Files
//!
//! Segment `n` is `chat.journal.<n as 20 zero-padded digits>` in the data
//! directory; 20 digits hold any u64, so `ls` order is segment order too.
//!
//! # Format
//!
//! All integers are little-endian.
//!
//! - Header, 16 bytes: magic `CHATJNL\0`, u32 version (2; 1 is still
//!   read), u32 reserved (0).
//!   A wrong magic or version is an error, never a torn segment: the service
//!   must refuse to start rather than ignore someone else's file.
//! - Records, one per `WriteOp`, back to back: u32 payload length, u32
//!   CRC-32 of the payload, the payload. A crash can leave a short or garbage tail (the file may
//!   grow before its data lands, leaving zeros); the length and checksum let
//!   the reader stop at the last complete record. Lengths over 16 MiB count
//!   as damage, so a corrupt length cannot make the reader allocate or skip
//!   gigabytes; no valid message comes near that size.
//! - Payload: u8 tag, then fixed-order fields: ids as their 12 raw bytes,
//!   i64 as 8 bytes, strings as u32 length + UTF-8, `Option` as u8 0/1 then
//!   the value when 1. Insert (tag 1): conversation_id, id, sender_id,
//!   created_at, text, client_id, viewed_by, viewed_at, and from version 2
//!   seq as u64 (a version-1 insert has none: seq 0, numbered at open like
//!   a legacy message). View (tag 2):
//!   conversation_id, message_id, viewer_id, at. No self-describing
//!   encoding: only this binary reads the journal, and any change bumps the
//!   version. Unknown tags and leftover bytes are damage.
//!
//! A batch is one positional write, but a crash can still keep only its
//! first records; those were never acknowledged, and replaying them is the
//! same as the batch having finished just before the crash.

mod replay;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::model::{Message, Millis, ObjectId};
use crate::store::WriteOp;

pub(super) use replay::replay;

const MAGIC: &[u8; 8] = b"CHATJNL\0";
const VERSION: u32 = 2;
/// The version before `seq`: still replayed after an upgrade.
const VERSION_WITHOUT_SEQ: u32 = 1;
const HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 8;
const MAX_PAYLOAD: usize = 16 << 20;
const TAG_INSERT: u8 = 1;
const TAG_VIEW: u8 = 2;
const NAME_PREFIX: &str = "chat.journal.";
const NAME_DIGITS: usize = 20;

/// The file name of segment `number` inside the data directory.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!(
        "{NAME_PREFIX}{number:0width$}",
        width = NAME_DIGITS
    ))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Existing segments of `dir`, ascending by number; other names are ignored.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(number) = name.to_str().and_then(parse_segment_name) {
            segments.push((number, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|&(number, _)| number);
    Ok(segments)
}

/// Removes a merged segment. It is only garbage then: failing to remove it
/// costs a replay, so it is logged, not an error.
pub(crate) fn remove_segment(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove a merged journal segment: {e}");
        }
    }
}

/// An open segment being appended to.
pub(crate) struct Segment {
    file: File,
    number: u64,
    path: PathBuf,
    /// Bytes written and acknowledged, header included.
    len: u64,
    /// Reused across appends so a batch costs no allocation once warm.
    buf: Vec<u8>,
    /// Set when a failed append could not be cut back: bytes of unknown
    /// content may follow `len`, and a shorter later append could leave a
    /// complete record of the failed batch behind it to be replayed.
    broken: bool,
}

impl Segment {
    /// Creates segment `number` (an error if it exists) and writes the
    /// header; with `sync`, fsyncs the file and the directory so the new
    /// name survives a power loss.
    pub(crate) fn create(dir: &Path, number: u64, sync: bool) -> io::Result<Segment> {
        let path = segment_path(dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let written = file.write_all_at(&header(), 0).and_then(|()| {
            if sync {
                file.sync_all()?;
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // Best effort: a half-created segment would block a retry.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            file,
            number,
            path,
            len: HEADER_LEN,
            buf: Vec::new(),
            broken: false,
        })
    }

    /// Appends `records` with one positional write, then `sync_data` when
    /// `sync`. On error the file is cut back to its previous length, so no
    /// partial record stays behind and `len` is unchanged.
    pub(crate) fn append(&mut self, records: &[WriteOp], sync: bool) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(io::Error::other(format!(
                "{}: an earlier failed append could not be undone",
                self.path.display()
            )));
        }
        self.buf.clear();
        for record in records {
            encode_record(&mut self.buf, record)?;
        }
        let written = self.file.write_all_at(&self.buf, self.len).and_then(|()| {
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written and acknowledged, header included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// No records appended yet.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// A failed append could not be undone: appends go to a new segment.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

/// What a segment holds.
#[derive(Debug)]
pub(crate) struct SegmentContents {
    pub(crate) records: Vec<WriteOp>,
    /// Bytes up to the end of the last good record.
    pub(crate) valid_len: u64,
    /// True when bytes after `valid_len` were ignored (a write cut short by
    /// a crash, or damage).
    pub(crate) torn: bool,
}

/// Reads a whole segment, stopping at the first record that is cut short,
/// fails its checksum or does not decode: it and all after it are ignored.
/// Nothing after a bad record is trusted, since its length may be the
/// damaged part. A file shorter than the header is empty and torn.
pub(crate) fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let data = fs::read(path)?;
    let mut cursor = Cursor { rest: &data };
    let (Some(magic), Some(version), Some(_reserved)) =
        (cursor.array::<8>(), cursor.u32(), cursor.u32())
    else {
        // A crash during `create`.
        return Ok(SegmentContents {
            records: Vec::new(),
            valid_len: 0,
            torn: true,
        });
    };
    let invalid = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    if &magic != MAGIC {
        return Err(invalid("not a chat journal segment (bad magic)".into()));
    }
    if version != VERSION && version != VERSION_WITHOUT_SEQ {
        return Err(invalid(format!("unsupported journal version {version}")));
    }
    let with_seq = version == VERSION;
    let mut records = Vec::new();
    let mut valid_len = HEADER_LEN;
    while !cursor.rest.is_empty() {
        match next_record(&mut cursor, with_seq) {
            Some(record) => {
                records.push(record);
                valid_len = (data.len() - cursor.rest.len()) as u64;
            }
            None => break,
        }
    }
    let torn = valid_len != data.len() as u64;
    Ok(SegmentContents {
        records,
        valid_len,
        torn,
    })
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// The next framed record, or `None` when the rest is cut short or damaged.
fn next_record(cursor: &mut Cursor<'_>, with_seq: bool) -> Option<WriteOp> {
    let len = cursor.u32()? as usize;
    let crc = cursor.u32()?;
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = cursor.take(len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    decode_payload(payload, with_seq)
}

/// Appends one framed record to `buf`; refuses payloads over the limit
/// (the reader would take them for damage) and leaves `buf` as it was.
fn encode_record(buf: &mut Vec<u8>, record: &WriteOp) -> io::Result<()> {
    let start = buf.len();
    if let WriteOp::Read { .. } = record {
        // Cursors go to SQLite directly (see the write thread).
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "read cursors are not journaled",
        ));
    }
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    encode_payload(buf, record);
    let payload_len = buf.len() - start - RECORD_HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("journal record of {payload_len} bytes exceeds the 16 MiB limit"),
        ));
    }
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER_LEN..]);
    // Fits: at most 16 MiB.
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn encode_payload(buf: &mut Vec<u8>, record: &WriteOp) {
    match record {
        WriteOp::Insert(m) => {
            buf.push(TAG_INSERT);
            buf.extend_from_slice(&m.conversation_id.bytes());
            buf.extend_from_slice(&m.id.bytes());
            buf.extend_from_slice(&m.sender_id.to_le_bytes());
            buf.extend_from_slice(&m.created_at.0.to_le_bytes());
            put_str(buf, &m.text);
            put_opt(buf, m.client_id.as_deref(), put_str);
            put_opt(buf, m.viewed_by, |buf, v| {
                buf.extend_from_slice(&v.to_le_bytes())
            });
            put_opt(buf, m.viewed_at, |buf, v| {
                buf.extend_from_slice(&v.0.to_le_bytes())
            });
            buf.extend_from_slice(&m.seq.to_le_bytes());
        }
        WriteOp::View {
            conversation_id,
            message_id,
            viewer_id,
            at,
        } => {
            buf.push(TAG_VIEW);
            buf.extend_from_slice(&conversation_id.bytes());
            buf.extend_from_slice(&message_id.bytes());
            buf.extend_from_slice(&viewer_id.to_le_bytes());
            buf.extend_from_slice(&at.0.to_le_bytes());
        }
        // Refused by `encode_record` before this is reached.
        WriteOp::Read { .. } => {}
    }
}

/// A string longer than u32 gets a wrong length here, but it also makes
/// the payload exceed the limit, so `encode_record` refuses it.
fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt<T>(buf: &mut Vec<u8>, value: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            put(buf, v);
        }
    }
}

/// `None` for anything but a complete, well-formed payload.
fn decode_payload(payload: &[u8], with_seq: bool) -> Option<WriteOp> {
    let mut c = Cursor { rest: payload };
    let record = match c.u8()? {
        TAG_INSERT => WriteOp::Insert(Message {
            conversation_id: c.id()?,
            id: c.id()?,
            sender_id: c.i64()?,
            created_at: Millis(c.i64()?),
            text: c.string()?,
            client_id: c.opt(Cursor::string)?,
            viewed_by: c.opt(Cursor::i64)?,
            viewed_at: c.opt(|c| c.i64().map(Millis))?,
            seq: if with_seq { c.u64()? } else { 0 },
        }),
        TAG_VIEW => WriteOp::View {
            conversation_id: c.id()?,
            message_id: c.id()?,
            viewer_id: c.i64()?,
            at: Millis(c.i64()?),
        },
        _ => return None,
    };
    c.rest.is_empty().then_some(record)
}

/// Bounds-checked reads over a byte slice; every read is `None` when too
/// few bytes are left, so no input can make decoding panic.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn id(&mut self) -> Option<ObjectId> {
        self.array().map(ObjectId::from_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok().map(str::to_owned)
    }

    /// `Some(None)` for an absent value, `None` for damage.
    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;

    fn message(
        n: u8,
        text: &str,
        client_id: Option<&str>,
        viewed: Option<(UserId, i64)>,
    ) -> Message {
        Message {
            id: ObjectId::from_bytes([n; 12]),
            conversation_id: ObjectId::from_bytes([0xc0; 12]),
            sender_id: 7 + i64::from(n),
            text: text.to_owned(),
            created_at: Millis(1_700_000_000_000 + i64::from(n)),
            seq: 0,
            client_id: client_id.map(str::to_owned),
            viewed_by: viewed.map(|(user, _)| user),
            viewed_at: viewed.map(|(_, at)| Millis(at)),
        }
    }

    fn view(n: u8) -> WriteOp {
        WriteOp::View {
            conversation_id: ObjectId::from_bytes([0xc0; 12]),
            message_id: ObjectId::from_bytes([n; 12]),
            viewer_id: -3,
            at: Millis(i64::MIN),
        }
    }

    fn batches() -> (Vec<WriteOp>, Vec<WriteOp>) {
        let first = vec![
            WriteOp::Insert(message(1, "привет 👋🏽 مرحبا", Some("c-1"), None)),
            WriteOp::Insert(message(2, "", None, Some((9, 1_700_000_000_500)))),
        ];
        let second = vec![
            view(1),
            WriteOp::Insert(message(3, "x", Some(""), Some((i64::MAX, -1)))),
        ];
        (first, second)
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn round_trip_two_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 3, true).unwrap();
        assert!(seg.is_empty());
        assert_eq!(seg.len(), HEADER_LEN);
        let (first, second) = batches();
        seg.append(&first, true).unwrap();
        assert!(!seg.is_empty());
        seg.append(&second, false).unwrap();
        assert_eq!(seg.number(), 3);
        assert_eq!(seg.path(), segment_path(dir.path(), 3));
        assert_eq!(seg.len(), file_len(seg.path()));

        let read = read_segment(seg.path()).unwrap();
        let expected: Vec<WriteOp> = first.into_iter().chain(second).collect();
        assert_eq!(read.records, expected);
        assert!(!read.torn);
        assert_eq!(read.valid_len, file_len(seg.path()));
    }

    #[test]
    fn empty_append_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, false).unwrap();
        seg.append(&[], true).unwrap();
        assert_eq!(seg.len(), HEADER_LEN);
        assert_eq!(file_len(seg.path()), HEADER_LEN);
        let read = read_segment(seg.path()).unwrap();
        assert!(read.records.is_empty());
        assert!(!read.torn);
        assert_eq!(read.valid_len, HEADER_LEN);
    }

    #[test]
    fn torn_tail_keeps_earlier_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, false).unwrap();
        let (first, second) = batches();
        seg.append(&first, false).unwrap();
        let before = seg.len();
        seg.append(&second, false).unwrap();
        let full = seg.len();

        let file = OpenOptions::new().write(true).open(seg.path()).unwrap();
        file.set_len(full - 3).unwrap();
        let read = read_segment(seg.path()).unwrap();
        // The last record is cut, so its batch-mate before it survives.
        assert_eq!(
            read.records,
            [first.clone(), vec![second[0].clone()]].concat()
        );
        assert!(read.torn);

        // Cut into the second batch's first record: only the first batch.
        file.set_len(before + 5).unwrap();
        let read = read_segment(seg.path()).unwrap();
        assert_eq!(read.records, first);
        assert!(read.torn);
        assert_eq!(read.valid_len, before);

        // A tail of zeros (file grown before its data landed) is torn too.
        file.set_len(before + 64).unwrap();
        let read = read_segment(seg.path()).unwrap();
        assert_eq!(read.records, first);
        assert!(read.torn);
        assert_eq!(read.valid_len, before);
    }

    #[test]
    fn flipped_byte_in_second_record_stops_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, false).unwrap();
        let (first, second) = batches();
        seg.append(&first[..1], false).unwrap();
        let after_first = seg.len();
        seg.append(&first[1..], false).unwrap();
        seg.append(&second, false).unwrap();

        let mut data = fs::read(seg.path()).unwrap();
        data[after_first as usize + RECORD_HEADER_LEN + 3] ^= 0x10;
        fs::write(seg.path(), &data).unwrap();
        let read = read_segment(seg.path()).unwrap();
        assert_eq!(read.records, first[..1]);
        assert!(read.torn);
        assert_eq!(read.valid_len, after_first);
    }

    #[test]
    fn oversized_length_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 1, false).unwrap();
        let mut data = fs::read(seg.path()).unwrap();
        // Well-formed apart from its size, so only the limit rejects it.
        let mut huge = Vec::new();
        let text = "a".repeat(MAX_PAYLOAD);
        encode_payload(&mut huge, &WriteOp::Insert(message(1, &text, None, None)));
        data.extend_from_slice(&(huge.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&huge).to_le_bytes());
        data.extend_from_slice(&huge);
        fs::write(seg.path(), &data).unwrap();
        let read = read_segment(seg.path()).unwrap();
        assert!(read.records.is_empty());
        assert!(read.torn);
        assert_eq!(read.valid_len, HEADER_LEN);
    }

    #[test]
    fn oversized_record_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, false).unwrap();
        let big = "a".repeat(MAX_PAYLOAD);
        let records = [view(1), WriteOp::Insert(message(2, &big, None, None))];
        let err = seg.append(&records, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(seg.len(), HEADER_LEN);
        assert_eq!(file_len(seg.path()), HEADER_LEN);
        seg.append(&[view(3)], false).unwrap();
        assert_eq!(read_segment(seg.path()).unwrap().records, [view(3)]);
    }

    #[test]
    fn failed_write_leaves_len_and_file_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, false).unwrap();
        seg.append(&[view(1)], false).unwrap();
        let before = seg.len();
        // A read-only handle makes the write fail.
        seg.file = File::open(seg.path()).unwrap();
        assert!(seg.append(&[view(2)], true).is_err());
        assert_eq!(seg.len(), before);
        let read = read_segment(seg.path()).unwrap();
        assert_eq!(read.records, [view(1)]);
        assert!(!read.torn);
        // The cut-back failed too (read-only), so the segment stays refused.
        seg.file = OpenOptions::new().write(true).open(seg.path()).unwrap();
        assert!(seg.append(&[view(3)], false).is_err());
        assert_eq!(file_len(seg.path()), before);
    }

    #[test]
    fn short_file_is_empty_and_torn() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, HEADER_LEN as usize - 1] {
            let path = segment_path(dir.path(), len as u64);
            fs::write(&path, &header()[..len]).unwrap();
            let read = read_segment(&path).unwrap();
            assert!(read.records.is_empty());
            assert!(read.torn);
            assert_eq!(read.valid_len, 0);
        }
    }

    #[test]
    fn foreign_header_is_invalid_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bad_magic = header();
        bad_magic[0] = b'X';
        let mut bad_version = header();
        bad_version[8] = 3;
        for bytes in [bad_magic, bad_version] {
            fs::write(&path, bytes).unwrap();
            let err = read_segment(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn list_segments_sorts_numerically_and_ignores_other_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_segments(dir.path()).unwrap().is_empty());
        for number in [11, 2, 10] {
            Segment::create(dir.path(), number, false).unwrap();
        }
        for other in [
            "chat.journal.x",
            "chat.journal.abc",
            "chat.journal.1",
            "chat.journal.99999999999999999999",
            "chat.sqlite3",
            "chat.journal.00000000000000000001.tmp",
        ] {
            fs::write(dir.path().join(other), b"").unwrap();
        }
        let listed = list_segments(dir.path()).unwrap();
        let expected: Vec<(u64, PathBuf)> =
            [2, 10, 11].map(|n| (n, segment_path(dir.path(), n))).into();
        assert_eq!(listed, expected);
        assert_eq!(
            segment_path(dir.path(), 2).file_name().unwrap(),
            "chat.journal.00000000000000000002"
        );
    }

    #[test]
    fn create_twice_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 5, true).unwrap();
        seg.append(&[view(1)], true).unwrap();
        let err = Segment::create(dir.path(), 5, true).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // The existing segment is untouched.
        assert_eq!(read_segment(seg.path()).unwrap().records, [view(1)]);
    }

    #[test]
    fn garbage_payloads_never_panic() {
        let (first, second) = batches();
        let mut valid = Vec::new();
        for record in first.iter().chain(&second) {
            let mut bytes = Vec::new();
            encode_payload(&mut bytes, record);
            assert_eq!(decode_payload(&bytes, true).as_ref(), Some(record));
            for end in 0..bytes.len() {
                assert_eq!(decode_payload(&bytes[..end], true), None, "prefix {end}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode_payload(&longer, true), None);
            let mut unknown_tag = bytes.clone();
            unknown_tag[0] = 3;
            assert_eq!(decode_payload(&unknown_tag, true), None);
            valid.push(bytes);
        }
        let mut bad_utf8 = Vec::new();
        encode_payload(
            &mut bad_utf8,
            &WriteOp::Insert(message(1, "ab", None, None)),
        );
        bad_utf8[1 + 12 + 12 + 8 + 8 + 4] = 0xff;
        assert_eq!(decode_payload(&bad_utf8, true), None);

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Every single-byte change of every valid payload.
        let changed = valid.iter().flat_map(|bytes| {
            (0..bytes.len()).flat_map(move |at| {
                (0..=u8::MAX).map(move |value| {
                    let mut bytes = bytes.clone();
                    bytes[at] = value;
                    bytes
                })
            })
        });
        // Random bytes behind a valid tag.
        let random: Vec<Vec<u8>> = (0..20_000)
            .map(|_| {
                let len = (next() % 80) as usize;
                let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(tag) = bytes.first_mut() {
                    *tag = 1 + *tag % 3;
                }
                bytes
            })
            .collect();
        for bytes in changed.chain(random) {
            // Anything that decodes must be exactly what it encodes to.
            if let Some(record) = decode_payload(&bytes, true) {
                let mut again = Vec::new();
                encode_payload(&mut again, &record);
                assert_eq!(again, bytes);
            }
            let mut cursor = Cursor { rest: &bytes };
            while next_record(&mut cursor, true).is_some() {}
        }
    }
}
