//! The checkpoint thread's scheduling priority.
//!
//! A message is relayed once its journal append returns, so the write
//! thread runs at the relaying threads' priority; copying the WAL into the
//! database file is on no message's path and takes what the cores leave.

/// Lowers the calling thread's priority; failing only costs that ordering,
/// so it is not an error.
#[cfg(target_os = "linux")]
pub(super) fn lower_priority() {
    const WRITER_NICE: libc::c_int = 10;
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // changes only this thread's nice value.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE)
    };
    if result != 0 {
        tracing::debug!("could not lower the SQLite checkpoint thread's priority");
    }
}

/// Only Linux gives each thread a nice value of its own (`setpriority` on a
/// thread id); elsewhere the checkpointer keeps the default priority.
#[cfg(not(target_os = "linux"))]
pub(super) fn lower_priority() {}
