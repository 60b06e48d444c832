//! The Django client (to be implemented).
