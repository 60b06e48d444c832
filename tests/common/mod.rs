//! Shared test helpers.

pub mod django;
