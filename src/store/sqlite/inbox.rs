//! The inbox read (CONTRACT §6): a list of conversations with one caller's
//! read state, in two statements whatever the list's length, plus the
//! tail's unmerged messages.
//!
//! A participant's cursor is the larger of what they read (`read_cursors`)
//! and their own newest message (posting moves it). Both statements run in
//! one read transaction, so they see one snapshot; the tail is copied
//! before it, and only its messages past that snapshot's `last_seq` count
//! (a message being merged is in both).

use rusqlite::types::Value;
use rusqlite::Connection;

use super::rows::{message_from_row_at, MESSAGE_COLUMNS};
use super::sql::in_transaction;
use super::tail::Tail;
use crate::model::{Conversation, Message, Millis, Seq, UserId};
use crate::store::{InboxEntry, StoreError};

/// What the tail holds of one conversation: (seq, sender, created_at)
/// oldest first, and its newest message.
#[derive(Default)]
pub(super) struct TailPart {
    messages: Vec<(Seq, UserId, Millis)>,
    last: Option<Message>,
}

/// Copies the tail's part of each conversation; call before the SQLite read.
pub(super) fn tail_parts(tail: &Tail, conversations: &[Conversation]) -> Vec<TailPart> {
    conversations
        .iter()
        .map(|conversation| {
            let messages = tail.conversation_messages(conversation.id);
            TailPart {
                last: messages.last().map(|message| (*message).clone()),
                messages: messages
                    .iter()
                    .map(|m| (m.seq, m.sender_id, m.created_at))
                    .collect(),
            }
        })
        .collect()
}

/// SQLite's part of one conversation (statement 1).
struct Stored {
    last_seq: Seq,
    my_read: Seq,
    my_sent: Seq,
    other_read: Seq,
    other_sent: Seq,
}

/// SQLite's part after the cursors are known (statement 2).
struct Counted {
    unread: u64,
    waiting_since: Option<Millis>,
    last_message: Option<Message>,
}

fn seq_value(value: Option<i64>) -> Seq {
    value.and_then(|v| Seq::try_from(v).ok()).unwrap_or(0)
}

/// `(?, ?, …), (…)`: `rows` rows of `columns` placeholders.
fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

pub(super) fn inbox(
    conn: &Connection,
    caller: UserId,
    conversations: Vec<Conversation>,
    tail: Vec<TailPart>,
) -> Result<Vec<InboxEntry>, StoreError> {
    if conversations.is_empty() {
        return Ok(Vec::new());
    }
    in_transaction(conn, "BEGIN", |conn| {
        let stored = stored_parts(conn, caller, &conversations)?;
        let mut cursors = Vec::with_capacity(conversations.len());
        for ((conversation, stored), tail) in conversations.iter().zip(&stored).zip(&tail) {
            let other = conversation.other_participant(caller);
            let newer = tail.messages.iter().filter(|m| m.0 > stored.last_seq);
            let sent_by = |user: UserId| {
                newer
                    .clone()
                    .filter(|m| m.1 == user)
                    .map(|m| m.0)
                    .max()
                    .unwrap_or(0)
            };
            let my_read = stored.my_read.max(stored.my_sent).max(sent_by(caller));
            let other_read = stored.other_read.max(stored.other_sent).max(sent_by(other));
            cursors.push((my_read, other_read));
        }
        let counted = counted_parts(conn, caller, &conversations, &stored, &cursors)?;
        let mut entries = Vec::with_capacity(conversations.len());
        for (i, conversation) in conversations.into_iter().enumerate() {
            let (stored, counted, tail) = (&stored[i], &counted[i], &tail[i]);
            let (my_read, other_read) = cursors[i];
            let other = conversation.other_participant(caller);
            let newer: Vec<&(Seq, UserId, Millis)> = tail
                .messages
                .iter()
                .filter(|m| m.0 > stored.last_seq)
                .collect();
            let unread = counted.unread
                + newer
                    .iter()
                    .filter(|m| m.1 == other && m.0 > my_read)
                    .count() as u64;
            let waiting_since = (caller == conversation.mentor_id)
                .then(|| {
                    let first_student_after = |after: Seq| {
                        newer
                            .iter()
                            .find(|m| m.1 == conversation.student_id && m.0 > after)
                            .map(|m| m.2)
                    };
                    match newer.iter().rev().find(|m| m.1 == caller) {
                        // The mentor spoke since the snapshot.
                        Some(mentor_last) => first_student_after(mentor_last.0),
                        None => counted.waiting_since.or_else(|| first_student_after(0)),
                    }
                })
                .flatten();
            let (last_seq, last_message) = match newer.last() {
                Some(newest) => (newest.0, tail.last.clone()),
                None => (stored.last_seq, counted.last_message.clone()),
            };
            entries.push(InboxEntry {
                conversation: Conversation {
                    last_seq,
                    ..conversation
                },
                last_message,
                unread_count: unread,
                last_read_seq: my_read,
                other_last_read_seq: other_read,
                waiting_since,
            });
        }
        Ok(entries)
    })
}

/// Statement 1: each conversation's last seq and both participants'
/// stored cursors and newest messages.
fn stored_parts(
    conn: &Connection,
    caller: UserId,
    conversations: &[Conversation],
) -> rusqlite::Result<Vec<Stored>> {
    let sql = format!(
        "WITH q(n, id, me, other) AS (VALUES {})
         SELECT
           (SELECT max(seq) FROM messages WHERE conversation_id = q.id),
           (SELECT last_read_seq FROM read_cursors WHERE conversation_id = q.id AND user_id = q.me),
           (SELECT max(seq) FROM messages WHERE conversation_id = q.id AND sender_id = q.me),
           (SELECT last_read_seq FROM read_cursors WHERE conversation_id = q.id AND user_id = q.other),
           (SELECT max(seq) FROM messages WHERE conversation_id = q.id AND sender_id = q.other)
         FROM q ORDER BY q.n",
        values(conversations.len(), 4)
    );
    let mut params = Vec::with_capacity(conversations.len() * 4);
    for (n, conversation) in conversations.iter().enumerate() {
        params.push(Value::Integer(n as i64));
        params.push(Value::Blob(conversation.id.bytes().to_vec()));
        params.push(Value::Integer(caller));
        params.push(Value::Integer(conversation.other_participant(caller)));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |row| {
        Ok(Stored {
            last_seq: seq_value(row.get(0)?),
            my_read: seq_value(row.get(1)?),
            my_sent: seq_value(row.get(2)?),
            other_read: seq_value(row.get(3)?),
            other_sent: seq_value(row.get(4)?),
        })
    })?;
    rows.collect()
}

/// Statement 2: unread counts from the caller's cursor, the mentor's
/// waiting time, and each conversation's newest message.
fn counted_parts(
    conn: &Connection,
    caller: UserId,
    conversations: &[Conversation],
    stored: &[Stored],
    cursors: &[(Seq, Seq)],
) -> rusqlite::Result<Vec<Counted>> {
    let columns = MESSAGE_COLUMNS
        .split(", ")
        .map(|column| format!("m.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH q(n, id, other, cursor, student, mentor_sent) AS (VALUES {})
         SELECT
           (SELECT count(*) FROM messages
             WHERE conversation_id = q.id AND sender_id = q.other AND seq > q.cursor),
           (SELECT created_at FROM messages
             WHERE conversation_id = q.id AND sender_id = q.student AND seq > q.mentor_sent
             ORDER BY seq LIMIT 1),
           {columns}
         FROM q LEFT JOIN messages m
           ON m.conversation_id = q.id
          AND m.seq = (SELECT max(seq) FROM messages WHERE conversation_id = q.id)
         ORDER BY q.n",
        values(conversations.len(), 6)
    );
    let mut params = Vec::with_capacity(conversations.len() * 6);
    for (n, conversation) in conversations.iter().enumerate() {
        let is_mentor = caller == conversation.mentor_id;
        params.push(Value::Integer(n as i64));
        params.push(Value::Blob(conversation.id.bytes().to_vec()));
        params.push(Value::Integer(conversation.other_participant(caller)));
        params.push(Value::Integer(
            i64::try_from(cursors[n].0).unwrap_or(i64::MAX),
        ));
        params.push(if is_mentor {
            Value::Integer(conversation.student_id)
        } else {
            Value::Null
        });
        params.push(Value::Integer(
            i64::try_from(stored[n].my_sent).unwrap_or(i64::MAX),
        ));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |row| {
        let unread: i64 = row.get(0)?;
        let waiting: Option<i64> = row.get(1)?;
        let has_last: Option<Vec<u8>> = row.get(2)?;
        let last_message = match has_last {
            Some(_) => Some(message_from_row_at(row, 2)?),
            None => None,
        };
        Ok(Counted {
            unread: u64::try_from(unread).unwrap_or(0),
            waiting_since: waiting.map(Millis),
            last_message,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_rows_of_placeholders() {
        assert_eq!(values(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(values(1, 1), "(?)");
    }

    #[test]
    fn an_empty_list_reads_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(inbox(&conn, 1, Vec::new(), Vec::new()).unwrap().is_empty());
    }
}
