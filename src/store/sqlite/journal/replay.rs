//! Replay at open: what an earlier process journaled but did not merge
//! (it crashed, or its last merge failed) goes into SQLite before the store
//! takes writes, and the segments are removed.
//!
//! Replaying a record SQLite already holds is harmless (see `INSERT_MESSAGE`
//! and `VIEW_MESSAGE`), so a crash during a merge or during a replay only
//! costs doing it again.

use std::path::Path;

use rusqlite::Connection;

use super::{list_segments, read_segment, remove_segment};
use crate::store::sqlite::errors::{drop_if_refused, journal_error};
use crate::store::sqlite::sql::{in_transaction, insert_message, INSERT_MESSAGE, VIEW_MESSAGE};
use crate::store::{StoreError, WriteOp};

/// Applies every journal segment an earlier process left in `dir`, in
/// order, `chunk` records per transaction, and removes them; returns the
/// number for the next segment.
pub(in crate::store::sqlite) fn replay(
    conn: &Connection,
    dir: &Path,
    chunk: usize,
) -> Result<u64, StoreError> {
    let segments = list_segments(dir).map_err(journal_error)?;
    let Some(&(last, _)) = segments.last() else {
        return Ok(1);
    };
    let mut replayed = 0usize;
    for (_, path) in &segments {
        let contents = read_segment(path).map_err(journal_error)?;
        if contents.torn {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = contents.valid_len,
                "journal segment ends in a partial record (a write cut short): ignoring the rest"
            );
        }
        for records in contents.records.chunks(chunk) {
            in_transaction(conn, "BEGIN IMMEDIATE", |conn| apply(conn, records))?;
        }
        replayed += contents.records.len();
    }
    for (_, path) in &segments {
        remove_segment(path);
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            segments = segments.len(),
            "replayed the journal of the previous run into SQLite"
        );
    }
    Ok(last + 1)
}

/// Applies `records` in order inside the caller's transaction.
fn apply(conn: &Connection, records: &[WriteOp]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
    let mut view = conn.prepare_cached(VIEW_MESSAGE)?;
    for record in records {
        let (applied, id) = match record {
            WriteOp::Insert(message) => (insert_message(&mut insert, message), message.id),
            WriteOp::View {
                conversation_id,
                message_id,
                viewer_id,
                at,
            } => (
                view.execute((conversation_id.bytes(), message_id.bytes(), viewer_id, at.0))
                    .map(drop),
                *message_id,
            ),
            // Never journaled.
            WriteOp::Read { .. } => continue,
        };
        drop_if_refused(applied, id, "replay")?;
    }
    Ok(())
}
