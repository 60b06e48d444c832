//! Between the model's types and PostgreSQL's: ids as 12-byte `bytea`,
//! times as `timestamptz`, seqs as `bigint`, and the rows the reads return.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Row;

use super::errors::store_error;
use crate::model::{Conversation, Message, Millis, ObjectId, Seq};
use crate::store::StoreError;

/// Columns of a conversation row, in the order [`conversation_from`] reads.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "id, lesson_id, mentor_id, student_id, created_at, last_seq";

/// Columns of a message row, in the order [`message_from`] reads.
pub(crate) const MESSAGE_COLUMNS: &str =
    "id, conversation_id, seq, sender_id, text, text_exact, created_at, client_id, viewed_by, viewed_at";

pub(crate) fn id_bytes(id: ObjectId) -> Vec<u8> {
    id.bytes().to_vec()
}

pub(crate) fn object_id(bytes: &[u8], what: &str) -> Result<ObjectId, StoreError> {
    <[u8; 12]>::try_from(bytes)
        .map(ObjectId::from_bytes)
        .map_err(|_| StoreError::Internal(format!("postgres: {what} id of {} bytes", bytes.len())))
}

pub(crate) fn time(at: Millis) -> SystemTime {
    let offset = Duration::from_millis(at.0.unsigned_abs());
    let moved = if at.0 >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    moved.unwrap_or(UNIX_EPOCH)
}

/// Millisecond time, rounded down (a row written elsewhere may hold
/// microseconds).
pub(crate) fn millis(at: SystemTime) -> Millis {
    let signed = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
            // -0.5 ms is -1 ms when rounding down.
            let partial = i64::from(before.as_nanos() % 1_000_000 != 0);
            -whole - partial
        }
    };
    Millis(signed)
}

pub(crate) fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_value(value: i64) -> Seq {
    Seq::try_from(value).unwrap_or(0)
}

/// `text` as stored: PostgreSQL text cannot hold NUL, so a text with NUL is
/// kept readable (NUL → U+FFFD) with its exact bytes beside it.
pub(crate) fn stored_text(text: &str) -> (String, Option<Vec<u8>>) {
    if text.contains('\0') {
        (
            text.replace('\0', "\u{fffd}"),
            Some(text.as_bytes().to_vec()),
        )
    } else {
        (text.to_owned(), None)
    }
}

/// Column `index` of `row`; a value of the wrong type is an error, not a
/// panic.
pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index)
        .map_err(|error| store_error("read row", error))
}

/// A conversation from [`CONVERSATION_COLUMNS`] starting at `first`.
pub(crate) fn conversation_from(row: &Row, first: usize) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: object_id(column(row, first)?, "conversation")?,
        lesson_id: column(row, first + 1)?,
        mentor_id: column(row, first + 2)?,
        student_id: column(row, first + 3)?,
        created_at: millis(column(row, first + 4)?),
        last_seq: seq_value(column(row, first + 5)?),
    })
}

/// A message from [`MESSAGE_COLUMNS`] starting at `first`.
pub(crate) fn message_from(row: &Row, first: usize) -> Result<Message, StoreError> {
    let exact: Option<Vec<u8>> = column(row, first + 5)?;
    let text = match exact {
        Some(bytes) => String::from_utf8(bytes)
            .map_err(|_| StoreError::Internal("postgres: text_exact is not UTF-8".into()))?,
        None => column(row, first + 4)?,
    };
    let client_id: Option<Vec<u8>> = column(row, first + 7)?;
    let client_id = client_id
        .map(String::from_utf8)
        .transpose()
        .map_err(|_| StoreError::Internal("postgres: client_id is not UTF-8".into()))?;
    let viewed_at: Option<SystemTime> = column(row, first + 9)?;
    Ok(Message {
        id: object_id(column(row, first)?, "message")?,
        conversation_id: object_id(column(row, first + 1)?, "conversation")?,
        seq: seq_value(column(row, first + 2)?),
        sender_id: column(row, first + 3)?,
        text,
        created_at: millis(column(row, first + 6)?),
        client_id,
        viewed_by: column(row, first + 8)?,
        viewed_at: viewed_at.map(millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_through_system_time() {
        for at in [0, 1, 999, 1_700_000_000_123, -1, -1_000, -1_234_567] {
            assert_eq!(millis(time(Millis(at))), Millis(at), "{at}");
        }
    }

    #[test]
    fn sub_millisecond_times_round_down() {
        let after = UNIX_EPOCH + Duration::from_micros(1_500);
        assert_eq!(millis(after), Millis(1));
        let before = UNIX_EPOCH - Duration::from_micros(1_500);
        assert_eq!(millis(before), Millis(-2));
    }

    #[test]
    fn nul_is_kept_beside_a_readable_text() {
        assert_eq!(stored_text("plain"), ("plain".to_string(), None));
        let (readable, exact) = stored_text("a\0b");
        assert_eq!(readable, "a\u{fffd}b");
        assert_eq!(exact.as_deref(), Some("a\0b".as_bytes()));
    }
}
