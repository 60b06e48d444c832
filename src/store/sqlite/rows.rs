//! The row shape of conversations and messages, both ways: the column
//! lists every SELECT names, and the values an INSERT binds.

use rusqlite::Row;

use crate::model::{Conversation, Message, Millis, ObjectId};

/// The columns `conversation_from_row` reads, in its order.
/// The last column is `last_seq` as SQLite holds it (the tail may hold
/// newer messages), one probe of `messages_by_seq` per conversation.
pub(super) const CONVERSATION_COLUMNS: &str = "id, lesson_id, mentor_id, student_id, created_at,
    (SELECT coalesce(max(seq), 0) FROM messages WHERE messages.conversation_id = conversations.id)";
/// The columns `message_from_row` reads, in its order.
pub(super) const MESSAGE_COLUMNS: &str =
    "id, conversation_id, sender_id, text, created_at, client_id, viewed_by, viewed_at, seq";

pub(super) fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: ObjectId::from_bytes(row.get(0)?),
        lesson_id: row.get(1)?,
        mentor_id: row.get(2)?,
        student_id: row.get(3)?,
        created_at: Millis(row.get(4)?),
        last_seq: row.get::<_, i64>(5)?.try_into().unwrap_or(0),
    })
}

pub(super) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    message_from_row_at(row, 0)
}

/// [`MESSAGE_COLUMNS`] read from column `at` on.
pub(super) fn message_from_row_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        id: ObjectId::from_bytes(row.get(at)?),
        conversation_id: ObjectId::from_bytes(row.get(at + 1)?),
        sender_id: row.get(at + 2)?,
        text: row.get(at + 3)?,
        created_at: Millis(row.get(at + 4)?),
        client_id: row.get(at + 5)?,
        viewed_by: row.get(at + 6)?,
        viewed_at: row.get::<_, Option<i64>>(at + 7)?.map(Millis),
        // NULL: a legacy message not numbered yet (only before the
        // numbering at open finished).
        seq: row
            .get::<_, Option<i64>>(at + 8)?
            .and_then(|seq| seq.try_into().ok())
            .unwrap_or(0),
    })
}

/// A message as `INSERT_MESSAGE`'s parameters ?1..?9 (seq 0, a version-1
/// journal's message, is stored as NULL for the numbering at open).
pub(super) fn message_params(message: &Message) -> impl rusqlite::Params + '_ {
    (
        message.conversation_id.bytes(),
        message.id.bytes(),
        message.sender_id,
        message.text.as_str(),
        message.created_at.0,
        message.client_id.as_deref(),
        message.viewed_by,
        message.viewed_at.map(|at| at.0),
        i64::try_from(message.seq).ok().filter(|&seq| seq > 0),
    )
}
