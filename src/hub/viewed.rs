//! The `viewed` events a room saw confirmed lately, so a client repeating
//! one (issue 11: 2,000 times) costs neither a write nor a relay.
//!
//! Only a shortcut: a repeat it has forgotten reaches the store, which
//! answers `AlreadyViewed` and writes nothing.

use std::collections::VecDeque;

use crate::model::{MessageId, UserId};

/// Entries kept per room, oldest forgotten first; a linear scan of 64 is
/// cheaper than hashing, and a reader repeats the messages it just read.
pub(crate) const CAPACITY: usize = 64;

/// Boxed and made on the first confirmed view, like `RecentClientIds`: a
/// room's slot in its shard's map stays small.
#[derive(Default)]
pub(crate) struct RecentViews {
    entries: Option<Box<Entries>>,
}

/// (viewer, message), oldest first.
struct Entries(VecDeque<(UserId, MessageId)>);

impl RecentViews {
    pub(crate) fn contains(&self, viewer: UserId, message: MessageId) -> bool {
        self.entries
            .as_ref()
            .is_some_and(|entries| entries.0.contains(&(viewer, message)))
    }

    /// Remembers that `viewer`'s view of `message` is stored.
    pub(crate) fn insert(&mut self, viewer: UserId, message: MessageId) {
        if self.contains(viewer, message) {
            return;
        }
        let entries = self
            .entries
            .get_or_insert_with(|| Box::new(Entries(VecDeque::with_capacity(CAPACITY))));
        if entries.0.len() == CAPACITY {
            entries.0.pop_front();
        }
        entries.0.push_back((viewer, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;

    #[test]
    fn remembers_each_viewer_apart() {
        let mut views = RecentViews::default();
        let message = ObjectId::new();
        assert!(!views.contains(10, message));
        views.insert(10, message);
        assert!(views.contains(10, message));
        assert!(!views.contains(25, message));
        assert!(!views.contains(10, ObjectId::new()));
    }

    #[test]
    fn forgets_the_oldest_beyond_its_capacity() {
        let mut views = RecentViews::default();
        let messages: Vec<MessageId> = (0..=CAPACITY).map(|_| ObjectId::new()).collect();
        views.insert(10, messages[0]);
        for _ in 0..3 {
            views.insert(10, messages[0]); // a repeat takes no second slot
        }
        for &message in &messages[1..] {
            views.insert(10, message);
        }
        assert!(!views.contains(10, messages[0]));
        assert!(messages[1..].iter().all(|&m| views.contains(10, m)));
    }
}
