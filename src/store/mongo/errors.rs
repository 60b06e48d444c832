//! Which MongoDB failures are worth retrying.
//!
//! `Unavailable` makes the writer back off and retry the whole batch (safe:
//! inserts are idempotent) and makes REST answer 503; `Internal` is final.
//! Anything that a healthy, reachable primary would not have answered —
//! network, selection, elections, write-concern timeouts, overload — is
//! `Unavailable`.

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::store::StoreError;

/// E11000 (and its pre-3.0 twin, which some proxies still send).
pub(crate) fn is_duplicate_key_code(code: i32) -> bool {
    code == 11000 || code == 11001
}

/// A duplicate-key failure of a single-document write (findAndModify upsert).
pub(crate) fn is_duplicate_key(error: &Error) -> bool {
    match &*error.kind {
        ErrorKind::Command(command) => is_duplicate_key_code(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => is_duplicate_key_code(write.code),
        _ => false,
    }
}

/// Server codes that mean "not now" rather than "never": elections,
/// shutdowns, timeouts, network trouble between nodes, lock contention,
/// missing replicas for the write concern, and refused credentials (the
/// operator can fix those while the writer keeps the queue).
pub(crate) fn is_transient_code(code: i32) -> bool {
    matches!(
        code,
        6       // HostUnreachable
        | 7     // HostNotFound
        | 13    // Unauthorized
        | 18    // AuthenticationFailed
        | 24    // LockTimeout
        | 46    // LockBusy
        | 50    // MaxTimeMSExpired
        | 64    // WriteConcernFailed (wtimeout)
        | 89    // NetworkTimeout
        | 91    // ShutdownInProgress
        | 100   // UnsatisfiableWriteConcern (too few members up)
        | 112   // WriteConflict
        | 117   // ConflictingOperationInProgress
        | 133   // FailedToSatisfyReadPreference
        | 134   // ReadConcernMajorityNotAvailableYet
        | 189   // PrimarySteppedDown
        | 202   // NetworkInterfaceExceededTimeLimit
        | 262   // ExceededTimeLimit
        | 9001  // SocketException
        | 10107 // NotWritablePrimary
        | 11600 // InterruptedAtShutdown
        | 11602 // InterruptedDueToReplStateChange
        | 13435 // NotPrimaryNoSecondaryOk
        | 13436 // NotPrimaryOrSecondary
    )
}

/// Write-error codes that no retry can fix for that one document; the op
/// is rejected so it cannot wedge the writer's queue forever.
pub(crate) fn is_permanent_write_code(code: i32) -> bool {
    matches!(
        code,
        2         // BadValue
        | 121     // DocumentValidationFailure
        | 10334   // BSONObjectTooLarge
        | 17280 // KeyTooLong
    )
}

/// The store error for a failed driver call; `context` names the call.
pub(crate) fn store_error(context: &str, error: Error) -> StoreError {
    let message = format!("mongodb {context}: {error}");
    if is_unavailable(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

fn is_unavailable(error: &Error) -> bool {
    const TRANSIENT_LABELS: [&str; 4] = [
        "RetryableWriteError",
        "TransientTransactionError",
        "SystemOverloadedError",
        "RetryableError",
    ];
    if TRANSIENT_LABELS
        .iter()
        .any(|label| error.contains_label(label))
    {
        return true;
    }
    match &*error.kind {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::InvalidResponse { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(command) => is_transient_code(command.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Write(WriteFailure::WriteError(write)) => is_transient_code(write.code),
        ErrorKind::InsertMany(insert) => {
            insert.write_concern_error.is_some()
                || insert
                    .write_errors
                    .iter()
                    .flatten()
                    .any(|write| is_transient_code(write.code))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_selection_failures_are_unavailable() {
        let io = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            store_error("find", io),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn a_bad_argument_is_internal() {
        let error = Error::custom(String::from("bug"));
        assert!(matches!(
            store_error("find", error),
            StoreError::Internal(_)
        ));
    }
}
