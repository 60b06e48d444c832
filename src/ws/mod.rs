//! WebSocket sessions (to be implemented).
