//! Pure access rules (to be implemented).
