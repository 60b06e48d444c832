//! chat-service: real-time mentor–student chat over WebSocket.
//!
//! # Layout
//!
//! - [`config`]: environment variables and flags, validated once.
//! - [`model`]: ids, conversations, messages, time.
//! - [`app`]: wires store, writer, hub and Django client from a config.
//! - [`server`]: the accept loop and the ordered shutdown.
//! - [`auth`]: the Django client and the pure access rules.
//! - [`store`]: the `Store` seam (SQLite, MongoDB) and the batched writer.
//! - [`hub`]: conversation rooms, sharded; fan-out and presence.
//! - [`ws`]: the `/ws` upgrade checks, one session per connection, the protocol.
//! - [`http`]: the router, REST handlers, CORS and the JSON error type.
//! - [`capacity`]: the open-files limit and the connection gate.

pub mod app;
pub mod auth;
pub mod capacity;
pub mod config;
pub mod http;
pub mod hub;
pub mod model;
pub mod server;
pub mod store;
pub mod user_counts;
pub mod wire;
pub mod ws;
