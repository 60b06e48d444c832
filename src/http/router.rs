//! The router: one `match` on method and path. The service never fails
//! (`Infallible`): every error becomes a status and a JSON body, because an
//! `Err` from a hyper service would abort the connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::Service;

use super::error::{json_response, ApiError};
use super::pending::PendingHead;
use super::{cors, rest, upgrade, Body};
use crate::app::App;

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
    let result = match (request.method(), path.as_str()) {
        (&Method::OPTIONS, _) => Ok(cors::preflight()),
        (&Method::GET, "/ws") => upgrade::handle(app, request).await,
        (&Method::GET, "/healthz") => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::GET, "/readyz") => Ok(rest::readyz(app).await),
        (&Method::GET, "/conversations" | "/conversations/") => {
            rest::conversations(app, &request).await
        }
        (&Method::GET, "/messages") => rest::messages(app, &request).await,
        (&Method::GET, "/presence") => rest::presence(app, &request).await,
        (&Method::GET, path) if path.starts_with("/conversations/") => {
            rest::conversation(app, &request, &path["/conversations/".len()..]).await
        }
        (_, "/ws" | "/healthz" | "/readyz" | "/conversations" | "/messages" | "/presence") => {
            Err(ApiError::method_not_allowed())
        }
        (_, path) if path.starts_with("/conversations/") => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found("no such endpoint")),
    };
    result.unwrap_or_else(ApiError::into_response)
}
