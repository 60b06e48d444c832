//! The BSON shape of conversations and messages (CONTRACT §5), both ways.
//!
//! Writing is exact (Int64 ids, ObjectId, BSON dates) so the Go service's
//! readers keep working; reading is tolerant, because the seed wrote fewer
//! fields and other tools may have written int32 ids.

use mongodb::bson::{self, doc, Bson, Document};

use crate::model::{Conversation, Message, Millis, ObjectId, UserId};
use crate::store::StoreError;

/// The driver's ObjectId for ours (same 12 bytes).
pub(crate) fn bson_id(id: ObjectId) -> bson::oid::ObjectId {
    bson::oid::ObjectId::from_bytes(id.bytes())
}

pub(crate) fn bson_date(at: Millis) -> bson::DateTime {
    bson::DateTime::from_millis(at.0)
}

/// A message as the Go service stored it, plus our optional fields.
pub(crate) fn message_document(message: &Message) -> Document {
    let mut document = doc! {
        "_id": bson_id(message.id),
        "conversation_id": bson_id(message.conversation_id),
        "sender_id": Bson::Int64(message.sender_id),
        "text": message.text.as_str(),
        "created_at": bson_date(message.created_at),
    };
    if let Some(client_id) = &message.client_id {
        document.insert("client_id", client_id.as_str());
    }
    if let Some(viewer) = message.viewed_by {
        document.insert("viewed_by", Bson::Int64(viewer));
    }
    if let Some(at) = message.viewed_at {
        document.insert("viewed_at", bson_date(at));
    }
    if let Ok(seq) = i64::try_from(message.seq) {
        if seq > 0 {
            document.insert("seq", Bson::Int64(seq));
        }
    }
    document
}

pub(crate) fn conversation_from(document: &Document) -> Result<Conversation, StoreError> {
    let id = object_id(document, "_id", "conversation")?;
    Ok(Conversation {
        id,
        lesson_id: required_int(document, "lesson_id", "conversation")?,
        mentor_id: required_int(document, "mentor_id", "conversation")?,
        student_id: required_int(document, "student_id", "conversation")?,
        created_at: date_or_id_time(document, id),
        // Filled by the reads that know it.
        last_seq: 0,
    })
}

pub(crate) fn message_from(document: &Document) -> Result<Message, StoreError> {
    let id = object_id(document, "_id", "message")?;
    let text = match document.get("text") {
        Some(Bson::String(text)) => text.clone(),
        None | Some(Bson::Null) => String::new(),
        Some(_) => return Err(malformed("message", "text")),
    };
    Ok(Message {
        id,
        conversation_id: object_id(document, "conversation_id", "message")?,
        sender_id: required_int(document, "sender_id", "message")?,
        text,
        created_at: date_or_id_time(document, id),
        client_id: match document.get("client_id") {
            Some(Bson::String(client_id)) => Some(client_id.clone()),
            _ => None,
        },
        // User ids are positive; a 0 is a Go zero value, i.e. "nobody".
        viewed_by: int(document, "viewed_by").filter(|viewer: &UserId| *viewer > 0),
        viewed_at: optional_date(document, "viewed_at"),
        // Absent: a legacy message before the numbering at start.
        seq: int(document, "seq")
            .and_then(|seq| u64::try_from(seq).ok())
            .unwrap_or(0),
    })
}

/// A BSON date field; absent or of another type is `None`.
pub(crate) fn optional_date(document: &Document, field: &str) -> Option<Millis> {
    match document.get(field) {
        Some(Bson::DateTime(at)) => Some(Millis(at.timestamp_millis())),
        _ => None,
    }
}

pub(crate) fn object_id(
    document: &Document,
    field: &str,
    what: &str,
) -> Result<ObjectId, StoreError> {
    match document.get(field) {
        Some(Bson::ObjectId(id)) => Ok(ObjectId::from_bytes(id.bytes())),
        _ => Err(malformed(what, field)),
    }
}

/// An integer however it was stored: Int64 (the seed), Int32 (another tool)
/// or an integral Double (a shell script).
pub(crate) fn int(document: &Document, field: &str) -> Option<i64> {
    match document.get(field)? {
        Bson::Int64(value) => Some(*value),
        Bson::Int32(value) => Some(i64::from(*value)),
        Bson::Double(value) if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 => {
            Some(*value as i64)
        }
        _ => None,
    }
}

fn required_int(document: &Document, field: &str, what: &str) -> Result<i64, StoreError> {
    int(document, field).ok_or_else(|| malformed(what, field))
}

/// `created_at`, or the id's own timestamp for a document without one.
pub(crate) fn date_or_id_time(document: &Document, id: ObjectId) -> Millis {
    match document.get("created_at") {
        Some(Bson::DateTime(at)) => Millis(at.timestamp_millis()),
        _ => id.timestamp(),
    }
}

fn malformed(what: &str, field: &str) -> StoreError {
    StoreError::Internal(format!(
        "a stored {what} document has a missing or malformed `{field}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_message() -> Message {
        Message {
            id: ObjectId::new(),
            conversation_id: ObjectId::new(),
            sender_id: 10,
            text: "héllo".into(),
            created_at: Millis(1_735_725_600_123),
            seq: 0,
            client_id: Some("c-1".into()),
            viewed_by: None,
            viewed_at: None,
        }
    }

    #[test]
    fn message_document_has_the_seed_types() {
        let message = sample_message();
        let document = message_document(&message);
        let keys: Vec<&str> = document.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "conversation_id",
                "sender_id",
                "text",
                "created_at",
                "client_id"
            ]
        );
        assert_eq!(document.get("sender_id"), Some(&Bson::Int64(10)));
        assert!(matches!(document.get("_id"), Some(Bson::ObjectId(_))));
        assert!(matches!(
            document.get("created_at"),
            Some(Bson::DateTime(_))
        ));
        assert_eq!(message_from(&document).unwrap(), message);
    }

    #[test]
    fn a_seed_message_with_int32_ids_and_no_optional_fields_reads() {
        let id = bson::oid::ObjectId::new();
        let conversation = bson::oid::ObjectId::new();
        let document = doc! {
            "_id": id, "conversation_id": conversation, "sender_id": Bson::Int32(7),
            "text": "hi", "created_at": bson::DateTime::from_millis(5_000), "viewed_by": Bson::Null,
        };
        let message = message_from(&document).unwrap();
        assert_eq!(message.sender_id, 7);
        assert_eq!(message.created_at, Millis(5_000));
        assert_eq!(message.viewed_by, None);
        assert_eq!(message.client_id, None);
        assert_eq!(message.id.bytes(), id.bytes());
    }

    #[test]
    fn a_conversation_without_a_lesson_is_malformed() {
        let document =
            doc! { "_id": bson::oid::ObjectId::new(), "mentor_id": 1_i64, "student_id": 2_i64 };
        assert!(matches!(
            conversation_from(&document),
            Err(StoreError::Internal(_))
        ));
    }
}
