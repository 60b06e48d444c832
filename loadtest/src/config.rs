//! Command-line arguments and their validation into a bounded [`Config`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::report::Expectation;
use crate::scheme::MAX_PAIRS;

/// Longest send phase one run may have.
pub const MAX_DURATION_S: f64 = 3600.0;
/// Descriptors a process keeps for itself besides its sockets.
pub const FD_HEADROOM: u64 = 1024;

/// Load generator for chat-service: M mentor/student pairs over WebSocket.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, args_override_self = true)]
pub struct Args {
    /// chat-service address (host:port)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,
    /// WebSocket path
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// Allow a target outside 127.0.0.0/8 and ::1
    #[arg(long)]
    pub allow_remote: bool,
    /// Conversation pairs (2 connections each, times --tabs)
    #[arg(long, default_value_t = 100)]
    pub pairs: u64,
    /// First pair index (pair i is mentor 1000+i, student 1000000+i)
    #[arg(long, default_value_t = 0)]
    pub first_pair: u64,
    /// Connections per user (only with --rate idle)
    #[arg(long, default_value_t = 1)]
    pub tabs: u32,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// New connections per second during ramp-up (0 = as fast as possible)
    #[arg(long, default_value_t = 2000)]
    pub ramp_rate: u64,
    /// Handshakes in flight at once
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// Aggregate send rate: messages/s, `max` (as fast as the window allows) or `idle`
    #[arg(long, default_value = "idle")]
    pub rate: Rate,
    /// Which side of each pair sends
    #[arg(long, value_enum, default_value = "both")]
    pub senders: Senders,
    /// Most un-acked messages per connection
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Message text length in bytes (the send timestamp plus padding)
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// Send (or hold) phase, seconds
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bound on the whole connect phase, seconds
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Bound on one TCP connect + upgrade, seconds
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Bound on waiting for outstanding deliveries and acks after the send phase, seconds
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Worker threads per process (default: available cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Processes: a number, or `auto` (enough to stay under the descriptor limit)
    #[arg(long, default_value = "auto")]
    pub procs: Procs,
    /// Server pid, to report its RSS and CPU
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Django stand-in base URL (http://127.0.0.1:PORT), to report its request count
    #[arg(long)]
    pub standin_url: Option<String>,
    /// Write the JSON report here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown table of the report here
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Name shown in the report
    #[arg(long)]
    pub label: Option<String>,
    /// A check on a report metric, e.g. `latency_p99_ms<=5` (repeatable; exit 1 when one fails)
    #[arg(long = "expect")]
    pub expect: Vec<Expectation>,
    /// Internal: run as a child process with this JSON config
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// Aggregate message rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Rate {
    Idle,
    Max,
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "idle" | "0" => Ok(Rate::Idle),
            "max" => Ok(Rate::Max),
            n => match n.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Rate::PerSecond(v)),
                _ => Err(format!(
                    "rate must be `idle`, `max` or a positive number, not `{s}`"
                )),
            },
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Idle => f.write_str("idle"),
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(v) => write!(f, "{v}/s"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Senders {
    Both,
    Mentor,
    Student,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procs {
    Auto,
    Count(usize),
}

impl FromStr for Procs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Procs::Auto);
        }
        s.parse()
            .map(Procs::Count)
            .map_err(|_| format!("procs must be `auto` or a number, not `{s}`"))
    }
}

/// A validated, bounded run description; children receive it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub target: SocketAddr,
    pub path: String,
    pub pairs: u64,
    pub first_pair: u64,
    pub tabs: u32,
    /// Source addresses to bind client sockets to; empty lets the OS choose.
    pub sources: Vec<Ipv4Addr>,
    pub ramp_rate: u64,
    pub connect_concurrency: usize,
    pub rate: Rate,
    pub senders: Senders,
    pub window: u32,
    pub message_bytes: usize,
    pub duration: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
    pub threads: usize,
    pub procs: usize,
    /// Makes `client_id`s unique across runs against the same store.
    pub run_id: String,
    /// Sending connections over the whole run (all processes), for pacing.
    pub total_senders: u64,
    pub server_pid: Option<u32>,
    pub standin_url: Option<String>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub label: String,
    pub expect: Vec<Expectation>,
}

impl Config {
    pub fn connections(&self) -> u64 {
        self.pairs * 2 * u64::from(self.tabs)
    }

    pub fn sends(&self, side: crate::scheme::Side) -> bool {
        use crate::scheme::Side;
        match (self.rate, self.senders, side) {
            (Rate::Idle, _, _) => false,
            (_, Senders::Both, _)
            | (_, Senders::Mentor, Side::Mentor)
            | (_, Senders::Student, Side::Student) => true,
            _ => false,
        }
    }

    /// Seconds between two messages of one sending connection under a fixed rate.
    pub fn send_period(&self) -> Option<Duration> {
        match self.rate {
            Rate::PerSecond(r) if self.total_senders > 0 => {
                Some(Duration::from_secs_f64(self.total_senders as f64 / r))
            }
            _ => None,
        }
    }

    /// The last moment this process may still be running, after which a watchdog ends it.
    pub fn hard_bound(&self) -> Duration {
        self.connect_timeout + self.duration + self.drain_timeout + Duration::from_secs(30)
    }

    /// The slice of this run that child `index` of `count` runs.
    pub fn split(&self, index: usize, count: usize) -> Config {
        let base = self.pairs / count as u64;
        let extra = self.pairs % count as u64;
        let i = index as u64;
        let pairs = base + u64::from(i < extra);
        let first_pair = self.first_pair + i * base + i.min(extra);
        let share = pairs as f64 / self.pairs as f64;
        Config {
            pairs,
            first_pair,
            ramp_rate: if self.ramp_rate == 0 {
                0
            } else {
                ((self.ramp_rate as f64 * share).ceil() as u64).max(1)
            },
            connect_concurrency: ((self.connect_concurrency as f64 * share).ceil() as usize).max(1),
            procs: 1,
            server_pid: None,
            standin_url: None,
            json: None,
            markdown: None,
            expect: Vec::new(),
            ..self.clone()
        }
    }
}

/// A refused argument, with the message shown to the user.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

fn seconds(name: &str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v >= min && v <= max) {
        return Err(bad(format!(
            "--{name} must be between {min} and {max} seconds, not {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

impl Args {
    /// Validates every bound; `nofile_hard` is this machine's per-process descriptor ceiling.
    pub fn validate(&self, nofile_hard: u64, cores: usize) -> Result<Config, ConfigError> {
        if !self.allow_remote && !is_loopback(self.target.ip()) {
            return Err(bad(format!(
                "refusing target {}: outside 127.0.0.0/8 (pass --allow-remote to load another machine)",
                self.target
            )));
        }
        if self.pairs == 0 {
            return Err(bad("--pairs must be at least 1"));
        }
        if self.first_pair.saturating_add(self.pairs) > MAX_PAIRS {
            return Err(bad(format!(
                "--first-pair + --pairs must be at most {MAX_PAIRS}"
            )));
        }
        if !(1..=8).contains(&self.tabs) {
            return Err(bad("--tabs must be between 1 and 8"));
        }
        if self.tabs > 1 && self.rate != Rate::Idle {
            return Err(bad("--tabs above 1 needs --rate idle (deliveries are counted once per peer connection)"));
        }
        if self.source_addrs == 0 || self.source_addrs > 250 {
            return Err(bad("--source-addrs must be between 1 and 250"));
        }
        if !self.path.starts_with('/') {
            return Err(bad("--path must start with /"));
        }
        if !(1..=100_000).contains(&self.connect_concurrency) {
            return Err(bad("--connect-concurrency must be between 1 and 100000"));
        }
        if !(1..=1024).contains(&self.window) {
            return Err(bad("--window must be between 1 and 1024"));
        }
        if !(24..=8192).contains(&self.message_bytes) {
            return Err(bad("--message-bytes must be between 24 and 8192"));
        }
        if let Rate::PerSecond(r) = self.rate {
            if r > 10_000_000.0 {
                return Err(bad("--rate must be at most 10000000 messages/s"));
            }
        }
        let duration = seconds("duration", self.duration, 0.0, MAX_DURATION_S)?;
        let connect_timeout = seconds("connect-timeout", self.connect_timeout, 0.1, 600.0)?;
        let handshake_timeout = seconds("handshake-timeout", self.handshake_timeout, 0.1, 120.0)?;
        let drain_timeout = seconds("drain-timeout", self.drain_timeout, 0.0, 120.0)?;

        let connections = self.pairs * 2 * u64::from(self.tabs);
        if self.ramp_rate > 0
            && connections as f64 / self.ramp_rate as f64 > connect_timeout.as_secs_f64()
        {
            return Err(bad(format!(
                "{connections} connections at --ramp-rate {} need longer than --connect-timeout {}s",
                self.ramp_rate, self.connect_timeout
            )));
        }
        let per_proc_limit = nofile_hard.saturating_sub(FD_HEADROOM).max(1);
        let needed = connections.div_ceil(per_proc_limit) as usize;
        let procs = match self.procs {
            Procs::Auto => needed,
            Procs::Count(n) => n,
        };
        if !(1..=64).contains(&procs) {
            return Err(bad("--procs must be between 1 and 64"));
        }
        if procs < needed {
            return Err(bad(format!(
                "{connections} connections need at least {needed} processes under the descriptor limit {nofile_hard} (use --procs {needed} or auto)"
            )));
        }
        if procs as u64 > self.pairs {
            return Err(bad(
                "--procs must not exceed --pairs (a pair stays in one process)",
            ));
        }
        let threads = self.threads.unwrap_or(cores.max(1));
        if !(1..=64).contains(&threads) {
            return Err(bad("--threads must be between 1 and 64"));
        }
        let sources = match self.target.ip() {
            IpAddr::V4(v4) if v4.octets()[0] == 127 => (1..=self.source_addrs)
                .map(|n| Ipv4Addr::new(127, 0, 0, n))
                .collect(),
            _ => Vec::new(),
        };
        let senders_per_pair = match (self.rate, self.senders) {
            (Rate::Idle, _) => 0,
            (_, Senders::Both) => 2,
            _ => 1,
        };
        Ok(Config {
            target: self.target,
            path: self.path.clone(),
            pairs: self.pairs,
            first_pair: self.first_pair,
            tabs: self.tabs,
            sources,
            ramp_rate: self.ramp_rate,
            connect_concurrency: self.connect_concurrency,
            rate: self.rate,
            senders: self.senders,
            window: self.window,
            message_bytes: self.message_bytes,
            duration,
            connect_timeout,
            handshake_timeout,
            drain_timeout,
            threads,
            procs,
            run_id: run_id(),
            total_senders: self.pairs * senders_per_pair,
            server_pid: self.server_pid,
            standin_url: self.standin_url.clone(),
            json: self.json.clone(),
            markdown: self.markdown.clone(),
            label: self.label.clone().unwrap_or_else(|| "loadtest".to_owned()),
            expect: self.expect.clone(),
        })
    }
}

/// Eight hex digits from the clock and pid: unique enough to keep runs' `client_id`s apart.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!(
        "{:08x}",
        (mixed ^ (mixed >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("loadtest").chain(extra.iter().copied())).unwrap()
    }

    fn validate(extra: &[&str]) -> Result<Config, ConfigError> {
        parse(extra).validate(20_000, 2)
    }

    #[test]
    fn refuses_remote_targets_unless_allowed() {
        let err = validate(&["--target", "10.0.0.1:8080"]).unwrap_err();
        assert!(err.0.contains("--allow-remote"), "{err}");
        let cfg = validate(&["--target", "10.0.0.1:8080", "--allow-remote"]).unwrap();
        assert!(
            cfg.sources.is_empty(),
            "remote targets use the OS's source address"
        );
        assert!(validate(&["--target", "127.3.2.1:80"]).is_ok());
        assert!(validate(&["--target", "[::1]:80"]).is_ok());
    }

    #[test]
    fn rejects_out_of_bounds_values() {
        for args in [
            &["--pairs", "0"][..],
            &["--pairs", "500001"],
            &["--first-pair", "499999", "--pairs", "2"],
            &["--duration", "3601"],
            &["--duration=-1"],
            &["--window", "0"],
            &["--source-addrs", "0"],
            &["--message-bytes", "10"],
            &["--tabs", "2", "--rate", "max"],
            &["--threads", "0"],
            &["--procs", "0"],
            &["--pairs", "2", "--procs", "3"],
            &[
                "--pairs",
                "100000",
                "--ramp-rate",
                "100",
                "--connect-timeout",
                "10",
            ],
            &["--pairs", "10000", "--procs", "1"],
            &["--path", "ws"],
        ] {
            assert!(validate(args).is_err(), "{args:?} should be refused");
        }
        assert!(Args::try_parse_from(["loadtest", "--rate", "-5"]).is_err());
        assert!(Args::try_parse_from(["loadtest", "--rate", "fast"]).is_err());
    }

    #[test]
    fn auto_procs_keep_each_process_under_the_descriptor_limit() {
        let cfg = validate(&["--pairs", "9500", "--ramp-rate", "0"]).unwrap();
        assert_eq!(cfg.connections(), 19_000);
        assert_eq!(
            cfg.procs, 2,
            "19000 sockets plus headroom exceed 20000 descriptors"
        );
        let cfg = validate(&["--pairs", "5000"]).unwrap();
        assert_eq!(cfg.procs, 1);
        assert_eq!(cfg.sources.len(), 8);
        assert_eq!(cfg.sources[7], Ipv4Addr::new(127, 0, 0, 8));
    }

    #[test]
    fn split_gives_disjoint_pair_ranges_covering_the_run() {
        let cfg = validate(&[
            "--pairs",
            "10",
            "--first-pair",
            "5",
            "--procs",
            "3",
            "--ramp-rate",
            "100",
        ])
        .unwrap();
        let parts: Vec<Config> = (0..3).map(|i| cfg.split(i, 3)).collect();
        assert_eq!(
            parts
                .iter()
                .map(|p| (p.first_pair, p.pairs))
                .collect::<Vec<_>>(),
            vec![(5, 4), (9, 3), (12, 3)]
        );
        assert!(parts
            .iter()
            .all(|p| p.procs == 1 && p.run_id == cfg.run_id && p.json.is_none()));
    }

    #[test]
    fn pacing_spreads_the_aggregate_rate_over_senders() {
        let cfg = validate(&["--pairs", "5000", "--rate", "20000"]).unwrap();
        assert_eq!(cfg.total_senders, 10_000);
        assert_eq!(cfg.send_period(), Some(Duration::from_millis(500)));
        let cfg = validate(&["--pairs", "10", "--rate", "10", "--senders", "mentor"]).unwrap();
        assert_eq!(cfg.send_period(), Some(Duration::from_secs(1)));
        assert_eq!(validate(&["--rate", "max"]).unwrap().send_period(), None);
    }
}
