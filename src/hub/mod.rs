//! The sharded hub (to be implemented).
