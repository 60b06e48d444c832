//! One WebSocket connection: a reader and a writer over the split socket.
//!
//! The reader owns the read half and only reads; the writer owns the write
//! half and is the only one that writes: queued events, the reader's
//! obligated pongs and close echoes (through the same queue), pings, and our
//! own close. Both run joined in one task. Neither holds a buffer while the
//! connection is idle (see `reader.rs` and `hub/conn.rs`).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rate::{RateLimit, TokenBucket, Verdict};
use super::reader::{FrameReader, Received};
use super::recovery::Recovery;
use crate::hub::conn::Receiver;
use crate::hub::{Command, ConnHandle};
use crate::metrics;
use crate::model::{Conversation, UserId};
use crate::wire::close::{self, Close};
use crate::wire::frame;
use crate::wire::protocol::{self, ErrorCode, Inbound};

/// How long we wait for the peer's Close after sending ours.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// A socket that takes no byte for this long means the client stopped
/// reading: the connection is closed (1013 if the socket still takes a close
/// frame).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close frame after a write timeout may take.
const CLOSE_ATTEMPT: Duration = Duration::from_secs(1);
/// Frames coalesced into one vectored write.
const WRITE_BATCH: usize = 64;

/// Limits and timers of a session, from the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    pub(crate) max_text_bytes: usize,
    pub(crate) max_frame_bytes: usize,
    /// Bytes of others' frames a connection may have queued before it is a
    /// slow consumer (1013).
    pub(crate) outbound_queue_bytes: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) idle_timeout: Duration,
    /// Messages per second per connection.
    pub(crate) message_rate: RateLimit,
}

/// Everything a session needs, gathered by the upgrade checks.
pub(crate) struct Session {
    pub(crate) conn_id: u64,
    pub(crate) user_id: UserId,
    pub(crate) conversation: Conversation,
    /// Set when the client asked for a replay (`since_seq`); boxed, since
    /// most connections never do.
    pub(crate) recovery: Option<Box<Recovery>>,
    pub(crate) shard: mpsc::Sender<Command>,
    pub(crate) limits: SessionLimits,
    /// Cancelled when the server shuts down: the session closes with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Held for the session's life: presence, the connection-capacity slot.
    pub(crate) guards: Box<dyn Send + Sync>,
}

impl Session {
    /// Runs the connection to its end; returns why it ended. Never panics
    /// on client input.
    pub(crate) async fn run(self, upgraded: Upgraded) -> Close {
        // Take the raw TCP stream back from hyper, so the halves need no lock
        // and hyper's read buffer is freed.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                self.serve(Prefixed::new(parts.read_buf, read), write).await
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                self.serve(read, write).await
            }
        }
    }

    async fn serve<R, W>(self, read: R, write: W) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (conn, outbound) =
            ConnHandle::new(self.conn_id, self.user_id, self.limits.outbound_queue_bytes);
        conn.touch();
        let conversation_id = self.conversation.id;
        let (recovery, recovering) = match self.recovery {
            Some(recovery) => {
                let (joined, on_join) = tokio::sync::oneshot::channel();
                (Some(Box::new((*recovery, on_join))), Some(joined))
            }
            None => (None, None),
        };
        let join = Command::Join {
            conversation: self.conversation.clone(),
            conn: conn.clone(),
            recovering,
        };
        if self.shard.send(join).await.is_err() {
            conn.close(Close::Shutdown);
        }

        let frames = FrameReader::new(read, self.limits.max_frame_bytes);
        let reader = Reader {
            conn: conn.clone(),
            shard: self.shard.clone(),
            conversation_id,
            max_text_bytes: self.limits.max_text_bytes,
            message_rate: self.limits.message_rate,
            bucket: TokenBucket::new(self.limits.message_rate, tokio::time::Instant::now()),
            others: None,
            recovery,
        };
        let mut write = write;
        // The task's future is memory per connection, and every future
        // joined here is held whole for the connection's life: keep them
        // few and small (rarely taken paths are boxed).
        let ((), why) = tokio::join!(
            reader.run(frames),
            write_loop(&mut write, outbound, &conn, &self.shutdown, self.limits),
        );
        // Leave the room before the socket closes: a client that has seen
        // the close and reconnects at once finds itself gone, so its return
        // is announced as presence.
        let _ = self
            .shard
            .send(Command::Leave {
                conversation_id,
                conn_id: self.conn_id,
            })
            .await;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, write.shutdown()).await;
        close::record(why);
        drop(self.guards);
        why
    }
}

struct Reader {
    conn: ConnHandle,
    shard: mpsc::Sender<Command>,
    conversation_id: crate::model::ConversationId,
    max_text_bytes: usize,
    message_rate: RateLimit,
    bucket: TokenBucket,
    /// The limits of `typing` and `viewed`, made at the first of them:
    /// most connections never send one, and every byte of the session's
    /// future is memory per connection.
    others: Option<Box<OtherLimits>>,
    /// The replay asked for with `since_seq`, run before the first read.
    recovery: Option<Box<(Recovery, tokio::sync::oneshot::Receiver<()>)>>,
}

struct OtherLimits {
    /// `viewed` frames: each may cost the store a write.
    view_bucket: TokenBucket,
    /// `typing` changes forwarded to the shard: the shard's queue is shared
    /// by every connection on it, so a flood must stop here.
    typing_bucket: TokenBucket,
    /// The last `typing` forwarded, and when.
    last_typing: Option<(bool, tokio::time::Instant)>,
    /// A typing change over the rate, forwarded when its timer fires (the
    /// latest wins), so the final state always arrives.
    held_typing: Option<(bool, Pin<Box<tokio::time::Sleep>>)>,
}

impl OtherLimits {
    fn new(messages: RateLimit) -> Box<Self> {
        let now = tokio::time::Instant::now();
        Box::new(OtherLimits {
            view_bucket: TokenBucket::new(view_rate(messages), now),
            typing_bucket: TokenBucket::new(TYPING_RATE, now),
            last_typing: None,
            held_typing: None,
        })
    }
}

/// Typing changes a connection may forward: a person changes state a few
/// times a second at most; beyond it changes are held and only the latest
/// is forwarded when the bucket has a token again.
const TYPING_RATE: RateLimit = RateLimit {
    rate: 10.0,
    burst: 20.0,
};
/// A repeated typing state is forwarded at most this often (the room
/// relays a repeated `true` as a heartbeat every 2 s).
const TYPING_REPEAT: Duration = Duration::from_secs(1);

/// `viewed` is cheaper than a message and a client catching up sends many:
/// ten times the message rate, the same burst.
fn view_rate(messages: RateLimit) -> RateLimit {
    RateLimit {
        rate: messages.rate * 10.0,
        burst: messages.burst,
    }
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(mut self, mut frames: FrameReader<R>) {
        // Before the first read: the client's frames wait while its replay
        // is queued (the writer drains it meanwhile). Boxed: rare.
        if let Some(recovery) = self.recovery.take() {
            let (recovery, joined) = *recovery;
            let replay = recovery.run(joined, &self.conn, &self.shard, self.conversation_id);
            Box::pin(replay).await;
        }
        let conn = self.conn.clone();
        let linger = async {
            conn.closing().await;
            tokio::time::sleep(CLOSE_LINGER).await;
        };
        tokio::pin!(linger);
        loop {
            let held = async {
                match self.others.as_mut().and_then(|o| o.held_typing.as_mut()) {
                    Some((_, timer)) => timer.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            // Backpressure: while this connection's own answers pile up
            // (the queue above its high-water mark, or too many requests in
            // flight), its socket is not read, so a client that bursts is
            // slowed instead of being closed as a slow consumer.
            // Cancel-safe: the reader consumes bytes only as whole frames,
            // and waiting for room consumes nothing.
            let received = tokio::select! {
                received = async {
                    // Boxed: rarely taken, and its waiter would otherwise
                    // be part of every idle connection's future.
                    if conn.reader_must_wait() {
                        Box::pin(conn.room_for_reader()).await;
                    }
                    frames.next().await
                } => received,
                _ = &mut linger => return,
                () = held => {
                    self.forward_held_typing().await;
                    continue;
                }
            };
            let received = match received {
                Ok(received) => received,
                Err(why) => {
                    self.conn.close(why);
                    return;
                }
            };
            self.conn.touch();
            match received {
                // Obligated answers go to the writer through the
                // connection's queue; if it is full the client is being
                // closed anyway.
                Received::Close(payload) => {
                    let _ = self.conn.send_own(frame::close_echo(payload));
                    self.conn.close(Close::Normal);
                    return;
                }
                Received::Ping(payload) => {
                    let _ = self.conn.send_own(frame::pong(payload));
                }
                Received::Pong => {}
                // After our Close only the peer's Close matters.
                Received::Message(_) if self.conn.close_requested().is_some() => {}
                Received::Message(payload) => self.handle(payload).await,
            }
        }
    }

    async fn handle(&mut self, payload: &mut [u8]) {
        let command = match protocol::parse(payload, self.max_text_bytes) {
            Err(refusal) => {
                let _ = self.conn.send_own(refusal.to_frame());
                return;
            }
            Ok(Inbound::Message { text, client_id }) => {
                let received = std::time::Instant::now();
                metrics::get().messages_received.inc();
                match self.bucket.take(tokio::time::Instant::now()) {
                    Verdict::Allowed => {}
                    Verdict::Refused => {
                        let refusal = protocol::error_event(
                            ErrorCode::RateLimited,
                            "too many messages; resend this one later",
                            client_id.as_deref(),
                        );
                        let _ = self.conn.send_own(refusal);
                        return;
                    }
                    Verdict::Abusive => {
                        self.conn.close(Close::RateLimited);
                        return;
                    }
                }
                self.conn.request_sent();
                // The room ends this user's typing with the message: a
                // change held here was typed before it, and the next
                // `true` is news again, not a repeat.
                if let Some(others) = self.others.as_mut() {
                    others.held_typing = None;
                    others.last_typing = None;
                }
                Command::Publish {
                    conversation_id: self.conversation_id,
                    conn_id: self.conn.id(),
                    sender_id: self.conn.user_id(),
                    text,
                    client_id,
                    received,
                }
            }
            Ok(Inbound::Typing { is_typing }) => {
                let now = tokio::time::Instant::now();
                let others = self
                    .others
                    .get_or_insert_with(|| OtherLimits::new(self.message_rate));
                if let Some((held, _)) = &mut others.held_typing {
                    *held = is_typing;
                    return;
                }
                let repeat = matches!(others.last_typing,
                    Some((last, at)) if last == is_typing && now < at + TYPING_REPEAT);
                if repeat {
                    return;
                }
                if others.typing_bucket.take(now) != Verdict::Allowed {
                    let retry = now + Duration::from_secs_f64(1.0 / TYPING_RATE.rate);
                    others.held_typing =
                        Some((is_typing, Box::pin(tokio::time::sleep_until(retry))));
                    return;
                }
                others.last_typing = Some((is_typing, now));
                self.typing_command(is_typing)
            }
            Ok(Inbound::Viewed { message_id }) => {
                if !self.take_view_token("too many viewed events; send the newest again later") {
                    return;
                }
                self.conn.request_sent();
                Command::View {
                    conversation_id: self.conversation_id,
                    conn_id: self.conn.id(),
                    viewer_id: self.conn.user_id(),
                    message_id,
                }
            }
            // Rate-limited with `viewed`: each may cost a write too.
            Ok(Inbound::Read { seq }) => {
                if !self.take_view_token("too many read events; send the newest again later") {
                    return;
                }
                self.conn.request_sent();
                Command::Read {
                    conversation_id: self.conversation_id,
                    conn_id: self.conn.id(),
                    user_id: self.conn.user_id(),
                    seq,
                }
            }
        };
        self.forward(command).await;
    }

    fn typing_command(&self, is_typing: bool) -> Command {
        Command::Typing {
            conversation_id: self.conversation_id,
            conn_id: self.conn.id(),
            sender_id: self.conn.user_id(),
            is_typing,
        }
    }

    /// Forwards the held typing change, unless it repeats the last one.
    async fn forward_held_typing(&mut self) {
        let Some(others) = self.others.as_mut() else {
            return;
        };
        let Some((is_typing, _)) = others.held_typing.take() else {
            return;
        };
        let now = tokio::time::Instant::now();
        // The timer waited for a token; take it (a refusal cannot happen
        // but would only skip a hint).
        let _ = others.typing_bucket.take(now);
        if others.last_typing.map(|(last, _)| last) != Some(is_typing) {
            others.last_typing = Some((is_typing, now));
            self.forward(self.typing_command(is_typing)).await;
        }
    }

    /// Takes a token of the bucket `viewed` and `read` share; when it is
    /// empty, answers `rate_limited` with `message` and returns false.
    fn take_view_token(&mut self, message: &str) -> bool {
        let others = self
            .others
            .get_or_insert_with(|| OtherLimits::new(self.message_rate));
        if others.view_bucket.take(tokio::time::Instant::now()) == Verdict::Allowed {
            return true;
        }
        let refusal = protocol::error_event(ErrorCode::RateLimited, message, None);
        let _ = self.conn.send_own(refusal);
        false
    }

    async fn forward(&self, command: Command) {
        // Waiting for room in the shard's queue is backpressure: a busy
        // shard slows this reader only. That wait is boxed, so its state is
        // not part of every idle connection's future.
        let sent = match self.shard.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => {
                Box::pin(self.shard.send(command)).await.map_err(drop)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            self.conn.close(Close::Shutdown);
        }
    }
}

/// Sends queued frames in batches (one vectored write per burst), pings, and
/// finally our Close. Returns why the connection ended.
/// Also turns the server's shutdown into our Close 1001.
async fn write_loop<W: AsyncWrite + Unpin>(
    write: &mut W,
    mut outbound: Receiver,
    conn: &ConnHandle,
    shutdown: &CancellationToken,
    limits: SessionLimits,
) -> Close {
    let mut heartbeat = Heartbeat::new(limits);
    loop {
        // Every arm is cancel-safe: `closing()` reads an atomic and a Notify
        // permit, `cancelled()` observes the token, `recv_many` and the
        // timer lose nothing when another arm wins.
        tokio::select! {
            biased;
            why = conn.closing() => {
                let last = if why == Close::Normal {
                    // The peer closed or vanished: echo its Close if the
                    // reader queued one, and send nothing else.
                    std::iter::from_fn(|| outbound.try_recv().ok()).find(|f| frame::is_close(f))
                } else {
                    Some(frame::close(why))
                };
                if let Some(last) = last {
                    let _ = timed_write(write, &[last]).await;
                }
                return why;
            }
            // The next turn takes the closing arm.
            _ = shutdown.cancelled() => conn.close(Close::Shutdown),
            // The batch is dropped after its write, so an idle connection
            // keeps no batch memory.
            mut batch = outbound.recv_many(WRITE_BATCH) => {
                let ends = batch.iter().any(|f| frame::is_close(f));
                // Already contiguous unless the queue wrapped: no copy then.
                if let Err(failed) = timed_write(write, batch.make_contiguous()).await {
                    return Box::pin(end_after_failed_write(write, conn, failed)).await;
                }
                if ends {
                    // We echoed the peer's Close; the reader has it and is done.
                    conn.close(Close::Normal);
                    return Close::Normal;
                }
            }
            () = heartbeat.timer.as_mut() => match heartbeat.due(conn, limits) {
                Due::Idle => conn.close(Close::Idle),
                Due::Ping => {
                    if let Err(failed) = timed_write(write, &[frame::ping()]).await {
                        return Box::pin(end_after_failed_write(write, conn, failed)).await;
                    }
                }
                Due::Nothing => {}
            },
        }
    }
}

/// The writer's one timer: it fires at the next ping or at the moment the
/// connection would become idle, whichever comes first, so a silent
/// connection closes at the idle timeout rather than at the first ping
/// after it. Inbound frames only store a timestamp (`ConnHandle::touch`);
/// the deadline is recomputed from it when the timer fires, so activity
/// costs no timer reset.
struct Heartbeat {
    timer: Pin<Box<tokio::time::Sleep>>,
    next_ping: tokio::time::Instant,
}

/// What the [`Heartbeat`] timer found due.
enum Due {
    Idle,
    Ping,
    Nothing,
}

impl Heartbeat {
    fn new(limits: SessionLimits) -> Self {
        let now = tokio::time::Instant::now();
        let next_ping = now + limits.ping_interval;
        Heartbeat {
            timer: Box::pin(tokio::time::sleep_until(
                next_ping.min(now + limits.idle_timeout),
            )),
            next_ping,
        }
    }

    /// Called when the timer fired: says what is due and sets the next deadline.
    fn due(&mut self, conn: &ConnHandle, limits: SessionLimits) -> Due {
        let now = tokio::time::Instant::now();
        let idle_for = conn.idle_for();
        // A paused reader is the server not listening, not an idle client;
        // its resume counts as activity, so checking again one timeout
        // later still keeps the bound.
        let paused = conn.reader_paused();
        if idle_for >= limits.idle_timeout && !paused {
            return Due::Idle;
        }
        let due = if now >= self.next_ping {
            // A late wake-up delays the pings after it, as
            // `MissedTickBehavior::Delay` did: no burst of pings.
            self.next_ping = now + limits.ping_interval;
            Due::Ping
        } else {
            Due::Nothing
        };
        let idle_left = if paused {
            limits.idle_timeout
        } else {
            limits.idle_timeout - idle_for
        };
        self.timer
            .as_mut()
            .reset(self.next_ping.min(now + idle_left));
        due
    }
}

/// Why a write did not complete.
enum WriteFailure {
    /// The socket took no byte for [`WRITE_TIMEOUT`]; `rest` is the
    /// unwritten part of the frame the write stopped in, if it stopped
    /// inside one.
    TimedOut { rest: Option<Bytes> },
    /// The socket failed (reset, broken pipe).
    Failed,
}

/// Ends the connection after a failed write. A timeout is the client not
/// reading: its close is 1013 (or the slow-consumer close asked for
/// earlier), sent after the rest of the interrupted frame if the socket
/// takes both within [`CLOSE_ATTEMPT`]. A failed socket takes nothing more.
async fn end_after_failed_write<W: AsyncWrite + Unpin>(
    write: &mut W,
    conn: &ConnHandle,
    failure: WriteFailure,
) -> Close {
    match failure {
        WriteFailure::Failed => {
            conn.close(Close::WriteFailed);
            conn.close_requested().unwrap_or(Close::WriteFailed)
        }
        WriteFailure::TimedOut { rest } => {
            conn.close(Close::WriteTimeout);
            let why = conn.close_requested().unwrap_or(Close::WriteTimeout);
            let mut last: Vec<Bytes> = rest.into_iter().collect();
            last.push(frame::close(why));
            let mut written = 0;
            let _ = write_all_vectored(write, &last, &mut written, CLOSE_ATTEMPT).await;
            why
        }
    }
}

async fn timed_write<W: AsyncWrite + Unpin>(
    write: &mut W,
    frames: &[Bytes],
) -> Result<(), WriteFailure> {
    let mut written = 0;
    // Boxed: the write and its timer exist only during a write, and one
    // small allocation per batch costs less than a system call.
    let result = Box::pin(write_all_vectored(
        write,
        frames,
        &mut written,
        WRITE_TIMEOUT,
    ))
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => Err(WriteFailure::TimedOut {
            rest: rest_of_frame(frames, written),
        }),
        Err(_) => Err(WriteFailure::Failed),
    }
}

/// The unwritten tail of the frame that `written` bytes into `frames` ends
/// inside; `None` when it ends between frames.
fn rest_of_frame(frames: &[Bytes], written: usize) -> Option<Bytes> {
    let mut start = 0;
    for frame in frames {
        let end = start + frame.len();
        if written < end {
            return (written > start).then(|| frame.slice(written - start..));
        }
        start = end;
    }
    None
}

/// Writes every frame; `written` counts the bytes the socket took, so a
/// caller that gives up knows where the stream stopped. A socket that takes
/// nothing for `stall` is a `TimedOut` error: the bound is on progress, not
/// on the whole batch, so a slow but reading client is never cut.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    write: &mut W,
    frames: &[Bytes],
    written: &mut usize,
    stall: Duration,
) -> std::io::Result<()> {
    let stalled = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut storage: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut slices = &mut storage[..];
    while !slices.is_empty() {
        let n = tokio::time::timeout(stall, write.write_vectored(slices))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *written += n;
        IoSlice::advance_slices(&mut slices, n);
    }
    tokio::time::timeout(stall, write.flush())
        .await
        .map_err(|_| stalled())?
}

/// A reader that first yields bytes hyper had already read past the
/// handshake, then the socket.
struct Prefixed<R> {
    prefix: Bytes,
    inner: R,
}

impl<R> Prefixed<R> {
    fn new(prefix: Bytes, inner: R) -> Self {
        // `prefix` is a slice of hyper's read buffer, and even an empty one
        // can keep that whole buffer alive for the connection's life: copy
        // out what is left and let the buffer go.
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&prefix)
        };
        Prefixed { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millis, ObjectId};

    #[test]
    fn the_rest_of_an_interrupted_frame_is_found() {
        let frames = [Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        assert_eq!(rest_of_frame(&frames, 0), None);
        assert_eq!(rest_of_frame(&frames, 1).as_deref(), Some(&b"bc"[..]));
        assert_eq!(rest_of_frame(&frames, 3), None);
        assert_eq!(rest_of_frame(&frames, 5).as_deref(), Some(&b"fg"[..]));
        assert_eq!(rest_of_frame(&frames, 7), None);
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            max_text_bytes: 8192,
            max_frame_bytes: 65536,
            outbound_queue_bytes: 1 << 20,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            message_rate: RateLimit::new(20, 2000),
        }
    }

    fn session(shard: mpsc::Sender<Command>) -> Session {
        Session {
            conn_id: 1,
            user_id: 1,
            conversation: Conversation {
                id: ObjectId::new(),
                lesson_id: 1,
                mentor_id: 1,
                student_id: 2,
                created_at: Millis(0),
                last_seq: 0,
            },
            recovery: None,
            shard,
            limits: limits(),
            shutdown: CancellationToken::new(),
            guards: Box::new(()),
        }
    }

    /// Every connection's task holds this future: its size is memory per
    /// connection, so it is kept in check here.
    #[tokio::test]
    async fn the_session_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (read, write) = client.into_split();
        let (shard, _commands) = mpsc::channel(1);
        let future = session(shard).serve(Prefixed::new(Bytes::new(), read), write);
        let size = std::mem::size_of_val(&future);
        eprintln!("session future: {size} bytes");
        // 1.6 KiB in a debug build when the first bound (2048) was set; the
        // per-connection limits of issue 11 (rate buckets, the held typing
        // timer's branch) took it to 2104. Release builds are smaller; the
        // idle scenario of scripts/bench.sh measures what counts.
        assert!(size <= 2176, "the session future grew to {size} bytes");
    }

    /// A session over an in-memory socket on the paused clock. Returns the
    /// client's write half, the connection's handle (from the shard's
    /// `Join`) and the frames the server sent, each with the time since the
    /// start, as (opcode, payload); the stream ends after the server's Close.
    async fn idle_session() -> (
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
        ConnHandle,
        mpsc::UnboundedReceiver<(Duration, u8, Vec<u8>)>,
    ) {
        let start = tokio::time::Instant::now();
        let (client, server) = tokio::io::duplex(1 << 16);
        let (read, write) = tokio::io::split(server);
        let (shard, mut commands) = mpsc::channel(64);
        tokio::spawn(session(shard).serve(read, write));
        let Some(Command::Join { conn, .. }) = commands.recv().await else {
            panic!("the session joins its room first");
        };
        // Keeps the shard's end open, as a live hub would.
        tokio::spawn(async move { while commands.recv().await.is_some() {} });
        let (mut from_server, to_server) = tokio::io::split(client);
        let (frames, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            // Server frames are unmasked and, here, shorter than 126 bytes.
            let mut header = [0u8; 2];
            while from_server.read_exact(&mut header).await.is_ok() {
                let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
                if from_server.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let opcode = header[0] & 0x0f;
                let _ = frames.send((start.elapsed(), opcode, payload));
                if opcode == 0x8 {
                    break;
                }
            }
        });
        (to_server, conn, received)
    }

    /// Waits for the server's Close: when it came, and the pings before it.
    async fn close_time(
        received: &mut mpsc::UnboundedReceiver<(Duration, u8, Vec<u8>)>,
    ) -> (Duration, usize) {
        let mut pings = 0;
        while let Some((at, opcode, payload)) = received.recv().await {
            match opcode {
                0x9 => pings += 1,
                0x8 => {
                    assert_eq!(payload[..2], 1001u16.to_be_bytes(), "an idle close");
                    return (at, pings);
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("no close frame");
    }

    /// Asserts that the close came within a small slack after `deadline`.
    fn assert_closed_at(at: Duration, deadline: Duration) {
        let slack = Duration::from_millis(100);
        assert!(
            at >= deadline && at <= deadline + slack,
            "closed after {at:?}, expected {deadline:?}"
        );
    }

    /// An empty masked Pong, as a client's answer to a ping.
    const PONG: [u8; 6] = [0x8a, 0x80, 0, 0, 0, 0];

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_at_the_idle_timeout() {
        let (_to_server, _conn, mut received) = idle_session().await;
        let (at, pings) = close_time(&mut received).await;
        // Not at the first ping after the timeout (75 s).
        assert_closed_at(at, limits().idle_timeout);
        assert_eq!(pings, 2, "pinged at 25 s and 50 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_last_inbound_frame() {
        let (mut to_server, _conn, mut received) = idle_session().await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        to_server.write_all(&PONG).await.unwrap();
        let (at, _) = close_time(&mut received).await;
        assert_closed_at(at, Duration::from_secs(45) + limits().idle_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_paused_by_backpressure_is_not_idle() {
        let (mut to_server, conn, mut received) = idle_session().await;
        for _ in 0..crate::hub::conn::MAX_IN_FLIGHT {
            conn.request_sent();
        }
        // The next frame is read, then the reader waits for answers.
        tokio::time::sleep(Duration::from_secs(10)).await;
        to_server.write_all(&PONG).await.unwrap();
        let paused_until = Duration::from_secs(200);
        tokio::time::sleep(paused_until - Duration::from_secs(10)).await;
        assert!(conn.reader_paused());
        assert_eq!(conn.close_requested(), None, "paused is not idle");
        conn.request_settled();
        let (at, _) = close_time(&mut received).await;
        // The resume counts as activity.
        assert_closed_at(at, paused_until + limits().idle_timeout);
    }
}
