//! Inbound parse and outbound encode of every event type, and the
//! unmasking of every client frame's payload.
//!
//! `cargo bench --bench protocol`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use chat_service::model::{Message, Millis, ObjectId};
use chat_service::wire::frame;
use chat_service::wire::protocol::{self, ErrorCode};

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let inputs: [(&str, String); 4] = [
        ("message", r#"{"type":"message","text":"Hello, mentor! How do I solve exercise 3?","client_id":"web-7f3a-0042"}"#.to_string()),
        ("message_1k", format!(r#"{{"type":"message","text":"{}","client_id":"c1"}}"#, "lorem ipsum ".repeat(85))),
        ("typing", r#"{"type":"typing","is_typing":true}"#.to_string()),
        ("viewed", r#"{"type":"viewed","message_id":"663af8129dde123456789def"}"#.to_string()),
    ];
    for (name, json) in inputs {
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_function(name, |b| {
            let mut buf = json.as_bytes().to_vec();
            b.iter(|| {
                buf.copy_from_slice(json.as_bytes());
                black_box(protocol::parse(&mut buf, 8192).is_ok())
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let conversation = ObjectId::new();
    let id = ObjectId::new();
    let message = Message {
        id,
        conversation_id: conversation,
        sender_id: 1_000_001,
        text: "Hello, mentor! How do I solve exercise 3?".into(),
        created_at: Millis(1_735_725_600_123),
        seq: 0,
        client_id: Some("web-7f3a-0042".into()),
        viewed_by: None,
        viewed_at: None,
    };
    group.bench_function("message", |b| {
        b.iter(|| black_box(protocol::message_event(black_box(&message))))
    });
    group.bench_function("typing", |b| {
        b.iter(|| black_box(protocol::typing_event(&conversation, 10, true)))
    });
    group.bench_function("viewed", |b| {
        b.iter(|| black_box(protocol::viewed_event(&conversation, &id, 15)))
    });
    group.bench_function("ack", |b| {
        b.iter(|| black_box(protocol::ack_event(&id, 42, Some("web-7f3a-0042"))))
    });
    group.bench_function("presence", |b| {
        b.iter(|| black_box(protocol::presence_event(15, true)))
    });
    group.bench_function("error", |b| {
        b.iter(|| {
            black_box(protocol::error_event(
                ErrorCode::TextTooLong,
                "text is too long",
                Some("c1"),
            ))
        })
    });
    group.finish();
}

/// Ours against bson's (linked through the mongodb driver): the numbers
/// behind keeping `model::ObjectId` hand-written (see its comment).
fn object_id(c: &mut Criterion) {
    use mongodb::bson::oid::ObjectId as BsonId;
    let mut group = c.benchmark_group("object_id");
    let hex = "663af8129dde123456789def";
    let bad = "663af8129dde123456789deg";
    group.bench_function("generate/ours", |b| b.iter(|| black_box(ObjectId::new())));
    group.bench_function("generate/bson", |b| b.iter(|| black_box(BsonId::new())));
    let ours = ObjectId::parse(hex).unwrap();
    let theirs = BsonId::parse_str(hex).unwrap();
    group.bench_function("to_hex/ours", |b| {
        b.iter(|| black_box(black_box(ours).hex().as_str().len()))
    });
    group.bench_function("to_hex/bson", |b| {
        b.iter(|| black_box(black_box(theirs).to_hex().len()))
    });
    group.bench_function("parse/ours", |b| {
        b.iter(|| black_box(ObjectId::parse(black_box(hex))))
    });
    group.bench_function("parse/bson", |b| {
        b.iter(|| black_box(BsonId::parse_str(black_box(hex)).is_ok()))
    });
    group.bench_function("parse_invalid/ours", |b| {
        b.iter(|| black_box(ObjectId::parse(black_box(bad))))
    });
    group.bench_function("parse_invalid/bson", |b| {
        b.iter(|| black_box(BsonId::parse_str(black_box(bad)).is_ok()))
    });
    group.finish();
}

/// The reader's word-at-a-time `frame::unmask` against the byte-at-a-time
/// loop it replaced, kept here as the baseline.
fn unmask(c: &mut Criterion) {
    fn bytewise(payload: &mut [u8], mask: [u8; 4]) {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }
    let mut group = c.benchmark_group("unmask");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    // A typing event, a chat message, a message at the default frame cap.
    for len in [40, 1024, 65_536] {
        let mut payload = vec![0x5a_u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("words", len), &len, |b, _| {
            b.iter(|| frame::unmask(black_box(&mut payload), black_box(mask)))
        });
        group.bench_with_input(BenchmarkId::new("bytes", len), &len, |b, _| {
            b.iter(|| bytewise(black_box(&mut payload), black_box(mask)))
        });
    }
    group.finish();
}

criterion_group!(benches, parse, encode, object_id, unmask);
criterion_main!(benches);
