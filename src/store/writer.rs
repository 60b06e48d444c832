//! STUB — replaced by the store branch at merge.
use std::sync::Arc;
use std::time::Duration;

use super::{Store, StoreError, WriteOp, WriteOutcome};

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub window: Duration,
    pub queue_capacity: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}
impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 512,
            window: Duration::from_millis(2),
            queue_capacity: 65536,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
        }
    }
}
pub type Completion = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;
#[derive(Clone)]
pub struct WriterHandle {
    tx: tokio::sync::mpsc::Sender<(WriteOp, Completion)>,
}
pub struct Writer {
    task: tokio::task::JoinHandle<()>,
}
#[derive(Debug)]
pub struct Overloaded;
#[derive(Debug, Default)]
pub struct FlushReport {
    pub written: u64,
    pub unwritten: usize,
}
impl Writer {
    pub fn spawn(store: Arc<dyn Store>, config: WriterConfig) -> (Writer, WriterHandle) {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(WriteOp, Completion)>(config.queue_capacity);
        let task = tokio::spawn(async move {
            while let Some((op, done)) = rx.recv().await {
                let r = store.write_batch(vec![op]).await.map(|mut v| v.remove(0));
                done(r);
            }
        });
        (Writer { task }, WriterHandle { tx })
    }
    pub async fn shutdown(self, _deadline: Duration) -> FlushReport {
        let _ = self.task.await;
        FlushReport::default()
    }
}
impl WriterHandle {
    pub fn submit(&self, op: WriteOp, done: Completion) -> Result<(), Overloaded> {
        self.tx.try_send((op, done)).map_err(|_| Overloaded)
    }
    pub fn is_healthy(&self) -> bool {
        true
    }
    pub fn pending(&self) -> usize {
        0
    }
}
