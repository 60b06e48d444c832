//! HTTP (to be implemented).
