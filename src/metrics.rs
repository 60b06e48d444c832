//! Prometheus metrics: one registry per process (as Prometheus scrapes a
//! process), written by `prometheus-client` in the OpenMetrics text format.
//!
//! The hot path only touches handles made once here: a counter is one
//! atomic add, a histogram observation a lock that only its shard takes.
//! Families with labels are looked up (a read lock and a hash) only on
//! rare events: refusals, closes, errors, Django calls. Gauges that other
//! parts already know (open connections, queue depths, closes per reason)
//! are read when `/metrics` is scraped, see `http::metrics`, so they cost
//! the hot path nothing.

pub(crate) mod process;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Every metric name starts with this (the `process_*` family excepted).
pub const PREFIX: &str = "chat";

/// Latencies from 100 µs to 10 s: a delivery is normally well under a
/// millisecond, a store outage holds one for seconds.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Label values known in advance: their series are created at start with
/// 0, so a rate over them exists before the first event (Prometheus has no
/// series for a label set never seen).
pub const ROLES: [&str; 2] = ["mentor", "student"];
pub const STORE_OPS: [&str; 2] = ["read", "write"];
pub const STORE_ERROR_KINDS: [&str; 3] = ["unavailable", "internal", "rejected"];
pub const DJANGO_OUTCOMES: [&str; 3] = ["ok", "denied", "outage"];
pub const CACHE_RESULTS: [&str; 3] = ["hit", "joined", "miss"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub status: u16,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    /// `write` (the writer) or `read` (REST, recovery, the upgrade).
    pub op: &'static str,
    /// `unavailable`, `internal` or `rejected` (one op refused for good).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DjangoLabels {
    pub endpoint: &'static str,
    /// `ok`, `denied` or `outage`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub endpoint: &'static str,
    /// `hit` (a fresh answer), `joined` (a look-up already running for the
    /// same token and id), `miss` (a call to Django).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route, never the raw path: a label per conversation id would
    /// grow without bound.
    pub route: &'static str,
    pub status: u16,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// The process's metrics. Fields are handles: cloning one shares it.
pub struct Metrics {
    registry: Registry,
    pub connections_opened: Family<RoleLabels, Counter>,
    pub connections_open: Family<RoleLabels, Gauge>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub messages_received: Counter,
    pub messages_stored: Counter,
    pub messages_duplicate: Counter,
    pub messages_relayed: Counter,
    pub ws_errors: Family<CodeLabels, Counter>,
    pub delivery_seconds: Family<ShardLabels, Histogram, fn() -> Histogram>,
    pub writer_batch_ops: Histogram,
    pub writer_commit_seconds: Histogram,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub django_seconds: Family<DjangoLabels, Histogram, fn() -> Histogram>,
    pub django_cache: Family<CacheLabels, Counter>,
    pub django_outages: Family<EndpointLabels, Counter>,
    pub shard_busy_seconds: Family<ShardLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            connections_opened: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            messages_received: Counter::default(),
            messages_stored: Counter::default(),
            messages_duplicate: Counter::default(),
            messages_relayed: Counter::default(),
            ws_errors: Family::default(),
            delivery_seconds: Family::new_with_constructor(seconds_histogram),
            // 1 to 16,384 ops: the writer's largest batch.
            writer_batch_ops: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 15),
            ),
            writer_commit_seconds: seconds_histogram(),
            store_errors: Family::default(),
            django_seconds: Family::new_with_constructor(seconds_histogram),
            django_cache: Family::default(),
            django_outages: Family::default(),
            shard_busy_seconds: Family::default(),
            http_requests: Family::default(),
        };
        for role in ROLES {
            let _ = metrics
                .connections_opened
                .get_or_create(&RoleLabels { role });
            let _ = metrics.connections_open.get_or_create(&RoleLabels { role });
        }
        for op in STORE_OPS {
            for kind in STORE_ERROR_KINDS {
                let _ = metrics
                    .store_errors
                    .get_or_create(&StoreErrorLabels { op, kind });
            }
        }
        metrics
            .registry
            .register_collector(Box::new(process::ProcessCollector));
        let registry = metrics.registry.sub_registry_with_prefix(PREFIX);
        registry.register(
            "connections_opened",
            "WebSocket connections upgraded, by role",
            metrics.connections_opened.clone(),
        );
        registry.register(
            "connections_open",
            "WebSocket connections open now, by role",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "/ws requests refused before the upgrade, by HTTP status and error code",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "messages_received",
            "message frames received and parsed (before the rate limit)",
            metrics.messages_received.clone(),
        );
        registry.register(
            "messages_stored",
            "messages the writer stored (new, not duplicates)",
            metrics.messages_stored.clone(),
        );
        registry.register(
            "messages_duplicate",
            "resent messages the store already held (acknowledged, not stored again)",
            metrics.messages_duplicate.clone(),
        );
        registry.register(
            "messages_relayed",
            "stored messages relayed to their conversation's connections",
            metrics.messages_relayed.clone(),
        );
        registry.register(
            "ws_errors",
            "error events sent to WebSocket clients (a frame refused), by error code",
            metrics.ws_errors.clone(),
        );
        registry.register_with_unit(
            "delivery",
            "from a message frame received to its relay (stored first), by hub shard",
            Unit::Seconds,
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "writer_batch_ops",
            "ops per write batch",
            metrics.writer_batch_ops.clone(),
        );
        registry.register_with_unit(
            "writer_commit",
            "time of a successful write batch in the store",
            Unit::Seconds,
            metrics.writer_commit_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "store errors, by operation and kind",
            metrics.store_errors.clone(),
        );
        registry.register_with_unit(
            "django_request",
            "Django look-ups (cache misses), by endpoint and outcome",
            Unit::Seconds,
            metrics.django_seconds.clone(),
        );
        registry.register(
            "django_cache",
            "Django look-ups by cache result",
            metrics.django_cache.clone(),
        );
        registry.register(
            "django_outages",
            "Django look-ups that failed as an outage (unreachable, 5xx, unreadable)",
            metrics.django_outages.clone(),
        );
        registry.register_with_unit(
            "shard_busy",
            "time each hub shard spent handling work",
            Unit::Seconds,
            metrics.shard_busy_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.http_requests.clone(),
        );
        metrics
    }

    /// The text exposition of every metric, then of `scraped` (gauges read
    /// at scrape time), closed by `# EOF`.
    pub fn render(&self, scraped: &Registry) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        encode_registry(&mut text, &self.registry)?;
        encode_registry(&mut text, scraped)?;
        encode_eof(&mut text)?;
        Ok(text)
    }

    /// Counts one HTTP answer.
    pub fn http_answered(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// Counts one store error under `op` (`write` or `read`).
    pub fn store_error(&self, op: &'static str, kind: &'static str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels { op, kind })
            .inc();
    }

    /// Creates the series of a Django endpoint at 0.
    pub fn django_endpoint(&self, endpoint: &'static str) {
        for outcome in DJANGO_OUTCOMES {
            let _ = self
                .django_seconds
                .get_or_create(&DjangoLabels { endpoint, outcome });
        }
        for result in CACHE_RESULTS {
            let _ = self
                .django_cache
                .get_or_create(&CacheLabels { endpoint, result });
        }
        let _ = self
            .django_outages
            .get_or_create(&EndpointLabels { endpoint });
    }

    /// Creates the series of every WebSocket error code at 0.
    pub fn ws_error_codes(&self, codes: impl IntoIterator<Item = &'static str>) {
        for code in codes {
            let _ = self.ws_errors.get_or_create(&CodeLabels { code });
        }
    }

    /// A shard's handles, taken once at its start: each shard observes
    /// into its own histogram, so no lock is shared between shards.
    pub fn shard(&self, shard: u32) -> ShardMetrics {
        let labels = ShardLabels { shard };
        ShardMetrics {
            busy: self.shard_busy_seconds.get_or_create_owned(&labels),
            delivery: self.delivery_seconds.get_or_create_owned(&labels),
        }
    }
}

/// One hub shard's own metric handles.
pub struct ShardMetrics {
    /// Time spent handling work.
    pub busy: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Frame received → relayed.
    pub delivery: Histogram,
}

/// An open WebSocket connection, counted in `connections_open` until
/// dropped.
pub struct OpenConnection {
    open: Gauge,
}

impl Metrics {
    /// Counts a connection of `role` (`mentor` or `student`) as opened and
    /// open, until the guard is dropped.
    pub fn connection_opened(&self, role: &'static str) -> OpenConnection {
        let labels = RoleLabels { role };
        self.connections_opened.get_or_create(&labels).inc();
        let open = self.connections_open.get_or_create_owned(&labels);
        open.inc();
        OpenConnection { open }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Adds `elapsed` to a seconds counter.
pub fn add_seconds(counter: &Counter<f64, std::sync::atomic::AtomicU64>, elapsed: Duration) {
    counter.inc_by(elapsed.as_secs_f64());
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// A registry for values read at scrape time, prefixed like the others.
pub fn scrape_registry() -> Registry {
    Registry::with_prefix(PREFIX)
}
