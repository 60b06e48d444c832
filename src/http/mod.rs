//! HTTP: one router, the REST handlers, the `/ws` checks and upgrade, CORS,
//! and the one JSON error type.

pub mod body;
pub mod cors;
pub mod error;
pub mod pending;
pub mod query;
pub mod rest;
pub mod router;
pub mod upgrade;

pub use body::Body;
