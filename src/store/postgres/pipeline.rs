//! Sends several statements before reading any answer.
//!
//! tokio-postgres queues a request the first time its future is polled and
//! the server answers requests in order, so polling every future once, in
//! order, puts them all on the wire back to back (one round trip for the
//! lot); the answers are then read in the same order.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Runs `futures` as one pipeline; outputs in the given order.
pub(crate) async fn in_order<'a, T>(
    futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>,
) -> Vec<T> {
    let mut futures = futures;
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    // One poll each, in order: every request is sent.
    std::future::poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                *output = Some(value);
            }
        }
        Poll::Ready(())
    })
    .await;
    let mut results = Vec::with_capacity(futures.len());
    for (future, output) in futures.into_iter().zip(outputs) {
        results.push(match output {
            Some(value) => value,
            None => future.await,
        });
    }
    results
}
