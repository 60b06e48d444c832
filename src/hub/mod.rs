//! The hub: conversations ("rooms") spread over N shards by a hash of their
//! id. Each shard is one task that owns its rooms, so fan-out takes no lock;
//! a session talks to its conversation's shard through a bounded channel.

pub mod conn;
pub(crate) mod presence;
mod room;
mod shard;
mod viewed;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::model::{Conversation, ConversationId, MessageId, Seq, UserId};
use crate::store::writer::WriterHandle;
pub use conn::ConnHandle;
pub(crate) use presence::Presence;

/// Commands one shard queue holds; a full queue makes sessions wait
/// (backpressure on readers), never drops.
const SHARD_QUEUE: usize = 8192;

/// What a session asks of its conversation's shard.
pub enum Command {
    Join {
        conversation: Conversation,
        conn: ConnHandle,
        /// Set when the connection recovers (`since_seq`): the room holds
        /// back everything for it until `Recovered`, and answers here once
        /// the connection is a member, so the replay's read starts after
        /// any message relayed without it.
        recovering: Option<oneshot::Sender<()>>,
    },
    /// The replay of a recovering connection is queued: the room queues
    /// `frame` (the `recovered` event), then what it held back for the
    /// connection, less messages with `seq <= last_seq` (the replay had them).
    Recovered {
        conversation_id: ConversationId,
        conn_id: u64,
        last_seq: Seq,
        frame: Bytes,
    },
    Leave {
        conversation_id: ConversationId,
        conn_id: u64,
    },
    Publish {
        conversation_id: ConversationId,
        conn_id: u64,
        sender_id: UserId,
        text: String,
        client_id: Option<String>,
        /// When the frame was read, for the delivery-latency histogram.
        received: std::time::Instant,
    },
    Typing {
        conversation_id: ConversationId,
        conn_id: u64,
        sender_id: UserId,
        is_typing: bool,
    },
    View {
        conversation_id: ConversationId,
        conn_id: u64,
        viewer_id: UserId,
        message_id: MessageId,
    },
    /// Inbound `read`: move the user's cursor to `seq`.
    Read {
        conversation_id: ConversationId,
        conn_id: u64,
        user_id: UserId,
        seq: Seq,
    },
}

/// What the hub is started with; `config` fills it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// Shard tasks (at least one is started).
    pub shards: usize,
    /// A relayed `is_typing: true` not refreshed for this long ends with
    /// `is_typing: false` (`CHAT_TYPING_TTL_S`).
    pub typing_ttl: Duration,
}

/// Routes commands to shards. Cloned into the app; dropping every clone and
/// every session's shard sender stops the shards.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<[mpsc::Sender<Command>]>,
    presence: Arc<Presence>,
}

impl Hub {
    /// Starts `settings.shards` shard tasks writing through `writer`.
    pub fn start(settings: HubSettings, writer: WriterHandle) -> (Hub, Vec<JoinHandle<()>>) {
        let shard_count = settings.shards.max(1);
        let mut senders = Vec::with_capacity(shard_count);
        let mut tasks = Vec::with_capacity(shard_count);
        for index in 0..shard_count {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            senders.push(tx);
            let metrics = crate::metrics::get().shard(index as u32);
            let shard = shard::Shard::new(rx, writer.clone(), settings.typing_ttl, metrics);
            tasks.push(tokio::spawn(shard.run()));
        }
        let hub = Hub {
            shards: senders.into(),
            presence: Arc::new(Presence::new()),
        };
        (hub, tasks)
    }

    /// The queue of the shard that owns `conversation`.
    pub fn shard_for(&self, conversation: &ConversationId) -> mpsc::Sender<Command> {
        self.shards[shard_index(conversation, self.shards.len())].clone()
    }

    pub(crate) fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// Commands waiting in each shard's queue, for `/metrics`.
    pub(crate) fn queue_depths(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards
            .iter()
            .map(|shard| shard.max_capacity() - shard.capacity())
    }
}

/// FNV-1a over the id's bytes: cheap, and spreads ids whose only difference
/// is the counter in their last bytes.
fn shard_index(id: &ConversationId, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_shards() {
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[shard_index(&ConversationId::new(), 4)] += 1;
        }
        for count in counts {
            assert!((700..=1300).contains(&count), "{counts:?}");
        }
    }
}
