//! A Django stand-in for the bench token scheme: CONTRACT §2's two endpoints
//! answered from the token alone, so it knows any number of users.
//!
//! - `GET /api/content/chat-service/users/{id}/` → 200 `{"id","is_mentor"}` when the
//!   bearer token is `bench-m-{id}` or `bench-s-{id}`, else 401.
//! - `GET /api/content/chat-service/lesson/{L}/detail/` → 200
//!   `{"id":L,"course_id":1,"teacher_id":L}` for L ≥ 1000 with any valid bench token;
//!   401 without one, 404 for other lessons.
//! - `GET /stats` → request counts, so a run can show what the service's cache absorbed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::scheme::{self, Side};

const USERS_PREFIX: &str = "/api/content/chat-service/users/";
const LESSON_PREFIX: &str = "/api/content/chat-service/lesson/";

/// Counts of what the stand-in answered; `/stats` serves them.
#[derive(Debug, Default, Serialize)]
pub struct StandinStats {
    /// Every request, `/stats` excluded.
    pub requests: AtomicU64,
    pub users_ok: AtomicU64,
    pub lessons_ok: AtomicU64,
    pub refused: AtomicU64,
}

/// Serves until `shutdown` completes; connections still open then are dropped.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<StandinStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            // accept is cancel-safe; shutdown is polled to completion once.
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    eprintln!("django-standin: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &stats);
                std::future::ready(Ok::<_, Infallible>(response))
            });
            // A client that goes away mid-request is not the stand-in's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, stats: &StandinStats) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/stats" {
        return json(
            StatusCode::OK,
            serde_json::to_string(stats).unwrap_or_default(),
        );
    }
    stats.requests.fetch_add(1, Relaxed);
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(scheme::parse_token);
    let (status, body) = if req.method() != hyper::Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, String::new())
    } else if let Some(id) = id_between(path, USERS_PREFIX, "/") {
        match token {
            Some((side, user)) if user == id => {
                stats.users_ok.fetch_add(1, Relaxed);
                (
                    StatusCode::OK,
                    format!(r#"{{"id":{id},"is_mentor":{}}}"#, side == Side::Mentor),
                )
            }
            _ => (
                StatusCode::UNAUTHORIZED,
                r#"{"detail":"not authenticated"}"#.to_owned(),
            ),
        }
    } else if let Some(lesson) = id_between(path, LESSON_PREFIX, "/detail/") {
        match token {
            None => (
                StatusCode::UNAUTHORIZED,
                r#"{"detail":"not authenticated"}"#.to_owned(),
            ),
            Some(_) if lesson >= scheme::FIRST_LESSON => {
                stats.lessons_ok.fetch_add(1, Relaxed);
                (
                    StatusCode::OK,
                    format!(r#"{{"id":{lesson},"course_id":1,"teacher_id":{lesson}}}"#),
                )
            }
            Some(_) => (
                StatusCode::NOT_FOUND,
                r#"{"detail":"not found"}"#.to_owned(),
            ),
        }
    } else {
        (
            StatusCode::NOT_FOUND,
            r#"{"detail":"not found"}"#.to_owned(),
        )
    };
    if status != StatusCode::OK {
        stats.refused.fetch_add(1, Relaxed);
    }
    json(status, body)
}

/// The positive integer in `path` between `prefix` and `suffix`.
fn id_between(path: &str, prefix: &str, suffix: &str) -> Option<i64> {
    let id = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok().filter(|&v| v > 0)
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads `requests` from a stand-in's `/stats` (`base` like `http://127.0.0.1:9000`).
pub async fn fetch_request_count(base: &str) -> Option<u64> {
    let authority = base.strip_prefix("http://")?.trim_end_matches('/');
    let authority = authority.split('/').next()?;
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        TcpStream::connect(authority),
    )
    .await
    .ok()?
    .ok()?;
    let request = format!("GET /stats HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut response),
    )
    .await
    .ok()?
    .ok()?;
    let body_at = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let stats: serde_json::Value = serde_json::from_slice(&response[body_at..]).ok()?;
    stats.get("requests")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths() {
        assert_eq!(
            id_between("/api/content/chat-service/users/1000/", USERS_PREFIX, "/"),
            Some(1000)
        );
        assert_eq!(
            id_between(
                "/api/content/chat-service/lesson/1000/detail/",
                LESSON_PREFIX,
                "/detail/"
            ),
            Some(1000)
        );
        assert_eq!(
            id_between("/api/content/chat-service/users/-1/", USERS_PREFIX, "/"),
            None
        );
        assert_eq!(
            id_between("/api/content/chat-service/users/1/x/", USERS_PREFIX, "/"),
            None
        );
    }
}
