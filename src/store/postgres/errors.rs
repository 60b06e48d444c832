//! Which PostgreSQL failures are worth retrying.
//!
//! `Unavailable` makes the writer back off and retry the whole batch (safe:
//! inserts are idempotent by id and client_id) and makes REST answer 503;
//! `Internal` is final. Anything a healthy, reachable server would not have
//! answered — a lost connection, a server shutting down or starting, a
//! statement timeout, a serialization failure or deadlock between nodes,
//! exhausted resources, refused credentials (an operator can fix those while
//! the writer keeps the queue) — is `Unavailable`.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// SQLSTATE classes that mean "not now" as a whole: connection exceptions
/// (08), transaction rollbacks such as serialization failures and
/// deadlocks (40), insufficient resources (53), operator intervention such
/// as shutdown or a cancelled statement (57), system errors such as I/O
/// (58).
const TRANSIENT_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];

/// Single SQLSTATEs that mean "not now".
fn is_transient_state(state: &SqlState) -> bool {
    let code = state.code();
    TRANSIENT_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            // An operator can mend these (a revoked grant, a database or
            // schema being restored or renamed) while the writer keeps its
            // queue; failing the ops would lose them.
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::UNDEFINED_TABLE,
        ]
        .contains(state)
}

/// The store error for a failed driver call; `context` names the call.
pub(crate) fn store_error(context: &str, error: tokio_postgres::Error) -> StoreError {
    let message = format!("postgres {context}: {}", describe(&error));
    if is_unavailable(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

/// The unique indexes a message meets when another node stored the same
/// message (same id or client_id) after a batch's statement took its
/// snapshot: a retry finds it and answers as for any duplicate.
const RACED_INDEXES: [&str; 2] = ["messages_pkey", "messages_client_id"];

/// Like [`store_error`], but a unique violation of [`RACED_INDEXES`] is
/// retryable too. Any other (a seq taken twice: `last_seq` behind the
/// stored messages, which only a hand edit or a restore can cause) is
/// final, and logged loudly: retrying could never succeed.
pub(crate) fn write_error(context: &str, error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        let constraint = error.as_db_error().and_then(|db| db.constraint());
        if constraint.is_some_and(|name| RACED_INDEXES.contains(&name)) {
            return StoreError::Unavailable(format!("postgres {context}: {}", describe(&error)));
        }
        tracing::error!(
            error = %describe(&error),
            "PostgreSQL: a unique index refused a write for good; if it is \
             messages_conversation_seq, a conversation's last_seq is behind its messages \
             (UPDATE chat.conversations c SET last_seq = GREATEST(last_seq, (SELECT \
             coalesce(max(seq), 0) FROM chat.messages m WHERE m.conversation_id = c.id)) fixes it)"
        );
    }
    store_error(context, error)
}

fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        Some(state) => is_transient_state(state),
        // No SQLSTATE: the driver's own failure, known only by its text
        // (its kind is private). Socket, TLS, connect, timeout and
        // authentication trouble is the server's or the network's; type
        // conversions, parameters and configuration are local bugs.
        None => {
            let text = error.to_string();
            error.is_closed() || TRANSIENT_DRIVER_ERRORS.iter().any(|t| text.starts_with(t))
        }
    }
}

/// How tokio-postgres words the failures that are not this process's fault.
const TRANSIENT_DRIVER_ERRORS: [&str; 8] = [
    "error communicating with the server",
    "error performing TLS handshake",
    "connection closed",
    "error connecting to server",
    "timeout waiting for server",
    "authentication error",
    "unexpected message from server",
    "error parsing response from server",
];

/// The server's message with its SQLSTATE and constraint, else the
/// driver's own text (which for a server error is only "db error").
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.constraint() {
            Some(constraint) => format!(
                "{} ({}, constraint {constraint})",
                db.message(),
                db.code().code()
            ),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_timeouts_and_conflicts_are_transient() {
        for state in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::IO_ERROR,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
        ] {
            assert!(is_transient_state(&state), "{}", state.code());
        }
    }

    #[test]
    fn constraint_and_syntax_errors_are_final() {
        for state in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::CHECK_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_COLUMN,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
        ] {
            assert!(!is_transient_state(&state), "{}", state.code());
        }
    }
}
