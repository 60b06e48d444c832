//! The service's wire vocabulary: the JSON events of `/ws`, the server's
//! encoded frames and the close codes. A leaf (it uses only `model`), so the
//! hub that encodes events, the sessions that read and write them and the
//! HTTP layer that reports close counts all share it without depending on
//! one another.

pub mod close;
pub mod frame;
pub(crate) mod json_guard;
pub mod protocol;
