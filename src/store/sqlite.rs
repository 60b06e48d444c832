//! STUB — replaced by the store branch at merge.
use super::StoreError;
use crate::config::SqliteSync;
use std::path::Path;
pub type SqliteStore = super::memory::MemoryStore;
impl super::memory::MemoryStore {
    pub fn open(_dir: &Path, _sync: SqliteSync) -> Result<Self, StoreError> {
        Ok(Self::default())
    }
}
