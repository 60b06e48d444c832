//! What each worker thread counts, and how counts from threads and processes merge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency or connect time recorded, in microseconds (10 minutes); larger values saturate.
const HIST_MAX_US: u64 = 600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant digits: 0.1% error, ~300 KB per histogram (one per thread, not per connection).
    Histogram::new_with_bounds(1, HIST_MAX_US, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// Progress counters one thread updates and the controller sums while waiting.
/// Each thread owns its own, so the atomics are never contended.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Connections currently open.
    pub open: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    /// Messages the server answered with an `error` carrying their `client_id`.
    pub refused: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
            open: self.open.load(Relaxed),
            sent: self.sent.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            acked: self.acked.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// A point-in-time sum of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub connected: u64,
    pub failed: u64,
    pub open: u64,
    pub sent: u64,
    pub delivered: u64,
    pub acked: u64,
    pub refused: u64,
}

impl Snapshot {
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Snapshot {
        all.into_iter()
            .map(Counters::snapshot)
            .fold(Snapshot::default(), |a, b| a.merged(&b))
    }

    pub fn merged(&self, o: &Snapshot) -> Snapshot {
        Snapshot {
            connected: self.connected + o.connected,
            failed: self.failed + o.failed,
            open: self.open + o.open,
            sent: self.sent + o.sent,
            delivered: self.delivered + o.delivered,
            acked: self.acked + o.acked,
            refused: self.refused + o.refused,
        }
    }

    /// Every message sent has reached its peer and been acked (or refused).
    pub fn settled(&self) -> bool {
        self.delivered + self.refused >= self.sent && self.acked + self.refused >= self.sent
    }
}

/// Details one thread keeps in plain (non-atomic) form; read only at the end.
#[derive(Debug)]
pub struct LocalStats {
    /// End-to-end latency at the peer, microseconds.
    pub latency: Histogram<u64>,
    /// TCP connect plus upgrade, microseconds.
    pub connect: Histogram<u64>,
    pub echoes: u64,
    pub other_events: u64,
    pub error_events: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<u16, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    /// Connections that ended without a close frame from the server, by cause.
    pub disconnects: BTreeMap<String, u64>,
}

impl Default for LocalStats {
    fn default() -> Self {
        LocalStats {
            latency: new_histogram(),
            connect: new_histogram(),
            echoes: 0,
            other_events: 0,
            error_events: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            connect_failures: BTreeMap::new(),
            disconnects: BTreeMap::new(),
        }
    }
}

pub fn record_us(h: &mut Histogram<u64>, nanos: u64) {
    h.saturating_record((nanos / 1000).max(1));
}

pub fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

fn merge_maps<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// A histogram as (bucket value, count) rows: small, and re-recording each row
/// reproduces the same buckets, so percentiles survive the trip between processes.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buckets(pub Vec<(u64, u64)>);

impl Buckets {
    pub fn of(h: &Histogram<u64>) -> Buckets {
        Buckets(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.saturating_record_n(value, count);
        }
    }
}

/// A process's (or a merged) detail counts, in the form children send to the parent.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub latency: Buckets,
    pub connect: Buckets,
    pub echoes: u64,
    pub other_events: u64,
    pub error_events: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<u16, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
}

impl Details {
    pub fn from_threads(threads: &[LocalStats]) -> Details {
        let mut latency = new_histogram();
        let mut connect = new_histogram();
        let mut d = Details::default();
        for t in threads {
            // Same bounds on both sides, so add cannot fail.
            let _ = latency.add(&t.latency);
            let _ = connect.add(&t.connect);
            d.echoes += t.echoes;
            d.other_events += t.other_events;
            merge_maps(&mut d.error_events, &t.error_events);
            merge_maps(&mut d.close_codes, &t.close_codes);
            merge_maps(&mut d.connect_failures, &t.connect_failures);
            merge_maps(&mut d.disconnects, &t.disconnects);
        }
        d.latency = Buckets::of(&latency);
        d.connect = Buckets::of(&connect);
        d
    }

    pub fn merge(parts: &[Details]) -> Details {
        let mut latency = new_histogram();
        let mut connect = new_histogram();
        let mut d = Details::default();
        for p in parts {
            p.latency.add_to(&mut latency);
            p.connect.add_to(&mut connect);
            d.echoes += p.echoes;
            d.other_events += p.other_events;
            merge_maps(&mut d.error_events, &p.error_events);
            merge_maps(&mut d.close_codes, &p.close_codes);
            merge_maps(&mut d.connect_failures, &p.connect_failures);
            merge_maps(&mut d.disconnects, &p.disconnects);
        }
        d.latency = Buckets::of(&latency);
        d.connect = Buckets::of(&connect);
        d
    }
}

/// Percentiles of a histogram recorded in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(buckets: &Buckets) -> Percentiles {
        let mut h = new_histogram();
        buckets.add_to(&mut h);
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&Buckets::of(&h));
        assert_eq!(p.count, 10_000);
        assert_eq!(p.min, 1);
        // 3 significant digits: each value within 0.1%.
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(p.p50, 5_000), "{p:?}");
        assert!(near(p.p90, 9_000), "{p:?}");
        assert!(near(p.p99, 9_900), "{p:?}");
        assert!(near(p.p99_9, 9_990), "{p:?}");
        assert!(near(p.max, 10_000), "{p:?}");
        assert!((p.mean - 5_000.5).abs() < 10.0, "{p:?}");
    }

    #[test]
    fn merging_buckets_equals_recording_everything_in_one_histogram() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        let mut all = new_histogram();
        for i in 0..5_000u64 {
            let v = 1 + (i * 7919) % 250_000;
            if i % 3 == 0 {
                a.record(v).unwrap()
            } else {
                b.record(v).unwrap()
            }
            all.record(v).unwrap();
        }
        let parts = [
            Details {
                latency: Buckets::of(&a),
                ..Details::default()
            },
            Details {
                latency: Buckets::of(&b),
                ..Details::default()
            },
        ];
        let merged = Details::merge(&parts);
        assert_eq!(
            Percentiles::of(&merged.latency),
            Percentiles::of(&Buckets::of(&all))
        );
        // And through JSON, as children send it.
        let json = serde_json::to_string(&merged).unwrap();
        let back: Details = serde_json::from_str(&json).unwrap();
        assert_eq!(back, merged);
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(Percentiles::of(&Buckets::default()), Percentiles::default());
    }

    #[test]
    fn settled_needs_every_message_delivered_and_acked() {
        let s = Snapshot {
            sent: 10,
            delivered: 10,
            acked: 9,
            ..Snapshot::default()
        };
        assert!(!s.settled());
        assert!(Snapshot { acked: 10, ..s }.settled());
        assert!(Snapshot {
            delivered: 8,
            acked: 8,
            refused: 2,
            ..s
        }
        .settled());
    }
}
