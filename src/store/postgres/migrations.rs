//! Versioned schema migrations, applied at start.
//!
//! Each migration is a SQL file (`migrations/NNNN_*.sql`) whose last
//! statement records its version in `chat.schema_migrations`, so an
//! operator may apply the files by hand with `psql -1` instead; the service
//! then finds the schema current and runs no DDL (it needs no DDL rights).
//! At start the service applies what is missing inside one transaction,
//! under an advisory lock: nodes starting together wait for each other, and
//! the second finds the work done. Migrations only add (tables,
//! columns, indexes), so an older node keeps working on a newer schema
//! during a rolling upgrade.

use tokio_postgres::{Client, GenericClient};

use super::errors::store_error;
use crate::store::StoreError;

/// The migrations in order; a migration's version is its position + 1.
const MIGRATIONS: [&str; 1] = [include_str!("migrations/0001_init.sql")];

/// The newest schema version this build knows.
pub(crate) const LATEST: i32 = MIGRATIONS.len() as i32;

/// Key of the advisory lock that serializes migrations ("chatmigr").
const LOCK_KEY: i64 = 0x6368_6174_6d69_6772;

/// Brings the schema to [`LATEST`]; returns the version found and the
/// version left.
pub(crate) async fn migrate(client: &mut Client) -> Result<(i32, i32), StoreError> {
    let found = current_version(client).await?;
    if found >= LATEST {
        if found > LATEST {
            tracing::warn!(
                schema = found,
                known = LATEST,
                "the PostgreSQL schema is newer than this build knows; starting anyway (migrations only add)"
            );
        }
        return Ok((found, found));
    }
    // A session lock taken before the transaction begins: once granted, the
    // transaction's first look at the schema comes after whatever the
    // holder before it committed. The caller closes the connection after,
    // which frees the lock even when this fails halfway.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|error| store_error("migration lock", error))?;
    let transaction = client
        .transaction()
        .await
        .map_err(|error| store_error("begin migrations", error))?;
    // Another node may have migrated while this one waited for the lock.
    let locked_version = current_version(&transaction).await?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(as_index(locked_version)) {
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| store_error(&format!("migration {}", index + 1), error))?;
        tracing::info!(version = index + 1, "PostgreSQL schema migrated");
    }
    transaction
        .commit()
        .await
        .map_err(|error| store_error("commit migrations", error))?;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(|error| store_error("migration unlock", error))?;
    Ok((found, LATEST.max(locked_version)))
}

/// The recorded schema version; 0 before the first migration.
async fn current_version(client: &impl GenericClient) -> Result<i32, StoreError> {
    // Two statements: a query naming a missing table fails at parse time.
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('chat.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|error| store_error("schema version", error))?;
    if !exists {
        return Ok(0);
    }
    client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM chat.schema_migrations",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|error| store_error("schema version", error))
}

fn as_index(version: i32) -> usize {
    usize::try_from(version).unwrap_or(0)
}
