//! Connections that have not finished sending their first request head.
//!
//! Such a connection costs a file descriptor and a task while it proves
//! nothing. hyper closes it after the header timeout; this bounds how many
//! may wait at once, so a flood of silent TCP connections cannot use up the
//! open-files limit and starve real clients. At the bound the *oldest*
//! waiting connection is closed: a real client sends its head within
//! milliseconds of connecting, so it is never the oldest for long, while
//! the silent ones age.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// The waiting connections, oldest first.
pub struct PendingHeads {
    max: usize,
    waiting: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

/// One accepted connection until its first request head arrives. Its
/// token is cancelled if it is evicted; dropping it (or
/// [`PendingHead::head_received`]) takes it off the list.
pub struct PendingHead {
    heads: Arc<PendingHeads>,
    id: u64,
    evict: CancellationToken,
    received: AtomicBool,
}

impl PendingHeads {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PendingHeads {
            max: max.max(1),
            waiting: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// Registers a newly accepted connection, evicting the oldest waiting
    /// one when the list is full.
    pub fn admit(self: &Arc<Self>) -> PendingHead {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        let oldest = {
            let mut waiting = self.waiting.lock();
            let oldest = if waiting.len() >= self.max {
                waiting.pop_front()
            } else {
                None
            };
            waiting.push_back((id, evict.clone()));
            oldest
        };
        if let Some((_, token)) = oldest {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            token.cancel();
        }
        PendingHead {
            heads: Arc::clone(self),
            id,
            evict,
            received: AtomicBool::new(false),
        }
    }

    /// Connections waiting for their head now.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections closed so far to make room.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn remove(&self, id: u64) {
        let mut waiting = self.waiting.lock();
        // Usually near the back: the connection just arrived.
        if let Some(index) = waiting.iter().rposition(|(other, _)| *other == id) {
            waiting.remove(index);
        }
    }
}

impl PendingHead {
    /// The first request head arrived: the connection is no longer pending.
    pub fn head_received(&self) {
        if !self.received.swap(true, Ordering::AcqRel) {
            self.heads.remove(self.id);
        }
    }

    /// Resolves if the connection is evicted while still waiting.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }
}

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.head_received();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let heads = PendingHeads::new(2);
        let first = heads.admit();
        let second = heads.admit();
        assert_eq!(heads.len(), 2);
        let third = heads.admit();
        assert!(first.evict.is_cancelled());
        assert!(!second.evict.is_cancelled());
        assert!(!third.evict.is_cancelled());
        assert_eq!(heads.len(), 2);
        assert_eq!(heads.evicted(), 1);
    }

    #[test]
    fn a_connection_that_sent_its_head_is_never_evicted() {
        let heads = PendingHeads::new(1);
        let served = heads.admit();
        served.head_received();
        assert!(heads.is_empty());
        let next = heads.admit();
        let _after = heads.admit();
        assert!(!served.evict.is_cancelled());
        assert!(next.evict.is_cancelled());
    }

    #[test]
    fn dropping_a_connection_frees_its_place() {
        let heads = PendingHeads::new(4);
        let a = heads.admit();
        let _b = heads.admit();
        drop(a);
        assert_eq!(heads.len(), 1);
    }
}
