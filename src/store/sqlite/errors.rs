//! Which SQLite and journal failures are worth retrying.
//!
//! `Unavailable` makes the writer back off and retry the whole batch (safe:
//! inserts are idempotent) and makes REST answer 503; `Internal` is final.
//! A third kind concerns one op's data only: that op is `Rejected` and the
//! rest of its batch goes on.

use rusqlite::ffi;

use crate::model::MessageId;
use crate::store::StoreError;

/// Locks, I/O and a full disk may pass (`Unavailable`, retried); anything
/// else is a bug or corruption (`Internal`).
pub(super) fn store_error(error: rusqlite::Error) -> StoreError {
    match &error {
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code:
                    ffi::ErrorCode::DatabaseBusy
                    | ffi::ErrorCode::DatabaseLocked
                    | ffi::ErrorCode::SystemIoFailure
                    | ffi::ErrorCode::DiskFull
                    | ffi::ErrorCode::CannotOpen
                    | ffi::ErrorCode::FileLockingProtocolFailed,
                ..
            },
            _,
        ) => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

/// Errors that concern one op's data, not the database: the op is
/// `Rejected` and the batch goes on.
pub(super) fn refuses_only_this_op(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code: ffi::ErrorCode::ConstraintViolation
                    | ffi::ErrorCode::TooBig
                    | ffi::ErrorCode::TypeMismatch,
                ..
            },
            _,
        )
    )
}

/// A journaled op SQLite can never take (a constraint the journal does not
/// know) is logged and dropped rather than blocking every later merge, or
/// every start.
pub(super) fn drop_if_refused(
    applied: rusqlite::Result<()>,
    message: MessageId,
    during: &str,
) -> rusqlite::Result<()> {
    match applied {
        Err(e) if refuses_only_this_op(&e) => {
            tracing::error!(id = %message, "journaled write dropped by SQLite at {during}: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Journal I/O errors: a full disk or a failing volume may pass, so the
/// writer retries them.
pub(super) fn journal_error(error: std::io::Error) -> StoreError {
    match error.kind() {
        std::io::ErrorKind::InvalidData => StoreError::Internal(format!("journal: {error}")),
        _ => StoreError::Unavailable(format!("journal: {error}")),
    }
}

/// A worker thread is gone: it panicked, which retrying will not fix.
pub(super) fn threads_stopped() -> StoreError {
    StoreError::Internal("the SQLite worker threads have stopped".into())
}
