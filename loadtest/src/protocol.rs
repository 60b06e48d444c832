//! The generator's side of CONTRACT §3: encoding its `message` frames and
//! recognising the events it counts.
//!
//! Inbound events are recognised by scanning for `"key":` markers instead of
//! parsing JSON: the generator reads three events per message sent, and a scan
//! costs a fraction of a parse. It is exact for the server's output because an
//! unescaped `"` can only appear at JSON structure, never inside a string value.

use std::io::Write;

/// What the generator counts in one inbound text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A chat message; `sent_at` is the send timestamp the generator embedded in its text.
    Message {
        sender_id: Option<i64>,
        sent_at: Option<u64>,
    },
    Ack,
    /// A refused frame; `for_message` when it names a `client_id` (so a message will never be acked).
    Error {
        code: &'a str,
        for_message: bool,
    },
    /// presence, typing, viewed and anything new.
    Other,
}

/// Writes one `message` frame payload: the text starts with the send time in
/// nanoseconds and is padded with `x` to `text_bytes`.
pub fn encode_message(buf: &mut Vec<u8>, sent_at: u64, text_bytes: usize, client_id: ClientId<'_>) {
    buf.clear();
    buf.extend_from_slice(br#"{"type":"message","text":""#);
    let text_start = buf.len();
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{sent_at} ");
    let written = buf.len() - text_start;
    buf.resize(buf.len() + text_bytes.saturating_sub(written), b'x');
    let _ = write!(
        buf,
        r#"","client_id":"{}-{}-{}"}}"#,
        client_id.run, client_id.connection, client_id.seq
    );
}

/// The parts of a unique `client_id`: unique per run, connection and message.
#[derive(Debug, Clone, Copy)]
pub struct ClientId<'a> {
    pub run: &'a str,
    pub connection: u64,
    pub seq: u64,
}

pub fn classify(payload: &[u8]) -> Event<'_> {
    let Some(kind) = string_after(payload, br#""type":""#) else {
        return Event::Other;
    };
    match kind {
        b"message" => Event::Message {
            sender_id: int_after(payload, br#""sender_id":"#).map(|v| v as i64),
            sent_at: string_start(payload, br#""text":""#).and_then(leading_u64),
        },
        b"ack" => Event::Ack,
        b"error" => {
            let code = string_after(payload, br#""code":""#)
                .and_then(|c| std::str::from_utf8(c).ok())
                .unwrap_or("?");
            Event::Error {
                code,
                for_message: find(payload, br#""client_id":""#).is_some(),
            }
        }
        _ => Event::Other,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bytes after `marker`.
fn string_start<'a>(payload: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    find(payload, marker).map(|at| &payload[at + marker.len()..])
}

/// The string value after `marker` (which ends with the opening quote), up to its closing quote.
fn string_after<'a>(payload: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    let rest = string_start(payload, marker)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

fn int_after(payload: &[u8], marker: &[u8]) -> Option<u64> {
    let rest = string_start(payload, marker)?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    leading_u64(rest)
}

fn leading_u64(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_message_is_the_contract_json_with_a_timestamp() {
        let mut buf = Vec::new();
        encode_message(
            &mut buf,
            123_456,
            16,
            ClientId {
                run: "r1",
                connection: 7,
                seq: 9,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["text"], "123456 xxxxxxxxx");
        assert_eq!(v["client_id"], "r1-7-9");
        // A short target length never truncates the timestamp.
        encode_message(
            &mut buf,
            123_456,
            0,
            ClientId {
                run: "r",
                connection: 0,
                seq: 0,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["text"], "123456 ");
    }

    #[test]
    fn classifies_server_events_in_any_field_order() {
        let m = br#"{"type":"message","id":"663af8129dde123456789def","conversation_id":"663af8129dde123456789dee","sender_id":1000,"text":"987654321 xx","created_at":"2025-01-01T10:00:00Z","client_id":"r-1-2"}"#;
        assert_eq!(
            classify(m),
            Event::Message {
                sender_id: Some(1000),
                sent_at: Some(987_654_321)
            }
        );
        let reordered = br#"{"text":"55 \"type\":\"ack\"","sender_id": 1000001,"type":"message"}"#;
        assert_eq!(
            classify(reordered),
            Event::Message {
                sender_id: Some(1_000_001),
                sent_at: Some(55)
            }
        );
        let foreign = br#"{"type":"message","sender_id":3,"text":"hello"}"#;
        assert_eq!(
            classify(foreign),
            Event::Message {
                sender_id: Some(3),
                sent_at: None
            }
        );
        assert_eq!(
            classify(br#"{"type":"ack","id":"x","client_id":"r-1-2"}"#),
            Event::Ack
        );
        assert_eq!(
            classify(br#"{"type":"error","code":"overloaded","message":"m","client_id":"c"}"#),
            Event::Error {
                code: "overloaded",
                for_message: true
            }
        );
        assert_eq!(
            classify(br#"{"type":"error","code":"bad_json","message":"m"}"#),
            Event::Error {
                code: "bad_json",
                for_message: false
            }
        );
        assert_eq!(
            classify(br#"{"type":"presence","user_id":1,"online":true}"#),
            Event::Other
        );
        assert_eq!(classify(b"not json"), Event::Other);
    }
}
