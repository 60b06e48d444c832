//! chat-service: real-time mentor–student chat over WebSocket.
//!
//! # Layout
//!
//! In layer order: each module uses only those listed before it, so there
//! is no cycle between them (`tests/module_layers.rs` enforces it).
//!
//! - [`model`]: ids, conversations, messages, time.
//! - [`metrics`]: the Prometheus registry and the hot path's handles.
//! - [`wire`]: the `/ws` events, the encoded server frames, the close codes.
//! - [`user_counts`]: what each user holds open, counted by drop guards.
//! - [`store`]: the `Store` seam (SQLite, MongoDB) and the batched writer.
//! - [`auth`]: the Django client and the pure access rules.
//! - [`hub`]: conversation rooms, sharded; fan-out and presence.
//! - [`capacity`]: the open-files limit, the connection and history gates.
//! - [`ws`]: one session per upgraded connection: frame reader, writer, rate.
//! - [`config`]: environment variables and flags, validated once; every
//!   default, and every subsystem's settings built from them.
//! - [`app`]: wires store, writer, hub and Django client from a config.
//! - [`http`]: the router, REST handlers, the `/ws` checks and upgrade,
//!   CORS and the JSON error type.
//! - [`server`]: the accept loop and the ordered shutdown.

// The library is the service's inside, public only as far as the binary,
// the tests and the benches need: its docs are for maintainers
// (`cargo doc --document-private-items`) and link to crate-private items.
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod auth;
pub(crate) mod capacity;
pub mod config;
pub(crate) mod http;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub(crate) mod user_counts;
pub mod wire;
pub mod ws;
