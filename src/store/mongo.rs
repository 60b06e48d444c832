//! The MongoDB store (to be implemented).
//!
//! API CONTRACT: `MongoStore::connect(&MongoSettings).await -> Result<MongoStore, StoreError>`,
//! then `impl Store for MongoStore`.

use std::time::Duration;

/// How to reach MongoDB; built from `MONGO_URI`, `MONGO_DB` and `CHAT_MONGO_*`.
#[derive(Clone, Debug)]
pub struct MongoSettings {
    pub uri: String,
    pub database: String,
    pub pool_size: u32,
    /// Connect and server-selection timeout.
    pub timeout: Duration,
    /// Write concern `w`: `"majority"` or a node count.
    pub w: String,
    /// Write concern `j`.
    pub journal: bool,
}

/// STUB — replaced by the mongo branch at merge.
pub type MongoStore = super::memory::MemoryStore;
impl super::memory::MemoryStore {
    pub async fn connect(_s: &MongoSettings) -> Result<Self, super::StoreError> {
        Ok(Self::default())
    }
}
