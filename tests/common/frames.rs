//! Client frames written byte by byte, and what the server's frame reader
//! makes of a byte stream: the reader's reference test and its RFC 6455
//! corpus share them.

#![allow(dead_code)]

use chat_service::wire::close::Close;
use chat_service::ws::reader::{FrameReader, Received};
use tokio::io::AsyncRead;

// RFC 6455 §5.2, written out here so a test does not trust the server's own.
pub const FIN: u8 = 0x80;
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// How a frame writes its payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    /// 7 bits, 16 or 64 as the length needs (RFC 6455 §5.2).
    Shortest,
    /// 16 bits, even for a payload under 126 bytes.
    Bits16,
    /// 64 bits, even for a payload under 65,536 bytes.
    Bits64,
}

/// A client frame with `first` as its first byte (FIN, RSV, opcode),
/// masked with `mask` unless it is `None`.
pub fn frame_with(first: u8, payload: &[u8], mask: Option<[u8; 4]>, form: Len) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    match form {
        Len::Shortest if len < 126 => out.push(bit | len as u8),
        Len::Shortest | Len::Bits16 if len <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame, its length in the shortest form.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let first = if fin { FIN } else { 0 } | opcode;
    frame_with(first, payload, Some(MASK), Len::Shortest)
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// What the reader handed out, owned. A data message's type is not part of
/// it: the reader checks a text message's UTF-8 and then hands both kinds
/// to the same JSON parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
}

/// How reading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer's close frame (its payload), which the session echoes; it
    /// reads nothing after it.
    Closed(Vec<u8>),
    /// The reader's error: the close the server sends (1002, 1007, 1009),
    /// or `Close::Normal` when the stream ended and nothing is sent.
    Ended(Close),
}

/// Everything the reader made of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub end: End,
}

impl Outcome {
    pub fn new(events: Vec<Event>, end: End) -> Outcome {
        Outcome { events, end }
    }
}

/// The reader's next step, owned: an event, or the end.
pub fn step(next: Result<Received<'_>, Close>) -> Result<Event, End> {
    match next {
        Ok(Received::Message(m)) => Ok(Event::Message(m.to_vec())),
        Ok(Received::Ping(p)) => Ok(Event::Ping(p.to_vec())),
        Ok(Received::Pong) => Ok(Event::Pong),
        Ok(Received::Close(p)) => Err(End::Closed(p.to_vec())),
        Err(why) => Err(End::Ended(why)),
    }
}

/// Reads until the reader ends, as the session does.
pub async fn read_all<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Outcome {
    let mut events = Vec::new();
    loop {
        match step(reader.next().await) {
            Ok(event) => events.push(event),
            Err(end) => return Outcome::new(events, end),
        }
    }
}
