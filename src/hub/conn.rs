//! The hub's handle on one WebSocket connection: a bounded outbound queue of
//! encoded frames and a way to ask the session to close.
//!
//! The queue is a `VecDeque` under a lock rather than a channel: an idle
//! connection is the common case, and an empty `VecDeque` holds no memory,
//! where a tokio channel allocates its first block of slots up front. The
//! writer takes a whole burst at once, which leaves the queue empty again.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

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

/// The queue is empty (from [`Receiver::try_recv`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// Cloned into every room the connection joins; cheap to clone.
#[derive(Clone)]
pub struct ConnHandle {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    id: u64,
    user_id: UserId,
    /// Held only to push or take frames, never across an `.await`, so a
    /// plain mutex is the right tool.
    outbound: Mutex<Outbound>,
    /// Frames the queue may hold before the connection is a slow consumer.
    capacity: usize,
    /// 0 while open, else `Close::index() + 1` of the first close asked for.
    close: AtomicUsize,
    close_requested: Notify,
    /// Milliseconds since `epoch` at the last inbound frame, for the idle timeout.
    last_seen_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

struct Outbound {
    frames: VecDeque<Bytes>,
    /// The writer, parked until a frame arrives.
    writer: Option<Waker>,
    /// False once the session's [`Receiver`] is dropped.
    open: bool,
}

/// The writer's end of a connection's queue. Dropping it (the session
/// ended) makes every later send `Gone` and frees what was queued.
pub struct Receiver {
    inner: Arc<ConnInner>,
}

impl ConnHandle {
    /// A handle and the receiving end of its outbound queue (for the session's writer).
    pub fn new(id: u64, user_id: UserId, queue: usize) -> (ConnHandle, Receiver) {
        let inner = Arc::new(ConnInner {
            id,
            user_id,
            outbound: Mutex::new(Outbound {
                frames: VecDeque::new(),
                writer: None,
                open: true,
            }),
            capacity: queue.max(1),
            close: AtomicUsize::new(0),
            close_requested: Notify::new(),
            last_seen_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        });
        let receiver = Receiver {
            inner: Arc::clone(&inner),
        };
        (ConnHandle { inner }, receiver)
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
        let writer = {
            let mut outbound = self.inner.outbound.lock();
            if !outbound.open {
                return Err(SendError::Gone);
            }
            if outbound.frames.len() >= self.inner.capacity {
                drop(outbound);
                self.close(Close::SlowConsumer);
                return Err(SendError::SlowConsumer);
            }
            outbound.frames.push_back(frame);
            outbound.writer.take()
        };
        // Woken outside the lock, so the writer never waits for it.
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
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

impl Receiver {
    /// The next queued frame, if any, without waiting.
    pub fn try_recv(&mut self) -> Result<Bytes, Empty> {
        self.inner.outbound.lock().frames.pop_front().ok_or(Empty)
    }

    /// Waits for the next frame.
    pub async fn recv(&mut self) -> Bytes {
        let mut one = self.recv_many(1).await;
        // `recv_many` returns at least one frame.
        one.pop_front().unwrap_or_default()
    }

    /// Waits until frames are queued, then takes up to `max` of them (at
    /// least one). Cancel-safe: frames are taken only in the poll that
    /// returns them.
    pub async fn recv_many(&mut self, max: usize) -> VecDeque<Bytes> {
        let max = max.max(1);
        poll_fn(|cx| {
            let mut outbound = self.inner.outbound.lock();
            if outbound.frames.is_empty() {
                // Registered under the lock that `send` pushes under, so no
                // frame slips in between the check and the registration.
                match &mut outbound.writer {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => outbound.writer = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            let batch = if outbound.frames.len() <= max {
                // The whole queue, and its allocation with it: an idle
                // connection's queue holds no memory after a burst.
                std::mem::take(&mut outbound.frames)
            } else {
                outbound.frames.drain(..max).collect()
            };
            Poll::Ready(batch)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let frames = {
            let mut outbound = self.inner.outbound.lock();
            outbound.open = false;
            outbound.writer = None;
            std::mem::take(&mut outbound.frames)
        };
        // Freed outside the lock.
        drop(frames);
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
        assert_eq!(rx.recv().await, &b"a"[..]);
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

    fn queued_capacity(conn: &ConnHandle) -> usize {
        conn.inner.outbound.lock().frames.capacity()
    }

    #[tokio::test]
    async fn the_queue_holds_memory_only_while_frames_wait() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16);
        assert_eq!(queued_capacity(&conn), 0, "nothing before the first frame");
        conn.send(Bytes::from_static(b"a")).unwrap();
        conn.send(Bytes::from_static(b"b")).unwrap();
        assert!(queued_capacity(&conn) > 0);
        let batch = rx.recv_many(64).await;
        assert_eq!(batch, [&b"a"[..], &b"b"[..]]);
        assert_eq!(queued_capacity(&conn), 0, "the writer took the allocation");
    }

    #[tokio::test]
    async fn a_batch_is_at_most_max_frames_in_order() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16);
        for i in 0..5u8 {
            conn.send(Bytes::from(vec![i])).unwrap();
        }
        let first = rx.recv_many(3).await;
        assert_eq!(first, [&[0u8][..], &[1], &[2]]);
        let rest = rx.recv_many(3).await;
        assert_eq!(rest, [&[3u8][..], &[4]]);
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn taken_frames_free_their_slots() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 2);
        conn.send(Bytes::from_static(b"a")).unwrap();
        conn.send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(rx.recv_many(64).await.len(), 2);
        assert_eq!(conn.send(Bytes::from_static(b"c")), Ok(()));
        assert_eq!(conn.close_requested(), None);
    }

    #[tokio::test]
    async fn a_parked_writer_wakes_for_a_frame() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16);
        let writer = tokio::spawn(async move { rx.recv_many(64).await });
        // Let the writer park on the empty queue first.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        conn.send(Bytes::from_static(b"wake")).unwrap();
        assert_eq!(writer.await.unwrap(), [&b"wake"[..]]);
    }

    #[tokio::test]
    async fn a_dropped_receiver_frees_its_frames_and_refuses_more() {
        let (conn, rx) = ConnHandle::new(1, 7, 16);
        let frame = Bytes::from(vec![1u8; 100]);
        conn.send(frame.clone()).unwrap();
        drop(rx);
        assert_eq!(queued_capacity(&conn), 0);
        assert!(frame.is_unique(), "the queued copy was dropped");
        assert_eq!(conn.send(frame), Err(SendError::Gone));
    }
}
