//! WebSocket: the `/ws` upgrade checks and one session per connection; the
//! events and frames it speaks are `wire`'s.

pub mod rate;
pub mod reader;
pub mod session;
pub mod upgrade;
