//! The REST endpoints (CONTRACT §4): the seed's paths and JSON shapes, with
//! authentication and scoping added.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::error::{json_response, ApiError};
use super::query::{parse_positive_id, Query};
use super::Body;
use crate::app::App;
use crate::auth::{access, caller};
use crate::model::{Millis, ObjectId, Seq, UserId};
use crate::store::{HistoryPage, HistoryQuery, InboxEntry};

/// Largest page `limit` a client may ask for (CONTRACT §4).
const MAX_PAGE: i64 = 1000;
/// How long `/readyz` waits for the store and Django.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The authenticated caller: the bearer token, confirmed by Django for the
/// id in `X-User-Id` or, when absent, in the token's `user_id` claim.
async fn authenticate<B>(app: &App, request: &Request<B>) -> Result<UserId, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(caller::bearer_token)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let user_id = match request.headers().get("x-user-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| parse_positive_id(v.trim()))
            .ok_or_else(|| ApiError::unauthorized("X-User-Id must be a positive integer"))?,
        None => caller::user_id_from_jwt(token).ok_or_else(|| {
            ApiError::unauthorized("no X-User-Id header and no user_id claim in the token")
        })?,
    };
    let user = app.django.user(token, user_id).await?;
    Ok(user.id)
}

/// How `/conversations` orders its list (CONTRACT §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    /// Oldest conversation first (the seed's order).
    Created,
    /// Newest `last_message` first; conversations without one last.
    Recent,
    /// Longest-waiting first (oldest `waiting_since`); not waiting last.
    Waiting,
}

impl Sort {
    fn parse(text: Option<&str>) -> Result<Sort, ApiError> {
        match text {
            None | Some("created") => Ok(Sort::Created),
            Some("recent") => Ok(Sort::Recent),
            Some("waiting") => Ok(Sort::Waiting),
            Some(_) => Err(ApiError::bad_request(
                "sort must be one of created, recent, waiting",
            )),
        }
    }

    /// Stable, so ties keep the created order.
    fn apply(self, list: &mut [InboxEntry]) {
        match self {
            Sort::Created => {}
            Sort::Recent => list.sort_by_key(|entry| {
                std::cmp::Reverse(entry.last_message.as_ref().map(|m| (m.created_at, m.seq)))
            }),
            Sort::Waiting => list.sort_by_key(|entry| match entry.waiting_since {
                Some(since) => (0, since),
                None => (1, Millis(0)),
            }),
        }
    }
}

/// `GET /conversations[?mentor_id=][&student_id=][&lesson_id=][&sort=][&unread=true]`:
/// the caller's conversations with their read state (CONTRACT §6).
pub(crate) async fn conversations<B>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let mentor_id = query.id("mentor_id")?;
    let student_id = query.id("student_id")?;
    let lesson_id = query.id("lesson_id")?;
    let sort = Sort::parse(query.get("sort"))?;
    let unread_only = match query.get("unread") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("unread must be true or false")),
    };
    let caller = authenticate(app, request).await?;
    let filter = access::conversation_filter(
        caller,
        mentor_id,
        student_id,
        app.config.max_history as usize,
    )?;
    let mut list = app.store.conversations(filter).await?;
    if let Some(lesson_id) = lesson_id {
        list.retain(|conversation| conversation.lesson_id == lesson_id);
    }
    let mut inbox = app.store.inbox(caller, list).await?;
    if unread_only {
        inbox.retain(|entry| entry.unread_count > 0);
    }
    sort.apply(&mut inbox);
    Ok(json_response(StatusCode::OK, &inbox))
}

/// `GET /conversations/{id}`
pub(crate) async fn conversation<B>(
    app: &App,
    request: &Request<B>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = ObjectId::parse(id)
        .ok_or_else(|| ApiError::bad_request("the conversation id must be 24 hex digits"))?;
    let caller = authenticate(app, request).await?;
    match app.store.conversation(id).await? {
        Some(conversation) if access::can_read(caller, &conversation) => {
            let entries = app.store.inbox(caller, vec![conversation]).await?;
            // One entry per conversation asked for; never a 200 `null`.
            match entries.first() {
                Some(entry) => Ok(json_response(StatusCode::OK, entry)),
                None => Err(ApiError::internal("the store listed no inbox entry")),
            }
        }
        _ => Err(ApiError::not_found("conversation not found")),
    }
}

/// `GET /messages?conversation_id=[&limit=][&before=][&after=][&before_seq=][&after_seq=]`
///
/// The seq cursors (CONTRACT §6) page exactly like the id cursors, which
/// they become: within a conversation seq order is id order.
///
/// `limit` is 1 to 1000 (CONTRACT §4) and the default is
/// `CHAT_MAX_HISTORY`; no page holds more than `CHAT_MAX_HISTORY` messages.
/// Either way the page is cut at `CHAT_MAX_HISTORY_BYTES` of JSON too, and a
/// page cut that way says so in [`TRUNCATED`] with the cursor to continue
/// from, so memory is bounded whatever the page's count.
pub(crate) async fn messages<B>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let conversation_id = query
        .object_id("conversation_id")?
        .ok_or_else(|| ApiError::bad_request("conversation_id is required"))?;
    let max_history = app.config.max_history as usize;
    let limit = match query.get("limit") {
        None => max_history,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_PAGE}"))
            })? as usize,
    }
    .min(max_history);
    let mut before = query.object_id("before")?;
    let mut after = query.object_id("after")?;
    let before_seq = query.seq("before_seq")?;
    let after_seq = query.seq("after_seq")?;
    if (before_seq.is_some() || after_seq.is_some()) && (before.is_some() || after.is_some()) {
        return Err(ApiError::bad_request(
            "after_seq/before_seq cannot be combined with after/before",
        ));
    }
    let caller = authenticate(app, request).await?;
    let conversation = match app.store.conversation(conversation_id).await? {
        Some(conversation) if access::can_read(caller, &conversation) => conversation,
        _ => return Err(ApiError::not_found("conversation not found")),
    };
    if after_seq.is_some() || before_seq.is_some() {
        after = match after_seq {
            None => None,
            Some(0) => Some(FIRST_ID),
            Some(seq) if seq >= conversation.last_seq => Some(LAST_ID),
            Some(seq) => Some(id_at_seq(app, conversation_id, seq, LAST_ID).await?),
        };
        before = match before_seq {
            None => None,
            Some(seq) if seq > conversation.last_seq => None,
            Some(seq) if seq <= 1 => Some(FIRST_ID),
            Some(seq) => Some(id_at_seq(app, conversation_id, seq, FIRST_ID).await?),
        };
    }
    // Taken before the read: the permit covers the rows, the encoding and
    // the body until it is written.
    let permit = app.history.enter(caller).await?;
    let history = HistoryQuery {
        conversation_id,
        before,
        after,
        limit,
        max_bytes: app.config.max_history_bytes,
    };
    let page = app.store.messages(history.clone()).await?;
    let json = encode_page(&page)?;
    let mut response = Response::new(Body::with_permit(json, permit));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if page.truncated {
        headers.insert(TRUNCATED, HeaderValue::from_static("true"));
        let next = if history.newest_first() {
            page.messages.first().map(|first| (NEXT_BEFORE, first.id))
        } else {
            page.messages.last().map(|last| (NEXT_AFTER, last.id))
        };
        if let Some((name, id)) = next {
            if let Ok(value) = HeaderValue::from_str(id.hex().as_str()) {
                headers.insert(name, value);
            }
        }
    }
    Ok(response)
}

/// Cursors below and above every id: `after=FIRST_ID` reads from the
/// first message, `after=LAST_ID` and `before=FIRST_ID` find nothing.
const FIRST_ID: ObjectId = ObjectId::from_bytes([0; 12]);
const LAST_ID: ObjectId = ObjectId::from_bytes([0xff; 12]);

/// The id of message number `seq` (at most `last_seq`, so it exists in a
/// numbered conversation); `missing` if it does not.
async fn id_at_seq(
    app: &App,
    conversation_id: ObjectId,
    seq: Seq,
    missing: ObjectId,
) -> Result<ObjectId, ApiError> {
    match app.store.message_at_seq(conversation_id, seq).await? {
        Some(id) => Ok(id),
        None => {
            tracing::warn!(%conversation_id, seq, "no message with this seq: numbering incomplete?");
            Ok(missing)
        }
    }
}

/// Set (`true`) on a `/messages` page cut short by `CHAT_MAX_HISTORY_BYTES`:
/// more messages match in the direction the page was read.
pub(crate) const TRUNCATED: &str = "x-history-truncated";
/// On a truncated page read from its newest end: the `before` to continue with.
pub(crate) const NEXT_BEFORE: &str = "x-history-next-before";
/// On a truncated page read with `after`: the `after` to continue with.
pub(crate) const NEXT_AFTER: &str = "x-history-next-after";

/// The page as the JSON array `/messages` sends, written into one buffer
/// of its exact size (no growth, no intermediate value).
fn encode_page(page: &HistoryPage) -> Result<Vec<u8>, ApiError> {
    let len = page.json_len();
    let mut json = Vec::with_capacity(len);
    serde_json::to_writer(&mut json, &page.messages)
        .map_err(|error| ApiError::internal(format!("cannot encode history: {error}")))?;
    debug_assert_eq!(
        json.len(),
        len,
        "Message::json_len disagrees with serde_json"
    );
    Ok(json)
}

/// `GET /presence?user_id=`
pub(crate) async fn presence<B>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let user_id = query
        .id("user_id")?
        .ok_or_else(|| ApiError::bad_request("user_id is required"))?;
    let caller = authenticate(app, request).await?;
    // Ours: no oracle of who is online. Only the caller and the people they
    // share a conversation with are answered; anyone else is 404, the same
    // answer as for an id nobody has.
    if user_id != caller && !shares_a_conversation(app, caller, user_id).await? {
        return Err(ApiError::not_found("no such user among your conversations"));
    }
    let online = app.hub.presence().is_online(user_id);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"user_id": user_id, "online": online}),
    ))
}

/// Whether `a` and `b` are the two participants of some conversation.
async fn shares_a_conversation(app: &App, a: UserId, b: UserId) -> Result<bool, ApiError> {
    for (mentor_id, student_id) in [(a, b), (b, a)] {
        let found = app
            .store
            .conversations(crate::store::ConversationFilter {
                mentor_id: Some(mentor_id),
                student_id: Some(student_id),
                participant: None,
                limit: 1,
            })
            .await?;
        if !found.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `GET /readyz`: ready when the store answers and the writer is not stuck
/// retrying; Django's reachability is reported, not required.
pub(crate) async fn readyz(app: &Arc<App>) -> Response<Body> {
    let store = tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await;
    let django = tokio::time::timeout(READY_TIMEOUT, app.django.reachable())
        .await
        .unwrap_or(false);
    let reason = match store {
        Err(_) => Some("the store did not answer in time".to_string()),
        Ok(Err(error)) => Some(error.to_string()),
        Ok(Ok(())) if !app.writer.is_healthy() => {
            Some("the store is failing writes; retrying".to_string())
        }
        Ok(Ok(())) => None,
    };
    let closes: serde_json::Map<String, serde_json::Value> = crate::wire::close::counts()
        .into_iter()
        .map(|(close, count)| (close.label().to_string(), count.into()))
        .collect();
    let detail = serde_json::json!({
        "store": app.store.kind(),
        "closed_connections": closes,
        "django_reachable": django,
        "connections": app.gate.open(),
        "max_connections": app.gate.max(),
        "pending_writes": app.writer.pending(),
    });
    match reason {
        None => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "detail": detail}),
        ),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "reason": reason, "detail": detail}),
        ),
    }
}
