//! Who is online anywhere: open connections counted per user, so a user with
//! two tabs stays online when one closes (the seed went offline).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::UserId;

/// Lock-striped counters. A stripe lock is held only for one map update
/// (never across an `.await`), so a std-style mutex is the right tool.
pub struct Presence {
    stripes: Box<[Mutex<HashMap<UserId, u32>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    pub fn new() -> Self {
        Presence {
            stripes: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, user: UserId) -> &Mutex<HashMap<UserId, u32>> {
        &self.stripes[(self.hasher.hash_one(user) as usize) % self.stripes.len()]
    }

    /// Counts a new connection of `user` until the guard is dropped.
    pub fn connect(self: &Arc<Self>, user: UserId) -> PresenceGuard {
        *self.stripe(user).lock().entry(user).or_insert(0) += 1;
        PresenceGuard {
            presence: Arc::clone(self),
            user,
        }
    }

    /// Like [`Presence::connect`], unless `user` already holds `max`
    /// connections: then `None`. Check and count are one step, so racing
    /// upgrades of one user cannot pass `max` together.
    pub fn try_connect(self: &Arc<Self>, user: UserId, max: u32) -> Option<PresenceGuard> {
        {
            let mut counts = self.stripe(user).lock();
            let count = counts.entry(user).or_insert(0);
            if *count >= max {
                if *count == 0 {
                    counts.remove(&user);
                }
                return None;
            }
            *count += 1;
        }
        Some(PresenceGuard {
            presence: Arc::clone(self),
            user,
        })
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.stripe(user).lock().contains_key(&user)
    }

    fn disconnect(&self, user: UserId) {
        let mut counts = self.stripe(user).lock();
        if let Some(count) = counts.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&user);
            }
        }
    }
}

/// One open connection of a user; dropping it uncounts the connection.
pub struct PresenceGuard {
    presence: Arc<Presence>,
    user: UserId,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnect(self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tabs_one_closes_still_online() {
        let presence = Arc::new(Presence::new());
        assert!(!presence.is_online(15));
        let tab1 = presence.connect(15);
        let tab2 = presence.connect(15);
        drop(tab1);
        assert!(presence.is_online(15));
        drop(tab2);
        assert!(!presence.is_online(15));
        assert!(!presence.is_online(16));
    }

    #[test]
    fn try_connect_stops_at_the_maximum() {
        let presence = Arc::new(Presence::new());
        let a = presence.try_connect(15, 2).unwrap();
        let _b = presence.try_connect(15, 2).unwrap();
        assert!(presence.try_connect(15, 2).is_none());
        assert!(presence.try_connect(16, 2).is_some(), "per user");
        drop(a);
        assert!(presence.try_connect(15, 2).is_some());
        assert!(presence.try_connect(17, 0).is_none());
        assert!(!presence.is_online(17), "a refusal leaves no trace");
    }
}
