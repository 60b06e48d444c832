//! The accept loop and the ordered shutdown.
//!
//! `run` takes the shutdown trigger as an argument (mini-redis style), so
//! `main` passes SIGTERM/SIGINT and tests pass whatever they like.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Background};
use crate::http::pending::PendingHeads;
use crate::http::router::Router;
use crate::store::writer::FlushReport;

/// Longest request head hyper buffers (query strings carry JWTs).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What shutdown achieved.
#[derive(Debug)]
pub struct ShutdownReport {
    pub flush: FlushReport,
    /// Sessions still open when the deadline passed.
    pub sessions_left: usize,
}

/// Serves `listener` until `shutdown` resolves, then stops in order: stop
/// accepting → HTTP connections finish → sessions close with 1001 → shards
/// drain → the writer flushes. Each step is bounded by the configured
/// shutdown timeout.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    background: Background,
    shutdown: impl Future<Output = ()>,
) -> ShutdownReport {
    let deadline = app.config.shutdown_timeout();
    let http_shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout())
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    let pending_heads = PendingHeads::new(app.config.max_pending_headers as usize);

    tokio::pin!(shutdown);
    let mut accept_backoff = Duration::from_millis(5);
    loop {
        // Cancel-safe: `accept` loses no connection when the shutdown arm wins.
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_backoff = Duration::from_millis(5);
                stream
            }
            Err(error) => {
                // Out of descriptors (EMFILE) or a transient error: back off
                // instead of spinning; the wait doubles up to 1 s and a
                // shutdown still interrupts it.
                tracing::warn!(%error, backoff_ms = accept_backoff.as_millis() as u64, "accept failed");
                // A silent connection's descriptor is worth less than the next client's.
                pending_heads.evict_oldest(tokio::time::Instant::now());
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(accept_backoff) => {}
                }
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let head = Arc::new(pending_heads.admit(tokio::time::Instant::now()));
        let service = Router::new(Arc::clone(&app), Arc::clone(&head));
        let builder = Arc::clone(&builder);
        let http_shutdown = http_shutdown.clone();
        connections.spawn(async move {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            // Cancel-safe: the connection future is pinned outside and polled
            // again after a graceful-shutdown request.
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "http connection ended with an error");
                    }
                }
                _ = http_shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                // Silent when newer connections needed its place.
                _ = head.evicted() => {
                    if head.is_received() {
                        // Its head arrived just as it was chosen: serve it.
                        let _ = connection.await;
                    } else {
                        tracing::debug!("closed a connection that sent no request head");
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: closing connections");

    http_shutdown.cancel();
    app.sessions_shutdown.cancel();
    connections.close();
    app.sessions.close();
    let drained = tokio::time::timeout(deadline, async {
        connections.wait().await;
        app.sessions.wait().await;
    })
    .await;
    let sessions_left = if drained.is_ok() {
        0
    } else {
        app.sessions.len()
    };

    // The shards stop once no session and no hub handle can send to them.
    drop(app);
    let Background { writer, shards } = background;
    let _ = tokio::time::timeout(deadline, futures_util::future::join_all(shards)).await;
    let flush = writer.shutdown(deadline).await;
    ShutdownReport {
        flush,
        sessions_left,
    }
}
