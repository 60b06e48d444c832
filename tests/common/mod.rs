//! Shared test harness: a Django stand-in, the real binary, a WebSocket client.
pub mod django;
pub mod server;
pub mod ws;
