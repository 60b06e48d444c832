//! WebSocket: the `/ws` upgrade checks, one session per connection, and the
//! JSON protocol it speaks.

pub mod close;
pub mod frame;
pub mod json_guard;
pub mod protocol;
pub mod rate;
pub mod reader;
pub mod session;
pub mod upgrade;
