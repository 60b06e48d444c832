//! The JSON events of `/ws` (CONTRACT §3): inbound parsing and outbound
//! encoding.
//!
//! Inbound frames are parsed with simd-json and checked field by field, so
//! every refusal has a precise `error` code. Outbound events are encoded
//! straight into a complete WebSocket frame, once per event, whatever the
//! number of recipients.

use bytes::Bytes;
use serde::Serialize;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::{frame, json_guard};
use crate::model::{ConversationId, Message, MessageId, ObjectId, Seq, UserId};

/// Longest `client_id`, in bytes.
pub(crate) const MAX_CLIENT_ID_BYTES: usize = 64;

/// An inbound event that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Message {
        text: String,
        client_id: Option<String>,
    },
    Typing {
        is_typing: bool,
    },
    Viewed {
        message_id: MessageId,
    },
    /// Ours (CONTRACT §6): move the read cursor to `seq`.
    Read {
        seq: Seq,
    },
}

/// The `code` of an `error` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    EmptyText,
    TextTooLong,
    BadClientId,
    MessageNotFound,
    BadSeq,
    Forbidden,
    Overloaded,
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics created at start.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::EmptyText,
        ErrorCode::TextTooLong,
        ErrorCode::BadClientId,
        ErrorCode::MessageNotFound,
        ErrorCode::BadSeq,
        ErrorCode::Forbidden,
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::BadClientId => "bad_client_id",
            ErrorCode::MessageNotFound => "message_not_found",
            ErrorCode::BadSeq => "bad_seq",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why an inbound frame was refused; becomes an `error` event.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// The frame's `client_id`, when it had a valid one, so the client can
    /// match the refusal to what it sent.
    pub(crate) client_id: Option<String>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            client_id: None,
        }
    }

    /// The `error` event for this refusal.
    pub(crate) fn to_frame(&self) -> Bytes {
        error_event(self.code, &self.message, self.client_id.as_deref())
    }
}

/// Parses one inbound message (a whole WebSocket message, text or binary).
/// `buf` is used as simd-json's scratch space.
pub fn parse(buf: &mut [u8], max_text_bytes: usize) -> Result<Inbound, Refusal> {
    // Before simd-json: it recurses per nesting level and rewrites lone
    // surrogates, both in ways only the raw bytes can catch.
    json_guard::check(buf)
        .map_err(|flaw| Refusal::new(ErrorCode::BadJson, format!("invalid JSON: {flaw}")))?;
    let value = simd_json::to_borrowed_value(buf)
        .map_err(|e| Refusal::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
    if value.as_object().is_none() {
        return Err(Refusal::new(ErrorCode::BadJson, "expected a JSON object"));
    }
    let kind = match value.get("type") {
        Some(kind) => kind
            .as_str()
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownType, "\"type\" must be a string"))?,
        None => return Err(Refusal::new(ErrorCode::UnknownType, "missing \"type\"")),
    };
    match kind {
        "message" => parse_message(&value, max_text_bytes),
        "typing" => match value.get("is_typing") {
            None => Ok(Inbound::Typing { is_typing: false }),
            Some(flag) if flag.is_null() => Ok(Inbound::Typing { is_typing: false }),
            Some(flag) => flag
                .as_bool()
                .map(|is_typing| Inbound::Typing { is_typing })
                .ok_or_else(|| Refusal::new(ErrorCode::BadJson, "\"is_typing\" must be a boolean")),
        },
        "viewed" => value
            .get("message_id")
            .and_then(|id| id.as_str())
            .and_then(ObjectId::parse)
            .map(|message_id| Inbound::Viewed { message_id })
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::MessageNotFound,
                    "\"message_id\" must be a 24-hex-digit message id",
                )
            }),
        "read" => value
            .get("seq")
            .and_then(|seq| seq.as_u64())
            .filter(|&seq| i64::try_from(seq).is_ok())
            .map(|seq| Inbound::Read { seq })
            .ok_or_else(|| {
                Refusal::new(ErrorCode::BadSeq, "\"seq\" must be a non-negative integer")
            }),
        other => Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown type {:?}", truncate(other, 40)),
        )),
    }
}

fn parse_message(value: &BorrowedValue<'_>, max_text_bytes: usize) -> Result<Inbound, Refusal> {
    let client_id = match value.get("client_id") {
        None => None,
        Some(id) if id.is_null() => None,
        Some(id) => match id.as_str() {
            Some(id) if !id.is_empty() && id.len() <= MAX_CLIENT_ID_BYTES => Some(id.to_string()),
            _ => {
                return Err(Refusal::new(
                    ErrorCode::BadClientId,
                    "\"client_id\" must be a string of 1 to 64 bytes",
                ))
            }
        },
    };
    let with_client_id = |mut refusal: Refusal| {
        refusal.client_id.clone_from(&client_id);
        refusal
    };
    let text = match value.get("text") {
        None => {
            return Err(with_client_id(Refusal::new(
                ErrorCode::EmptyText,
                "missing \"text\"",
            )))
        }
        Some(text) if text.is_null() => {
            return Err(with_client_id(Refusal::new(
                ErrorCode::EmptyText,
                "missing \"text\"",
            )))
        }
        Some(text) => text.as_str().ok_or_else(|| {
            with_client_id(Refusal::new(
                ErrorCode::BadJson,
                "\"text\" must be a string",
            ))
        })?,
    };
    if text.is_empty() {
        return Err(with_client_id(Refusal::new(
            ErrorCode::EmptyText,
            "\"text\" is empty",
        )));
    }
    if text.len() > max_text_bytes {
        return Err(with_client_id(Refusal::new(
            ErrorCode::TextTooLong,
            format!(
                "\"text\" is {} bytes; at most {max_text_bytes} are allowed",
                text.len()
            ),
        )));
    }
    Ok(Inbound::Message {
        text: text.to_string(),
        client_id,
    })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Encodes `event` as JSON straight into a text frame: the JSON is written
/// after room for the longest header, and the header is placed right before
/// it, so the frame is built with one allocation and no copy.
fn encode<T: Serialize>(event: &T) -> Bytes {
    const ROOM: usize = frame::MAX_HEADER;
    let mut buf = Vec::with_capacity(192);
    buf.extend_from_slice(&[0u8; ROOM]);
    if serde_json::to_writer(&mut buf, event).is_err() {
        // Unreachable for these plain structs; never send a half-written event.
        return frame::text(br#"{"type":"error","code":"internal","message":"encoding failed"}"#);
    }
    let (head, n) = frame::header(frame::OP_TEXT, buf.len() - ROOM);
    buf[ROOM - n..ROOM].copy_from_slice(&head[..n]);
    Bytes::from(buf).slice(ROOM - n..)
}

#[derive(Serialize)]
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a MessageId,
    conversation_id: &'a ConversationId,
    sender_id: UserId,
    text: &'a str,
    created_at: String,
    seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// `{"type":"message","id","conversation_id","sender_id","text","created_at","seq","client_id"?}`
pub fn message_event(message: &Message) -> Bytes {
    encode(&MessageEvent {
        kind: "message",
        id: &message.id,
        conversation_id: &message.conversation_id,
        sender_id: message.sender_id,
        text: &message.text,
        created_at: message.created_at.rfc3339(),
        seq: message.seq,
        client_id: message.client_id.as_deref(),
    })
}

#[derive(Serialize)]
struct RecoveredEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    conversation_id: &'a ConversationId,
    from_seq: Seq,
    last_seq: Seq,
    complete: bool,
}

/// `{"type":"recovered","conversation_id","from_seq","last_seq","complete"}`:
/// the replay asked for with `since_seq` is over (CONTRACT §6).
pub fn recovered_event(
    conversation_id: &ConversationId,
    from_seq: Seq,
    last_seq: Seq,
    complete: bool,
) -> Bytes {
    encode(&RecoveredEvent {
        kind: "recovered",
        conversation_id,
        from_seq,
        last_seq,
        complete,
    })
}

#[derive(Serialize)]
struct TypingEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    conversation_id: &'a ConversationId,
    sender_id: UserId,
    is_typing: bool,
}

/// `{"type":"typing","conversation_id","sender_id","is_typing"}` (always
/// with `is_typing`; the seed omitted it when false).
pub fn typing_event(conversation_id: &ConversationId, sender_id: UserId, is_typing: bool) -> Bytes {
    encode(&TypingEvent {
        kind: "typing",
        conversation_id,
        sender_id,
        is_typing,
    })
}

#[derive(Serialize)]
struct ViewedEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: &'a MessageId,
    viewer_id: UserId,
    conversation_id: &'a ConversationId,
}

/// `{"type":"viewed","message_id","viewer_id","conversation_id"}`
pub fn viewed_event(
    conversation_id: &ConversationId,
    message_id: &MessageId,
    viewer_id: UserId,
) -> Bytes {
    encode(&ViewedEvent {
        kind: "viewed",
        message_id,
        viewer_id,
        conversation_id,
    })
}

#[derive(Serialize)]
struct ReadEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    conversation_id: &'a ConversationId,
    user_id: UserId,
    last_read_seq: Seq,
}

/// `{"type":"read","conversation_id","user_id","last_read_seq"}`: a read
/// cursor moved (CONTRACT §6).
pub fn read_event(conversation_id: &ConversationId, user_id: UserId, last_read_seq: Seq) -> Bytes {
    encode(&ReadEvent {
        kind: "read",
        conversation_id,
        user_id,
        last_read_seq,
    })
}

#[derive(Serialize)]
struct AckEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a MessageId,
    seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// `{"type":"ack","id","seq","client_id"?}`: the message is durable.
pub fn ack_event(id: &MessageId, seq: Seq, client_id: Option<&str>) -> Bytes {
    encode(&AckEvent {
        kind: "ack",
        id,
        seq,
        client_id,
    })
}

#[derive(Serialize)]
struct PresenceEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    user_id: UserId,
    online: bool,
}

/// `{"type":"presence","user_id","online"}`
pub fn presence_event(user_id: UserId, online: bool) -> Bytes {
    encode(&PresenceEvent {
        kind: "presence",
        user_id,
        online,
    })
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// `{"type":"error","code","message","client_id"?}`
pub fn error_event(code: ErrorCode, message: &str, client_id: Option<&str>) -> Bytes {
    crate::metrics::get()
        .ws_errors
        .get_or_create(&crate::metrics::CodeLabels {
            code: code.as_str(),
        })
        .inc();
    encode(&ErrorEvent {
        kind: "error",
        code: code.as_str(),
        message,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;

    fn parse_str(json: &str) -> Result<Inbound, Refusal> {
        let mut buf = json.as_bytes().to_vec();
        parse(&mut buf, 16)
    }

    fn code_of(json: &str) -> ErrorCode {
        parse_str(json).unwrap_err().code
    }

    /// Decodes an encoded frame back to JSON, checking the header on the way.
    fn json_of(frame: &Bytes) -> serde_json::Value {
        assert_eq!(frame[0], 0x81, "a final text frame");
        let (len, start) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        assert_eq!(frame.len(), start + len);
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn parses_the_seed_examples() {
        let mut buf = br#"{"type": "message", "text": "Hello, mentor!"}"#.to_vec();
        assert_eq!(
            parse(&mut buf, 8192).unwrap(),
            Inbound::Message {
                text: "Hello, mentor!".into(),
                client_id: None
            }
        );
        assert_eq!(
            parse_str(r#"{"type": "typing", "is_typing": true}"#).unwrap(),
            Inbound::Typing { is_typing: true }
        );
        assert_eq!(
            parse_str(r#"{"type": "viewed", "message_id": "663af8129dde123456789def"}"#).unwrap(),
            Inbound::Viewed {
                message_id: ObjectId::parse("663af8129dde123456789def").unwrap()
            }
        );
    }

    #[test]
    fn text_is_kept_byte_exact() {
        let mut buf =
            r#"{"type":"message","text":"a\u0000b \"q\" \ud83d\ude00 ש","client_id":"c-1"}"#
                .as_bytes()
                .to_vec();
        match parse(&mut buf, 8192).unwrap() {
            Inbound::Message { text, client_id } => {
                assert_eq!(text, "a\u{0}b \"q\" 😀 ש");
                assert_eq!(client_id.as_deref(), Some("c-1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_have_precise_codes() {
        assert_eq!(code_of("not json"), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code_of(r#""message""#), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"text":"x"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"shout"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"message"}"#), ErrorCode::EmptyText);
        assert_eq!(
            code_of(r#"{"type":"message","text":""}"#),
            ErrorCode::EmptyText
        );
        assert_eq!(
            code_of(r#"{"type":"message","text":7}"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code_of(r#"{"type":"message","text":"12345678901234567"}"#),
            ErrorCode::TextTooLong
        );
        assert_eq!(
            code_of(r#"{"type":"message","text":"x","client_id":""}"#),
            ErrorCode::BadClientId
        );
        assert_eq!(
            code_of(r#"{"type":"message","text":"x","client_id":3}"#),
            ErrorCode::BadClientId
        );
        let long_id = format!(
            r#"{{"type":"message","text":"x","client_id":"{}"}}"#,
            "a".repeat(65)
        );
        assert_eq!(code_of(&long_id), ErrorCode::BadClientId);
        assert_eq!(
            code_of(r#"{"type":"typing","is_typing":"yes"}"#),
            ErrorCode::BadJson
        );
        assert_eq!(code_of(r#"{"type":"viewed"}"#), ErrorCode::MessageNotFound);
        assert_eq!(
            code_of(r#"{"type":"viewed","message_id":"nope"}"#),
            ErrorCode::MessageNotFound
        );
    }

    #[test]
    fn refusal_of_a_message_echoes_its_client_id() {
        let refusal = parse_str(r#"{"type":"message","text":"","client_id":"k9"}"#).unwrap_err();
        assert_eq!(refusal.client_id.as_deref(), Some("k9"));
        let event = json_of(&refusal.to_frame());
        assert_eq!(event["type"], "error");
        assert_eq!(event["code"], "empty_text");
        assert_eq!(event["client_id"], "k9");
    }

    #[test]
    fn typing_without_flag_means_stopped() {
        assert_eq!(
            parse_str(r#"{"type":"typing"}"#).unwrap(),
            Inbound::Typing { is_typing: false }
        );
    }

    #[test]
    fn message_event_has_every_field() {
        let message = Message {
            id: ObjectId::parse("663af8129dde123456789def").unwrap(),
            conversation_id: ObjectId::parse("663af8129dde123456789abc").unwrap(),
            sender_id: 10,
            text: "Hello!".into(),
            created_at: Millis(1_735_725_600_000),
            seq: 42,
            client_id: Some("c1".into()),
            viewed_by: None,
            viewed_at: None,
        };
        let event = json_of(&message_event(&message));
        assert_eq!(
            event,
            serde_json::json!({
                "type": "message",
                "id": "663af8129dde123456789def",
                "conversation_id": "663af8129dde123456789abc",
                "sender_id": 10,
                "text": "Hello!",
                "created_at": "2025-01-01T10:00:00.000Z",
                "seq": 42,
                "client_id": "c1"
            })
        );
    }

    #[test]
    fn other_events_have_their_fields() {
        let conv = ObjectId::parse("663af8129dde123456789abc").unwrap();
        let msg = ObjectId::parse("663af8129dde123456789def").unwrap();
        assert_eq!(
            json_of(&typing_event(&conv, 10, false)),
            serde_json::json!({"type":"typing","conversation_id":conv.to_string(),"sender_id":10,"is_typing":false})
        );
        assert_eq!(
            json_of(&viewed_event(&conv, &msg, 15)),
            serde_json::json!({"type":"viewed","message_id":msg.to_string(),"viewer_id":15,"conversation_id":conv.to_string()})
        );
        assert_eq!(
            json_of(&ack_event(&msg, 7, None)),
            serde_json::json!({"type":"ack","id":msg.to_string(),"seq":7})
        );
        assert_eq!(
            json_of(&ack_event(&msg, 8, Some("x"))),
            serde_json::json!({"type":"ack","id":msg.to_string(),"seq":8,"client_id":"x"})
        );
        assert_eq!(
            json_of(&recovered_event(&conv, 4, 9, false)),
            serde_json::json!({"type":"recovered","conversation_id":conv.to_string(),"from_seq":4,"last_seq":9,"complete":false})
        );
        assert_eq!(
            json_of(&presence_event(15, true)),
            serde_json::json!({"type":"presence","user_id":15,"online":true})
        );
    }

    #[test]
    fn large_events_get_the_long_header() {
        let message = Message {
            id: ObjectId::new(),
            conversation_id: ObjectId::new(),
            sender_id: 1,
            text: "x".repeat(70_000),
            created_at: Millis(0),
            seq: 0,
            client_id: None,
            viewed_by: None,
            viewed_at: None,
        };
        let frame = message_event(&message);
        assert_eq!(frame[1], 127);
        assert_eq!(json_of(&frame)["text"].as_str().unwrap().len(), 70_000);
        let mid = Message {
            text: "y".repeat(1000),
            ..message
        };
        assert_eq!(message_event(&mid)[1], 126);
    }

    /// A `message` whose extra field `x` holds `depth` levels of `open`.
    fn nested_in_message(depth: usize, open: &str, close: &str) -> String {
        format!(
            r#"{{"type":"message","text":"hi","x":{}1{}}}"#,
            open.repeat(depth),
            close.repeat(depth)
        )
    }

    #[test]
    fn deep_nesting_is_bad_json_not_a_stack_overflow() {
        // The message's own object is one level: its extra field may add
        // MAX_DEPTH - 1 more.
        for depth in [json_guard::MAX_DEPTH + 1, 100_000] {
            for json in [
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
                format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)),
                nested_in_message(depth - 1, "[", "]"),
                nested_in_message(depth - 1, r#"{"a":"#, "}"),
            ] {
                let refusal = parse_str(&json).unwrap_err();
                assert_eq!(refusal.code, ErrorCode::BadJson, "depth {depth}");
                assert!(refusal.message.contains("nested deeper"), "{refusal:?}");
            }
        }
        for open in ["[", r#"{"a":"#] {
            let close = if open == "[" { "]" } else { "}" };
            let fits = nested_in_message(json_guard::MAX_DEPTH - 1, open, close);
            assert!(matches!(parse_str(&fits), Ok(Inbound::Message { .. })));
        }
    }

    #[test]
    fn unpaired_surrogates_are_bad_json_in_every_field() {
        for json in [
            r#"{"type":"message","text":"ab\ud800"}"#,
            r#"{"type":"message","text":"ab\udc00"}"#,
            r#"{"type":"message","text":"\ud800\u0041"}"#,
            r#"{"type":"message","text":"\ude00\ud83d"}"#,
            r#"{"type":"message","text":"ok","client_id":"c\udbff"}"#,
            r#"{"type":"message\ud800","text":"ok"}"#,
            r#"{"type":"viewed","message_id":"663af8129dde123456789de\udfff"}"#,
            r#"{"type":"typing","is_typing":true,"x":"\ud800"}"#,
        ] {
            let refusal = parse_str(json).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadJson, "{json}");
            assert!(refusal.message.contains("surrogate"), "{refusal:?}");
        }
    }

    #[test]
    fn surrogate_pairs_round_trip() {
        let json = r#"{"type":"message","text":"\ud83d\ude00\uD834\uDD1E\udbff\udfff","client_id":"\ud83d\udc4d"}"#;
        assert_eq!(
            parse_str(json),
            Ok(Inbound::Message {
                text: "😀𝄞\u{10ffff}".into(),
                client_id: Some("👍".into()),
            })
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const MAX_TEXT: usize = 1 << 20;

        fn parse_bytes(json: &[u8]) -> Result<Inbound, Refusal> {
            parse(&mut json.to_vec(), MAX_TEXT)
        }

        /// One piece of a JSON string body: a `\u` escape (surrogates
        /// included, either case), a short escape, or a plain character.
        fn piece() -> impl Strategy<Value = String> {
            let unit = prop_oneof![
                0xd800u16..=0xdbff,
                0xdc00u16..=0xdfff,
                0u16..0x80,
                any::<u16>(),
            ];
            let escape = (unit, any::<bool>()).prop_map(|(unit, upper)| {
                if upper {
                    format!("\\u{unit:04X}")
                } else {
                    format!("\\u{unit:04x}")
                }
            });
            let short = prop::sample::select(vec![
                "\\n", "\\\"", "\\\\", "\\/", "\\t", "\\r", "\\b", "\\f",
            ])
            .prop_map(String::from);
            let plain = any::<char>()
                .prop_filter("JSON text", |c| *c >= ' ' && *c != '"' && *c != '\\')
                .prop_map(String::from);
            prop_oneof![3 => escape, 1 => short, 2 => plain]
        }

        /// Which field of a `message` the generated string goes into.
        #[derive(Clone, Copy, Debug)]
        enum Field {
            Text,
            ClientId,
            Extra,
        }

        /// A JSON-ish token, for inputs shaped like events but not always valid.
        fn token() -> impl Strategy<Value = String> {
            let fixed = prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "\"type\"",
                "\"message\"",
                "\"typing\"",
                "\"viewed\"",
                "\"text\"",
                "\"client_id\"",
                "\"is_typing\"",
                "\"message_id\"",
                "\"663af8129dde123456789def\"",
                "true",
                "false",
                "null",
                "0",
                "-1.5e3",
                "\"\\ud800\"",
                "\"\\udc00\"",
                "\"\\ud83d\\ude00\"",
                "\"\\u0000\"",
                "\"\\\\\"",
                "\"\\\"\"",
                "\"",
                "\\",
                " ",
                "\"hi\"",
                "\"\\u12\"",
                "1e999",
            ])
            .prop_map(String::from);
            let string = prop::collection::vec(piece(), 0..4)
                .prop_map(|pieces| format!("\"{}\"", pieces.concat()));
            prop_oneof![4 => fixed, 1 => string]
        }

        /// Arrays/objects nested around a token soup, sometimes left open.
        fn json_ish() -> impl Strategy<Value = String> {
            let opener = prop::sample::select(vec!["[", "{\"a\":", "{\"type\":\"message\",\"x\":"]);
            (
                prop::collection::vec(opener, 0..40),
                prop::collection::vec(token(), 0..24),
                any::<bool>(),
                prop::option::of(prop::sample::select(vec![
                    r#"{"type":"message","text":"hi","#,
                    r#"{"type":"typing","#,
                    r#"{"type":"viewed","message_id":"#,
                ])),
            )
                .prop_map(|(openers, tokens, close, prefix)| {
                    let mut json = prefix.unwrap_or_default().to_string();
                    for open in &openers {
                        json.push_str(open);
                    }
                    json.push_str(&tokens.concat());
                    if close {
                        for open in openers.into_iter().rev() {
                            json.push(if open == "[" { ']' } else { '}' });
                        }
                    }
                    json
                })
        }

        /// Nesting depth of a parsed value (serde_json caps it at 128).
        fn depth(value: &serde_json::Value) -> usize {
            match value {
                serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        /// What any refusal must look like.
        fn well_formed(result: &Result<Inbound, Refusal>) {
            match result {
                Err(refusal) => assert!(!refusal.message.is_empty()),
                Ok(Inbound::Message { text, client_id }) => {
                    assert!(!text.is_empty() && text.len() <= MAX_TEXT);
                    if let Some(id) = client_id {
                        assert!(!id.is_empty() && id.len() <= MAX_CLIENT_ID_BYTES);
                    }
                }
                Ok(_) => {}
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Strings of escapes decode exactly as serde_json decodes them,
            /// and are refused (bad_json) exactly when serde_json refuses.
            #[test]
            fn escapes_decode_like_serde_json(
                pieces in prop::collection::vec(piece(), 1..12),
                field in prop_oneof![Just(Field::Text), Just(Field::ClientId), Just(Field::Extra)],
            ) {
                let body = pieces.concat();
                let json = match field {
                    Field::Text => format!(r#"{{"type":"message","text":"{body}"}}"#),
                    Field::ClientId => format!(r#"{{"type":"message","text":"t","client_id":"{body}"}}"#),
                    Field::Extra => format!(r#"{{"type":"message","text":"t","x":"{body}"}}"#),
                };
                let ours = parse_bytes(json.as_bytes());
                let reference = serde_json::from_str::<serde_json::Value>(&json);
                match reference {
                    Err(_) => prop_assert_eq!(ours.map_err(|r| r.code), Err(ErrorCode::BadJson), "{}", json),
                    Ok(value) => {
                        let decoded = match field {
                            Field::Text => &value["text"],
                            Field::ClientId => &value["client_id"],
                            Field::Extra => &value["x"],
                        }.as_str().unwrap_or_default().to_string();
                        let expected = match field {
                            Field::Text if decoded.is_empty() => Err(ErrorCode::EmptyText),
                            Field::Text => Ok(Inbound::Message { text: decoded, client_id: None }),
                            Field::ClientId if decoded.is_empty() || decoded.len() > MAX_CLIENT_ID_BYTES => {
                                Err(ErrorCode::BadClientId)
                            }
                            Field::ClientId => Ok(Inbound::Message { text: "t".into(), client_id: Some(decoded) }),
                            Field::Extra => Ok(Inbound::Message { text: "t".into(), client_id: None }),
                        };
                        prop_assert_eq!(ours.map_err(|r| r.code), expected, "{}", json);
                    }
                }
            }

            /// Arbitrary bytes never panic; whatever is accepted is in bounds.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                well_formed(&parse_bytes(&bytes));
            }

            /// Event-shaped inputs: never a panic, too deep is always
            /// bad_json, what serde_json refuses is refused, and an accepted
            /// text is the one serde_json reads.
            #[test]
            fn json_ish_inputs_agree_with_serde_json(json in json_ish()) {
                let ours = parse_bytes(json.as_bytes());
                well_formed(&ours);
                match serde_json::from_str::<serde_json::Value>(&json) {
                    Err(_) => prop_assert!(ours.is_err(), "accepted what serde_json refuses: {}", json),
                    Ok(value) => {
                        if depth(&value) > json_guard::MAX_DEPTH {
                            prop_assert_eq!(ours.as_ref().map_err(|r| r.code), Err(ErrorCode::BadJson), "{}", json);
                        }
                        // With one top-level "text" key, both parsers read the same one.
                        if let Ok(Inbound::Message { text, .. }) = &ours {
                            if json.matches("\"text\"").count() == 1 {
                                prop_assert_eq!(value["text"].as_str(), Some(text.as_str()), "{}", json);
                            }
                        }
                    }
                }
            }
        }
    }
}
