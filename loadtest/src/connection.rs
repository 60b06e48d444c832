//! One client WebSocket: a reader task that counts what arrives and a writer
//! task that sends on schedule, both on their thread's `LocalSet`.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so reading never races
//! anything in a `select!`: the reader only reads, and hands the frames it is
//! obliged to answer (pong, close) to the writer through a small control lane.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{
    after_handshake_split, Frame, OpCode, Payload, Role, WebSocketRead, WebSocketWrite,
};
use tokio::io::BufWriter;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit};
use tokio::time::{Interval, MissedTickBehavior};

use crate::config::{Config, Rate};
use crate::protocol::{self, ClientId, Event};
use crate::scheme::{self, Side};
use crate::stats::{bump, record_us, Counters, LocalStats};
use crate::{clock, handshake};

/// Where the run is; every connection watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Sending,
    /// No new messages; outstanding ones may still arrive.
    Draining,
    /// Send Close 1000 and finish.
    Closing,
}

/// What one worker thread shares with its connections.
pub struct ThreadCtx {
    pub cfg: Arc<Config>,
    pub phase: watch::Receiver<Phase>,
    pub counters: Arc<Counters>,
    /// Borrowed only between awaits, never across one.
    pub stats: RefCell<LocalStats>,
}

/// One connection to open.
pub struct ConnSpec {
    /// Unique across the run (all processes): keys `client_id`s and the source address.
    pub index: u64,
    pub pair: u64,
    pub side: Side,
    /// Held during the handshake to bound handshakes in flight.
    pub permit: OwnedSemaphorePermit,
}

/// Small: an idle connection's memory is mostly fastwebsockets' 8 KiB read buffer.
const WRITE_BUFFER: usize = 2048;
/// Largest inbound frame accepted (the server's own limit is far lower).
const MAX_INBOUND: usize = 1 << 20;
/// How long a connection waits for the server's close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Frames the reader must have the writer send.
enum Control {
    Pong(Vec<u8>),
    /// Echo of the server's close payload.
    CloseReply(Vec<u8>),
}

/// State the reader and writer of one connection share.
struct Shared {
    /// Messages written but neither acked nor refused yet.
    outstanding: Cell<u32>,
    /// Signalled when `outstanding` drops to the refill mark.
    window_open: Notify,
}

pub async fn run(spec: ConnSpec, ctx: Rc<ThreadCtx>) {
    let cfg = &ctx.cfg;
    let path = scheme::ws_path(&cfg.path, spec.pair, spec.side);
    let source = (!cfg.sources.is_empty())
        .then(|| cfg.sources[(spec.index % cfg.sources.len() as u64) as usize]);
    let started = Instant::now();
    let opened = handshake::open(cfg.target, source, &path, cfg.handshake_timeout).await;
    drop(spec.permit);
    let stream = match opened {
        Ok(stream) => stream,
        Err(failure) => {
            bump(
                &mut ctx.stats.borrow_mut().connect_failures,
                failure.label(),
            );
            ctx.counters.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    record_us(
        &mut ctx.stats.borrow_mut().connect,
        started.elapsed().as_nanos() as u64,
    );
    ctx.counters.connected.fetch_add(1, Relaxed);
    ctx.counters.open.fetch_add(1, Relaxed);

    let (read_half, write_half) = stream.into_split();
    let (mut ws_read, mut ws_write) = after_handshake_split(
        read_half,
        BufWriter::with_capacity(WRITE_BUFFER, write_half),
        Role::Client,
    );
    ws_read.set_max_message_size(MAX_INBOUND);
    // Frames are batched in the BufWriter and flushed once per batch.
    ws_write.set_writev(false);

    let shared = Rc::new(Shared {
        outstanding: Cell::new(0),
        window_open: Notify::new(),
    });
    let (control_tx, control_rx) = mpsc::channel(4);
    let me = scheme::user_id(spec.pair, spec.side);
    let mut reader = tokio::task::spawn_local(read_loop(
        ws_read,
        control_tx,
        shared.clone(),
        ctx.clone(),
        me,
    ));
    let writer = Writer {
        ws: ws_write,
        control: control_rx,
        shared,
        ctx: &ctx,
        index: spec.index,
        side: spec.side,
    };
    writer.run().await;
    // The reader ends at the server's close or EOF; bounded so a silent server cannot hold the run.
    if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
        reader.abort();
        bump(
            &mut ctx.stats.borrow_mut().disconnects,
            "no_close_reply".to_owned(),
        );
    }
    ctx.counters.open.fetch_sub(1, Relaxed);
}

fn closing(ctx: &ThreadCtx) -> bool {
    *ctx.phase.borrow() == Phase::Closing
}

async fn read_loop(
    mut ws: WebSocketRead<OwnedReadHalf>,
    control: mpsc::Sender<Control>,
    shared: Rc<Shared>,
    ctx: Rc<ThreadCtx>,
    me: i64,
) {
    let refill_mark = ctx.cfg.window / 2;
    let mut obligations = |frame: Frame<'_>| {
        let lane = match frame.opcode {
            OpCode::Pong => Some(Control::Pong(frame.payload.to_vec())),
            OpCode::Close => Some(Control::CloseReply(frame.payload.to_vec())),
            _ => None,
        };
        // A full lane means the writer is already busy answering; dropping a pong is harmless.
        if let Some(lane) = lane {
            let _ = control.try_send(lane);
        }
        std::future::ready(Ok::<(), Infallible>(()))
    };
    loop {
        let frame = match ws.read_frame(&mut obligations).await {
            Ok(frame) => frame,
            Err(e) => {
                if !closing(&ctx) {
                    bump(&mut ctx.stats.borrow_mut().disconnects, error_label(&e));
                }
                return;
            }
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let acked = on_event(&frame.payload, &ctx, me);
                if acked {
                    let left = shared.outstanding.get().saturating_sub(1);
                    shared.outstanding.set(left);
                    if left <= refill_mark {
                        shared.window_open.notify_one();
                    }
                }
            }
            OpCode::Close => {
                if !closing(&ctx) {
                    let code = match frame.payload.get(..2) {
                        Some(b) => u16::from_be_bytes([b[0], b[1]]),
                        None => 1005, // no status code present
                    };
                    bump(&mut ctx.stats.borrow_mut().close_codes, code);
                }
                return;
            }
            _ => {}
        }
    }
}

/// Counts one event; true when it settles one of this connection's messages.
fn on_event(payload: &[u8], ctx: &ThreadCtx, me: i64) -> bool {
    match protocol::classify(payload) {
        Event::Message { sender_id, sent_at } => {
            if sender_id == Some(me) {
                ctx.stats.borrow_mut().echoes += 1;
            } else {
                ctx.counters.delivered.fetch_add(1, Relaxed);
                if let Some(sent_at) = sent_at {
                    record_us(
                        &mut ctx.stats.borrow_mut().latency,
                        clock::now_nanos().saturating_sub(sent_at),
                    );
                }
            }
            false
        }
        Event::Ack => {
            ctx.counters.acked.fetch_add(1, Relaxed);
            true
        }
        Event::Error { code, for_message } => {
            bump(&mut ctx.stats.borrow_mut().error_events, code.to_owned());
            if for_message {
                ctx.counters.refused.fetch_add(1, Relaxed);
            }
            for_message
        }
        Event::Other => {
            ctx.stats.borrow_mut().other_events += 1;
            false
        }
    }
}

fn error_label(e: &fastwebsockets::WebSocketError) -> String {
    match e {
        fastwebsockets::WebSocketError::UnexpectedEOF => "eof".to_owned(),
        fastwebsockets::WebSocketError::IoError(io) => format!("io_{:?}", io.kind()).to_lowercase(),
        other => format!("ws_{other:?}").chars().take(40).collect(),
    }
}

struct Writer<'a> {
    ws: WebSocketWrite<BufWriter<OwnedWriteHalf>>,
    control: mpsc::Receiver<Control>,
    shared: Rc<Shared>,
    ctx: &'a ThreadCtx,
    index: u64,
    side: Side,
}

/// The writer stopped because the connection is over.
struct Ended;

impl Writer<'_> {
    async fn run(mut self) {
        let cfg = self.ctx.cfg.clone();
        let sends = cfg.sends(self.side);
        let mut phase_rx = self.ctx.phase.clone();
        let mut buf = Vec::with_capacity(cfg.message_bytes + 96);
        let mut seq = 0u64;
        let mut ticker: Option<Interval> = None;
        // Refill at half the window so each wake-up writes a batch with one flush.
        let refill_mark = cfg.window / 2;
        loop {
            let phase = *phase_rx.borrow_and_update();
            if phase == Phase::Closing {
                let _ = self.ws.write_frame(Frame::close(1000, b"")).await;
                let _ = self.ws.flush().await;
                return;
            }
            let sending = sends && phase == Phase::Sending;
            let outstanding = self.shared.outstanding.get();
            if !sending {
                ticker = None;
            } else if cfg.rate == Rate::Max && outstanding <= refill_mark {
                let batch = cfg.window - outstanding;
                if self.send_batch(batch, &mut buf, &mut seq).await.is_err() {
                    return;
                }
                continue;
            } else if ticker.is_none() {
                ticker = cfg.send_period().map(|period| self.ticker(period));
            }
            let window_full = outstanding >= cfg.window;
            tokio::select! {
                biased;
                // Every arm is cancel-safe: mpsc recv, watch changed, a Notify permit
                // outlives a dropped `notified()`, and Interval::tick.
                control = self.control.recv() => {
                    let sent = match control {
                        Some(Control::Pong(payload)) => self.write_control(Frame::pong(Payload::Owned(payload))).await,
                        Some(Control::CloseReply(payload)) => {
                            let _ = self.write_control(Frame::close_raw(Payload::Owned(payload))).await;
                            return;
                        }
                        // The reader is gone: the connection is over.
                        None => return,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                changed = phase_rx.changed() => if changed.is_err() { return },
                _ = self.shared.window_open.notified(), if sending && outstanding > refill_mark => {}
                _ = tick(&mut ticker), if sending && !window_full => {
                    if self.send_batch(1, &mut buf, &mut seq).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Spreads connections' first sends evenly over one period.
    fn ticker(&self, period: Duration) -> Interval {
        let spread = (self.index as f64 * 0.618_033_988_75).fract();
        let start = tokio::time::Instant::now() + period.mul_f64(spread);
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        interval
    }

    async fn send_batch(
        &mut self,
        count: u32,
        buf: &mut Vec<u8>,
        seq: &mut u64,
    ) -> Result<(), Ended> {
        let ctx = self.ctx;
        let cfg = &ctx.cfg;
        for _ in 0..count {
            let client_id = ClientId {
                run: &cfg.run_id,
                connection: self.index,
                seq: *seq,
            };
            protocol::encode_message(buf, clock::now_nanos(), cfg.message_bytes, client_id);
            *seq += 1;
            self.ws
                .write_frame(Frame::text(Payload::BorrowedMut(buf)))
                .await
                .map_err(|e| self.write_failed(&e))?;
            self.shared
                .outstanding
                .set(self.shared.outstanding.get() + 1);
            ctx.counters.sent.fetch_add(1, Relaxed);
        }
        self.ws.flush().await.map_err(|e| self.write_failed(&e))
    }

    async fn write_control(&mut self, frame: Frame<'_>) -> Result<(), Ended> {
        self.ws
            .write_frame(frame)
            .await
            .map_err(|e| self.write_failed(&e))?;
        self.ws.flush().await.map_err(|e| self.write_failed(&e))
    }

    fn write_failed(&self, e: &fastwebsockets::WebSocketError) -> Ended {
        if !closing(self.ctx) {
            bump(
                &mut self.ctx.stats.borrow_mut().disconnects,
                format!("write_{}", error_label(e)),
            );
        }
        Ended
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
