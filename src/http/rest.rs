//! The REST endpoints (CONTRACT §4): the seed's paths and JSON shapes, with
//! authentication and scoping added.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};

use super::error::{json_response, ApiError};
use super::query::{parse_positive_id, Query};
use super::Body;
use crate::app::App;
use crate::auth::{access, caller};
use crate::model::{ObjectId, UserId};
use crate::store::HistoryQuery;

/// Largest page `limit` a client may ask for.
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

/// `GET /conversations[?mentor_id=][&student_id=]`
pub async fn conversations<B>(app: &App, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let mentor_id = query.id("mentor_id")?;
    let student_id = query.id("student_id")?;
    let caller = authenticate(app, request).await?;
    let filter = access::conversation_filter(
        caller,
        mentor_id,
        student_id,
        app.config.max_history as usize,
    )
    .map_err(|_| ApiError::forbidden("you can only list your own conversations"))?;
    let list = app.store.conversations(filter).await?;
    Ok(json_response(StatusCode::OK, &list))
}

/// `GET /conversations/{id}`
pub async fn conversation<B>(
    app: &App,
    request: &Request<B>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = ObjectId::parse(id)
        .ok_or_else(|| ApiError::bad_request("the conversation id must be 24 hex digits"))?;
    let caller = authenticate(app, request).await?;
    match app.store.conversation(id).await? {
        Some(conversation) if access::can_read(caller, &conversation) => {
            Ok(json_response(StatusCode::OK, &conversation))
        }
        _ => Err(ApiError::not_found("conversation not found")),
    }
}

/// `GET /messages?conversation_id=[&limit=][&before=][&after=]`
pub async fn messages<B>(app: &App, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let conversation_id = query
        .object_id("conversation_id")?
        .ok_or_else(|| ApiError::bad_request("conversation_id is required"))?;
    let limit = match query.get("limit") {
        None => app.config.max_history as usize,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_PAGE}"))
            })? as usize,
    };
    let before = query.object_id("before")?;
    let after = query.object_id("after")?;
    let caller = authenticate(app, request).await?;
    match app.store.conversation(conversation_id).await? {
        Some(conversation) if access::can_read(caller, &conversation) => {}
        _ => return Err(ApiError::not_found("conversation not found")),
    }
    let page = app
        .store
        .messages(HistoryQuery {
            conversation_id,
            before,
            after,
            limit,
            max_bytes: app.config.max_history_bytes,
        })
        .await?;
    Ok(json_response(StatusCode::OK, &page.messages))
}

/// `GET /presence?user_id=`
pub async fn presence<B>(app: &App, request: &Request<B>) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let user_id = query
        .id("user_id")?
        .ok_or_else(|| ApiError::bad_request("user_id is required"))?;
    authenticate(app, request).await?;
    let online = app.hub.presence().is_online(user_id);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"user_id": user_id, "online": online}),
    ))
}

/// `GET /readyz`: ready when the store answers and the writer is not stuck
/// retrying; Django's reachability is reported, not required.
pub async fn readyz(app: &Arc<App>) -> Response<Body> {
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
    let closes: serde_json::Map<String, serde_json::Value> = crate::ws::close::counts()
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
