//! How many of something each user holds open (WebSocket connections,
//! history answers), each counted by a guard until it is dropped, with an
//! optional per-user maximum checked and counted in one step.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::UserId;

/// Lock-striped counters. A stripe lock is held only for one map update
/// (never across an `.await`), so a std-style mutex is the right tool.
pub(crate) struct UserCounts {
    stripes: Box<[Mutex<HashMap<UserId, u32>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for UserCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl UserCounts {
    pub(crate) fn new() -> Self {
        UserCounts {
            stripes: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, user: UserId) -> &Mutex<HashMap<UserId, u32>> {
        &self.stripes[(self.hasher.hash_one(user) as usize) % self.stripes.len()]
    }

    /// Counts one more for `user` until the guard is dropped, unless `user`
    /// already holds `max`: then `None`. Check and count are one step, so
    /// racing callers for one user cannot pass `max` together.
    pub(crate) fn try_add(self: &Arc<Self>, user: UserId, max: u32) -> Option<UserCountGuard> {
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
        Some(UserCountGuard {
            counts: Arc::clone(self),
            user,
        })
    }

    /// Whether `user` holds at least one.
    pub(crate) fn holds_any(&self, user: UserId) -> bool {
        self.stripe(user).lock().contains_key(&user)
    }

    fn remove_one(&self, user: UserId) {
        let mut counts = self.stripe(user).lock();
        if let Some(count) = counts.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&user);
            }
        }
    }
}

/// One counted thing of a user; dropping it uncounts it.
pub(crate) struct UserCountGuard {
    counts: Arc<UserCounts>,
    user: UserId,
}

impl Drop for UserCountGuard {
    fn drop(&mut self) {
        self.counts.remove_one(self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stop_at_the_maximum_and_a_refusal_leaves_no_trace() {
        let counts = Arc::new(UserCounts::new());
        let a = counts.try_add(15, 2).unwrap();
        let _b = counts.try_add(15, 2).unwrap();
        assert!(counts.try_add(15, 2).is_none());
        assert!(counts.try_add(16, 2).is_some(), "per user");
        drop(a);
        assert!(counts.try_add(15, 2).is_some());
        assert!(counts.try_add(17, 0).is_none());
        assert!(!counts.holds_any(17), "a refusal leaves no trace");
    }
}
