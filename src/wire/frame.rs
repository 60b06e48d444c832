//! Server-to-client frames, encoded once and shared.
//!
//! A server frame is never masked, so one encoded frame (header + payload)
//! is byte-identical for every recipient: the hub encodes an event once into
//! `Bytes` and every connection's writer sends that same buffer. Client
//! frames (masked, fragmented, control) are read by `reader.rs`.

use bytes::{BufMut, Bytes, BytesMut};

use super::close::Close;

// RFC 6455 §5.2, shared with the reader of client frames.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;
pub(crate) const FIN: u8 = 0x80;

/// A complete text frame carrying `payload`.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A complete close frame with `close`'s code and reason.
pub fn close(close: Close) -> Bytes {
    let mut body = Vec::with_capacity(2 + close.reason().len());
    body.extend_from_slice(&close.code().to_be_bytes());
    body.extend_from_slice(close.reason().as_bytes());
    encode(OP_CLOSE, &body)
}

/// A close frame echoing the peer's close payload (code + reason) as received.
pub fn close_echo(payload: &[u8]) -> Bytes {
    encode(OP_CLOSE, payload)
}

pub fn ping() -> Bytes {
    encode(OP_PING, b"")
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, payload)
}

/// Whether an encoded frame is a close frame: the writer stops after it.
pub fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == OP_CLOSE)
}

/// The longest header of a server frame (no mask): 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// The header of a final, unmasked frame of `len` payload bytes; the header
/// is the first `n` bytes of the returned buffer.
pub fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut head = [0u8; MAX_HEADER];
    head[0] = FIN | opcode;
    let n = if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, n)
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let (head, n) = header(opcode, payload.len());
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&head[..n]);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = text(&[b'x'; 126]);
        assert_eq!(&mid[..4], &[0x81, 126, 0, 126]);
        assert_eq!(mid.len(), 4 + 126);
        let big = text(&vec![b'x'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let frame = close(Close::SlowConsumer);
        assert!(is_close(&frame));
        assert_eq!(frame[0], 0x88);
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1013);
        assert!(!is_close(&text(b"{}")));
        assert!(!is_close(&ping()));
    }
}
