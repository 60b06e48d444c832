//! How many WebSocket connections this process can hold, and the gate that
//! refuses the next one cleanly (503 before the upgrade) instead of letting
//! `accept` fail for lack of file descriptors; and the gate that bounds the
//! history pages held in memory at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::user_counts::{UserCountGuard, UserCounts};

/// Descriptors kept for everything that is not a WebSocket: the listener,
/// REST connections, the store's files, Django and MongoDB pools.
fn reserve(limit: u64) -> u64 {
    (limit / 50).max(64)
}

/// Raises the soft `RLIMIT_NOFILE` as far as the system allows (see
/// [`soft_limit_for`]); returns the soft limit now in force.
pub(crate) fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let target = soft_limit_for(limit.rlim_max);
        if limit.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = target;
            }
        }
    }
    limit.rlim_cur
}

/// The highest soft open-files limit the system accepts under `hard`: the
/// hard limit itself, except on macOS, whose hard limit is usually
/// unlimited but whose `setrlimit` refuses a soft limit above `OPEN_MAX`
/// (its man page, COMPATIBILITY: use `min(OPEN_MAX, rlim_max)`).
fn soft_limit_for(hard: libc::rlim_t) -> libc::rlim_t {
    /// `OPEN_MAX` of `<sys/syslimits.h>`; the libc crate does not export it.
    const MACOS_OPEN_MAX: libc::rlim_t = 10_240;
    if cfg!(target_os = "macos") {
        hard.min(MACOS_OPEN_MAX)
    } else {
        hard
    }
}

/// The connections an open-files limit leaves room for.
pub(crate) fn capacity_for(open_files: u64) -> usize {
    open_files.saturating_sub(reserve(open_files)).max(1) as usize
}

/// Counts open WebSocket connections against a maximum.
#[derive(Clone)]
pub struct ConnectionGate {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection; dropping it frees the slot.
pub(crate) struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionGate {
    pub(crate) fn new(max: usize) -> Self {
        ConnectionGate {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` at capacity.
    pub(crate) fn try_admit(&self) -> Option<ConnectionSlot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        admitted.then(|| ConnectionSlot {
            open: Arc::clone(&self.open),
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bounds the `/messages` answers being built or sent at once: each holds
/// a permit from before its store read until its body is written (the
/// permit travels in the response body), so a page in memory per permit
/// bounds what history can take, however slowly clients read.
pub(crate) struct HistoryGate {
    permits: Arc<Semaphore>,
    wait: Duration,
    /// Answers each caller holds now: one user cannot take every permit.
    per_user: Arc<UserCounts>,
    max_per_user: u32,
}

/// Why a history request got no permit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryBusy {
    /// Every permit stayed taken for the whole wait.
    #[error("every history permit stayed taken for {0:?}")]
    Full(Duration),
    /// The caller already holds `CHAT_HISTORY_PER_USER` answers.
    #[error("the caller already holds its share of history answers")]
    PerUser,
}

/// A history answer's turn: a permit of the gate and the caller's count,
/// both given back when it is dropped.
pub(crate) struct HistoryPermit {
    _permit: OwnedSemaphorePermit,
    _count: UserCountGuard,
}

impl HistoryGate {
    pub(crate) fn new(permits: usize, per_user: u32, wait: Duration) -> Self {
        HistoryGate {
            permits: Arc::new(Semaphore::new(permits)),
            wait,
            max_per_user: per_user.max(1),
            per_user: Default::default(),
        }
    }

    /// A permit for `user`, waiting for one at most the gate's wait; at once
    /// `PerUser` when the caller already holds its share.
    pub(crate) async fn enter(
        &self,
        user: crate::model::UserId,
    ) -> Result<HistoryPermit, HistoryBusy> {
        // Undone when the permit is dropped, or now if none comes.
        let count = self
            .per_user
            .try_add(user, self.max_per_user)
            .ok_or(HistoryBusy::PerUser)?;
        match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(HistoryPermit {
                _permit: permit,
                _count: count,
            }),
            // The semaphore is never closed; treat it like a full gate anyway.
            Ok(Err(_)) | Err(_) => Err(HistoryBusy::Full(self.wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_caller_holds_at_most_its_share() {
        let gate = HistoryGate::new(8, 2, Duration::from_secs(5));
        let a = gate.enter(1).await.unwrap();
        let _b = gate.enter(1).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(gate.enter(1).await, Err(HistoryBusy::PerUser)));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
        assert!(gate.enter(2).await.is_ok(), "others are unaffected");
        drop(a);
        assert!(
            gate.enter(1).await.is_ok(),
            "a finished answer frees the share"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_wait_gives_the_share_back() {
        let gate = HistoryGate::new(1, 1, Duration::from_secs(1));
        let _held = gate.enter(1).await.unwrap();
        assert!(matches!(gate.enter(2).await, Err(HistoryBusy::Full(_))));
        assert!(
            matches!(gate.enter(2).await, Err(HistoryBusy::Full(_))),
            "user 2's first, refused wait left no count behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_history_gate_waits_then_gives_up() {
        let gate = HistoryGate::new(1, 2, Duration::from_secs(5));
        let held = gate.enter(1).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(gate.enter(2).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let waiting = tokio::spawn(async move {
            let gate = gate;
            gate.enter(3).await.map(drop)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert!(
            waiting.await.unwrap().is_ok(),
            "a freed permit goes to a waiter"
        );
    }

    #[test]
    fn the_gate_admits_up_to_its_maximum() {
        let gate = ConnectionGate::new(2);
        let a = gate.try_admit().unwrap();
        let _b = gate.try_admit().unwrap();
        assert!(gate.try_admit().is_none());
        drop(a);
        assert_eq!(gate.open(), 1);
        assert!(gate.try_admit().is_some());
    }

    #[test]
    fn capacity_leaves_a_reserve() {
        assert_eq!(capacity_for(20_000), 19_600);
        assert_eq!(capacity_for(1024), 960);
        assert_eq!(capacity_for(10), 1);
    }

    #[test]
    fn raising_the_limit_reaches_what_the_system_allows() {
        let soft = raise_open_files_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        // On Linux: the hard limit. A macOS soft limit may already be above
        // OPEN_MAX (set by `ulimit -n`); it is then left as it is.
        assert!(limit.rlim_cur >= soft_limit_for(limit.rlim_max));
    }
}
