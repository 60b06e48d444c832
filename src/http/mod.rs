//! HTTP: one router, the REST handlers, CORS, and the one JSON error type.

pub mod cors;
pub mod error;
pub mod pending;
pub mod query;
pub mod rest;
pub mod router;

/// The one response body type: every answer is a complete buffer.
pub type Body = http_body_util::Full<bytes::Bytes>;
