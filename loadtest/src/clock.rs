//! One monotonic clock for send timestamps and receive times.
//!
//! Both ends of a pair always live in the same process, so a process-local
//! base is enough and avoids wall-clock steps.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's first call.
pub fn now_nanos() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
