//! The inbox (CONTRACT §6) of any number of conversations in one
//! statement: per conversation, index lookups on
//! `messages_conversation_sender_seq` for both cursors, the unread count
//! and `waiting_since`, and on `messages_conversation_seq` for the newest
//! message.

use super::rows::{column, id_bytes, message_from, millis, seq_value, MESSAGE_COLUMNS};
use super::PostgresStore;
use crate::model::{Conversation, UserId};
use crate::store::{InboxEntry, StoreError};

fn inbox_sql() -> String {
    // A participant's cursor: the stored one or their own newest message.
    let cursor = |user: &str| {
        format!(
            "GREATEST(
                coalesce((SELECT r.last_read_seq FROM chat.read_cursors r
                          WHERE r.conversation_id = q.id AND r.user_id = {user}), 0),
                coalesce((SELECT max(m.seq) FROM chat.messages m
                          WHERE m.conversation_id = q.id AND m.sender_id = {user}), 0))"
        )
    };
    let mine = cursor("$1");
    let theirs = cursor("q.other");
    let last_columns = MESSAGE_COLUMNS
        .split(", ")
        .map(|column| format!("last.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT c.last_seq, mine.cursor, {theirs}, unread.count, waiting.created_at, {last_columns}
        FROM unnest($2::bytea[], $3::int8[], $4::bool[]) WITH ORDINALITY AS q(id, other, caller_is_mentor, ord)
        LEFT JOIN chat.conversations c ON c.id = q.id
        CROSS JOIN LATERAL (SELECT {mine} AS cursor) mine
        CROSS JOIN LATERAL (
            SELECT count(*) AS count FROM chat.messages m
            WHERE m.conversation_id = q.id AND m.sender_id = q.other AND m.seq > mine.cursor) unread
        LEFT JOIN LATERAL (
            SELECT m.created_at FROM chat.messages m
            WHERE q.caller_is_mentor AND m.conversation_id = q.id AND m.sender_id = q.other
              AND m.seq > coalesce((SELECT max(o.seq) FROM chat.messages o
                                    WHERE o.conversation_id = q.id AND o.sender_id = $1), 0)
            ORDER BY m.seq LIMIT 1) waiting ON true
        LEFT JOIN LATERAL (
            SELECT {MESSAGE_COLUMNS} FROM chat.messages m
            WHERE m.conversation_id = q.id ORDER BY m.seq DESC LIMIT 1) last ON true
        ORDER BY q.ord"
    )
}

impl PostgresStore {
    pub(super) async fn read_inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = conversations.iter().map(|c| id_bytes(c.id)).collect();
        let others: Vec<i64> = conversations
            .iter()
            .map(|c| c.other_participant(caller))
            .collect();
        let caller_is_mentor: Vec<bool> = conversations
            .iter()
            .map(|c| caller == c.mentor_id)
            .collect();
        let rows = self
            .query(
                "inbox",
                &inbox_sql(),
                &[&caller, &ids, &others, &caller_is_mentor],
            )
            .await?;
        if rows.len() != conversations.len() {
            return Err(StoreError::Internal(format!(
                "postgres inbox: {} rows for {} conversations",
                rows.len(),
                conversations.len()
            )));
        }
        let read = |row, index| column::<Option<i64>>(row, index);
        conversations
            .into_iter()
            .zip(&rows)
            .map(|(conversation, row)| {
                // A conversation deleted since it was listed keeps its seq.
                let last_seq = read(row, 0)?.map_or(conversation.last_seq, seq_value);
                let waiting: Option<std::time::SystemTime> = column(row, 4)?;
                let last_id: Option<Vec<u8>> = column(row, 5)?;
                Ok(InboxEntry {
                    last_message: match last_id {
                        Some(_) => Some(message_from(row, 5)?),
                        None => None,
                    },
                    unread_count: read(row, 3)?.map_or(0, |n| u64::try_from(n).unwrap_or(0)),
                    last_read_seq: read(row, 1)?.map_or(0, seq_value),
                    other_last_read_seq: read(row, 2)?.map_or(0, seq_value),
                    waiting_since: waiting.map(millis),
                    conversation: Conversation {
                        last_seq,
                        ..conversation
                    },
                })
            })
            .collect()
    }
}
