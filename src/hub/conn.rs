//! The hub's handle on one WebSocket connection: an outbound queue of
//! encoded frames bounded in bytes, and a way to ask the session to close.
//!
//! Frames are of two kinds. Frames caused by *others* (their messages,
//! typing, presence) are bounded: a connection whose queue passes its byte
//! capacity does not read its socket and is a slow consumer (1013). Replies
//! to the connection's *own* frames (its echo, `ack`, `error`, pong) are never
//! refused; instead the session's reader stops reading the socket while the
//! queue is above a high-water mark or too many of its requests are still in
//! flight, so a prompt client that bursts is slowed, never closed.
//!
//! The queue is a `VecDeque` under a lock rather than a channel: an idle
//! connection is the common case, and an empty `VecDeque` holds no memory,
//! where a tokio channel allocates its first block of slots up front. The
//! writer takes a whole burst at once, which leaves the queue empty again.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::model::UserId;
use crate::wire::close::Close;

/// Bytes charged per queued frame on top of its length: its slot and the
/// shared buffer's header, so a flood of tiny frames is bounded too.
const FRAME_OVERHEAD: usize = 64;
/// Requests (messages, views) the reader may have handed to the hub whose
/// answer has not been queued yet; beyond it the reader waits.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue is full: the client reads too slowly. It has been asked to
    /// close with 1013.
    SlowConsumer,
    /// The session is gone.
    Gone,
}

/// The queue is empty (from [`Receiver::try_recv`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Empty;

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
    /// Bytes the queue may hold before the connection is a slow consumer.
    capacity: usize,
    /// Above this many queued bytes the reader stops reading the socket.
    high_water: usize,
    /// Bytes charged for the queued frames. Written only under the
    /// `outbound` lock; an atomic so the reader's check before every frame
    /// takes no lock.
    queued_bytes: AtomicUsize,
    /// Requests handed to the hub and not yet answered.
    in_flight: AtomicUsize,
    /// Wakes a reader waiting for room (see [`ConnHandle::room_for_reader`]).
    reader_room: Notify,
    /// True while the reader waits for room: the client is not idle then,
    /// the server is not listening.
    reader_paused: AtomicBool,
    /// 0 while open, else `Close::index() + 1` of the first close asked for.
    close: AtomicUsize,
    close_requested: Notify,
    /// Milliseconds since `epoch` at the last inbound frame, for the idle timeout.
    last_seen_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

struct Outbound {
    frames: VecDeque<Bytes>,
    /// Per frame of `frames`: a reply to the connection's own frame.
    own: VecDeque<bool>,
    /// Bytes charged for the frames caused by others: the slow-consumer bound.
    others: usize,
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

fn cost(frame: &Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

impl ConnHandle {
    /// A handle and the receiving end of its outbound queue (for the
    /// session's writer); `capacity` is in bytes.
    pub fn new(id: u64, user_id: UserId, capacity: usize) -> (ConnHandle, Receiver) {
        let capacity = capacity.max(FRAME_OVERHEAD);
        let inner = Arc::new(ConnInner {
            id,
            user_id,
            outbound: Mutex::new(Outbound {
                frames: VecDeque::new(),
                own: VecDeque::new(),
                others: 0,
                writer: None,
                open: true,
            }),
            capacity,
            // A quarter: own replies past it (answers to requests already in
            // flight) still leave most of the queue to others' frames.
            high_water: capacity / 4,
            queued_bytes: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            reader_room: Notify::new(),
            reader_paused: AtomicBool::new(false),
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

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn user_id(&self) -> UserId {
        self.inner.user_id
    }

    /// Queues a frame caused by someone else, without waiting. A full queue
    /// closes the connection with 1013: one slow reader never delays the
    /// shard or other readers.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), SendError> {
        self.push(frame, true)
    }

    /// Queues a reply to this connection's own frame (its echo, `ack`,
    /// `error`, pong). Never a slow-consumer close: the reader's
    /// backpressure bounds these.
    pub(crate) fn send_own(&self, frame: Bytes) -> Result<(), SendError> {
        self.push(frame, false)
    }

    fn push(&self, frame: Bytes, bounded: bool) -> Result<(), SendError> {
        let writer = {
            let mut outbound = self.inner.outbound.lock();
            if !outbound.open {
                return Err(SendError::Gone);
            }
            let cost = cost(&frame);
            if bounded {
                // Only others' frames count: the own replies are bounded by
                // the reader's backpressure instead.
                if outbound.others + cost > self.inner.capacity {
                    drop(outbound);
                    self.close(Close::SlowConsumer);
                    return Err(SendError::SlowConsumer);
                }
                outbound.others += cost;
            }
            self.inner.queued_bytes.fetch_add(cost, Ordering::Release);
            outbound.frames.push_back(frame);
            outbound.own.push_back(!bounded);
            outbound.writer.take()
        };
        // Woken outside the lock, so the writer never waits for it.
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// The reader handed a request to the hub; its answer is owed.
    pub(crate) fn request_sent(&self) {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's answer was queued (or the request ended without one).
    pub(crate) fn request_settled(&self) {
        let before = self
            .inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before == MAX_IN_FLIGHT {
            self.inner.reader_room.notify_one();
        }
    }

    /// Whether [`ConnHandle::room_for_reader`] would wait now.
    pub(crate) fn reader_must_wait(&self) -> bool {
        self.inner.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT
            || self.inner.queued_bytes.load(Ordering::Acquire) > self.inner.high_water
    }

    /// Resolves when the reader may read the next frame: the queue is below
    /// its high-water mark and fewer than [`MAX_IN_FLIGHT`] requests wait
    /// for answers. Cancel-safe.
    pub(crate) async fn room_for_reader(&self) {
        if !self.reader_must_wait() {
            return;
        }
        loop {
            let notified = self.inner.reader_room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drain in between still wakes us.
            notified.as_mut().enable();
            if !self.reader_must_wait() {
                break;
            }
            self.inner.reader_paused.store(true, Ordering::Release);
            notified.await;
        }
        self.inner.reader_paused.store(false, Ordering::Release);
        // The pause was the server's: the client's silence during it does
        // not count toward the idle timeout.
        self.touch();
    }

    /// Whether the reader is waiting for room (the idle timeout does not
    /// apply: it is the server that is not listening).
    pub(crate) fn reader_paused(&self) -> bool {
        self.inner.reader_paused.load(Ordering::Acquire)
    }

    /// Asks the session to close with `why`; the first request wins.
    pub(crate) fn close(&self, why: Close) {
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
    pub(crate) fn close_requested(&self) -> Option<Close> {
        match self.inner.close.load(Ordering::Acquire) {
            0 => None,
            code => Close::from_index(code - 1),
        }
    }

    /// Resolves once a close has been asked for. Cancel-safe: the request
    /// lives in the atomic, and a dropped waiter loses nothing.
    pub(crate) async fn closing(&self) -> Close {
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
    pub(crate) fn touch(&self) {
        let ms = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last inbound frame (or since the handle was made).
    pub(crate) fn idle_for(&self) -> std::time::Duration {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        let last = self.inner.last_seen_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

impl Receiver {
    /// Takes `taken` bytes (`others` of them others' frames) off the charge
    /// of frames just removed, under the `outbound` lock; true when the
    /// queue fell to the high-water mark, so a waiting reader must be woken.
    fn uncharge(&self, outbound: &mut Outbound, taken: usize, others: usize) -> bool {
        outbound.others -= others;
        let before = self.inner.queued_bytes.fetch_sub(taken, Ordering::Release);
        before > self.inner.high_water && before - taken <= self.inner.high_water
    }

    /// The next queued frame, if any, without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<Bytes, Empty> {
        let mut outbound = self.inner.outbound.lock();
        let frame = outbound.frames.pop_front().ok_or(Empty)?;
        let own = outbound.own.pop_front().unwrap_or(true);
        let others = if own { 0 } else { cost(&frame) };
        let crossed = self.uncharge(&mut outbound, cost(&frame), others);
        drop(outbound);
        if crossed {
            self.inner.reader_room.notify_one();
        }
        Ok(frame)
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
    pub(crate) async fn recv_many(&mut self, max: usize) -> VecDeque<Bytes> {
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
            let (batch, own) = if outbound.frames.len() <= max {
                // The whole queue, and its allocation with it: an idle
                // connection's queue holds no memory after a burst.
                (
                    std::mem::take(&mut outbound.frames),
                    std::mem::take(&mut outbound.own),
                )
            } else {
                (
                    outbound.frames.drain(..max).collect(),
                    outbound.own.drain(..max).collect(),
                )
            };
            let (mut taken, mut taken_others) = (0, 0);
            for (frame, own) in batch.iter().zip(&own) {
                taken += cost(frame);
                if !own {
                    taken_others += cost(frame);
                }
            }
            let crossed = self.uncharge(&mut outbound, taken, taken_others);
            drop(outbound);
            if crossed {
                self.inner.reader_room.notify_one();
            }
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
            self.inner.queued_bytes.store(0, Ordering::Release);
            outbound.others = 0;
            outbound.own = VecDeque::new();
            std::mem::take(&mut outbound.frames)
        };
        // Freed outside the lock.
        drop(frames);
        // A reader waiting for room must not wait for a writer that is gone.
        self.inner.reader_room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The charge of a one-byte frame.
    const ONE: usize = 1 + FRAME_OVERHEAD;

    #[tokio::test]
    async fn a_full_queue_asks_for_1013() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 2 * ONE);
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
        let (conn, _rx) = ConnHandle::new(1, 7, 2 * ONE);
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
        let (conn, _rx) = ConnHandle::new(1, 7, 2 * ONE);
        conn.close(Close::Shutdown);
        conn.close(Close::SlowConsumer);
        assert_eq!(conn.closing().await, Close::Shutdown);
    }

    fn queued_capacity(conn: &ConnHandle) -> usize {
        conn.inner.outbound.lock().frames.capacity()
    }

    #[tokio::test]
    async fn the_queue_holds_memory_only_while_frames_wait() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16 * ONE);
        assert_eq!(queued_capacity(&conn), 0, "nothing before the first frame");
        conn.send(Bytes::from_static(b"a")).unwrap();
        conn.send(Bytes::from_static(b"b")).unwrap();
        assert!(queued_capacity(&conn) > 0);
        let batch = rx.recv_many(64).await;
        assert_eq!(batch, [&b"a"[..], &b"b"[..]]);
        assert_eq!(queued_capacity(&conn), 0, "the writer took the allocation");
        assert_eq!(conn.inner.outbound.lock().own.capacity(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_at_most_max_frames_in_order() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16 * ONE);
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
        let (conn, mut rx) = ConnHandle::new(1, 7, 2 * ONE);
        conn.send(Bytes::from_static(b"a")).unwrap();
        conn.send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(rx.recv_many(64).await.len(), 2);
        assert_eq!(conn.send(Bytes::from_static(b"c")), Ok(()));
        assert_eq!(conn.close_requested(), None);
    }

    #[tokio::test]
    async fn a_parked_writer_wakes_for_a_frame() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 16 * ONE);
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
        let (conn, rx) = ConnHandle::new(1, 7, 16 * ONE);
        let frame = Bytes::from(vec![1u8; 100]);
        conn.send(frame.clone()).unwrap();
        drop(rx);
        assert_eq!(queued_capacity(&conn), 0);
        assert!(frame.is_unique(), "the queued copy was dropped");
        assert_eq!(conn.send(frame), Err(SendError::Gone));
    }

    #[tokio::test]
    async fn own_replies_are_never_a_slow_consumer() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 2 * ONE);
        for _ in 0..100 {
            assert_eq!(conn.send_own(Bytes::from_static(b"a")), Ok(()));
        }
        assert_eq!(conn.close_requested(), None);
        // Nor do they take others' room: two of theirs still fit.
        assert_eq!(conn.send(Bytes::from_static(b"b")), Ok(()));
        assert_eq!(conn.send(Bytes::from_static(b"c")), Ok(()));
        assert_eq!(
            conn.send(Bytes::from_static(b"d")),
            Err(SendError::SlowConsumer)
        );
        assert_eq!(rx.recv_many(1000).await.len(), 102);
    }

    #[tokio::test]
    async fn the_reader_waits_above_high_water_until_the_writer_drains() {
        let (conn, mut rx) = ConnHandle::new(1, 7, 8 * ONE);
        // High water is a quarter: two one-byte frames.
        conn.send_own(Bytes::from_static(b"a")).unwrap();
        conn.send_own(Bytes::from_static(b"b")).unwrap();
        tokio::time::timeout(std::time::Duration::from_millis(50), conn.room_for_reader())
            .await
            .expect("at high water the reader may still read");
        conn.send_own(Bytes::from_static(b"c")).unwrap();
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.room_for_reader().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "above high water the reader waits");
        assert!(conn.reader_paused());
        assert_eq!(rx.recv_many(64).await.len(), 3);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("a drain wakes the reader")
            .unwrap();
        assert!(!conn.reader_paused());
    }

    #[tokio::test]
    async fn the_reader_waits_while_too_many_requests_are_in_flight() {
        let (conn, _rx) = ConnHandle::new(1, 7, 16 * ONE);
        for _ in 0..MAX_IN_FLIGHT {
            conn.request_sent();
        }
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.room_for_reader().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        conn.request_settled();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("an answer wakes the reader")
            .unwrap();
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_not_frames() {
        let (conn, _rx) = ConnHandle::new(1, 7, 4096);
        let big = Bytes::from(vec![0u8; 3000]);
        conn.send(big.clone()).unwrap();
        assert_eq!(conn.send(big), Err(SendError::SlowConsumer));
    }
}
