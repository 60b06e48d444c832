//! RFC 6455's edge cases, one named test each, in the spirit of the
//! Autobahn suite (its case numbers in brackets): what the frame reader
//! hands out and the close the server answers with, fed through an
//! in-memory socket; then a handful over a real socket against the real
//! binary, to see the close code on the wire.

mod common;

use std::time::Duration;

use chat_service::wire::close::Close;
use chat_service::ws::reader::FrameReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::django::DjangoStandin;
use common::frames::{
    close_payload, frame, frame_with, read_all, End, Event, Len, FIN, MASK, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use common::server::Server;

/// The server's default `CHAT_MAX_FRAME_BYTES`.
const CAP: usize = 65_536;

/// What the server sends when reading ends.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The peer's close payload, echoed.
    Echo(Vec<u8>),
    /// Our close with this code.
    Close(u16),
    /// Nothing: the stream ended.
    Nothing,
}

/// What the reader hands out for `frames`, written in turn into an
/// in-memory socket whose buffer is small enough that most frames arrive
/// in pieces, then closed; and what the server answers at the end.
async fn read_capped(frames: &[Vec<u8>], cap: usize) -> (Vec<Event>, Answer) {
    let (mut client, server) = tokio::io::duplex(64);
    let frames = frames.to_vec();
    let writer = tokio::spawn(async move {
        for frame in frames {
            if client.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut reader = FrameReader::new(server, cap);
    let outcome = read_all(&mut reader).await;
    // A reader that stopped early leaves the writer blocked on a full
    // buffer; dropping it fails the writer's next write.
    drop(reader);
    writer.await.expect("writer task");
    let answer = match outcome.end {
        End::Closed(payload) => Answer::Echo(payload),
        End::Ended(Close::Normal) => Answer::Nothing,
        End::Ended(why) => Answer::Close(why.code()),
    };
    (outcome.events, answer)
}

async fn read(frames: &[Vec<u8>]) -> (Vec<Event>, Answer) {
    read_capped(frames, CAP).await
}

fn message(bytes: &[u8]) -> Event {
    Event::Message(bytes.to_vec())
}

fn ping(bytes: &[u8]) -> Event {
    Event::Ping(bytes.to_vec())
}

/// Nothing handed out; the server closes with `code`.
fn refused(code: u16) -> (Vec<Event>, Answer) {
    (Vec::new(), Answer::Close(code))
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, OP_TEXT, payload)
}

/// `payload` as a text message cut into fragments at `cuts`.
fn fragmented(payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    let last = bounds.len() - 2;
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
            frame(i == last, opcode, &payload[w[0]..w[1]])
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Fragmentation and control frames between fragments [5.x].

#[tokio::test]
async fn pings_and_pongs_between_fragments_are_answered_first() {
    // [5.6-5.20]: a ping, a pong, both or neither in each gap between the
    // fragments; the pings come out in order, the message whole, last.
    let fragments = fragmented(b"Hello, world", &[3, 7, 9]);
    let gaps = fragments.len() - 1;
    for pattern in 0..4u32.pow(gaps as u32) {
        let mut frames = vec![fragments[0].clone()];
        let mut expected = Vec::new();
        for gap in 0..gaps {
            let kind = pattern / 4u32.pow(gap as u32) % 4;
            let payload = format!("gap {gap}");
            if kind & 1 != 0 {
                frames.push(frame(true, OP_PING, payload.as_bytes()));
                expected.push(ping(payload.as_bytes()));
            }
            if kind & 2 != 0 {
                frames.push(frame(true, OP_PONG, b"unsolicited"));
                expected.push(Event::Pong);
            }
            frames.push(fragments[gap + 1].clone());
        }
        expected.push(message(b"Hello, world"));
        assert_eq!(
            read(&frames).await,
            (expected, Answer::Nothing),
            "pattern {pattern}"
        );
    }
}

#[tokio::test]
async fn a_close_between_fragments_ends_without_the_message() {
    let close = close_payload(1000, b"bye");
    let frames = [
        frame(false, OP_TEXT, b"never handed out"),
        frame(true, OP_CLOSE, &close),
        frame(true, OP_CONTINUATION, b"!"),
    ];
    assert_eq!(read(&frames).await, (Vec::new(), Answer::Echo(close)));
}

#[tokio::test]
async fn fragments_of_one_byte_and_empty_fragments_join() {
    // [5.3-5.5] many small fragments.
    let payload = br#"{"type":"typing","is_typing":true}"#;
    let cuts: Vec<usize> = (1..payload.len()).collect();
    assert_eq!(
        read(&fragmented(payload, &cuts)).await,
        (vec![message(payload)], Answer::Nothing)
    );
    // [6.1.2, 6.1.3] empty fragments, an empty message.
    let frames = [
        frame(false, OP_TEXT, b""),
        frame(false, OP_CONTINUATION, b"x"),
        frame(false, OP_CONTINUATION, b""),
        frame(true, OP_CONTINUATION, b""),
        frame(false, OP_BINARY, b""),
        frame(true, OP_CONTINUATION, b""),
    ];
    assert_eq!(
        read(&frames).await,
        (vec![message(b"x"), message(b"")], Answer::Nothing)
    );
}

#[tokio::test]
async fn a_continuation_without_a_start_is_refused() {
    // [5.9-5.14]
    for fin in [true, false] {
        assert_eq!(
            read(&[frame(fin, OP_CONTINUATION, b"x")]).await,
            refused(1002)
        );
    }
    // After a whole message: nothing is open any more.
    let frames = [text(b"a"), frame(true, OP_CONTINUATION, b"b")];
    assert_eq!(
        read(&frames).await,
        (vec![message(b"a")], Answer::Close(1002))
    );
}

#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_is_refused() {
    for opcode in [OP_TEXT, OP_BINARY] {
        for fin in [true, false] {
            let frames = [frame(false, OP_TEXT, b"a"), frame(fin, opcode, b"b")];
            assert_eq!(read(&frames).await, refused(1002), "{opcode} {fin}");
        }
    }
}

#[tokio::test]
async fn fragmented_control_frames_are_refused() {
    // [5.1, 5.2] and a close; inside a fragmented message too.
    for opcode in [OP_PING, OP_PONG, OP_CLOSE] {
        assert_eq!(read(&[frame(false, opcode, b"")]).await, refused(1002));
        let frames = [frame(false, OP_TEXT, b"a"), frame(false, opcode, b"")];
        assert_eq!(read(&frames).await, refused(1002));
    }
}

// ---------------------------------------------------------------------------
// UTF-8 [6.x].

#[tokio::test]
async fn characters_split_across_fragments_join() {
    // [6.2.3, 6.2.4] a valid text split at every byte, inside characters.
    let hello = "κόσμε ✓ 😀".as_bytes();
    for at in 1..hello.len() {
        assert_eq!(
            read(&fragmented(hello, &[at])).await,
            (vec![message(hello)], Answer::Nothing),
            "split at {at}"
        );
    }
    let cuts: Vec<usize> = (1..hello.len()).collect();
    assert_eq!(
        read(&fragmented(hello, &cuts)).await,
        (vec![message(hello)], Answer::Nothing)
    );
}

#[tokio::test]
async fn invalid_utf8_across_fragment_boundaries_is_1007() {
    let cases: [(&[u8], usize); 5] = [
        // A three-byte character cut short by an ASCII byte.
        (b"ok \xe2\x9cA", 5),
        // A surrogate (U+D800), encoded across the boundary.
        (b"\xed\xa0\x80", 1),
        // An overlong '/'.
        (b"a\xc0\xaf", 2),
        // A four-byte character past U+10FFFF.
        (b"\xf4\x90\x80\x80", 2),
        // A message that ends inside a character.
        (b"end \xe2\x9c", 5),
    ];
    for (payload, at) in cases {
        assert_eq!(
            read(&fragmented(payload, &[at])).await,
            refused(1007),
            "{payload:?}"
        );
    }
    // And in a single frame [6.3.1].
    assert_eq!(read(&[text(b"\xce\xba\xe1\xbd")]).await, refused(1007));
}

#[tokio::test]
async fn invalid_utf8_fails_once_the_message_is_whole() {
    // [6.4.1-6.4.4] fail fast would close at the bad fragment; we check the
    // message once whole (Autobahn rates that non-strict), answering the
    // ping in between. A message never finished is never checked.
    let frames = [
        frame(false, OP_TEXT, b"\xff"),
        frame(true, OP_PING, b"p"),
        frame(true, OP_CONTINUATION, b"x"),
    ];
    assert_eq!(read(&frames).await, (vec![ping(b"p")], Answer::Close(1007)));
    assert_eq!(
        read(&frames[..2]).await,
        (vec![ping(b"p")], Answer::Nothing)
    );
}

#[tokio::test]
async fn binary_messages_are_not_checked_for_utf8() {
    let frames = [
        frame(true, OP_BINARY, b"\xff\xfe"),
        frame(false, OP_BINARY, b"\xe2"),
        frame(true, OP_CONTINUATION, b"A"),
    ];
    assert_eq!(
        read(&frames).await,
        (
            vec![message(b"\xff\xfe"), message(b"\xe2A")],
            Answer::Nothing
        )
    );
}

// ---------------------------------------------------------------------------
// Close frames [7.x].

#[tokio::test]
async fn allowed_close_codes_are_echoed() {
    // [7.7.1-7.7.13], and 1012-1014, registered by IANA since RFC 6455
    // (tungstenite 0.27 still refuses 1014, see ws_reader_reference.rs).
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    for code in codes {
        let payload = close_payload(code, b"reason");
        assert_eq!(
            read(&[frame(true, OP_CLOSE, &payload)]).await,
            (Vec::new(), Answer::Echo(payload)),
            "{code}"
        );
    }
}

#[tokio::test]
async fn close_codes_no_peer_may_send_are_1002() {
    // [7.9.1-7.9.9], [7.13.1, 7.13.2]: never on the wire (1004-1006,
    // 1015), unassigned (1016-2999), invalid (below 1000, from 5000).
    let codes = [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in codes {
        let payload = close_payload(code, b"");
        assert_eq!(
            read(&[frame(true, OP_CLOSE, &payload)]).await,
            refused(1002),
            "{code}"
        );
    }
}

#[tokio::test]
async fn close_payloads() {
    // [7.3.1] empty: echoed empty.
    assert_eq!(
        read(&[frame(true, OP_CLOSE, b"")]).await,
        (Vec::new(), Answer::Echo(Vec::new()))
    );
    // [7.3.2] one byte: half a code.
    assert_eq!(read(&[frame(true, OP_CLOSE, b"\x03")]).await, refused(1002));
    // [7.3.4, 7.3.5] a 123-byte reason is the most that fits.
    let longest = close_payload(1000, &[b'r'; 123]);
    assert_eq!(
        read(&[frame(true, OP_CLOSE, &longest)]).await,
        (Vec::new(), Answer::Echo(longest))
    );
    let too_long = close_payload(1000, &[b'r'; 124]);
    assert_eq!(
        read(&[frame(true, OP_CLOSE, &too_long)]).await,
        refused(1002)
    );
    // [7.5.1] a reason that is not UTF-8.
    let bad_reason = close_payload(1000, b"\xce\xba\xe1\xbd");
    assert_eq!(
        read(&[frame(true, OP_CLOSE, &bad_reason)]).await,
        refused(1007)
    );
    let good_reason = close_payload(1000, "κόσμε".as_bytes());
    assert_eq!(
        read(&[frame(true, OP_CLOSE, &good_reason)]).await,
        (Vec::new(), Answer::Echo(good_reason))
    );
    // A bad code and a bad reason: the code decides.
    let both = close_payload(999, b"\xff");
    assert_eq!(read(&[frame(true, OP_CLOSE, &both)]).await, refused(1002));
}

// ---------------------------------------------------------------------------
// Control frames, reserved bits and opcodes, masking, lengths [1.x-4.x].

#[tokio::test]
async fn control_frames_carry_at_most_125_bytes() {
    // [2.4, 2.5]
    let most = [b'p'; 125];
    assert_eq!(
        read(&[frame(true, OP_PING, &most)]).await,
        (vec![ping(&most)], Answer::Nothing)
    );
    for opcode in [OP_PING, OP_PONG, OP_CLOSE] {
        assert_eq!(
            read(&[frame(true, opcode, &[b'p'; 126])]).await,
            refused(1002),
            "{opcode}"
        );
    }
    // Refused from the header: the payload need not arrive.
    let header = frame(true, OP_PING, &[0; 200]);
    assert_eq!(read(&[header[..8].to_vec()]).await, refused(1002));
}

#[tokio::test]
async fn reserved_bits_are_refused() {
    // [3.1-3.7]: every combination of RSV1-3, on every kind of frame; after
    // a message that is handed out [3.2].
    for rsv in 1..8u8 {
        for opcode in [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE] {
            let bad = frame_with(FIN | rsv << 4 | opcode, b"", Some(MASK), Len::Shortest);
            assert_eq!(
                read(&[text(b"before"), bad]).await,
                (vec![message(b"before")], Answer::Close(1002)),
                "rsv {rsv}, opcode {opcode}"
            );
        }
        let continuation = frame_with(FIN | rsv << 4, b"b", Some(MASK), Len::Shortest);
        assert_eq!(
            read(&[frame(false, OP_TEXT, b"a"), continuation]).await,
            refused(1002)
        );
    }
}

#[tokio::test]
async fn reserved_opcodes_are_refused() {
    // [4.1.1-4.1.5] data 3-7, [4.2.1-4.2.5] control 11-15, with and without
    // a payload, after a message.
    for opcode in (3..=7).chain(11..=15) {
        for payload in [&b""[..], b"reserved"] {
            assert_eq!(
                read(&[text(b"before"), frame(true, opcode, payload)]).await,
                (vec![message(b"before")], Answer::Close(1002)),
                "opcode {opcode}"
            );
        }
    }
}

#[tokio::test]
async fn unmasked_client_frames_are_refused() {
    // RFC 6455 §5.1: a server must close on an unmasked frame.
    for first in [
        FIN | OP_TEXT,
        FIN | OP_BINARY,
        FIN | OP_PING,
        FIN | OP_CLOSE,
    ] {
        let bare = frame_with(first, b"", None, Len::Shortest);
        assert_eq!(read(&[bare]).await, refused(1002), "{first:#x}");
    }
    let bare = frame_with(FIN | OP_CONTINUATION, b"b", None, Len::Shortest);
    assert_eq!(
        read(&[frame(false, OP_TEXT, b"a"), bare]).await,
        refused(1002)
    );
}

#[tokio::test]
async fn lengths_at_every_form_boundary() {
    // [1.1.1-1.1.6, 1.2.1-1.2.6] 7-bit, 16-bit and 64-bit lengths, text and
    // binary, up to the cap.
    for len in [0, 1, 125, 126, 127, 128, 65_535, 65_536] {
        let payload = vec![b'*'; len];
        for opcode in [OP_TEXT, OP_BINARY] {
            assert_eq!(
                read(&[frame(true, opcode, &payload)]).await,
                (vec![message(&payload)], Answer::Nothing),
                "length {len}"
            );
        }
    }
}

#[tokio::test]
async fn lengths_in_more_bytes_than_needed_are_accepted() {
    // RFC 6455 §5.2 says the minimal number of bytes MUST be used to
    // encode the length. That binds the sender; a receiver that refused a
    // longer form would gain nothing (the length means the same), and
    // tungstenite and fastwebsockets accept it too, so we do.
    for (len, form) in [(5, Len::Bits16), (5, Len::Bits64), (200, Len::Bits64)] {
        let payload = vec![b'x'; len];
        let bytes = frame_with(FIN | OP_TEXT, &payload, Some(MASK), form);
        assert_eq!(
            read(&[bytes]).await,
            (vec![message(&payload)], Answer::Nothing),
            "{len} in {form:?}"
        );
    }
    let ping_64 = frame_with(FIN | OP_PING, b"p", Some(MASK), Len::Bits64);
    assert_eq!(read(&[ping_64]).await, (vec![ping(b"p")], Answer::Nothing));
}

/// A masked binary frame header announcing `len` payload bytes in 64 bits.
fn header_64(first: u8, len: u64) -> Vec<u8> {
    let mut header = vec![first, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&MASK);
    header
}

#[tokio::test]
async fn a_64_bit_length_with_its_top_bit_set_is_refused() {
    // RFC 6455 §5.2: the most significant bit must be 0. 1002, not 1009:
    // it is a malformed frame, not a large one.
    for len in [1 << 63, u64::MAX] {
        assert_eq!(
            read(&[header_64(FIN | OP_BINARY, len)]).await,
            refused(1002)
        );
    }
    // The largest length allowed is only too big.
    assert_eq!(
        read(&[header_64(FIN | OP_BINARY, (1 << 63) - 1)]).await,
        refused(1009)
    );
}

#[tokio::test]
async fn a_message_over_the_cap_is_1009_before_its_payload() {
    // [9.x] sizes: the header alone decides.
    assert_eq!(
        read(&[header_64(FIN | OP_TEXT, 1 << 40)]).await,
        refused(1009)
    );
    let over = vec![b'x'; CAP + 1];
    assert_eq!(read(&[frame(true, OP_BINARY, &over)]).await, refused(1009));
    // Fragments count together.
    let frames = [
        frame(false, OP_BINARY, &over[..CAP / 2]),
        frame(false, OP_CONTINUATION, &over[..CAP / 2]),
        frame(true, OP_CONTINUATION, b"x"),
    ];
    assert_eq!(read(&frames).await, refused(1009));
    // With the smallest cap the server allows.
    let frames = [
        frame(false, OP_TEXT, &[b'a'; 200]),
        frame(true, OP_CONTINUATION, &[b'b'; 57]),
    ];
    assert_eq!(read_capped(&frames, 256).await, refused(1009));
}

// ---------------------------------------------------------------------------
// Over a real socket, against the real binary.

const STUDENT: &str = "token=tok-s25&user_id=25&lesson_id=100";

async fn chat() -> (DjangoStandin, Server) {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", 10, true);
    django.add_user("tok-s25", 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), &[]);
    (django, server)
}

/// A frame from the server (never masked).
#[derive(Debug, PartialEq, Eq)]
struct ServerFrame {
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client that writes whatever bytes it is given: the
/// handshake by hand, then raw frames.
struct Raw {
    stream: TcpStream,
    /// Received and not yet parsed.
    buf: Vec<u8>,
}

/// The handshake headers of a valid upgrade (RFC 6455 §4.1).
const KEY_AND_VERSION: &str =
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

impl Raw {
    /// An upgraded connection.
    async fn connect(server: &Server) -> Raw {
        let (raw, head) = Raw::handshake(server, KEY_AND_VERSION).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// An upgrade request with `headers` besides `Connection` and
    /// `Upgrade`; the answer's head.
    async fn handshake(server: &Server, headers: &str) -> (Raw, String) {
        let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
        let request = format!(
            "GET /ws?{STUDENT} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\n{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(raw.fill().await, "no handshake answer");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        raw.buf.drain(..end);
        (raw, head)
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk));
        match read.await.expect("the server answers within 5 s") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn send(&mut self, frames: &[Vec<u8>]) {
        self.stream.write_all(&frames.concat()).await.expect("send");
    }

    /// The next frame from the server; `None` at the end of the stream.
    async fn frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Frames until the server's close, which is returned last.
    async fn until_close(&mut self) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.frame().await {
            let last = frame.opcode == OP_CLOSE;
            frames.push(frame);
            if last {
                return frames;
            }
        }
        panic!("the stream ended without a close frame: {frames:?}");
    }

    /// The code of the server's close frame.
    async fn close_code(&mut self) -> u16 {
        let frames = self.until_close().await;
        let payload = &frames.last().expect("a close frame").payload;
        u16::from_be_bytes([payload[0], payload[1]])
    }
}

/// A whole server frame at the start of `bytes`, and its length.
fn parse_server_frame(bytes: &[u8]) -> Option<(ServerFrame, usize)> {
    let [first, second, ..] = *bytes else {
        return None;
    };
    assert_eq!(second & 0x80, 0, "server frames are never masked");
    let (len, header) = match second {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => {
            let be: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(be)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(header..header + len)?.to_vec();
    let frame = ServerFrame {
        opcode: first & 0x0f,
        payload,
    };
    Some((frame, header + len))
}

#[tokio::test]
async fn a_handshake_without_a_key_or_of_another_version_is_400() {
    // RFC 6455 §4.2.1: the key and version 13 are required; the upgrade is
    // refused as plain HTTP, and the server goes on upgrading others.
    let (_django, server) = chat().await;
    let headers = [
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ];
    for headers in headers {
        let (_, head) = Raw::handshake(&server, headers).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{headers:?}: {head}");
    }
    let (_, head) = Raw::handshake(&server, KEY_AND_VERSION).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn the_readers_close_codes_reach_the_wire() {
    let (_django, server) = chat().await;
    let cases: [(&str, Vec<Vec<u8>>, u16); 9] = [
        (
            "reserved bit",
            vec![frame_with(
                FIN | 0x40 | OP_TEXT,
                b"{}",
                Some(MASK),
                Len::Shortest,
            )],
            1002,
        ),
        (
            "unmasked",
            vec![frame_with(FIN | OP_TEXT, b"{}", None, Len::Shortest)],
            1002,
        ),
        ("reserved opcode", vec![frame(true, 3, b"")], 1002),
        (
            "lone continuation",
            vec![frame(true, OP_CONTINUATION, b"x")],
            1002,
        ),
        (
            "ping of 126 bytes",
            vec![frame(true, OP_PING, &[0; 126])],
            1002,
        ),
        (
            "close code 1005",
            vec![frame(true, OP_CLOSE, &close_payload(1005, b""))],
            1002,
        ),
        (
            "bad UTF-8 across fragments",
            fragmented(b"\"\xe2\x9cA\"", &[2]),
            1007,
        ),
        // The header alone: the server closes without waiting for 1 TiB.
        (
            "1 TiB announced",
            vec![header_64(FIN | OP_TEXT, 1 << 40)],
            1009,
        ),
        (
            "64-bit length, top bit set",
            vec![header_64(FIN | OP_TEXT, 1 << 63)],
            1002,
        ),
    ];
    for (name, frames, code) in cases {
        let mut client = Raw::connect(&server).await;
        client.send(&frames).await;
        assert_eq!(client.close_code().await, code, "{name}");
        // The server then closes the socket.
        assert_eq!(client.frame().await, None, "{name}");
    }
}

#[tokio::test]
async fn a_client_close_is_echoed_on_the_wire() {
    let (_django, server) = chat().await;
    let mut client = Raw::connect(&server).await;
    let close = close_payload(4000, "done ✓".as_bytes());
    client.send(&[frame(true, OP_CLOSE, &close)]).await;
    let frames = client.until_close().await;
    assert_eq!(frames.last().map(|f| &f.payload), Some(&close));
    assert_eq!(client.frame().await, None);
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_between_is_ponged_then_acked() {
    let (_django, server) = chat().await;
    let mut client = Raw::connect(&server).await;
    let json = r#"{"type":"message","text":"fragments ✓","client_id":"frag-1"}"#.as_bytes();
    // Cut inside the three bytes of '✓', with a ping between.
    let check = json
        .windows(3)
        .position(|w| w == "✓".as_bytes())
        .expect("✓");
    let mut frames = fragmented(json, &[10, check + 1]);
    frames.insert(1, frame(true, OP_PING, b"between"));
    client.send(&frames).await;
    let mut pong_seen = false;
    loop {
        let frame = client.frame().await.expect("the server answers");
        match frame.opcode {
            OP_PONG => {
                assert_eq!(frame.payload, b"between");
                pong_seen = true;
            }
            OP_TEXT => {
                let event: serde_json::Value =
                    serde_json::from_slice(&frame.payload).expect("JSON");
                if event["type"] == "message" {
                    assert_eq!(event["text"], "fragments ✓");
                }
                if event["type"] == "ack" {
                    assert_eq!(event["client_id"], "frag-1");
                    break;
                }
            }
            other => panic!("unexpected opcode {other}: {frame:?}"),
        }
    }
    assert!(pong_seen, "the pong comes before the ack");
}
