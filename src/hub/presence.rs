//! Who is online anywhere: open connections counted per user, so a user with
//! two tabs stays online when one closes (the seed went offline).

use std::sync::Arc;

use crate::model::UserId;
use crate::user_counts::{UserCountGuard, UserCounts};

/// Open WebSocket connections per user.
#[derive(Default)]
pub(crate) struct Presence {
    connections: Arc<UserCounts>,
}

/// One open connection of a user; dropping it uncounts the connection.
pub(crate) type PresenceGuard = UserCountGuard;

impl Presence {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Counts a new connection of `user` until the guard is dropped, unless
    /// `user` already holds `max` connections: then `None`.
    pub(crate) fn try_connect(&self, user: UserId, max: u32) -> Option<PresenceGuard> {
        self.connections.try_add(user, max)
    }

    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.connections.holds_any(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tabs_one_closes_still_online() {
        let presence = Presence::new();
        assert!(!presence.is_online(15));
        let tab1 = presence.try_connect(15, u32::MAX).unwrap();
        let tab2 = presence.try_connect(15, u32::MAX).unwrap();
        drop(tab1);
        assert!(presence.is_online(15));
        drop(tab2);
        assert!(!presence.is_online(15));
        assert!(!presence.is_online(16));
    }
}
