//! One process's run: worker threads, the ramp, and the phases
//! connect → (barrier) → send → drain → (barrier) → close.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::connection::{self, ConnSpec, Phase, ThreadCtx};
use crate::scheme::Side;
use crate::stats::{Counters, Details, LocalStats, Snapshot};

/// How often the controller sums counters while waiting.
const POLL: Duration = Duration::from_millis(10);
/// How long threads wait for their connections to close before dropping them.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The points where a process waits for its coordinator: a parent process
/// (so all children send at once) or the local server probe.
pub trait Barrier {
    /// Every connection of this process is open or has failed.
    fn ready(&mut self, at: &Snapshot) -> impl std::future::Future<Output = ()>;
    /// The send and drain phases are over; connections are still open.
    fn drained(&mut self, at: &Snapshot) -> impl std::future::Future<Output = ()>;
}

/// What one process measured; children send it to the parent as JSON.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub target_connections: u64,
    /// Connections never attempted because the connect phase ran out of time.
    pub not_started: u64,
    pub at_ready: Snapshot,
    pub at_send_end: Snapshot,
    pub at_end: Snapshot,
    pub connect_phase_s: f64,
    pub send_phase_s: f64,
    pub drain_s: f64,
    pub details: Details,
}

impl ProcessReport {
    pub fn merge(parts: &[ProcessReport]) -> ProcessReport {
        let sum = |f: fn(&ProcessReport) -> Snapshot| {
            parts
                .iter()
                .map(f)
                .fold(Snapshot::default(), |a, b| a.merged(&b))
        };
        let max = |f: fn(&ProcessReport) -> f64| parts.iter().map(f).fold(0.0, f64::max);
        ProcessReport {
            target_connections: parts.iter().map(|p| p.target_connections).sum(),
            not_started: parts.iter().map(|p| p.not_started).sum(),
            at_ready: sum(|p| p.at_ready),
            at_send_end: sum(|p| p.at_send_end),
            at_end: sum(|p| p.at_end),
            connect_phase_s: max(|p| p.connect_phase_s),
            send_phase_s: max(|p| p.send_phase_s),
            drain_s: max(|p| p.drain_s),
            details: Details::merge(&parts.iter().map(|p| p.details.clone()).collect::<Vec<_>>()),
        }
    }
}

struct Worker {
    jobs: mpsc::UnboundedSender<ConnSpec>,
    counters: Arc<Counters>,
    join: JoinHandle<LocalStats>,
}

/// A thread with its own current-thread runtime: connections never migrate,
/// so their shared state is `Rc`/`Cell` and counters are uncontended.
fn spawn_worker(
    n: usize,
    cfg: Arc<Config>,
    phase: watch::Receiver<Phase>,
) -> std::io::Result<Worker> {
    let (jobs, mut job_rx) = mpsc::unbounded_channel::<ConnSpec>();
    let counters = Arc::new(Counters::default());
    let thread_counters = counters.clone();
    let join = std::thread::Builder::new()
        .name(format!("loadtest-{n}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("loadtest: worker {n} has no runtime: {e}");
                    return LocalStats::default();
                }
            };
            let local = tokio::task::LocalSet::new();
            let ctx = std::rc::Rc::new(ThreadCtx {
                cfg,
                phase,
                counters: thread_counters,
                stats: std::cell::RefCell::new(LocalStats::default()),
            });
            let task_ctx = ctx.clone();
            local.block_on(&runtime, async move {
                let mut connections = JoinSet::new();
                // The job channel closes when the controller enters the closing phase.
                while let Some(spec) = job_rx.recv().await {
                    connections.spawn_local(connection::run(spec, task_ctx.clone()));
                    // Reap finished connections so their task memory is released during long runs.
                    while connections.try_join_next().is_some() {}
                }
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while connections.join_next().await.is_some() {}
                })
                .await;
            });
            // Dropping the LocalSet cancels any connection still open past the grace.
            drop(local);
            ctx.stats.take()
        })?;
    Ok(Worker {
        jobs,
        counters,
        join,
    })
}

fn sum(workers: &[Worker]) -> Snapshot {
    Snapshot::sum(workers.iter().map(|w| &*w.counters))
}

pub async fn run_process<B: Barrier>(
    cfg: Arc<Config>,
    barrier: &mut B,
) -> std::io::Result<ProcessReport> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let workers = (0..cfg.threads)
        .map(|n| spawn_worker(n, cfg.clone(), phase_rx.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let dispatched = dispatch(&cfg, &workers, deadline).await;
    while tokio::time::Instant::now() < deadline {
        let s = sum(&workers);
        if s.connected + s.failed >= dispatched {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let connect_phase_s = started.elapsed().as_secs_f64();
    let at_ready = sum(&workers);
    barrier.ready(&at_ready).await;

    let _ = phase_tx.send(Phase::Sending);
    let send_started = Instant::now();
    tokio::time::sleep(cfg.duration).await;
    let at_send_end = sum(&workers);
    let send_phase_s = send_started.elapsed().as_secs_f64();

    let _ = phase_tx.send(Phase::Draining);
    let drain_started = Instant::now();
    let drain_deadline = drain_started + cfg.drain_timeout;
    loop {
        let s = sum(&workers);
        if s.settled() || s.open == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let at_end = sum(&workers);
    barrier.drained(&at_end).await;

    let _ = phase_tx.send(Phase::Closing);
    let (joins, _senders): (Vec<_>, Vec<_>) = workers.into_iter().map(|w| (w.join, w.jobs)).unzip();
    drop(_senders);
    let stats = tokio::task::spawn_blocking(move || {
        joins
            .into_iter()
            .map(|j| j.join().unwrap_or_default())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();

    Ok(ProcessReport {
        target_connections: cfg.connections(),
        not_started: cfg.connections() - dispatched,
        at_ready,
        at_send_end,
        at_end,
        connect_phase_s,
        send_phase_s,
        drain_s,
        details: Details::from_threads(&stats),
    })
}

/// Hands connections to workers at the ramp rate, at most `connect_concurrency`
/// handshakes at once; returns how many were dispatched before `deadline`.
async fn dispatch(cfg: &Config, workers: &[Worker], deadline: tokio::time::Instant) -> u64 {
    let in_flight = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    for pair in cfg.first_pair..cfg.first_pair + cfg.pairs {
        for (side_no, side) in [(0, Side::Mentor), (1, Side::Student)] {
            for tab in 0..u64::from(cfg.tabs) {
                if cfg.ramp_rate > 0 {
                    let due = started + Duration::from_secs_f64(n as f64 / cfg.ramp_rate as f64);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due.min(deadline)).await;
                    }
                }
                let permit = match tokio::time::timeout_at(
                    deadline,
                    in_flight.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    _ => return n,
                };
                let index = (pair * 2 + side_no) * u64::from(cfg.tabs) + tab;
                let worker = &workers[(n % workers.len() as u64) as usize];
                if worker
                    .jobs
                    .send(ConnSpec {
                        index,
                        pair,
                        side,
                        permit,
                    })
                    .is_err()
                {
                    return n;
                }
                n += 1;
            }
        }
    }
    n
}
