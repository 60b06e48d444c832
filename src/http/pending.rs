//! Connections that have not finished sending their first request head.
//!
//! Such a connection costs a file descriptor and a task while it proves
//! nothing. hyper closes it after the header timeout; this bounds how many
//! may wait at once, so a flood of silent TCP connections cannot use up the
//! open-files limit and starve real clients. At the bound the *oldest*
//! waiting connection is closed, if it has waited at least [`MIN_AGE`]: a
//! real client sends its head right after connecting, so only a connection
//! that stays silent ages, while a burst of real clients (a connect storm
//! whose heads are not parsed yet) is never cut. When `accept` runs out of
//! descriptors, the oldest silent connection is closed too, to free one.
//!
//! Idle keep-alive connections need nothing here: hyper (1.12) runs the
//! header timeout while a kept-alive connection waits for its next request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection must have waited before it may be evicted.
pub(crate) const MIN_AGE: Duration = Duration::from_secs(1);

/// The waiting connections, oldest first.
pub(crate) struct PendingHeads {
    max: usize,
    waiting: Mutex<VecDeque<(u64, Instant, CancellationToken)>>,
    next_id: AtomicU64,
}

/// One accepted connection until its first request head arrives. Its
/// token is cancelled if it is evicted; dropping it (or
/// [`PendingHead::head_received`]) takes it off the list.
pub(crate) struct PendingHead {
    heads: Arc<PendingHeads>,
    id: u64,
    evict: CancellationToken,
    received: AtomicBool,
}

impl PendingHeads {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PendingHeads {
            max: max.max(1),
            waiting: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Registers a newly accepted connection, evicting the oldest waiting
    /// one when the list is full and that one is old enough.
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> PendingHead {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        let oldest = {
            let mut waiting = self.waiting.lock();
            let oldest = if waiting.len() >= self.max {
                Self::pop_aged(&mut waiting, now)
            } else {
                None
            };
            waiting.push_back((id, now, evict.clone()));
            oldest
        };
        if let Some(token) = oldest {
            self.evict(token);
        }
        PendingHead {
            heads: Arc::clone(self),
            id,
            evict,
            received: AtomicBool::new(false),
        }
    }

    /// Closes the oldest waiting connection if it is old enough (the
    /// process is out of descriptors); returns whether one was closed.
    pub(crate) fn evict_oldest(&self, now: Instant) -> bool {
        let oldest = Self::pop_aged(&mut self.waiting.lock(), now);
        oldest.map(|token| self.evict(token)).is_some()
    }

    /// Tells a connection taken off the list to close (outside the lock).
    fn evict(&self, token: CancellationToken) {
        token.cancel();
    }

    fn pop_aged(
        waiting: &mut VecDeque<(u64, Instant, CancellationToken)>,
        now: Instant,
    ) -> Option<CancellationToken> {
        match waiting.front() {
            Some((_, since, _)) if now.saturating_duration_since(*since) >= MIN_AGE => {
                waiting.pop_front().map(|(_, _, token)| token)
            }
            _ => None,
        }
    }

    fn remove(&self, id: u64) {
        let mut waiting = self.waiting.lock();
        // Usually near the back: the connection just arrived.
        if let Some(index) = waiting.iter().rposition(|(other, _, _)| *other == id) {
            waiting.remove(index);
        }
    }
}

impl PendingHead {
    /// The first request head arrived: the connection is no longer pending.
    pub(crate) fn head_received(&self) {
        if !self.received.swap(true, Ordering::AcqRel) {
            self.heads.remove(self.id);
        }
    }

    /// Whether the request head arrived (an eviction racing with it must
    /// not drop the request).
    pub(crate) fn is_received(&self) -> bool {
        self.received.load(Ordering::Acquire)
    }

    /// Resolves if the connection is evicted while still waiting.
    pub(crate) async fn evicted(&self) {
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

    /// Connections waiting for their head now.
    fn waiting(heads: &PendingHeads) -> usize {
        heads.waiting.lock().len()
    }

    #[test]
    fn the_oldest_aged_connection_makes_room() {
        let heads = PendingHeads::new(2);
        let start = Instant::now();
        let first = heads.admit(start);
        let second = heads.admit(start);
        assert_eq!(waiting(&heads), 2);
        // Too young to evict: a burst of real clients is never cut.
        let burst = heads.admit(start + MIN_AGE / 2);
        assert!(!first.evict.is_cancelled());
        assert_eq!(waiting(&heads), 3);
        let later = heads.admit(start + MIN_AGE);
        assert!(first.evict.is_cancelled());
        assert!(!second.evict.is_cancelled());
        assert!(!burst.evict.is_cancelled() && !later.evict.is_cancelled());
        assert_eq!(waiting(&heads), 3);
    }

    #[test]
    fn a_connection_that_sent_its_head_is_never_evicted() {
        let heads = PendingHeads::new(1);
        let start = Instant::now();
        let served = heads.admit(start);
        served.head_received();
        assert_eq!(waiting(&heads), 0);
        let next = heads.admit(start);
        let _after = heads.admit(start + MIN_AGE);
        assert!(!served.evict.is_cancelled());
        assert!(next.evict.is_cancelled());
    }

    #[test]
    fn out_of_descriptors_the_oldest_aged_one_goes() {
        let heads = PendingHeads::new(100);
        let start = Instant::now();
        let old = heads.admit(start);
        assert!(!heads.evict_oldest(start), "too young");
        assert!(heads.evict_oldest(start + MIN_AGE));
        assert!(old.evict.is_cancelled());
        assert!(!heads.evict_oldest(start + MIN_AGE), "none left");
    }

    #[test]
    fn dropping_a_connection_frees_its_place() {
        let heads = PendingHeads::new(4);
        let a = heads.admit(Instant::now());
        let _b = heads.admit(Instant::now());
        drop(a);
        assert_eq!(waiting(&heads), 1);
    }
}
