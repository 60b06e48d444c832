//! Numbering at open: messages stored without `seq` (by a build before it,
//! or replayed from a version-1 journal) get theirs, per conversation in
//! (`created_at`, `id`) order after the conversation's highest seq
//! (CONTRACT §6). Idempotent: a second run finds nothing to number.

use rusqlite::Connection;

use super::errors::store_error;
use super::sql::in_transaction;
use crate::store::StoreError;

/// One statement: each unnumbered message's rank in its conversation, added
/// to the conversation's highest seq so far.
const NUMBER_UNNUMBERED: &str = "
WITH numbered AS (
    SELECT m.conversation_id, m.id,
           (SELECT coalesce(max(seq), 0) FROM messages s
             WHERE s.conversation_id = m.conversation_id)
           + row_number() OVER (PARTITION BY m.conversation_id ORDER BY m.created_at, m.id) AS seq
      FROM messages m
     WHERE m.seq IS NULL
)
UPDATE messages SET seq = numbered.seq
  FROM numbered
 WHERE messages.conversation_id = numbered.conversation_id AND messages.id = numbered.id";

/// Numbers every message without a seq; returns how many it numbered.
pub(super) fn number_unnumbered(conn: &Connection) -> Result<usize, StoreError> {
    let waiting: i64 = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE seq IS NULL",
            [],
            |row| row.get(0),
        )
        .map_err(store_error)?;
    if waiting == 0 {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let numbered = in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        conn.execute(NUMBER_UNNUMBERED, [])
    })?;
    tracing::info!(
        messages = numbered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "numbered the stored messages that had no seq"
    );
    Ok(numbered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::schema::create_schema;

    fn seqs(conn: &Connection, conversation: u8) -> Vec<(u8, Option<i64>)> {
        let mut stmt = conn
            .prepare("SELECT id, seq FROM messages WHERE conversation_id = ?1 ORDER BY seq, id")
            .unwrap();
        let rows = stmt.query_map([[conversation; 12]], |row| {
            Ok((row.get::<_, [u8; 12]>(0)?[11], row.get(1)?))
        });
        rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn unnumbered_messages_are_numbered_by_time_then_id_after_the_highest_seq() {
        let conn = Connection::open_in_memory().unwrap();
        create_schema(&conn).unwrap();
        let insert = |conversation: u8, id: u8, at: i64, seq: Option<i64>| {
            let mut message_id = [0u8; 12];
            message_id[11] = id;
            conn.execute(
                "INSERT INTO messages (conversation_id, id, sender_id, text, created_at, seq)
                 VALUES (?1, ?2, 1, 't', ?3, ?4)",
                ([conversation; 12].to_vec(), message_id.to_vec(), at, seq),
            )
            .unwrap();
        };
        // Conversation 1: legacy only; ids out of time order, a time tie.
        insert(1, 3, 100, None);
        insert(1, 1, 300, None);
        insert(1, 2, 100, None);
        // Conversation 2: numbered up to 2, then legacy ones.
        insert(2, 1, 10, Some(1));
        insert(2, 2, 20, Some(2));
        insert(2, 9, 5, None);
        assert_eq!(number_unnumbered(&conn).unwrap(), 4);
        assert_eq!(seqs(&conn, 1), [(2, Some(1)), (3, Some(2)), (1, Some(3))]);
        assert_eq!(seqs(&conn, 2), [(1, Some(1)), (2, Some(2)), (9, Some(3))]);
        // Idempotent.
        assert_eq!(number_unnumbered(&conn).unwrap(), 0);
        assert_eq!(seqs(&conn, 1), [(2, Some(1)), (3, Some(2)), (1, Some(3))]);
    }
}
