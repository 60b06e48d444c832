//! `GET /`: a small page naming the endpoints, for whoever opens the
//! service's address in a browser. The chat page itself belongs to the
//! Django site (the reference backend serves a demo at its `/`).

use http::{header, HeaderValue, Response};

use super::Body;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>chat-service</title></head>
<body>
<h1>chat-service</h1>
<p>A real-time chat service for mentors and students. It has no chat page
of its own: the web client is served by the Django site it authenticates
against (with <code>scripts/dev.sh</code>, the reference Django's
<code>/</code>, printed at start).</p>
<ul>
<li><code>GET /ws?token=&amp;user_id=&amp;lesson_id=&amp;student_id=&amp;since_seq=</code>: the WebSocket</li>
<li><code>GET /conversations</code>, <code>GET /conversations/{id}</code>, <code>GET /messages?conversation_id=</code>, <code>GET /presence?user_id=</code>: REST, with <code>Authorization: Bearer</code></li>
<li><a href="/openapi.json">/openapi.json</a>: the REST API as OpenAPI 3.1</li>
<li><a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>: liveness and readiness</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<p>The README (configuration, protocol, operations) is in the repository.</p>
</body>
</html>
"#;

pub(crate) fn page() -> Response<Body> {
    let mut response = Response::new(Body::from(PAGE));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
