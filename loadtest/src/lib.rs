//! Load generator for chat-service, and the Django stand-in it runs against.
//!
//! M conversation pairs (mentor `1000+i`, student `1000000+i`, see [`scheme`])
//! connect over WebSocket, send messages carrying their send time, and count
//! what reaches the peer. A run is bounded in connections and time and stops
//! by itself; targets outside 127.0.0.0/8 need `--allow-remote`.
//!
//! # Layout
//!
//! - [`config`]: arguments and their bounds → [`config::Config`]
//! - [`scheme`]: user, lesson and token numbering shared with the stand-in
//! - [`handshake`]: TCP from a chosen source address + the HTTP upgrade
//! - [`connection`]: one WebSocket's reader and writer tasks
//! - [`protocol`]: the generator's frames and the events it counts
//! - [`runner`]: one process: worker threads, ramp, phases
//! - [`procs`]: splitting a run over child processes
//! - [`stats`], [`report`]: counting, merging, percentiles, output
//! - [`probe`]: the server's RSS and CPU from `/proc`
//! - [`standin`]: the Django stand-in (`django-standin` binary)

pub mod clock;
pub mod config;
pub mod connection;
pub mod handshake;
pub mod limits;
pub mod probe;
pub mod procs;
pub mod protocol;
pub mod report;
pub mod runner;
pub mod scheme;
pub mod standin;
pub mod stats;

use std::path::Path;
use std::sync::Arc;

use config::Config;
use probe::ServerSamples;
use report::Report;
use runner::Barrier;
use stats::Snapshot;

/// In a single-process run, the barriers are where the server is sampled.
struct LocalBarrier<'a> {
    pid: Option<u32>,
    samples: &'a mut ServerSamples,
}

impl Barrier for LocalBarrier<'_> {
    async fn ready(&mut self, _: &Snapshot) {
        self.samples.connected = self.pid.and_then(probe::sample);
        self.samples.generator_connected = probe::generator_cpu_s(&[]);
    }

    async fn drained(&mut self, _: &Snapshot) {
        self.samples.end = self.pid.and_then(probe::sample);
        self.samples.generator_end = probe::generator_cpu_s(&[]);
    }
}

/// Runs `cfg` (in this process, or over `cfg.procs` children started from
/// `child_exe`) and builds its report.
pub async fn execute(cfg: Config, child_exe: &Path) -> std::io::Result<Report> {
    let cfg = Arc::new(cfg);
    let mut samples = ServerSamples {
        before: cfg.server_pid.and_then(probe::sample),
        ..ServerSamples::default()
    };
    let django_before = match &cfg.standin_url {
        Some(url) => standin::fetch_request_count(url).await,
        None => None,
    };
    let run = if cfg.procs <= 1 {
        let mut barrier = LocalBarrier {
            pid: cfg.server_pid,
            samples: &mut samples,
        };
        runner::run_process(cfg.clone(), &mut barrier).await?
    } else {
        procs::run_parent(&cfg, child_exe, &mut samples).await?
    };
    let django_after = match &cfg.standin_url {
        Some(url) => standin::fetch_request_count(url).await,
        None => None,
    };
    let server = cfg
        .server_pid
        .and_then(|pid| samples.usage(pid, run.at_ready.connected));
    let django = django_before
        .zip(django_after)
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Report::build(
        &cfg,
        &run,
        server,
        samples.send_phase_cpu(),
        django,
    ))
}
