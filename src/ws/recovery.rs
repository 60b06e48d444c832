//! Recovery on reconnect (CONTRACT §6): a connection that came with
//! `since_seq=N` first gets every stored message of its conversation with
//! `seq > N` (at most `CHAT_RECOVERY_MAX`, the newest), then `recovered`,
//! then live traffic.
//!
//! No gap and no duplicate at the boundary: the room holds back everything
//! for the connection from the moment it joins. Only then is the
//! conversation's `last_seq` L read, and the replay is exactly the stored
//! messages in (N, L]: every message relayed before the join was durable
//! before it, so it is at most L; every message relayed after the join is
//! held, and the room drops the held ones at most L when it releases them.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::hub::{Command, ConnHandle};
use crate::model::{ConversationId, ObjectId, Seq};
use crate::store::{HistoryQuery, Store, StoreError};
use crate::wire::close::Close;
use crate::wire::protocol;

/// Messages read per store call: a replay of 1,000 is five reads, and the
/// queue drains between them.
const PAGE: usize = 200;
/// Bytes per store call at most (a page of 8 KB texts is cut by it).
const PAGE_BYTES: usize = 1 << 20;

/// What the upgrade found in `since_seq`, and what the replay needs.
pub(crate) struct Recovery {
    pub(crate) since_seq: Seq,
    pub(crate) max: usize,
    pub(crate) store: Arc<dyn Store>,
}

/// The replayed range and the `recovered` event's fields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Messages with seq in (after, last_seq] are replayed.
    pub(crate) after: Seq,
    pub(crate) last_seq: Seq,
    pub(crate) complete: bool,
}

impl Plan {
    /// The newest `max` of the missed ones; a client ahead of the store (a
    /// restored database) has missed nothing.
    pub(crate) fn new(since_seq: Seq, last_seq: Seq, max: usize) -> Plan {
        let max = Seq::try_from(max).unwrap_or(Seq::MAX);
        let since = since_seq.min(last_seq);
        let after = since.max(last_seq.saturating_sub(max));
        Plan {
            after,
            last_seq,
            complete: after == since,
        }
    }
}

impl Recovery {
    /// Replays, then tells the room to release what it held. A store
    /// failure closes the connection with 1011: the client reconnects and
    /// recovers again, nothing is skipped.
    /// `joined` is answered by the shard once the connection is a held
    /// member of the room.
    pub(crate) async fn run(
        self,
        joined: oneshot::Receiver<()>,
        conn: &ConnHandle,
        shard: &mpsc::Sender<Command>,
        conversation_id: ConversationId,
    ) {
        if joined.await.is_err() {
            return;
        }
        match self.replay(conn, conversation_id).await {
            Ok(Some((last_seq, frame))) => {
                let released = Command::Recovered {
                    conversation_id,
                    conn_id: conn.id(),
                    last_seq,
                    frame,
                };
                if shard.send(released).await.is_err() {
                    conn.close(Close::Shutdown);
                }
            }
            // The connection is closing.
            Ok(None) => {}
            Err(error) => {
                crate::metrics::get().store_error("read", error.kind());
                tracing::warn!(%error, conn = conn.id(), user = conn.user_id(), %conversation_id, "recovery failed");
                conn.close(Close::Internal);
            }
        }
    }

    /// Queues the replay; returns the `recovered` event and L, or `None`
    /// when the connection closed meanwhile.
    async fn replay(
        &self,
        conn: &ConnHandle,
        conversation_id: ConversationId,
    ) -> Result<Option<(Seq, bytes::Bytes)>, StoreError> {
        let last_seq = self
            .store
            .conversation(conversation_id)
            .await?
            .map_or(0, |conversation| conversation.last_seq);
        let plan = Plan::new(self.since_seq, last_seq, self.max);
        let mut from_seq = None;
        if plan.after < plan.last_seq {
            // An id cursor: within a conversation seq order is id order.
            let mut cursor = match plan.after {
                0 => None,
                seq => self.store.message_at_seq(conversation_id, seq).await?,
            }
            .unwrap_or(ObjectId::from_bytes([0; 12]));
            'pages: loop {
                let page = self
                    .store
                    .messages(HistoryQuery {
                        conversation_id,
                        before: None,
                        after: Some(cursor),
                        limit: PAGE,
                        max_bytes: PAGE_BYTES,
                    })
                    .await?;
                let Some(last) = page.messages.last() else {
                    break;
                };
                cursor = last.id;
                for message in &page.messages {
                    if message.seq <= plan.after || message.seq > plan.last_seq {
                        continue;
                    }
                    from_seq.get_or_insert(message.seq);
                    if conn.send_own(protocol::message_event(message)).is_err() {
                        return Ok(None);
                    }
                    if message.seq == plan.last_seq {
                        break 'pages;
                    }
                }
                // The replay is this connection's own request: it waits for
                // its queue to drain rather than grow it without bound.
                conn.room_for_reader().await;
                if conn.close_requested().is_some() {
                    return Ok(None);
                }
            }
        }
        let from_seq = from_seq.unwrap_or(plan.last_seq + 1);
        let frame =
            protocol::recovered_event(&conversation_id, from_seq, plan.last_seq, plan.complete);
        Ok(Some((plan.last_seq, frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_replays_the_newest_max_of_the_missed() {
        let plan = |since, last, max| {
            let p = Plan::new(since, last, max);
            (p.after, p.last_seq, p.complete)
        };
        // Nothing missed.
        assert_eq!(plan(5, 5, 1000), (5, 5, true));
        // A few missed.
        assert_eq!(plan(2, 5, 1000), (2, 5, true));
        // Exactly max missed: complete.
        assert_eq!(plan(0, 1000, 1000), (0, 1000, true));
        // More than max: the newest max, incomplete.
        assert_eq!(plan(0, 1001, 1000), (1, 1001, false));
        assert_eq!(plan(10, 5000, 1000), (4000, 5000, false));
        // A client ahead of the store.
        assert_eq!(plan(9, 5, 1000), (5, 5, true));
        // An empty conversation.
        assert_eq!(plan(0, 0, 1000), (0, 0, true));
    }
}
