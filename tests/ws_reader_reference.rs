//! The frame reader (`src/ws/reader.rs`) against a reference decoder:
//! tungstenite's, reading as a server reads a client, with the same cap on
//! a frame and on a message, fed the same bytes in the same arbitrary
//! chunks.
//!
//! - Valid streams (text and binary messages, fragmented at any byte,
//!   pings and pongs between fragments, any mask, every length form, a
//!   close at the end): both decoders hand out exactly the messages the
//!   stream was made of.
//! - Valid streams with one thing broken, and garbage: both end the same
//!   way after the same messages, except where we differ on purpose
//!   (`agree` lists each difference and why).
//! - Always: our reader never panics, never pends on a stream that has
//!   bytes or its end ready, and holds no more heap than its cap allows,
//!   however long the stream.
//!
//! tungstenite comes through `tokio_tungstenite::tungstenite` (the test
//! client's), so it is the very build the lock file already has.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use chat_service::wire::close::Close;
use chat_service::ws::reader::FrameReader;
use common::frames::{
    close_payload, frame_with, step, End, Event, Len, Outcome, FIN, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::sample::Index;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------
// What the reader holds: the heap of the thread it runs on.

/// The system allocator, counting each thread's live heap bytes and their
/// peak, so a test sees what the reader holds while it reads (other tests'
/// threads do not count).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes straight to `System` with the caller's arguments;
// the counters are const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How far this thread's live heap rose above its level at the start of `f`.
fn peak_growth(f: impl FnOnce()) -> usize {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    f();
    usize::try_from(PEAK.with(Cell::get) - start).unwrap_or(0)
}

/// The most heap the reader may hold with a cap of `max`: its read buffer
/// (one read, or a partial frame plus a read's room: header, payload and
/// 1 KiB, at least the 8 KiB a read lands in) and a fragmented message
/// being joined (at most the cap); `Vec` growth may double either.
fn memory_bound(max: usize) -> usize {
    2 * (max + 14 + 1024).max(8 * 1024) + 2 * max.max(8)
}

// ---------------------------------------------------------------------------
// The stream, as both decoders see it.

/// A client's bytes as a socket delivers them: a chunk of each size in
/// turn (cycling), a chunk split further when a read has less room, then
/// the end of the stream. Writes (tungstenite's pongs and close replies)
/// go nowhere.
struct Chunked<'a> {
    rest: &'a [u8],
    sizes: &'a [usize],
    next: usize,
    left_in_chunk: usize,
}

impl<'a> Chunked<'a> {
    fn new(stream: &'a [u8], sizes: &'a [usize]) -> Self {
        Chunked {
            rest: stream,
            sizes,
            next: 0,
            left_in_chunk: 0,
        }
    }

    /// The next bytes for a read with `room` bytes of room; empty at the end.
    fn take(&mut self, room: usize) -> &'a [u8] {
        if self.left_in_chunk == 0 {
            self.left_in_chunk = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
        }
        let n = self.left_in_chunk.min(room).min(self.rest.len());
        self.left_in_chunk -= n;
        let (chunk, rest) = self.rest.split_at(n);
        self.rest = rest;
        chunk
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let chunk = self.take(buf.remaining());
        buf.put_slice(chunk);
        Poll::Ready(Ok(()))
    }
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let chunk = self.take(buf.len());
        buf[..chunk.len()].copy_from_slice(chunk);
        Ok(chunk.len())
    }
}

impl std::io::Write for Chunked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The two decoders.

/// Our reader's outcome; fails if it pends on the ready stream or holds
/// more than [`memory_bound`].
fn ours(stream: &[u8], sizes: &[usize], max: usize) -> Result<Outcome, TestCaseError> {
    let mut pended = false;
    // First without keeping anything, so the heap's peak is the reader's.
    let held = peak_growth(|| {
        let mut reader = FrameReader::new(Chunked::new(stream, sizes), max);
        loop {
            match reader.next().now_or_never() {
                Some(Ok(_)) => {}
                Some(Err(_)) => break,
                None => {
                    pended = true;
                    break;
                }
            }
        }
    });
    prop_assert!(!pended, "pending on a ready stream");
    prop_assert!(
        held <= memory_bound(max),
        "{held} bytes held with a cap of {max} (bound {})",
        memory_bound(max)
    );
    let mut reader = FrameReader::new(Chunked::new(stream, sizes), max);
    let mut events = Vec::new();
    loop {
        let Some(next) = reader.next().now_or_never() else {
            return Err(TestCaseError::fail("pending on a ready stream"));
        };
        match step(next) {
            Ok(event) => events.push(event),
            Err(end) => return Ok(Outcome::new(events, end)),
        }
    }
}

/// tungstenite's outcome, its errors mapped to the close we would send.
fn theirs(stream: &[u8], sizes: &[usize], max: usize) -> Outcome {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let io = Chunked::new(stream, sizes);
    let mut ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
    let mut events = Vec::new();
    let end = loop {
        match ws.read() {
            Ok(Message::Text(text)) => events.push(Event::Message(text.as_bytes().to_vec())),
            Ok(Message::Binary(bytes)) => events.push(Event::Message(bytes.to_vec())),
            Ok(Message::Ping(payload)) => events.push(Event::Ping(payload.to_vec())),
            Ok(Message::Pong(_)) => events.push(Event::Pong),
            Ok(Message::Close(None)) => break End::Closed(Vec::new()),
            // What tungstenite hands out instead of a close code no peer
            // may send; it answers 1002. (A peer could send this very
            // frame; the generators never write this reason.)
            Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::Protocol,
                reason,
            }))) if reason == "Protocol violation" => break End::Ended(Close::Protocol),
            Ok(Message::Close(Some(frame))) => {
                break End::Closed(close_payload(frame.code.into(), frame.reason.as_bytes()))
            }
            Ok(Message::Frame(_)) => unreachable!("`read` hands out messages, not frames"),
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                break End::Ended(Close::Normal)
            }
            Err(Error::Protocol(_)) => break End::Ended(Close::Protocol),
            Err(Error::Utf8(_)) => break End::Ended(Close::InvalidData),
            Err(Error::Capacity(_)) => break End::Ended(Close::TooBig),
            Err(other) => panic!("tungstenite: {other}"),
        }
    };
    Outcome::new(events, end)
}

/// An outcome in a line: event kinds and sizes, not 64 KiB of payload.
fn brief(outcome: &Outcome) -> String {
    let events: Vec<String> = outcome
        .events
        .iter()
        .map(|event| match event {
            Event::Message(m) => format!("message({})", m.len()),
            Event::Ping(p) => format!("ping({})", p.len()),
            Event::Pong => "pong".to_string(),
        })
        .collect();
    format!("[{}] then {:?}", events.join(", "), outcome.end)
}

fn mismatch(ours: &Outcome, theirs: &Outcome) -> TestCaseError {
    TestCaseError::fail(format!(
        "ours:   {}\ntheirs: {}",
        brief(ours),
        brief(theirs)
    ))
}

fn same(ours: &Outcome, theirs: &Outcome) -> Result<(), TestCaseError> {
    if ours != theirs {
        return Err(mismatch(ours, theirs));
    }
    Ok(())
}

/// Bytes that complete whatever frame a stream ends in and then form only
/// pongs: 0x8A is FIN + pong, and as a second byte "masked, 10 bytes", so
/// from any offset the rest parses as 16-byte pongs. `max` plus a header
/// covers any frame tungstenite waits for (it refuses longer ones at once).
fn padding(max: usize) -> Vec<u8> {
    vec![0x8A; max + 14 + 16]
}

/// Whether our outcome is the reference's, or differs only where we differ
/// on purpose. `stream`, `sizes` and `max` are what both decoders read.
fn agree(
    ours: &Outcome,
    theirs: &Outcome,
    stream: &[u8],
    sizes: &[usize],
    max: usize,
) -> Result<(), TestCaseError> {
    if ours == theirs {
        return Ok(());
    }
    match (&ours.end, &theirs.end) {
        // We judge a header as soon as it is whole and refuse a frame
        // before reading its payload; tungstenite checks all but the
        // opcode and the length once the payload is in. When the stream
        // ends inside such a frame it sees only the end. Completed (with
        // `padding`), the frame must be refused alike.
        (End::Ended(Close::Protocol | Close::TooBig), End::Ended(Close::Normal)) => {
            let padded = theirs_padded(stream, sizes, max);
            if ours.events != padded.events || !same_class(&ours.end, &padded.end) {
                return Err(mismatch(ours, &padded));
            }
            Ok(())
        }
        // A frame over the cap that also breaks a rule (reserved bits, no
        // mask, a control frame over 125 bytes, a misplaced continuation,
        // a 64-bit length with its top bit set, which RFC 6455 §5.2
        // forbids and tungstenite reads as a length): tungstenite checks
        // the length first; we check the rules first (1002, not 1009), so
        // the close tells a client what it did wrong.
        (End::Ended(Close::Protocol), End::Ended(Close::TooBig))
            if ours.events == theirs.events =>
        {
            Ok(())
        }
        // tungstenite checks a text message's UTF-8 fragment by fragment
        // and fails at the first bad fragment; we check the message once
        // it is whole, answering the pings between its fragments until
        // then (RFC 6455 §8.1 asks for a failed connection, not when;
        // Autobahn's 6.4.x rates failing at the end "non-strict", not
        // failed). So we may go on past tungstenite's end with control
        // frames, end on a later error or a close, or at the stream's end,
        // but must never hand out the message. This also covers a close
        // frame with both a bad code and a bad reason: tungstenite reads
        // the reason first (1007), we the code (1002).
        (_, End::Ended(Close::InvalidData))
            if ours.events.starts_with(&theirs.events)
                && ours.events[theirs.events.len()..]
                    .iter()
                    .all(|event| !matches!(event, Event::Message(_))) =>
        {
            Ok(())
        }
        // 1014 (bad gateway) was registered by IANA after RFC 6455;
        // tungstenite 0.27 does not know it and answers 1002, we accept it
        // like 1012 and 1013.
        (End::Closed(payload), End::Ended(Close::Protocol))
            if payload.starts_with(&1014u16.to_be_bytes()) && ours.events == theirs.events =>
        {
            Ok(())
        }
        _ => Err(mismatch(ours, theirs)),
    }
}

/// tungstenite's outcome on the stream followed by [`padding`].
fn theirs_padded(stream: &[u8], sizes: &[usize], max: usize) -> Outcome {
    let mut padded = stream.to_vec();
    padded.extend(padding(max));
    theirs(&padded, sizes, max)
}

/// Refusals of one class: 1002 and 1009 are one class for a frame that is
/// both too long and against a rule (see `agree`).
fn same_class(ours: &End, theirs: &End) -> bool {
    ours == theirs
        || matches!(
            (ours, theirs),
            (End::Ended(Close::Protocol), End::Ended(Close::TooBig))
        )
}

// ---------------------------------------------------------------------------
// Streams.

/// One client frame before it is encoded, so a test can break it.
#[derive(Clone, Debug)]
struct Spec {
    first: u8,
    payload: Vec<u8>,
    mask: Option<[u8; 4]>,
    form: Len,
    /// Sets the top bit of a 64-bit length (RFC 6455 §5.2: must be 0).
    top_bit: bool,
}

impl Spec {
    fn encode(&self, out: &mut Vec<u8>) {
        let form = if self.top_bit { Len::Bits64 } else { self.form };
        let start = out.len();
        out.extend(frame_with(self.first, &self.payload, self.mask, form));
        if self.top_bit {
            out[start + 2] |= 0x80;
        }
    }
}

fn encode(specs: &[Spec]) -> Vec<u8> {
    let mut out = Vec::new();
    for spec in specs {
        spec.encode(&mut out);
    }
    out
}

/// `len` bytes from `seed` (xorshift): payloads of any size, cheap to make
/// and to shrink.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Exactly `len` bytes of UTF-8, with characters of one to four bytes.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const CHARS: [&str; 6] = ["a", "Z", " ", "é", "✓", "😀"];
    let mut out = String::with_capacity(len);
    for pick in bytes(len, seed) {
        let c = CHARS[usize::from(pick) % CHARS.len()];
        if out.len() + c.len() > len {
            break;
        }
        out.push_str(c);
    }
    while out.len() < len {
        out.push('a');
    }
    out.into_bytes()
}

/// How a frame is masked and its length written.
fn framing() -> impl Strategy<Value = ([u8; 4], Len)> {
    let form = prop_oneof![
        6 => Just(Len::Shortest),
        1 => Just(Len::Bits16),
        1 => Just(Len::Bits64),
    ];
    (any::<[u8; 4]>(), form)
}

fn spec(first: u8, payload: Vec<u8>, (mask, form): ([u8; 4], Len)) -> Spec {
    Spec {
        first,
        payload,
        mask: Some(mask),
        form,
        top_bit: false,
    }
}

/// A ping or a pong of up to 125 bytes.
fn control() -> impl Strategy<Value = (Spec, Event)> {
    (any::<bool>(), 0..=125usize, any::<u64>(), framing()).prop_map(
        |(is_ping, len, seed, framing)| {
            let payload = bytes(len, seed);
            if is_ping {
                (
                    spec(FIN | OP_PING, payload.clone(), framing),
                    Event::Ping(payload),
                )
            } else {
                (spec(FIN | OP_PONG, payload, framing), Event::Pong)
            }
        },
    )
}

/// A text or binary message of at most `max` bytes, in one to five
/// fragments cut at any byte (inside a character too), with control
/// frames after some of them.
fn message(max: usize) -> impl Strategy<Value = (Vec<Spec>, Vec<Event>)> {
    let len = prop_oneof![
        4 => 0..126usize,
        2 => 126..1024usize,
        1 => 1024..=65_536usize,
    ]
    .prop_map(move |len| len.min(max));
    let cuts = prop::collection::vec(any::<Index>(), 0..5);
    let between = prop::collection::vec(prop::option::weighted(0.3, control()), 5);
    let framings = prop::collection::vec(framing(), 5);
    (any::<bool>(), len, any::<u64>(), cuts, between, framings).prop_map(
        |(is_text, len, seed, cuts, between, framings)| {
            let payload = if is_text {
                text(len, seed)
            } else {
                bytes(len, seed)
            };
            let mut cuts: Vec<usize> = cuts.iter().map(|at| at.index(len + 1)).collect();
            cuts.sort_unstable();
            cuts.push(len);
            let mut specs = Vec::new();
            let mut events = Vec::new();
            let mut from = 0;
            for (i, &to) in cuts.iter().enumerate() {
                let last = i + 1 == cuts.len();
                let opcode = match (i, is_text) {
                    (0, true) => OP_TEXT,
                    (0, false) => OP_BINARY,
                    _ => OP_CONTINUATION,
                };
                let first = if last { FIN } else { 0 } | opcode;
                specs.push(spec(first, payload[from..to].to_vec(), framings[i]));
                from = to;
                if let (false, Some((control, event))) = (last, &between[i]) {
                    specs.push(control.clone());
                    events.push(event.clone());
                }
            }
            events.push(Event::Message(payload));
            (specs, events)
        },
    )
}

/// A close frame a peer may send: empty, or an allowed code (1014 aside,
/// see `agree`) and a UTF-8 reason, 125 bytes at most in all.
fn close() -> impl Strategy<Value = (Spec, End)> {
    let code = prop_oneof![(1000..=1003u16), (1007..=1013u16), (3000..=4999u16),];
    let payload = prop_oneof![
        1 => Just(Vec::new()),
        6 => (code, 0..=123usize, any::<u64>()).prop_map(|(code, len, seed)| close_payload(code, &text(len, seed))),
    ];
    (payload, framing()).prop_map(|(payload, framing)| {
        (
            spec(FIN | OP_CLOSE, payload.clone(), framing),
            End::Closed(payload),
        )
    })
}

/// Caps like the server's (`CHAT_MAX_FRAME_BYTES`: 256 at least, 65,536 by
/// default).
fn cap() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![256, 1000, 65_536])
}

/// A valid stream under `max`: its frames, and what it must read as.
fn valid(max: usize) -> impl Strategy<Value = (Vec<Spec>, Outcome)> {
    let piece = prop_oneof![
        3 => message(max),
        1 => control().prop_map(|(spec, event)| (vec![spec], vec![event])),
    ];
    (
        prop::collection::vec(piece, 0..6),
        prop::option::weighted(0.4, close()),
    )
        .prop_map(|(pieces, close)| {
            let mut specs = Vec::new();
            let mut events = Vec::new();
            for (piece, piece_events) in pieces {
                specs.extend(piece);
                events.extend(piece_events);
            }
            let end = match close {
                Some((spec, end)) => {
                    specs.push(spec);
                    end
                }
                None => End::Ended(Close::Normal),
            };
            (specs, Outcome::new(events, end))
        })
}

/// Chunk sizes a socket might deliver, repeated over the stream.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1..16usize, 1..2_000usize, 1..40_000usize], 1..8)
}

/// One thing broken in a valid stream: a frame's header or payload, a
/// frame added, or the bytes themselves.
#[derive(Clone, Debug)]
enum Breach {
    /// RSV1-3 (the bits, 1 to 7) on a frame.
    Reserved(Index, u8),
    /// Any opcode (reserved ones, a continuation without a start, a new
    /// message inside a fragmented one, a control frame as a fragment).
    Opcode(Index, u8),
    /// FIN flipped: an unfinished message, a fragmented control frame.
    Fin(Index),
    Unmasked(Index),
    TopBit(Index),
    /// A payload byte replaced (bad UTF-8 in text, in a close reason or
    /// code).
    PayloadByte(Index, Index, u8),
    /// A payload resized: one byte (a close with half a code), 126 to 300
    /// (a control frame too long), just over the cap.
    Resize(Index, Resize, u64),
    /// A close frame with any code and a reason, mostly UTF-8, inserted.
    Close(Index, u16, Vec<u8>),
    /// A byte of the encoded stream overwritten.
    Byte(Index, u8),
    /// The stream cut short.
    Truncate(Index),
    /// Bytes inserted into the encoded stream.
    Insert(Index, Vec<u8>),
}

#[derive(Clone, Copy, Debug)]
enum Resize {
    One,
    OverControl,
    OverCap,
}

/// Any close code, the ones at the edges of the allowed ranges often.
fn close_code() -> impl Strategy<Value = u16> {
    let edges = vec![
        0, 999, 1000, 1003, 1004, 1005, 1006, 1007, 1011, 1012, 1013, 1014, 1015, 1016, 2999, 3000,
        4999, 5000, 65535,
    ];
    prop_oneof![prop::sample::select(edges), any::<u16>()]
}

fn breach() -> impl Strategy<Value = Breach> {
    let at = any::<Index>;
    prop_oneof![
        (at(), 1..8u8).prop_map(|(i, bits)| Breach::Reserved(i, bits)),
        (at(), 0..16u8).prop_map(|(i, op)| Breach::Opcode(i, op)),
        at().prop_map(Breach::Fin),
        at().prop_map(Breach::Unmasked),
        at().prop_map(Breach::TopBit),
        (at(), at(), any::<u8>()).prop_map(|(i, j, b)| Breach::PayloadByte(i, j, b)),
        (
            at(),
            prop::sample::select(vec![Resize::One, Resize::OverControl, Resize::OverCap]),
            any::<u64>()
        )
            .prop_map(|(i, resize, seed)| Breach::Resize(i, resize, seed)),
        (
            at(),
            close_code(),
            prop_oneof![
                3 => (0..20usize, any::<u64>()).prop_map(|(len, seed)| text(len, seed)),
                1 => prop::collection::vec(any::<u8>(), 0..20),
            ]
        )
            .prop_map(|(i, code, reason)| Breach::Close(i, code, reason)),
        (at(), any::<u8>()).prop_map(|(i, b)| Breach::Byte(i, b)),
        at().prop_map(Breach::Truncate),
        (at(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Breach::Insert(i, b)),
    ]
}

/// The stream's bytes with `breach` applied.
fn broken(mut specs: Vec<Spec>, breach: &Breach, max: usize) -> Vec<u8> {
    if specs.is_empty() {
        specs.push(spec(
            FIN | OP_TEXT,
            b"{}".to_vec(),
            ([1, 2, 3, 4], Len::Shortest),
        ));
    }
    let n = specs.len();
    match breach {
        Breach::Reserved(i, bits) => specs[i.index(n)].first |= bits << 4,
        Breach::Opcode(i, op) => {
            let spec = &mut specs[i.index(n)];
            spec.first = (spec.first & 0xf0) | op;
        }
        Breach::Fin(i) => specs[i.index(n)].first ^= FIN,
        Breach::Unmasked(i) => specs[i.index(n)].mask = None,
        Breach::TopBit(i) => specs[i.index(n)].top_bit = true,
        Breach::PayloadByte(i, j, byte) => {
            let payload = &mut specs[i.index(n)].payload;
            if !payload.is_empty() {
                let j = j.index(payload.len());
                payload[j] = *byte;
            }
        }
        Breach::Resize(i, resize, seed) => {
            let len = match resize {
                Resize::One => 1,
                // One byte over, most often.
                Resize::OverControl => 126 + (*seed % 4) as usize * (*seed % 60) as usize,
                Resize::OverCap => max + 1 + (*seed % 64) as usize,
            };
            specs[i.index(n)].payload = bytes(len, *seed);
        }
        Breach::Close(i, code, reason) => {
            let close = spec(
                FIN | OP_CLOSE,
                close_payload(*code, reason),
                ([9, 8, 7, 6], Len::Shortest),
            );
            specs.insert(i.index(n + 1), close);
        }
        Breach::Byte(..) | Breach::Truncate(_) | Breach::Insert(..) => {}
    }
    let mut stream = encode(&specs);
    match breach {
        Breach::Byte(i, byte) => {
            let i = i.index(stream.len());
            stream[i] = *byte;
        }
        Breach::Truncate(i) => stream.truncate(i.index(stream.len())),
        Breach::Insert(i, bytes) => {
            let i = i.index(stream.len() + 1);
            stream.splice(i..i, bytes.iter().copied());
        }
        _ => {}
    }
    stream
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A valid stream reads as the messages it was made of, by both.
    #[test]
    fn valid_streams_read_as_written(
        (max, (specs, expected)) in cap().prop_flat_map(|max| (Just(max), valid(max))),
        sizes in chunk_sizes(),
    ) {
        let stream = encode(&specs);
        same(&theirs(&stream, &sizes, max), &expected)?;
        same(&ours(&stream, &sizes, max)?, &expected)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// A valid stream with one thing broken ends as tungstenite ends it.
    #[test]
    fn broken_streams_end_as_the_reference_ends_them(
        (max, (specs, _)) in cap().prop_flat_map(|max| (Just(max), valid(max))),
        breach in breach(),
        sizes in chunk_sizes(),
    ) {
        let stream = broken(specs, &breach, max);
        let reference = theirs(&stream, &sizes, max);
        agree(&ours(&stream, &sizes, max)?, &reference, &stream, &sizes, max)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any bytes at all end as tungstenite ends them.
    #[test]
    fn garbage_ends_as_the_reference_ends_it(
        stream in prop::collection::vec(any::<u8>(), 0..2_048),
        sizes in chunk_sizes(),
        max in cap(),
    ) {
        let reference = theirs(&stream, &sizes, max);
        agree(&ours(&stream, &sizes, max)?, &reference, &stream, &sizes, max)?;
    }
}
