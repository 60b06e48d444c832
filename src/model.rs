//! The nouns every module shares: ids, users, conversations, messages, time.
//!
//! Ids are MongoDB ObjectIds in both stores, so data moves between them and a
//! seed database is read as it is. They are generated here, on the node, so a
//! message is broadcast before any database round trip.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A Django user id (the seed's int64).
pub type UserId = i64;
/// A Django lesson id (the seed's int64).
pub type LessonId = i64;
/// A conversation's ObjectId.
pub type ConversationId = ObjectId;
/// A message's ObjectId.
pub type MessageId = ObjectId;
/// A message's position in its conversation (CONTRACT §6): 1, 2, 3 …
pub type Seq = u64;

/// A 12-byte MongoDB ObjectId: 4 bytes of seconds, 5 bytes unique to this
/// process, 3 bytes of counter. Byte order is creation order, within a
/// process and across its restarts, which history pagination and the seq
/// cursors rely on (within a conversation, seq order is id order):
///
/// - the seconds never go back and the counter restarts each second, so
///   ids of one process strictly increase (a clock stepped back keeps the
///   last second; more than 15 million ids in one second borrow the next);
/// - the process part is the process's start time in milliseconds (its
///   low 40 bits: they wrap in 2039), so a restarted process's ids in the
///   same second sort after its predecessor's. The counter starts each
///   second at a random offset below 2^20, so two nodes started in the
///   same millisecond still rarely meet.
///
/// Not a newtype over `bson::oid::ObjectId` (linked through the driver),
/// by measurement (`cargo bench --bench protocol -- object_id`): generation
/// costs the same, but bson's `to_hex` allocates a `String` (2.5-4x ours;
/// every message event encodes two ids) and `parse_str` a `Vec` (1.6-4.8x;
/// 2-5x on malformed input, which it copies into the error). Its generation
/// also panics on a clock before 1970, and the stores other than MongoDB
/// would depend on the driver's types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 12]);

impl ObjectId {
    /// A fresh id: unique across processes and increasing, see the type.
    pub fn new() -> Self {
        Self::with_seconds(unix_seconds())
    }

    fn with_seconds(seconds: u32) -> Self {
        static PROCESS_UNIQUE: OnceLock<([u8; 5], u64)> = OnceLock::new();
        // (seconds << 24) | counter of the last id: one CAS keeps both
        // monotonic together.
        static LAST: AtomicU64 = AtomicU64::new(0);
        let (process, offset) = *PROCESS_UNIQUE.get_or_init(|| {
            let started = now().0.max(0) as u64 & ((1 << 40) - 1);
            let mut process = [0u8; 5];
            process.copy_from_slice(&started.to_be_bytes()[3..]);
            let mut random = [0u8; 4];
            fill_random(&mut random);
            (process, u64::from(u32::from_be_bytes(random)) & 0x000f_ffff)
        });
        let first_of_second = (u64::from(seconds) << 24) | offset;
        let mut last = LAST.load(Ordering::Relaxed);
        let next = loop {
            let next = first_of_second.max(last + 1);
            match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(actual) => last = actual,
            }
        };
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&((next >> 24) as u32).to_be_bytes());
        id[4..9].copy_from_slice(&process);
        id[9..].copy_from_slice(&(next as u32).to_be_bytes()[1..]);
        ObjectId(id)
    }

    pub const fn from_bytes(bytes: [u8; 12]) -> Self {
        ObjectId(bytes)
    }

    pub const fn bytes(&self) -> [u8; 12] {
        self.0
    }

    /// Parses exactly 24 hex digits (either case); anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let raw = text.as_bytes();
        if raw.len() != 24 {
            return None;
        }
        let mut id = [0u8; 12];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            id[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(ObjectId(id))
    }

    /// The creation time encoded in the id, in milliseconds.
    pub(crate) fn timestamp(&self) -> Millis {
        let seconds = u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        Millis(i64::from(seconds) * 1000)
    }

    /// Lowercase hex into a fixed buffer, no allocation.
    pub fn hex(&self) -> HexId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 24];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        HexId(out)
    }
}

impl Default for ObjectId {
    fn default() -> Self {
        Self::new()
    }
}

/// 24 lowercase hex digits of an [`ObjectId`].
#[derive(Clone, Copy)]
pub struct HexId([u8; 24]);

impl HexId {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the buffer.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.hex().as_str())
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // No OS randomness: fall back to time and pid, which is still unique
        // enough for the process part of an id.
        let seed = (now().0 as u64) ^ (u64::from(std::process::id()) << 32);
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = (seed >> ((i % 8) * 8)) as u8;
        }
    }
}

fn unix_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, UTC: the precision of a BSON date, so
/// an instant reads the same over WebSocket, REST and both stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

/// The current time.
pub(crate) fn now() -> Millis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Millis(ms)
}

impl Millis {
    /// RFC 3339 in UTC with a `Z` and millisecond fraction,
    /// e.g. `2025-01-01T10:00:00.123Z`.
    pub(crate) fn rfc3339(self) -> String {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl Millis {
    /// `self.rfc3339().len()` without formatting: the year is at least four
    /// characters (a sign counts), everything after it is 20.
    pub(crate) fn rfc3339_len(self) -> usize {
        let days = self.0.div_euclid(1000).div_euclid(86_400);
        let (year, _, _) = civil_from_days(days);
        let width = decimal_len(year.unsigned_abs()) + usize::from(year < 0);
        width.max(4) + 20
    }
}

impl serde::Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The natural key of a conversation: one per (lesson, mentor, student).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConversationKey {
    pub lesson_id: LessonId,
    pub mentor_id: UserId,
    pub student_id: UserId,
}

/// A conversation as stored (CONTRACT §5) and listed by REST (§4).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conversation {
    pub id: ConversationId,
    pub lesson_id: LessonId,
    pub mentor_id: UserId,
    pub student_id: UserId,
    pub created_at: Millis,
    /// The seq of the newest message, 0 when none (CONTRACT §6). Filled by
    /// the store's reads; the hub's copy is not kept current.
    pub last_seq: Seq,
}

impl Conversation {
    /// Whether `user` is the mentor or the student of this conversation.
    pub(crate) fn has_participant(&self, user: UserId) -> bool {
        self.mentor_id == user || self.student_id == user
    }

    /// The participant who is not `caller`: the student for the mentor,
    /// the mentor for anyone else (the inbox's "other participant").
    pub(crate) fn other_participant(&self, caller: UserId) -> UserId {
        if caller == self.mentor_id {
            self.student_id
        } else {
            self.mentor_id
        }
    }
}

/// A message as stored (CONTRACT §5) and listed by REST (§4).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub text: String,
    pub created_at: Millis,
    /// Position in its conversation: 1, 2, 3 … (CONTRACT §6), given by the
    /// store when the message is written; 0 only before that (and for a
    /// legacy message until the start-up numbering).
    pub seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewed_by: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewed_at: Option<Millis>,
}

/// Bytes one string byte takes inside a JSON string as serde_json writes
/// it: `"`, `\` and the five short escapes take 2, other control
/// characters `\u00XX` take 6, everything else (UTF-8 included) itself.
const JSON_ESCAPED_LEN: [u8; 256] = {
    let mut table = [1u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = 6;
        byte += 1;
    }
    table[b'"' as usize] = 2;
    table[b'\\' as usize] = 2;
    table[b'\n' as usize] = 2;
    table[b'\r' as usize] = 2;
    table[b'\t' as usize] = 2;
    table[0x08] = 2;
    table[0x0c] = 2;
    table
};

/// Length of `text` as a JSON string, quotes included.
pub(crate) fn json_str_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| usize::from(JSON_ESCAPED_LEN[usize::from(byte)]))
        .sum::<usize>()
}

/// Decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Length of an integer in JSON.
fn json_int_len(n: i64) -> usize {
    decimal_len(n.unsigned_abs()) + usize::from(n < 0)
}

impl Message {
    /// The smallest [`Message::json_len`]: empty text, a one-digit sender,
    /// a four-digit year, no optional field.
    pub const MIN_JSON_LEN: usize = 150;

    /// Exactly `serde_json::to_vec(self).len()`, computed in one pass over
    /// the text: history pages are cut by encoded size before encoding.
    pub(crate) fn json_len(&self) -> usize {
        // `{"id":` + id + `,"conversation_id":` + id + `,"sender_id":` +
        // `,"text":` + `,"created_at":` + `}`.
        const FIXED: usize = 6 + 19 + 13 + 8 + 14 + 1;
        const ID: usize = 26;
        let mut len = FIXED
            + 2 * ID
            + json_int_len(self.sender_id)
            + json_str_len(&self.text)
            + self.created_at.rfc3339_len()
            + 2
            + r#","seq":"#.len()
            + decimal_len(self.seq);
        if let Some(client_id) = &self.client_id {
            len += r#","client_id":"#.len() + json_str_len(client_id);
        }
        if let Some(viewer) = self.viewed_by {
            len += r#","viewed_by":"#.len() + json_int_len(viewer);
        }
        if let Some(at) = self.viewed_at {
            len += r#","viewed_at":"#.len() + at.rfc3339_len() + 2;
        }
        len
    }

    /// What `viewer`'s view at `at` does to this message; see [`ViewEffect::of`].
    pub(crate) fn view_effect(&self, viewer: UserId, at: Millis) -> ViewEffect {
        ViewEffect::of(self.sender_id, self.viewed_by, self.viewed_at, viewer, at)
    }

    /// Records `viewer`'s view at `at` when it is [`ViewEffect::Recorded`];
    /// otherwise changes nothing.
    pub(crate) fn mark_viewed(&mut self, viewer: UserId, at: Millis) -> ViewEffect {
        let effect = self.view_effect(viewer, at);
        if effect == ViewEffect::Recorded {
            self.viewed_by = Some(viewer);
            self.viewed_at = Some(at);
        }
        effect
    }
}

/// What a view does to a message: the one rule of every store (SQLite and
/// MongoDB spell it in their view updates' filters too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ViewEffect {
    /// The view is stored: `viewed_by` and `viewed_at` are set.
    Recorded,
    /// The viewer had viewed it already; the first `viewed_at` is kept.
    AlreadyViewed,
    /// The viewer sent it: a view counts only from someone else.
    OwnMessage,
}

impl ViewEffect {
    /// The rule on a message's parts. A view by the viewer already recorded
    /// changes nothing, unless it is that same view (same `at`) again: a
    /// retried batch must report what its first try did, or a view it
    /// stored would never be relayed.
    pub(crate) fn of(
        sender: UserId,
        viewed_by: Option<UserId>,
        viewed_at: Option<Millis>,
        viewer: UserId,
        at: Millis,
    ) -> ViewEffect {
        if sender == viewer {
            ViewEffect::OwnMessage
        } else if viewed_by == Some(viewer) && viewed_at != Some(at) {
            ViewEffect::AlreadyViewed
        } else {
            ViewEffect::Recorded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_round_trips_through_hex() {
        let id = ObjectId::new();
        let hex = id.to_string();
        assert_eq!(hex.len(), 24);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(ObjectId::parse(&hex), Some(id));
        assert_eq!(ObjectId::parse(&hex.to_uppercase()), Some(id));
    }

    #[test]
    fn object_id_rejects_malformed_text() {
        for bad in [
            "",
            "abc",
            "663af8129dde123456789deg",
            "663af8129dde123456789def0",
            " 63af8129dde123456789def",
        ] {
            assert_eq!(ObjectId::parse(bad), None, "{bad:?}");
        }
        assert!(ObjectId::parse("663af8129dde123456789def").is_some());
    }

    #[test]
    fn object_ids_strictly_increase_even_when_the_clock_steps_back() {
        let mut ids: Vec<ObjectId> = (0..100_000).map(|_| ObjectId::new()).collect();
        // A clock stepped back to 1970 keeps the last second.
        ids.push(ObjectId::with_seconds(1));
        ids.push(ObjectId::new());
        let downs = ids.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(downs, 0, "every id is greater than the one before");
        let age = now().0 - ids[0].timestamp().0;
        assert!(
            (0..60_000).contains(&age),
            "the id carries the time: {age} ms"
        );
    }

    #[test]
    fn a_restarted_process_sorts_after_its_predecessor_in_the_same_second() {
        // The process part is the start time in ms: later start, larger part.
        let mine = ObjectId::new().bytes();
        let later = now().0 as u64 & ((1 << 40) - 1);
        let mut part = [0u8; 8];
        part[3..].copy_from_slice(&mine[4..9]);
        let started = u64::from_be_bytes(part);
        assert!(
            started <= later && later - started < 3_600_000,
            "{started} vs {later}"
        );
    }

    #[test]
    fn json_len_is_serde_jsons_length() {
        let every_byte: String = (0u8..0x80).map(char::from).collect();
        let texts = [
            String::new(),
            "plain".to_string(),
            every_byte,
            "\u{1}".repeat(8000),
            "quotes \" and \\ and \n\r\t\u{8}\u{c} and \u{7f}".to_string(),
            "é🎉 \u{2028}\u{feff}".to_string(),
        ];
        let times = [
            Millis(0),
            Millis(1_735_725_600_123),
            Millis(-1),
            Millis(-62_167_219_200_001),
            Millis(253_402_300_800_000),
            Millis(i64::MAX / 1000),
            Millis(i64::MIN / 1000),
        ];
        let mut checked = 0;
        for (n, text) in texts.iter().enumerate() {
            for (t, at) in times.iter().enumerate() {
                for variant in 0..4 {
                    let message = Message {
                        id: ObjectId::new(),
                        conversation_id: ObjectId::new(),
                        sender_id: [1, 42, i64::MAX, -7, i64::MIN][(n + t) % 5],
                        text: text.clone(),
                        created_at: *at,
                        seq: 0,
                        client_id: (variant & 1 == 1).then(|| format!("c\"{n}\u{3}ü")),
                        viewed_by: (variant & 2 == 2).then_some(1_000_000_007),
                        viewed_at: (variant & 2 == 2).then_some(times[(t + 1) % times.len()]),
                    };
                    let encoded = serde_json::to_vec(&message).unwrap();
                    assert_eq!(message.json_len(), encoded.len(), "{message:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 6 * 7 * 4);
        let smallest = Message {
            id: ObjectId::new(),
            conversation_id: ObjectId::new(),
            sender_id: 0,
            text: String::new(),
            created_at: Millis(0),
            seq: 0,
            client_id: None,
            viewed_by: None,
            viewed_at: None,
        };
        assert_eq!(smallest.json_len(), Message::MIN_JSON_LEN);
        assert_eq!(json_str_len("\u{1}"), 8, "a control character is \\u0001");
        for at in times {
            assert_eq!(at.rfc3339_len(), at.rfc3339().len(), "{at:?}");
        }
    }

    #[test]
    fn rfc3339_formats_utc_with_z() {
        assert_eq!(Millis(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_735_725_600_000).rfc3339(),
            "2025-01-01T10:00:00.000Z"
        );
        assert_eq!(
            Millis(951_782_400_123).rfc3339(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(Millis(-1).rfc3339(), "1969-12-31T23:59:59.999Z");
    }
}
