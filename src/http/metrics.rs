//! `GET /metrics`: the process's Prometheus metrics, plus the gauges read
//! at scrape time from the parts that already keep them (so they cost the
//! hot path nothing).

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;

use super::error::ApiError;
use super::Body;
use crate::app::App;
use crate::metrics::{self, ShardLabels};
use crate::wire::close;

/// What `prometheus-client` writes: OpenMetrics text, which Prometheus
/// reads when told so by this type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    reason: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    store: &'static str,
}

pub(crate) async fn scrape(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let mut registry = metrics::scrape_registry();

    let closed = Family::<CloseLabels, Counter>::default();
    for (why, count) in close::counts() {
        closed
            .get_or_create(&CloseLabels {
                reason: why.label(),
                code: why.code(),
            })
            .inc_by(count);
    }
    registry.register(
        "connections_closed",
        "WebSocket connections ended, by close reason and code",
        closed,
    );
    let gauge = |value: usize| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    registry.register(
        "connections",
        "connections holding a capacity slot (WebSocket and upgrading)",
        gauge(app.gate.open()),
    );
    registry.register(
        "connections_max",
        "the connection capacity (from the open-files limit)",
        gauge(app.gate.max()),
    );
    registry.register(
        "writer_queue_depth",
        "writes accepted and not yet completed",
        gauge(app.writer.pending()),
    );
    registry.register(
        "writer_healthy",
        "0 while the writer retries a batch the store refused as unavailable",
        gauge(usize::from(app.writer.is_healthy())),
    );
    let depths = Family::<ShardLabels, Gauge>::default();
    for (shard, depth) in app.hub.queue_depths().enumerate() {
        depths
            .get_or_create(&ShardLabels {
                shard: u32::try_from(shard).unwrap_or(u32::MAX),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    registry.register(
        "shard_queue_depth",
        "commands waiting in each hub shard's queue",
        depths,
    );
    registry.register(
        "build",
        "the running version and store",
        Info::new(InfoLabels {
            version: env!("CARGO_PKG_VERSION"),
            store: app.store.kind(),
        }),
    );

    // Off the runtime's threads: the process collector reads /proc, whose
    // fd directory holds an entry per connection.
    let text = tokio::task::spawn_blocking(move || metrics::get().render(&registry))
        .await
        .map_err(|error| error.to_string())
        .and_then(|encoded| encoded.map_err(|error| error.to_string()))
        .map_err(|error| {
            tracing::error!(%error, "cannot encode the metrics");
            ApiError::internal("cannot encode the metrics")
        })?;
    let mut response = Response::new(Body::new(text));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
