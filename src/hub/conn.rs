//! The hub's handle on one WebSocket connection: a bounded outbound queue of
//! encoded frames and a way to ask the session to close.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::model::UserId;
use crate::ws::close::Close;

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the client reads too slowly. It has been asked to
    /// close with 1013.
    SlowConsumer,
    /// The session is gone.
    Gone,
}

/// Cloned into every room the connection joins; cheap to clone.
#[derive(Clone)]
pub struct ConnHandle {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    id: u64,
    user_id: UserId,
    outbound: mpsc::Sender<Bytes>,
    /// 0 while open, else `Close::index() + 1` of the first close asked for.
    close: AtomicUsize,
    close_requested: Notify,
    /// Milliseconds since `epoch` at the last inbound frame, for the idle timeout.
    last_seen_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

impl ConnHandle {
    /// A handle and the receiving end of its outbound queue (for the session's writer).
    pub fn new(id: u64, user_id: UserId, queue: usize) -> (ConnHandle, mpsc::Receiver<Bytes>) {
        let (outbound, rx) = mpsc::channel(queue.max(1));
        let inner = ConnInner {
            id,
            user_id,
            outbound,
            close: AtomicUsize::new(0),
            close_requested: Notify::new(),
            last_seen_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        };
        (
            ConnHandle {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn user_id(&self) -> UserId {
        self.inner.user_id
    }

    /// Queues a frame without waiting. A full queue closes the connection
    /// with 1013: one slow reader never delays the shard or other readers.
    pub fn send(&self, frame: Bytes) -> Result<(), SendError> {
        match self.inner.outbound.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(Close::SlowConsumer);
                Err(SendError::SlowConsumer)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Gone),
        }
    }

    /// Asks the session to close with `why`; the first request wins.
    pub fn close(&self, why: Close) {
        let code = why.index() + 1;
        if self
            .inner
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Several futures wait (the writer, the shutdown watcher); each
            // enables its `Notified` before checking the atomic, so none misses this.
            self.inner.close_requested.notify_waiters();
        }
    }

    /// The close asked for, if any.
    pub fn close_requested(&self) -> Option<Close> {
        match self.inner.close.load(Ordering::Acquire) {
            0 => None,
            code => Close::from_index(code - 1),
        }
    }

    /// Resolves once a close has been asked for. Cancel-safe: the request
    /// lives in the atomic, and a dropped waiter loses nothing.
    pub async fn closing(&self) -> Close {
        loop {
            let notified = self.inner.close_requested.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if let Some(why) = self.close_requested() {
                return why;
            }
            notified.await;
        }
    }

    /// Records inbound activity now.
    pub fn touch(&self) {
        let ms = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last inbound frame (or since the handle was made).
    pub fn idle_for(&self) -> std::time::Duration {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        let last = self.inner.last_seen_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_asks_for_1013() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 2);
        assert_eq!(conn.send(Bytes::from_static(b"a")), Ok(()));
        assert_eq!(conn.send(Bytes::from_static(b"b")), Ok(()));
        assert_eq!(
            conn.send(Bytes::from_static(b"c")),
            Err(SendError::SlowConsumer)
        );
        assert_eq!(conn.close_requested(), Some(Close::SlowConsumer));
        assert_eq!(conn.closing().await, Close::SlowConsumer);
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        drop(rx);
        assert_eq!(conn.send(Bytes::from_static(b"d")), Err(SendError::Gone));
    }

    #[tokio::test]
    async fn every_waiter_sees_the_close() {
        let (conn, _rx) = ConnHandle::new(1, 7, 2);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.closing().await })
            })
            .collect();
        tokio::task::yield_now().await;
        conn.close(Close::Idle);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Close::Idle);
        }
    }

    #[tokio::test]
    async fn the_first_close_wins() {
        let (conn, _rx) = ConnHandle::new(1, 7, 2);
        conn.close(Close::Shutdown);
        conn.close(Close::SlowConsumer);
        assert_eq!(conn.closing().await, Close::Shutdown);
    }
}
