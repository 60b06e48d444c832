//! Shared test harness: a Django stand-in, the real binary, a WebSocket
//! client, and the store tests' helpers (re-exported at the top level).
pub mod django;
pub mod server;
pub mod store;
pub mod ws;

#[allow(unused_imports)]
pub use store::*;
