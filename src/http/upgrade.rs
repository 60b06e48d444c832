//! `GET /ws`: the checks of CONTRACT §3, in its order, answered as plain
//! HTTP; then the upgrade, with the session — everything the checks
//! gathered — handed to `ws` and spawned into the app's tracker.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::error::ApiError;
use super::query::Query;
use super::Body;
use crate::app::App;
use crate::auth::access;
use crate::model::now;
use crate::ws::recovery::Recovery;
use crate::ws::session::Session;

pub(crate) async fn handle(
    app: &Arc<App>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    // 1. required parameters
    let (Some(token), Some(_), Some(_)) = (
        query.get("token"),
        query.get("user_id"),
        query.get("lesson_id"),
    ) else {
        return Err(ApiError::bad_request(
            "token, user_id and lesson_id are required",
        ));
    };
    let token = token.to_string();
    // 2. ids are positive integers
    let user_id = query.id("user_id")?.unwrap_or_default();
    let lesson_id = query.id("lesson_id")?.unwrap_or_default();
    let requested_student = query.id("student_id")?;
    // Ours (CONTRACT §6): a replay of what the client missed.
    let since_seq = query.seq("since_seq")?;
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return Err(ApiError::bad_request(
            "expected a WebSocket upgrade request",
        ));
    }
    // 3. origin
    if let (Some(allowed), Some(origin)) = (
        &app.config.allowed_origins,
        request.headers().get(header::ORIGIN),
    ) {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !allowed.allows(origin) {
            return Err(ApiError::forbidden("origin not allowed"));
        }
    }
    // 4. capacity
    let Some(slot) = app.gate.try_admit() else {
        return Err(ApiError::unavailable(
            "the server is at its connection capacity; retry later",
        ));
    };
    // 5, 6 (and 10: a Django outage is 503)
    let user = app.django.user(&token, user_id).await?;
    let lesson = app.django.lesson(&token, lesson_id).await?;
    // 7, 8, 9
    let key = access::conversation_key(&user, &lesson, requested_student)?;
    if app.config.require_roster {
        access::require_roster(&user, &lesson)?;
    }
    // Ours: one user may not take every connection slot.
    let presence = app
        .hub
        .presence()
        .try_connect(user.id, app.config.max_connections_per_user)
        .ok_or_else(|| {
            ApiError::too_many_requests(format!(
                "at most {} connections per user; close one first",
                app.config.max_connections_per_user
            ))
        })?;
    // 11
    let conversation = app.store.conversation_for(key, now()).await?;

    let protocol = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.split(',').next())
        .map(|first| first.trim().to_string());
    // hyper's pending upgrade, taken before fastwebsockets' `upgrade` can
    // take it: its future would wrap the connection in a `WebSocket` with
    // an 8 KiB read buffer, only for the session to drop it (frames are
    // read by `reader.rs`). Its own future, never polled, holds nothing.
    let upgrade = hyper::upgrade::on(&mut request);
    let (response, _) = fastwebsockets::upgrade::upgrade(&mut request)
        .map_err(|error| ApiError::bad_request(format!("bad WebSocket handshake: {error}")))?;
    let (mut parts, _) = response.into_parts();
    // Browsers abort a handshake whose offered subprotocol is not echoed.
    if let Some(value) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        parts.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }

    let role = if conversation.mentor_id == user.id {
        "mentor"
    } else {
        "student"
    };
    let conn_id = app.next_conn_id();
    // Who and where, never the token. Entered only to log (around the whole
    // task it would cost two filter look-ups on every poll); at debug level,
    // that of the lines it encloses, since a live span costs about 1 KiB
    // per connection (docs/performance.md, "Metrics cost").
    let span = tracing::debug_span!(
        "conn",
        id = conn_id,
        user = user.id,
        role,
        lesson = lesson_id,
        conversation = %conversation.id,
    );
    tracing::debug!(parent: &span, "upgrading");
    let session = Session {
        conn_id,
        user_id: user.id,
        shard: app.hub.shard_for(&conversation.id),
        conversation,
        recovery: since_seq.map(|since_seq| {
            Box::new(Recovery {
                since_seq,
                max: app.config.recovery_max as usize,
                store: Arc::clone(&app.store),
            })
        }),
        limits: app.limits,
        shutdown: app.sessions_shutdown.clone(),
        guards: Box::new((slot, presence)),
    };
    // The upgrade completes only after the 101 is sent, so it is awaited in
    // the spawned task, never here.
    app.sessions.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let _open = crate::metrics::get().connection_opened(role);
                let why = session.run(upgraded).await;
                tracing::debug!(parent: &span, close = %why, "connection closed");
            }
            Err(error) => tracing::debug!(parent: &span, %error, "upgrade failed"),
        }
    });
    Ok(Response::from_parts(parts, Body::default()))
}
