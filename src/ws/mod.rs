//! WebSocket: one session per upgraded connection — its frame reader, its
//! writer and its rate limits. The `/ws` checks and the upgrade are HTTP's
//! (`http/upgrade.rs`), which hands a ready [`session::Session`] over; the
//! events and frames are `wire`'s.

pub(crate) mod rate;
pub mod reader;
pub(crate) mod recovery;
pub(crate) mod session;
