//! The batched background writer: every store write goes through here.
//!
//! API CONTRACT (implemented by the store work; the hub relies on exactly this):
//!
//! ```ignore
//! pub struct WriterConfig {
//!     pub max_batch: usize,        // ops per write_batch call (default 512)
//!     pub window: Duration,        // how long a partial batch waits for more (default 2 ms)
//!     pub queue_capacity: usize,   // ops held at most, in queue + in flight (default 65_536)
//!     pub retry_initial: Duration, // first backoff after Unavailable (default 50 ms)
//!     pub retry_max: Duration,     // backoff cap (default 5 s)
//! }
//! pub type Completion = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;
//! #[derive(Clone)] pub struct WriterHandle { .. }
//! pub struct Writer { .. }            // owns the background task
//! pub struct Overloaded;              // submit refused: queue full or writer closed
//! pub struct FlushReport { pub written: u64, pub unwritten: usize }
//!
//! impl Writer {
//!     pub fn spawn(store: Arc<dyn Store>, config: WriterConfig) -> (Writer, WriterHandle);
//!     /// Stop taking ops, write everything queued (retrying until `deadline`),
//!     /// complete every op (with Err(Unavailable) for what could not be written).
//!     pub async fn shutdown(self, deadline: Duration) -> FlushReport;
//! }
//! impl WriterHandle {
//!     /// Never blocks. The completion runs on the writer task after the op's
//!     /// batch is committed (Ok) or has failed permanently (Err).
//!     pub fn submit(&self, op: WriteOp, done: Completion) -> Result<(), Overloaded>;
//!     pub fn is_healthy(&self) -> bool;   // false while a batch is failing and being retried
//!     pub fn pending(&self) -> usize;     // ops accepted and not yet completed
//! }
//! ```
