//! The router: one `match` on method and path. The service never fails
//! (`Infallible`): every error becomes a status and a JSON body, because an
//! `Err` from a hyper service would abort the connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::Service;

use super::error::{json_response, ApiError};
use super::pending::PendingHead;
use super::{cors, index, metrics, rest, upgrade, Body};
use crate::app::App;
use crate::metrics::RefusedLabels;

/// One per accepted connection; a clone of an `Arc`.
#[derive(Clone)]
pub(crate) struct Router {
    app: Arc<App>,
    /// The connection's place among those still sending their first head.
    head: Arc<PendingHead>,
}

impl Router {
    /// A router for one accepted connection, which is pending until hyper
    /// hands it its first request.
    pub(crate) fn new(app: Arc<App>, head: Arc<PendingHead>) -> Self {
        Router { app, head }
    }
}

impl Service<Request<Incoming>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.head.head_received();
        let app = Arc::clone(&self.app);
        Box::pin(async move { Ok(cors::decorate(route(&app, request).await)) })
    }
}

async fn route(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let route_name = route_label(&path);
    let upgrade_request = request.method() == Method::GET && route_name == "/ws";
    let result = match (request.method(), path.as_str()) {
        (&Method::OPTIONS, _) => Ok(cors::preflight()),
        (&Method::GET, "/ws") => upgrade::handle(app, request).await,
        (&Method::GET, "/healthz") => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::GET, "/readyz") => Ok(rest::readyz(app).await),
        (&Method::GET, "/metrics") => metrics::scrape(app).await,
        (&Method::GET, "/") => Ok(index::page()),
        (&Method::GET, "/openapi.json") => Ok(openapi()),
        (&Method::GET, "/conversations" | "/conversations/") => {
            rest::conversations(app, &request).await
        }
        (&Method::GET, "/messages") => rest::messages(app, &request).await,
        (&Method::GET, "/presence") => rest::presence(app, &request).await,
        (&Method::GET, path) if path.starts_with("/conversations/") => {
            rest::conversation(app, &request, &path["/conversations/".len()..]).await
        }
        // A route of ours (`route_label` knows them all) with another method.
        _ if route_name != "other" => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found("no such endpoint")),
    };
    let metrics = crate::metrics::get();
    if let (true, Err(refusal)) = (upgrade_request, &result) {
        metrics
            .connections_refused
            .get_or_create(&RefusedLabels {
                status: refusal.status.as_u16(),
                code: refusal.code,
            })
            .inc();
    }
    let mut response = result.unwrap_or_else(ApiError::into_response);
    metrics.http_answered(route_name, response.status().as_u16());
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110: a 405 names the methods the path does allow.
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
    }
    response
}

/// The route `path` belongs to, `other` when none: a bounded label for
/// metrics (a raw path would make a series per conversation id, or per
/// scanner probe), and what tells a 405 from a 404.
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/ws" => "/ws",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/conversations" | "/conversations/" => "/conversations",
        "/messages" => "/messages",
        "/presence" => "/presence",
        path if path.starts_with("/conversations/") => "/conversations/{id}",
        _ => "other",
    }
}

/// The OpenAPI 3.1 document of this API, as it is in the repository.
const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// `GET /openapi.json`: docs/openapi.json byte for byte, unauthenticated.
fn openapi() -> Response<Body> {
    let mut response = Response::new(Body::from(OPENAPI_JSON));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
