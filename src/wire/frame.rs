//! WebSocket frames (RFC 6455 §5), without IO: server frames encoded once
//! and shared, client frames' headers and payloads parsed and checked.
//!
//! A server frame is never masked, so one encoded frame (header + payload)
//! is byte-identical for every recipient: the hub encodes an event once into
//! `Bytes` and every connection's writer sends that same buffer. Client
//! frames (masked, fragmented, control) are parsed here and read, buffered
//! and joined by `reader.rs`.

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

/// Control frames carry at most this much (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A client frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: [u8; 4],
    /// Header bytes, then `len` payload bytes.
    pub(crate) header_len: usize,
    /// The announced payload length; one that does not fit a `usize` reads
    /// as `usize::MAX`, which is over any cap.
    pub(crate) len: usize,
}

impl Header {
    /// The header at the start of `bytes`; `Ok(Err(n))` when `n` bytes are
    /// needed to see it whole. Refuses what no client may send, whatever
    /// the connection's state: reserved bits, no mask, a 64-bit length with
    /// its top bit set.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Result<Header, usize>, Close> {
        let [first, second, ..] = *bytes else {
            return Ok(Err(2));
        };
        if first & 0x70 != 0 {
            // RSV1-3 without a negotiated extension.
            return Err(Close::Protocol);
        }
        if second & 0x80 == 0 {
            // Every client frame must be masked (RFC 6455 §5.1).
            return Err(Close::Protocol);
        }
        let (extra, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(usize::from(n))),
        };
        let header_len = 2 + extra + 4;
        if bytes.len() < header_len {
            return Ok(Err(header_len));
        }
        // A length in more bytes than it needs is accepted, as tungstenite
        // and fastwebsockets do: the minimal form is a sender's duty
        // (RFC 6455 §5.2) and a longer one costs us nothing.
        let len = match (short, extra) {
            (Some(n), _) => n,
            (None, 2) => usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            _ => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&bytes[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    // The most significant bit must be 0 (RFC 6455 §5.2).
                    return Err(Close::Protocol);
                }
                // Anything past usize is over any cap.
                usize::try_from(len).unwrap_or(usize::MAX)
            }
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&bytes[header_len - 4..header_len]);
        Ok(Ok(Header {
            fin: first & FIN != 0,
            opcode: first & 0x0f,
            mask,
            header_len,
            len,
        }))
    }

    /// The rules a header must meet before its payload is waited for.
    /// `open` is the length so far of the fragmented message in progress,
    /// if any; `max_message` caps a message, one frame or all fragments.
    pub(crate) fn check(&self, open: Option<usize>, max_message: usize) -> Result<(), Close> {
        match self.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !self.fin || self.len > MAX_CONTROL_PAYLOAD {
                    return Err(Close::Protocol);
                }
            }
            OP_TEXT | OP_BINARY => {
                if open.is_some() {
                    // A new message inside a fragmented one.
                    return Err(Close::Protocol);
                }
                if self.len > max_message {
                    return Err(Close::TooBig);
                }
            }
            OP_CONTINUATION => {
                let Some(open) = open else {
                    return Err(Close::Protocol);
                };
                if open.saturating_add(self.len) > max_message {
                    return Err(Close::TooBig);
                }
            }
            _ => return Err(Close::Protocol),
        }
        Ok(())
    }
}

/// XORs `payload` with the frame's mask, eight bytes at a time: a client
/// sends every message masked, so this runs over every byte received.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // The mask repeats every 4 bytes and every chunk (and the tail) starts
    // at a multiple of 8, so the same 8-byte word fits them all; byte order
    // does not matter to a XOR as long as both sides use the same.
    let [a, b, c, d] = mask;
    let word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// A text payload must be UTF-8 (1007 otherwise).
pub(crate) fn check_text(payload: &[u8]) -> Result<(), Close> {
    match std::str::from_utf8(payload) {
        Ok(_) => Ok(()),
        Err(_) => Err(Close::InvalidData),
    }
}

/// A close payload is empty, or a code a peer may send and a UTF-8 reason.
pub(crate) fn check_close_payload(payload: &[u8]) -> Result<(), Close> {
    match payload {
        [] => Ok(()),
        [_] => Err(Close::Protocol),
        [high, low, reason @ ..] => {
            if !close_code_allowed(u16::from_be_bytes([*high, *low])) {
                return Err(Close::Protocol);
            }
            check_text(reason)
        }
    }
}

/// Codes a peer may put on the wire (RFC 6455 §7.4 and the IANA registry,
/// which added 1012-1014): 1004-1006 and 1015 never travel, 1016-2999 are
/// unassigned, below 1000 and from 5000 on are invalid.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame header for a payload of `len` bytes, its
    /// length written in `extra` bytes (0, 2 or 8).
    fn client_header(first: u8, len: u64, extra: usize) -> Vec<u8> {
        let mut out = vec![first];
        match extra {
            0 => out.push(0x80 | len as u8),
            2 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out
    }

    #[test]
    fn a_header_says_how_many_bytes_it_needs() {
        let whole = client_header(0x81, 300, 2);
        assert_eq!(Header::parse(&[]), Ok(Err(2)));
        assert_eq!(Header::parse(&whole[..1]), Ok(Err(2)));
        for cut in 2..whole.len() {
            assert_eq!(Header::parse(&whole[..cut]), Ok(Err(8)), "{cut} bytes");
        }
        let expected = Header {
            fin: true,
            opcode: OP_TEXT,
            mask: MASK,
            header_len: 8,
            len: 300,
        };
        assert_eq!(Header::parse(&whole), Ok(Ok(expected)));
        let long = client_header(0x02, 70_000, 8);
        assert_eq!(Header::parse(&long[..13]), Ok(Err(14)));
        let parsed = Header::parse(&long).unwrap().unwrap();
        assert_eq!(
            (parsed.fin, parsed.opcode, parsed.header_len, parsed.len),
            (false, OP_BINARY, 14, 70_000)
        );
    }

    #[test]
    fn lengths_in_more_bytes_than_needed_are_accepted() {
        for extra in [0, 2, 8] {
            let header = Header::parse(&client_header(0x89, 5, extra))
                .unwrap()
                .unwrap();
            assert_eq!((header.len, header.header_len), (5, 2 + extra + 4));
        }
    }

    #[test]
    fn what_no_client_may_send_is_refused_from_the_header_alone() {
        for rsv in [0x40, 0x20, 0x10] {
            let header = client_header(0x81 | rsv, 1, 0);
            assert_eq!(Header::parse(&header), Err(Close::Protocol), "{rsv:#x}");
        }
        // Unmasked: refused before the mask could have arrived.
        assert_eq!(Header::parse(&[0x81, 0x01]), Err(Close::Protocol));
        let top_bit = client_header(0x82, 1 << 63, 8);
        assert_eq!(Header::parse(&top_bit), Err(Close::Protocol));
        let largest = client_header(0x82, u64::MAX >> 1, 8);
        let header = Header::parse(&largest).unwrap().unwrap();
        assert_eq!(header.check(None, 1 << 40), Err(Close::TooBig));
    }

    #[test]
    fn header_rules_depend_on_the_open_message() {
        let header = |first: u8, len: u64| {
            Header::parse(&client_header(first, len, 8))
                .unwrap()
                .unwrap()
        };
        // Control frames: final and at most 125 bytes, inside a message too.
        for open in [None, Some(10)] {
            assert_eq!(header(0x89, 125).check(open, 100), Ok(()));
            assert_eq!(header(0x89, 126).check(open, 1000), Err(Close::Protocol));
            assert_eq!(header(0x09, 0).check(open, 1000), Err(Close::Protocol));
        }
        assert_eq!(header(0x81, 100).check(None, 100), Ok(()));
        assert_eq!(header(0x81, 101).check(None, 100), Err(Close::TooBig));
        assert_eq!(header(0x01, 0).check(Some(0), 100), Err(Close::Protocol));
        assert_eq!(header(0x80, 1).check(None, 100), Err(Close::Protocol));
        assert_eq!(header(0x80, 40).check(Some(60), 100), Ok(()));
        assert_eq!(header(0x00, 41).check(Some(60), 100), Err(Close::TooBig));
        for opcode in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                header(0x80 | opcode, 0).check(None, 100),
                Err(Close::Protocol)
            );
        }
    }

    #[test]
    fn close_codes_a_peer_may_send() {
        let allowed: Vec<u16> = (0..=u16::MAX)
            .filter(|code| check_close_payload(&code.to_be_bytes()).is_ok())
            .collect();
        let expected: Vec<u16> = (1000..=1003)
            .chain(1007..=1014)
            .chain(3000..=4999)
            .collect();
        assert_eq!(allowed, expected);
        assert_eq!(check_close_payload(b""), Ok(()));
        assert_eq!(check_close_payload(&[0x03]), Err(Close::Protocol));
        assert_eq!(check_close_payload(b"\x03\xe8bye \xe2\x9c\x93"), Ok(()));
        assert_eq!(
            check_close_payload(b"\x03\xe8\xff"),
            Err(Close::InvalidData)
        );
        // The code is checked first.
        assert_eq!(check_close_payload(b"\x03\xed\xff"), Err(Close::Protocol));
    }

    /// The byte-at-a-time loop `unmask` replaced.
    fn unmask_bytewise(payload: &mut [u8], mask: [u8; 4]) {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }

    #[test]
    fn unmasking_by_words_matches_byte_by_byte() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for mask in [MASK, [0; 4], [0xff; 4], [1, 2, 3, 4]] {
            // Every length and start offset, so every split into words and
            // a tail, aligned or not in memory.
            for start in 0..9 {
                for len in 0..data.len() - start {
                    let mut words = data[start..start + len].to_vec();
                    let mut bytes = words.clone();
                    unmask(&mut words, mask);
                    unmask_bytewise(&mut bytes, mask);
                    assert_eq!(words, bytes, "start {start}, len {len}");
                    unmask(&mut words, mask);
                    assert_eq!(words, data[start..start + len]);
                }
            }
        }
    }
}
