//! Shared test harness: a Django stand-in, the real binary, a WebSocket
//! client, raw client frames, and the store tests' helpers (re-exported at
//! the top level).
pub mod django;
pub mod frames;
pub mod postgres;
pub mod server;
pub mod store;
pub mod ws;

#[allow(unused_imports)]
pub use store::*;
