//! Django answers by (token, id): a short-lived cache of 200s plus
//! single-flight, so a reconnect storm costs Django one call per key rather
//! than one per socket.
//!
//! The HTTP call of a look-up runs in its own task. A caller that gives up
//! (a dropped WebSocket upgrade) therefore never strands the callers that
//! joined it, and the task's guard clears the in-flight entry however the
//! call ends.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::auth::AuthError;

pub(crate) type LookupResult<V> = Result<V, AuthError>;

/// One in-flight look-up, awaited by every caller that asked for its key.
type Flight<V> = Shared<BoxFuture<'static, LookupResult<V>>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    token: Arc<str>,
    id: i64,
}

pub(crate) struct LookupCache<V> {
    /// The Django endpoint, for the cache metrics.
    endpoint: &'static str,
    ttl: Duration,
    capacity: usize,
    state: Arc<Mutex<State<V>>>,
}

struct State<V> {
    answers: HashMap<Key, (V, Instant)>,
    /// Keys in insertion order, which is expiry order because the TTL is
    /// fixed. May hold stale pairs for keys since replaced; those are skipped.
    expiry_order: VecDeque<(Key, Instant)>,
    in_flight: HashMap<Key, (u64, Flight<V>)>,
    next_flight: u64,
}

impl<V: Clone + Send + Sync + 'static> LookupCache<V> {
    /// `ttl` zero disables caching (single-flight still applies);
    /// `capacity` bounds the cached answers.
    pub(crate) fn new(endpoint: &'static str, ttl: Duration, capacity: usize) -> Self {
        LookupCache {
            endpoint,
            ttl,
            capacity,
            state: Arc::new(Mutex::new(State {
                answers: HashMap::new(),
                expiry_order: VecDeque::new(),
                in_flight: HashMap::new(),
                next_flight: 0,
            })),
        }
    }

    /// The cached answer for (token, id), or the answer of the look-up
    /// already running for it, or the answer of `fetch` run now. Only `Ok`
    /// answers are cached.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        token: &str,
        id: i64,
        fetch: F,
    ) -> LookupResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = LookupResult<V>> + Send + 'static,
    {
        let key = Key {
            token: Arc::from(token),
            id,
        };
        let (flight, leader) = {
            let mut state = self.state.lock();
            if let Some(value) = state.fresh(&key, Instant::now()) {
                self.count("hit");
                return Ok(value);
            }
            if let Some((_, flight)) = state.in_flight.get(&key) {
                self.count("joined");
                (flight.clone(), None)
            } else {
                self.count("miss");
                let (sender, receiver) = oneshot::channel();
                let flight: Flight<V> = receiver
                    .map(|answer| {
                        answer.unwrap_or_else(|_| {
                            Err(AuthError::Outage("django look-up abandoned".into()))
                        })
                    })
                    .boxed()
                    .shared();
                let generation = state.next_flight;
                state.next_flight += 1;
                state
                    .in_flight
                    .insert(key.clone(), (generation, flight.clone()));
                (flight, Some((sender, generation)))
            }
        };
        if let Some((sender, generation)) = leader {
            // Spawned outside the lock: a runtime that is shutting down drops
            // the task at once, and the guard's drop takes the lock.
            let guard = FlightGuard {
                state: Arc::clone(&self.state),
                key,
                generation,
                armed: true,
            };
            let request = fetch();
            let (ttl, capacity) = (self.ttl, self.capacity);
            tokio::spawn(async move {
                let answer = request.await;
                guard.finish(&answer, ttl, capacity);
                // Nobody waiting any more is fine: the answer is cached.
                let _ = sender.send(answer);
            });
        }
        flight.await
    }

    fn count(&self, result: &'static str) {
        crate::metrics::get()
            .django_cache
            .get_or_create(&crate::metrics::CacheLabels {
                endpoint: self.endpoint,
                result,
            })
            .inc();
    }

    /// How many answers are cached (tests and metrics).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.state.lock().answers.len()
    }

    /// How many look-ups are running.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.state.lock().in_flight.len()
    }
}

impl<V: Clone> State<V> {
    fn fresh(&mut self, key: &Key, now: Instant) -> Option<V> {
        match self.answers.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                self.answers.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&mut self, key: Key, value: V, now: Instant, ttl: Duration, capacity: usize) {
        if ttl.is_zero() || capacity == 0 {
            return;
        }
        self.drop_oldest_while(|_, expires, _| expires <= now);
        self.drop_oldest_while(|_, _, len| len >= capacity);
        let expires = now + ttl;
        self.answers.insert(key.clone(), (value, expires));
        self.expiry_order.push_back((key, expires));
    }

    /// Pops the oldest answers while `condition(key, expires, answers.len())`
    /// holds, skipping stale order entries.
    fn drop_oldest_while(&mut self, condition: impl Fn(&Key, Instant, usize) -> bool) {
        while let Some((key, expires)) = self.expiry_order.front() {
            if !condition(key, *expires, self.answers.len()) {
                break;
            }
            let is_current = self.answers.get(key).is_some_and(|(_, e)| e == expires);
            if is_current {
                self.answers.remove(key);
            }
            self.expiry_order.pop_front();
        }
    }
}

/// Clears its in-flight entry when the look-up ends, panics or is dropped.
struct FlightGuard<V> {
    state: Arc<Mutex<State<V>>>,
    key: Key,
    generation: u64,
    armed: bool,
}

impl<V: Clone> FlightGuard<V> {
    /// Caches an `Ok` answer and clears the entry under one lock, so a new
    /// caller sees either the flight or the cached answer, never neither.
    fn finish(mut self, answer: &LookupResult<V>, ttl: Duration, capacity: usize) {
        let mut state = self.state.lock();
        if let Ok(value) = answer {
            state.remember(
                self.key.clone(),
                value.clone(),
                Instant::now(),
                ttl,
                capacity,
            );
        }
        remove_flight(&mut state, &self.key, self.generation);
        drop(state);
        self.armed = false;
    }
}

impl<V> Drop for FlightGuard<V> {
    fn drop(&mut self) {
        if self.armed {
            remove_flight(&mut self.state.lock(), &self.key, self.generation);
        }
    }
}

fn remove_flight<V>(state: &mut State<V>, key: &Key, generation: u64) {
    if state
        .in_flight
        .get(key)
        .is_some_and(|(g, _)| *g == generation)
    {
        state.in_flight.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting_fetch(
        calls: &Arc<AtomicUsize>,
        answer: LookupResult<u32>,
    ) -> impl FnOnce() -> BoxFuture<'static, LookupResult<u32>> {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { answer }.boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caches_ok_answers_until_the_ttl_passes() {
        let cache = LookupCache::new("test", Duration::from_secs(30), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache
                .get_or_fetch("t", 1, counting_fetch(&calls, Ok(7)))
                .await,
            Ok(7)
        );
        assert_eq!(
            cache
                .get_or_fetch("t", 1, counting_fetch(&calls, Ok(8)))
                .await,
            Ok(7)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            cache
                .get_or_fetch("t", 1, counting_fetch(&calls, Ok(8)))
                .await,
            Ok(8)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = LookupCache::new("test", Duration::from_secs(30), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        let denied =
            cache.get_or_fetch("t", 1, counting_fetch(&calls, Err(AuthError::Unauthorized)));
        assert_eq!(denied.await, Err(AuthError::Unauthorized));
        assert_eq!(
            cache
                .get_or_fetch("t", 1, counting_fetch(&calls, Ok(3)))
                .await,
            Ok(3)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.in_flight(), 0);
    }

    #[tokio::test]
    async fn zero_ttl_caches_nothing() {
        let cache = LookupCache::new("test", Duration::ZERO, 10);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            assert_eq!(
                cache
                    .get_or_fetch("t", 1, counting_fetch(&calls, Ok(1)))
                    .await,
                Ok(1)
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.cached(), 0);
    }

    #[tokio::test]
    async fn keys_are_token_and_id() {
        let cache = LookupCache::new("test", Duration::from_secs(30), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache
                .get_or_fetch("a", 1, counting_fetch(&calls, Ok(1)))
                .await,
            Ok(1)
        );
        assert_eq!(
            cache
                .get_or_fetch("b", 1, counting_fetch(&calls, Ok(2)))
                .await,
            Ok(2)
        );
        assert_eq!(
            cache
                .get_or_fetch("a", 2, counting_fetch(&calls, Ok(3)))
                .await,
            Ok(3)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_the_oldest_answer() {
        let cache = LookupCache::new("test", Duration::from_secs(30), 3);
        let calls = Arc::new(AtomicUsize::new(0));
        for id in 0..5 {
            cache
                .get_or_fetch("t", id, counting_fetch(&calls, Ok(1)))
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.cached(), 3);
        // 0 and 1 were evicted, 2..5 kept.
        cache
            .get_or_fetch("t", 4, counting_fetch(&calls, Ok(1)))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        cache
            .get_or_fetch("t", 0, counting_fetch(&calls, Ok(1)))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert_eq!(cache.cached(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_order_entries_do_not_grow_without_bound() {
        let cache = LookupCache::new("test", Duration::from_secs(1), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            cache
                .get_or_fetch("t", 1, counting_fetch(&calls, Ok(1)))
                .await
                .unwrap();
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 50);
        assert!(cache.state.lock().expiry_order.len() <= 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_survive_the_first_leaving() {
        let cache = Arc::new(LookupCache::new("test", Duration::ZERO, 10));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let first = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch("t", 1, move || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let _ = released.await;
                            Ok(5u32)
                        }
                        .boxed()
                    })
                    .await
            })
        };
        while cache.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let followers: Vec<_> = (0..5)
            .map(|_| {
                let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("t", 1, counting_fetch(&calls, Ok(9)))
                        .await
                })
            })
            .collect();
        // Let every follower join the flight before the first caller leaves.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        for follower in followers {
            assert_eq!(follower.await.unwrap(), Ok(5));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_fetch_clears_its_entry() {
        let cache = LookupCache::<u32>::new("test", Duration::from_secs(30), 10);
        let answer = cache
            .get_or_fetch("t", 1, || async { panic!("fetch failed") }.boxed())
            .await;
        assert!(matches!(answer, Err(AuthError::Outage(_))));
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(
            cache.get_or_fetch("t", 1, || async { Ok(2) }.boxed()).await,
            Ok(2)
        );
    }
}
