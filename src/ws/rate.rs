//! The per-connection message rate limit: a token bucket, and the rule that
//! closes a client which keeps sending into a refusing bucket.
//!
//! The bucket holds `burst` tokens and refills at `rate` a second; each
//! `message` takes one. A full bucket lets a reconnecting client flush a
//! backlog of up to `burst` un-acknowledged messages at once (the reader's
//! backpressure paces the flush, it is never refused); after that a client
//! may send `rate` a second on average. A refused message is answered with
//! `rate_limited` and neither stored nor relayed; the client resends it later.

use std::time::Duration;

use tokio::time::Instant;

/// Refusals tolerated inside one [`REFUSAL_WINDOW`] before the connection is
/// closed with 1008: a client that resends later never gets near it.
pub(crate) const MAX_REFUSALS: u32 = 100;
/// The window over which refusals are counted.
pub(crate) const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// The configured limit; `rate == 0` turns it off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RateLimit {
    /// Tokens added per second.
    pub(crate) rate: f64,
    /// Bucket size: the largest burst.
    pub(crate) burst: f64,
}

impl RateLimit {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.rate <= 0.0
    }
}

/// What the bucket says about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Answer `rate_limited`.
    Refused,
    /// Too many refusals: close the connection with 1008.
    Abusive,
}

/// One connection's bucket.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled_at: Instant,
    refusals: u32,
    window_start: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: limit.burst,
            refilled_at: now,
            refusals: 0,
            window_start: now,
        }
    }

    /// Takes a token for one message at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let limit = self.limit;
        if limit.is_off() {
            return Verdict::Allowed;
        }
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        if now.saturating_duration_since(self.window_start) >= REFUSAL_WINDOW {
            self.window_start = now;
            self.refusals = 0;
        }
        self.refusals += 1;
        if self.refusals > MAX_REFUSALS {
            Verdict::Abusive
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_exactly_its_burst() {
        let limit = RateLimit::new(20, 50);
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limit, now);
        for _ in 0..50 {
            assert_eq!(bucket.take(now), Verdict::Allowed);
        }
        assert_eq!(bucket.take(now), Verdict::Refused);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let limit = RateLimit::new(20, 5);
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit, start);
        for _ in 0..5 {
            bucket.take(start);
        }
        assert_eq!(bucket.take(start), Verdict::Refused);
        // 20 a second: one token every 50 ms.
        let later = start + Duration::from_millis(50);
        assert_eq!(bucket.take(later), Verdict::Allowed);
        assert_eq!(bucket.take(later), Verdict::Refused);
        // Never more than the burst, however long the pause.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(bucket.take(much_later), Verdict::Allowed);
        }
        assert_eq!(bucket.take(much_later), Verdict::Refused);
    }

    #[test]
    fn many_refusals_in_a_window_are_abuse_and_a_new_window_forgives() {
        let limit = RateLimit::new(1, 1);
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit, start);
        assert_eq!(bucket.take(start), Verdict::Allowed);
        for _ in 0..MAX_REFUSALS {
            assert_eq!(bucket.take(start), Verdict::Refused);
        }
        assert_eq!(bucket.take(start), Verdict::Abusive);

        let mut bucket = TokenBucket::new(limit, start);
        bucket.take(start);
        for _ in 0..MAX_REFUSALS {
            bucket.take(start);
        }
        // The next window starts counting afresh (its first message is
        // still refused: 0.x tokens refilled).
        let next = start + REFUSAL_WINDOW + Duration::from_millis(1);
        bucket.tokens = 0.0;
        bucket.refilled_at = next;
        assert_eq!(bucket.take(next), Verdict::Refused);
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let limit = RateLimit::new(0, 1);
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limit, now);
        for _ in 0..10_000 {
            assert_eq!(bucket.take(now), Verdict::Allowed);
        }
    }
}
