//! Recently seen `client_id`s of a room, so a resend after a reconnect is
//! recognised before it is delivered a second time.
//!
//! Keys are (sender, 64-bit hash of the client id): no string is copied per
//! message. A collision could only merge two messages of the same sender in
//! the same room, at odds of about 2^-54 for a full cache.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::OnceLock;

use crate::model::{MessageId, UserId};

/// Entries kept per room; older ones are forgotten first. Resends older than
/// this are still never stored twice (the store's unique index), but may be
/// delivered again.
pub const CAPACITY: usize = 1024;

type Key = (UserId, u64);

/// Boxed and made on the first insert: most rooms never see a `client_id`
/// (seed clients send none), and every room is kept in its shard's map,
/// whose slots are as large as the largest room.
#[derive(Default)]
pub(crate) struct RecentClientIds {
    entries: Option<Box<Entries>>,
}

#[derive(Default)]
struct Entries {
    ids: HashMap<Key, MessageId>,
    order: VecDeque<Key>,
}

fn key(sender: UserId, client_id: &str) -> Key {
    // One process-wide random key: stable within the process, unguessable outside.
    static STATE: OnceLock<RandomState> = OnceLock::new();
    (
        sender,
        STATE.get_or_init(RandomState::new).hash_one(client_id),
    )
}

impl RecentClientIds {
    pub(crate) fn get(&self, sender: UserId, client_id: &str) -> Option<MessageId> {
        let entries = self.entries.as_ref()?;
        entries.ids.get(&key(sender, client_id)).copied()
    }

    pub(crate) fn insert(&mut self, sender: UserId, client_id: &str, id: MessageId) {
        let key = key(sender, client_id);
        let entries = self.entries.get_or_insert_with(Box::default);
        if entries.ids.insert(key, id).is_none() {
            entries.order.push_back(key);
            if entries.order.len() > CAPACITY {
                if let Some(oldest) = entries.order.pop_front() {
                    entries.ids.remove(&oldest);
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries
            .as_ref()
            .is_none_or(|entries| entries.ids.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_sender_and_forgets_the_oldest() {
        let mut recent = RecentClientIds::default();
        let first = MessageId::new();
        recent.insert(10, "a", first);
        assert_eq!(recent.get(10, "a"), Some(first));
        assert_eq!(
            recent.get(11, "a"),
            None,
            "another sender's id is another key"
        );
        for i in 0..CAPACITY {
            recent.insert(10, &format!("k{i}"), MessageId::new());
        }
        assert_eq!(recent.get(10, "a"), None, "the oldest entry was evicted");
        assert!(recent.get(10, &format!("k{}", CAPACITY - 1)).is_some());
    }

    #[test]
    fn an_unused_cache_holds_no_memory() {
        let mut recent = RecentClientIds::default();
        assert!(recent.entries.is_none());
        assert!(recent.is_empty());
        assert_eq!(recent.get(10, "a"), None);
        assert!(recent.entries.is_none(), "a look-up allocates nothing");
        recent.insert(10, "a", MessageId::new());
        assert!(!recent.is_empty());
        assert_eq!(
            std::mem::size_of::<RecentClientIds>(),
            std::mem::size_of::<usize>()
        );
    }
}
