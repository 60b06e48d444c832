//! Client-to-server frames (RFC 6455 §5), read with a buffer that exists
//! only while bytes are pending.
//!
//! An idle connection is most connections, so it holds no read buffer at
//! all: a read lands first in a buffer on the stack of the poll, and only
//! what it brought is copied to the heap. Whole frames are handed out from
//! there; a partial frame keeps its bytes (and reads straight into them)
//! until it completes, and the heap buffer is freed as soon as nothing is
//! pending. One read can bring many frames, which are then served without
//! another system call.
//!
//! Bytes are consumed only when a whole frame is there, and a read is copied
//! in within the poll that made it, so `next` is cancel-safe.
//!
//! The protocol's rules (headers, close payloads, unmasking) are pure
//! functions in `frame.rs`; this file holds the IO, the buffer and the
//! joining of fragments.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::wire::close::Close;
use crate::wire::frame::{
    check_close_payload, check_text, unmask, Header, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG,
    OP_TEXT,
};

/// The stack buffer one read lands in when nothing is pending: large enough
/// to take a burst of small frames in one system call.
const READ_CHUNK: usize = 8 * 1024;
/// The least room a read into a partial frame's buffer gets, so the next
/// frames' bytes can come along in the same read.
const MIN_READ: usize = 1024;

/// What one call to [`FrameReader::next`] yields. Payloads are unmasked and
/// borrowed from the reader until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A whole data message, its fragments joined; a text message is valid
    /// UTF-8.
    Message(&'a mut [u8]),
    /// A ping; the payload is what the pong must carry.
    Ping(&'a [u8]),
    /// A pong (only activity to us).
    Pong,
    /// A close frame whose payload is empty or a valid code and a UTF-8
    /// reason, ready to be echoed.
    Close(&'a [u8]),
}

/// Where [`Received`]'s payload lies, kept as indices so the parse loop can
/// go on mutating the reader.
enum Ready {
    Message(Range<usize>),
    /// The fragmented message now in `assembled`.
    Assembled,
    Ping(Range<usize>),
    Pong,
    Close(Range<usize>),
}

/// A fragmented message being joined.
struct Fragments {
    text: bool,
    bytes: Vec<u8>,
}

/// Reads client frames from `io`, enforcing the protocol's rules and a cap
/// on every message (a single frame or all fragments together).
pub struct FrameReader<R> {
    io: R,
    /// Bytes read and not yet consumed start at `start`; no capacity at all
    /// while nothing is pending.
    buf: Vec<u8>,
    start: usize,
    max_message: usize,
    /// A fragmented message in progress.
    fragments: Option<Fragments>,
    /// A joined fragmented message, handed out until the next call.
    assembled: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader for messages of at most `max_message` bytes.
    pub fn new(io: R, max_message: usize) -> Self {
        FrameReader {
            io,
            buf: Vec::new(),
            start: 0,
            max_message,
            fragments: None,
            assembled: Vec::new(),
        }
    }

    /// The next message or control frame. An error is the close the
    /// connection ends with: a protocol violation (1002), bad UTF-8 (1007),
    /// a message over the cap (1009, found before its payload is buffered),
    /// or 1000 when the peer went away (end of stream or a read error).
    pub async fn next(&mut self) -> Result<Received<'_>, Close> {
        // The previous call's message has been handled: release it.
        self.assembled = Vec::new();
        self.release_consumed();
        let ready = loop {
            let need = match self.parse()? {
                Ok(ready) => break ready,
                Err(need) => need,
            };
            poll_fn(|cx| self.poll_fill(cx, need)).await?;
        };
        Ok(match ready {
            Ready::Message(range) => Received::Message(&mut self.buf[range]),
            Ready::Assembled => Received::Message(&mut self.assembled[..]),
            Ready::Ping(range) => Received::Ping(&self.buf[range]),
            Ready::Pong => Received::Pong,
            Ready::Close(range) => Received::Close(&self.buf[range]),
        })
    }

    /// Consumes frames from the pending bytes until one is ready for the
    /// caller. `Ok(Err(n))`: a frame is incomplete and `n` pending bytes in
    /// all are needed to go on.
    fn parse(&mut self) -> Result<Result<Ready, usize>, Close> {
        loop {
            let pending = &self.buf[self.start..];
            let header = match Header::parse(pending)? {
                Ok(header) => header,
                Err(need) => return Ok(Err(need)),
            };
            let open = self.fragments.as_ref().map(|f| f.bytes.len());
            header.check(open, self.max_message)?;
            let total = header.header_len + header.len;
            if pending.len() < total {
                return Ok(Err(total));
            }
            let payload = self.start + header.header_len..self.start + total;
            self.start += total;
            unmask(&mut self.buf[payload.clone()], header.mask);
            match header.opcode {
                OP_PING => return Ok(Ok(Ready::Ping(payload))),
                OP_PONG => return Ok(Ok(Ready::Pong)),
                OP_CLOSE => {
                    check_close_payload(&self.buf[payload.clone()])?;
                    return Ok(Ok(Ready::Close(payload)));
                }
                OP_CONTINUATION => {
                    // `Header::check` saw the fragments in progress.
                    let Some(fragments) = self.fragments.as_mut() else {
                        return Err(Close::Protocol);
                    };
                    fragments.bytes.extend_from_slice(&self.buf[payload]);
                    if header.fin {
                        let text = fragments.text;
                        self.assembled = std::mem::take(&mut fragments.bytes);
                        self.fragments = None;
                        if text {
                            check_text(&self.assembled)?;
                        }
                        return Ok(Ok(Ready::Assembled));
                    }
                    self.release_consumed();
                }
                _ if !header.fin => {
                    self.fragments = Some(Fragments {
                        text: header.opcode == OP_TEXT,
                        bytes: self.buf[payload].to_vec(),
                    });
                    self.release_consumed();
                }
                _ => {
                    if header.opcode == OP_TEXT {
                        check_text(&self.buf[payload.clone()])?;
                    }
                    return Ok(Ok(Ready::Message(payload)));
                }
            }
        }
    }

    /// Drops consumed bytes; frees the buffer when nothing is pending.
    fn release_consumed(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Reads at least one byte more, so that `need` pending bytes fit.
    fn poll_fill(&mut self, cx: &mut Context<'_>, need: usize) -> Poll<Result<(), Close>> {
        if self.start == self.buf.len() {
            // Nothing pending: no heap buffer until bytes arrive.
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                // A reset or any read error: the peer is gone.
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Close::Normal)),
                Poll::Ready(Ok(())) => {}
            }
            let got = read.filled();
            if got.is_empty() {
                return Poll::Ready(Err(Close::Normal));
            }
            let mut buf = Vec::with_capacity(room_for(got.len(), need));
            buf.extend_from_slice(got);
            self.buf = buf;
            self.start = 0;
            return Poll::Ready(Ok(()));
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf
            .reserve(room_for(len, need).max(len + MIN_READ) - len);
        let mut read = ReadBuf::uninit(self.buf.spare_capacity_mut());
        let spare = read.filled().as_ptr();
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(Close::Normal)),
            Poll::Ready(Ok(())) => {}
        }
        // A reader may swap the `ReadBuf` for another one; then its bytes
        // are not in our buffer (tokio's `read_buf` checks the same).
        if read.filled().as_ptr() != spare {
            return Poll::Ready(Err(Close::Internal));
        }
        let got = read.filled().len();
        if got == 0 {
            return Poll::Ready(Err(Close::Normal));
        }
        // SAFETY: `poll_read` initialised the first `got` bytes of the spare
        // capacity (`ReadBuf::filled`).
        unsafe { self.buf.set_len(len + got) };
        Poll::Ready(Ok(()))
    }
}

/// The capacity to ask for with `len` pending bytes when `need` are wanted:
/// the whole frame, but at most one read chunk ahead of what has arrived, so
/// a header that announces a large frame costs memory only as its bytes
/// come in (`Vec` may round a growth up to twice its capacity).
fn room_for(len: usize, need: usize) -> usize {
    need.min(len + READ_CHUNK).max(len)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::wire::frame::{FIN, MAX_CONTROL_PAYLOAD, OP_BINARY};

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// How a test frame writes its length.
    #[derive(Clone, Copy, Debug)]
    enum Len {
        Shortest,
        Bits16,
        Bits64,
    }

    /// A client frame: masked unless `mask` is `None`.
    fn frame_with(first: u8, payload: &[u8], mask: Option<[u8; 4]>, form: Len) -> Vec<u8> {
        let mut out = vec![first];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        match form {
            Len::Shortest if len < 126 => out.push(bit | len as u8),
            Len::Shortest if len <= 0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Bits16 => {
                out.push(bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Shortest | Len::Bits64 => {
                out.push(bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let first = if fin { 0x80 } else { 0 } | opcode;
        frame_with(first, payload, Some(MASK), Len::Shortest)
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        frame(true, OP_TEXT, payload)
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    }

    /// Serves the given chunks, one per read (split if the read is
    /// smaller), then end of stream; counts reads.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
        /// The most room any read offered: what the reader had allocated
        /// for it.
        offered: usize,
    }

    impl Chunks {
        fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Chunks {
                chunks: chunks.into_iter().collect(),
                reads: 0,
                offered: 0,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            self.offered = self.offered.max(buf.remaining());
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What a reader yields, owned, until the stream ends or it closes.
    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Message(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
        End(Close),
    }

    async fn events_from(reader: &mut FrameReader<Chunks>) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = match reader.next().await {
                Ok(Received::Message(m)) => Event::Message(m.to_vec()),
                Ok(Received::Ping(p)) => Event::Ping(p.to_vec()),
                Ok(Received::Pong) => Event::Pong,
                Ok(Received::Close(p)) => Event::Close(p.to_vec()),
                Err(why) => {
                    events.push(Event::End(why));
                    return events;
                }
            };
            events.push(event);
        }
    }

    async fn events(chunks: impl IntoIterator<Item = Vec<u8>>) -> Vec<Event> {
        events_from(&mut FrameReader::new(Chunks::new(chunks), 1000)).await
    }

    async fn one(bytes: Vec<u8>) -> Vec<Event> {
        events([bytes]).await
    }

    fn message(bytes: &[u8]) -> Event {
        Event::Message(bytes.to_vec())
    }

    #[tokio::test]
    async fn lengths_in_all_three_forms() {
        for form in [Len::Shortest, Len::Bits16, Len::Bits64] {
            for len in [0, 1, 125, 126, 127, 1000] {
                let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                let bytes = frame_with(0x81, &payload, Some(MASK), form);
                assert_eq!(
                    one(bytes).await,
                    vec![message(&payload), Event::End(Close::Normal)],
                    "length {len}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_frame_split_at_every_byte_boundary() {
        let payload = vec![b'x'; 300];
        let mut stream = text(b"first");
        stream.extend(frame(true, OP_BINARY, &payload));
        stream.extend(frame(true, OP_PING, b"p"));
        // (An empty chunk would read as the end of the stream.)
        for at in 1..stream.len() {
            let chunks = [stream[..at].to_vec(), stream[at..].to_vec()];
            assert_eq!(
                events(chunks).await,
                vec![
                    message(b"first"),
                    message(&payload),
                    Event::Ping(b"p".to_vec()),
                    Event::End(Close::Normal)
                ],
                "split at {at}"
            );
        }
        // And one byte per read.
        let bytes = stream.iter().map(|b| vec![*b]);
        assert_eq!(events(bytes).await.len(), 4);
    }

    #[tokio::test]
    async fn many_frames_in_one_read_cost_one_read() {
        let mut burst = Vec::new();
        for i in 0..50 {
            burst.extend(text(format!("m{i}").as_bytes()));
        }
        let mut reader = FrameReader::new(Chunks::new([burst]), 1000);
        for i in 0..50 {
            match reader.next().await {
                Ok(Received::Message(m)) => assert_eq!(m, format!("m{i}").as_bytes()),
                other => panic!("frame {i}: {other:?}"),
            }
        }
        assert_eq!(reader.io.reads, 1);
    }

    #[tokio::test]
    async fn no_buffer_is_held_between_frames() {
        let mut stream = text(b"hello");
        let second = text(b"world");
        stream.extend_from_slice(&second[..3]);
        let mut reader = FrameReader::new(Chunks::new([stream, second[3..].to_vec()]), 1000);
        assert_eq!(reader.buf.capacity(), 0, "nothing before the first read");
        assert_eq!(
            reader.next().await,
            Ok(Received::Message(&mut b"hello".to_vec()[..]))
        );
        assert_eq!(
            reader.next().await,
            Ok(Received::Message(&mut b"world".to_vec()[..]))
        );
        assert_eq!(reader.next().await, Err(Close::Normal));
        assert_eq!(reader.buf.capacity(), 0, "released once consumed");

        // A fragmented message releases its bytes after it was handed out.
        let chunks = [
            frame(false, OP_TEXT, b"ab"),
            frame(true, OP_CONTINUATION, b"c"),
        ];
        let mut reader = FrameReader::new(Chunks::new(chunks), 1000);
        assert_eq!(
            reader.next().await,
            Ok(Received::Message(&mut b"abc".to_vec()[..]))
        );
        assert_eq!(reader.next().await, Err(Close::Normal));
        assert_eq!(reader.buf.capacity(), 0);
        assert_eq!(reader.assembled.capacity(), 0);
        assert!(reader.fragments.is_none());
    }

    #[tokio::test]
    async fn unmasked_frames_are_refused() {
        let bytes = frame_with(0x81, b"hi", None, Len::Shortest);
        assert_eq!(one(bytes).await, vec![Event::End(Close::Protocol)]);
        let pong = frame_with(0x8a, b"", None, Len::Shortest);
        assert_eq!(one(pong).await, vec![Event::End(Close::Protocol)]);
    }

    #[tokio::test]
    async fn reserved_bits_and_opcodes_are_refused() {
        for first in [0xc1, 0xa1, 0x91] {
            let bytes = frame_with(first, b"hi", Some(MASK), Len::Shortest);
            assert_eq!(
                one(bytes).await,
                vec![Event::End(Close::Protocol)],
                "{first:#x}"
            );
        }
        for opcode in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            let bytes = frame(true, opcode, b"");
            assert_eq!(
                one(bytes).await,
                vec![Event::End(Close::Protocol)],
                "{opcode:#x}"
            );
        }
    }

    #[tokio::test]
    async fn control_frames_are_short_and_final() {
        assert_eq!(
            one(frame(true, OP_PING, &[b'p'; 125])).await,
            vec![Event::Ping(vec![b'p'; 125]), Event::End(Close::Normal)]
        );
        for opcode in [OP_PING, OP_PONG, OP_CLOSE] {
            let long = frame(true, opcode, &[b'p'; 126]);
            assert_eq!(
                one(long).await,
                vec![Event::End(Close::Protocol)],
                "{opcode:#x}"
            );
            let fragmented = frame(false, opcode, b"");
            assert_eq!(
                one(fragmented).await,
                vec![Event::End(Close::Protocol)],
                "{opcode:#x}"
            );
        }
        assert_eq!(
            one(frame(true, OP_PONG, b"x")).await,
            vec![Event::Pong, Event::End(Close::Normal)]
        );
    }

    #[tokio::test]
    async fn fragments_are_joined_around_control_frames() {
        let chunks = [
            frame(false, OP_TEXT, b"Hel"),
            frame(true, OP_PING, b"1"),
            frame(false, OP_CONTINUATION, b"lo, "),
            frame(true, OP_PONG, b""),
            frame(true, OP_CONTINUATION, b"world"),
            text(b"next"),
        ];
        assert_eq!(
            events(chunks.clone()).await,
            vec![
                Event::Ping(b"1".to_vec()),
                Event::Pong,
                message(b"Hello, world"),
                message(b"next"),
                Event::End(Close::Normal)
            ]
        );
        // The same bytes in one read.
        assert_eq!(events([chunks.concat()]).await.len(), 5);
        // A binary message of empty fragments is one empty message.
        let empty = [
            frame(false, OP_BINARY, b""),
            frame(true, OP_CONTINUATION, b""),
        ];
        assert_eq!(
            events(empty).await,
            vec![message(b""), Event::End(Close::Normal)]
        );
    }

    #[tokio::test]
    async fn fragment_order_is_enforced() {
        let lone_continuation = frame(true, OP_CONTINUATION, b"x");
        assert_eq!(
            one(lone_continuation).await,
            vec![Event::End(Close::Protocol)]
        );
        let new_message_inside = [frame(false, OP_TEXT, b"a"), text(b"b")];
        assert_eq!(
            events(new_message_inside).await,
            vec![Event::End(Close::Protocol)]
        );
        let binary_inside = [frame(false, OP_TEXT, b"a"), frame(false, OP_BINARY, b"b")];
        assert_eq!(
            events(binary_inside).await,
            vec![Event::End(Close::Protocol)]
        );
    }

    #[tokio::test]
    async fn an_announced_frame_costs_memory_only_as_it_arrives() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&60_000u64.to_be_bytes());
        header.extend_from_slice(&MASK);
        let mut reader = FrameReader::new(Chunks::new([header, vec![0; 10]]), 65_536);
        assert_eq!(reader.next().await, Err(Close::Normal));
        assert!(
            reader.buf.capacity() <= 2 * (14 + 10 + READ_CHUNK),
            "{} bytes reserved for 24 received",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_closes_before_its_payload() {
        // Only the header arrives; the payload never does.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&MASK);
        let mut reader = FrameReader::new(Chunks::new([header]), 1000);
        assert_eq!(reader.next().await, Err(Close::TooBig));
        assert_eq!(reader.io.reads, 1);
        assert!(reader.buf.capacity() < 1000, "nothing reserved for it");

        assert_eq!(
            one(text(&[b'a'; 1001])).await,
            vec![Event::End(Close::TooBig)]
        );
        assert_eq!(
            one(text(&[b'a'; 1000])).await,
            vec![message(&[b'a'; 1000]), Event::End(Close::Normal)]
        );
        // The most significant bit of a 64-bit length must be zero.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(one(huge).await, vec![Event::End(Close::Protocol)]);
    }

    #[tokio::test]
    async fn fragments_are_capped_in_total() {
        let fits = [
            frame(false, OP_BINARY, &[1; 600]),
            frame(true, OP_CONTINUATION, &[2; 400]),
        ];
        assert_eq!(events(fits).await.len(), 2);
        let over = [
            frame(false, OP_BINARY, &[1; 600]),
            frame(false, OP_CONTINUATION, &[2; 400]),
            frame(true, OP_CONTINUATION, &[3; 1]),
        ];
        assert_eq!(events(over).await, vec![Event::End(Close::TooBig)]);
    }

    #[tokio::test]
    async fn text_must_be_utf8() {
        assert_eq!(
            one(text("héllo ✓".as_bytes())).await,
            vec![message("héllo ✓".as_bytes()), Event::End(Close::Normal)]
        );
        assert_eq!(
            one(text(b"\xff\xfe")).await,
            vec![Event::End(Close::InvalidData)]
        );
        // A character split across fragments is fine; a bad one is not.
        let check = "✓".as_bytes();
        let split = [
            frame(false, OP_TEXT, &check[..1]),
            frame(true, OP_CONTINUATION, &check[1..]),
        ];
        assert_eq!(
            events(split).await,
            vec![message(check), Event::End(Close::Normal)]
        );
        let bad = [
            frame(false, OP_TEXT, b"ok"),
            frame(true, OP_CONTINUATION, b"\xc3"),
        ];
        assert_eq!(events(bad).await, vec![Event::End(Close::InvalidData)]);
        // Binary messages are not checked.
        assert_eq!(
            one(frame(true, OP_BINARY, b"\xff")).await,
            vec![message(b"\xff"), Event::End(Close::Normal)]
        );
    }

    #[tokio::test]
    async fn close_frames_are_checked() {
        let empty = frame(true, OP_CLOSE, b"");
        assert_eq!(one(empty).await[0], Event::Close(Vec::new()));
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013, 3000, 4999,
        ] {
            let payload = close_payload(code, b"bye");
            assert_eq!(
                one(frame(true, OP_CLOSE, &payload)).await[0],
                Event::Close(payload),
                "{code}"
            );
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let payload = close_payload(code, b"");
            assert_eq!(
                one(frame(true, OP_CLOSE, &payload)).await,
                vec![Event::End(Close::Protocol)],
                "{code}"
            );
        }
        assert_eq!(
            one(frame(true, OP_CLOSE, &[0x03])).await,
            vec![Event::End(Close::Protocol)],
            "a one-byte close payload"
        );
        let bad_reason = close_payload(1000, b"\xff");
        assert_eq!(
            one(frame(true, OP_CLOSE, &bad_reason)).await,
            vec![Event::End(Close::InvalidData)]
        );
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_frame_is_a_disconnect() {
        let bytes = text(b"truncated");
        assert_eq!(
            one(bytes[..bytes.len() - 2].to_vec()).await,
            vec![Event::End(Close::Normal)]
        );
    }

    #[tokio::test]
    async fn a_large_frame_is_read_into_its_own_buffer() {
        let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = frame(true, OP_BINARY, &payload);
        // Sent in one piece; the first read lands on the stack (8 KiB), the
        // rest goes straight into the frame's buffer, a chunk or more a read.
        let mut reader = FrameReader::new(Chunks::new([bytes]), 65_536);
        match reader.next().await {
            Ok(Received::Message(m)) => assert_eq!(m, &payload[..]),
            other => panic!("{other:?}"),
        }
        assert!(reader.io.reads <= 60_008_usize.div_ceil(READ_CHUNK));
        assert!(reader.buf.capacity() >= payload.len());
    }

    /// Fuzz-style properties: arbitrary and frame-shaped byte streams, in
    /// arbitrary chunks. The reader never panics, never pends on a ready
    /// stream, hands out nothing over the caps, and holds bounded memory.
    mod fuzz {
        use futures_util::FutureExt;
        use proptest::prelude::*;

        use super::*;

        /// Longest frame header: 2 bytes, a 64-bit length, the mask.
        const MAX_HEADER: usize = 14;

        /// The most the read buffer may hold: a first read lands in one
        /// stack chunk; a partial frame's buffer is asked for at most its
        /// header and payload plus one read's room; `Vec` growth may double
        /// either.
        fn read_buffer_bound(max_message: usize) -> usize {
            2 * (max_message + MAX_HEADER + MIN_READ).max(READ_CHUNK)
        }

        /// A joined message is at most the cap; its `Vec` may have grown
        /// by doubling (and never below 8 bytes).
        fn fragments_bound(max_message: usize) -> usize {
            (2 * max_message).max(8)
        }

        fn check_memory(reader: &FrameReader<Chunks>, max: usize) -> Result<(), TestCaseError> {
            prop_assert!(reader.buf.capacity() <= read_buffer_bound(max));
            prop_assert!(reader.io.offered <= read_buffer_bound(max));
            if let Some(fragments) = &reader.fragments {
                prop_assert!(fragments.bytes.len() <= max);
                prop_assert!(fragments.bytes.capacity() <= fragments_bound(max));
            }
            prop_assert!(reader.assembled.len() <= max);
            prop_assert!(reader.assembled.capacity() <= fragments_bound(max));
            Ok(())
        }

        /// Reads everything `stream` yields in chunks of the given sizes.
        fn run(stream: &[u8], sizes: &[usize], max: usize) -> Result<(), TestCaseError> {
            let mut chunks = Vec::new();
            let mut rest = stream;
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                chunks.push(chunk.to_vec());
                rest = tail;
            }
            let mut reader = FrameReader::new(Chunks::new(chunks), max);
            let mut yielded = 0usize;
            loop {
                // The stream is always ready: pending would be a hang.
                let Some(next) = reader.next().now_or_never() else {
                    return Err(TestCaseError::fail("pending on a ready stream"));
                };
                match next {
                    Ok(Received::Message(m)) => prop_assert!(m.len() <= max),
                    Ok(Received::Ping(p) | Received::Close(p)) => {
                        prop_assert!(p.len() <= MAX_CONTROL_PAYLOAD)
                    }
                    Ok(Received::Pong) => {}
                    Err(_) => break,
                }
                yielded += 1;
                // Each frame takes a masked header (6 bytes) at least.
                prop_assert!(yielded * 6 <= stream.len());
                check_memory(&reader, max)?;
            }
            check_memory(&reader, max)
        }

        fn max_message() -> impl Strategy<Value = usize> {
            prop::sample::select(vec![0, 1, 125, 300, 700, 1000, 65_536])
        }

        fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
            prop::collection::vec(prop_oneof![1..16usize, 1..2_000usize, 1..40_000usize], 1..8)
        }

        /// One client frame, mostly well formed: any opcode, fin, mask or
        /// length form, payloads of text or bytes, and sometimes a length
        /// that announces more (up to 2^40) than follows.
        fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
            let opcode = prop_oneof![
                4 => prop::sample::select(vec![
                    OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
                ]),
                1 => 0u8..16,
            ];
            let payload = prop_oneof![
                6 => prop::collection::vec(any::<u8>(), 0..300),
                2 => ".{0,100}".prop_map(String::into_bytes),
                // Large and cheap to make: one byte repeated.
                1 => (0..20_000usize, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            ];
            let form = prop::sample::select(vec![Len::Shortest, Len::Bits16, Len::Bits64]);
            (
                prop::bool::weighted(0.7),
                opcode,
                prop::bool::weighted(0.95),
                payload,
                form,
                prop::option::weighted(0.1, 0u64..(1 << 40)),
                any::<u8>(),
            )
                .prop_map(|(fin, opcode, masked, payload, form, announced, rsv)| {
                    let mut first = if fin { FIN } else { 0 } | opcode;
                    if rsv < 8 {
                        first |= 0x70 & (rsv << 4);
                    }
                    let mask = masked.then_some(MASK);
                    let mut bytes = frame_with(first, &payload, mask, form);
                    if let Some(len) = announced {
                        bytes[1] = 0x80 | 127;
                        bytes.truncate(2);
                        bytes.extend_from_slice(&len.to_be_bytes());
                        bytes.extend_from_slice(&MASK);
                        bytes.extend_from_slice(&payload);
                    }
                    bytes
                })
        }

        /// A well-formed fragmented message (2 to 5 masked fragments,
        /// text or binary), so joining and its cap get exercised often.
        fn fragmented() -> impl Strategy<Value = Vec<u8>> {
            (
                any::<bool>(),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 2..6),
            )
                .prop_map(|(is_text, parts)| {
                    let last = parts.len() - 1;
                    let mut bytes = Vec::new();
                    for (i, part) in parts.iter().enumerate() {
                        let opcode = match (i, is_text) {
                            (0, true) => OP_TEXT,
                            (0, false) => OP_BINARY,
                            _ => OP_CONTINUATION,
                        };
                        bytes.extend(frame(i == last, opcode, part));
                    }
                    bytes
                })
        }

        proptest! {
            // Most such streams end at the first header: fewer cases do.
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes(
                stream in prop::collection::vec(any::<u8>(), 0..4_096),
                sizes in chunk_sizes(),
                max in max_message(),
            ) {
                run(&stream, &sizes, max)?;
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn frame_shaped_streams(
                frames in prop::collection::vec(prop_oneof![frame_bytes(), fragmented()], 0..8),
                corrupt in prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
                sizes in chunk_sizes(),
                max in max_message(),
            ) {
                let mut stream = frames.concat();
                if let (Some((at, byte)), false) = (corrupt, stream.is_empty()) {
                    let at = at.index(stream.len());
                    stream[at] = byte;
                }
                run(&stream, &sizes, max)?;
            }
        }
    }
}
