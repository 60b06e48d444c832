//! HTTP: one router, the REST handlers, the `/ws` checks and upgrade, CORS,
//! and the one JSON error type.

pub(crate) mod body;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod index;
pub(crate) mod metrics;
pub(crate) mod pending;
pub(crate) mod query;
pub(crate) mod rest;
pub(crate) mod router;
pub(crate) mod upgrade;

pub(crate) use body::Body;
