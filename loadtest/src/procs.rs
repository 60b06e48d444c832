//! Splitting a run over child processes, for when one process's descriptor
//! limit cannot hold every socket.
//!
//! The parent re-executes the generator once per child with a disjoint slice of
//! the pairs (`--child <config json>`). They talk in lines: the child prints
//! `READY` once connected and waits for `GO` (so all children send at once),
//! prints `DRAINED` after its send and drain phases and waits for `CLOSE` (so the
//! parent can read the server's RSS with every connection still open), then
//! prints `REPORT <json>`. Every wait on both sides is bounded.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::config::Config;
use crate::probe::{self, ServerSamples};
use crate::runner::{self, Barrier, ProcessReport};
use crate::stats::Snapshot;

/// Slack on every wait beyond the phase's own bound.
const SLACK: Duration = Duration::from_secs(30);

struct ChildProc {
    cfg: Config,
    process: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    alive: bool,
}

impl ChildProc {
    /// The payload of the next line starting with `tag`, or `None` when the child
    /// ends or stays silent for `within`.
    async fn expect(&mut self, tag: &str, within: Duration) -> Option<String> {
        if !self.alive {
            return None;
        }
        let found = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                if let Some(rest) = line.strip_prefix(tag) {
                    return Some(rest.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        if found.is_none() {
            eprintln!(
                "loadtest: child for pairs {}+{} did not say {tag}",
                self.cfg.first_pair, self.cfg.pairs
            );
            self.alive = false;
        }
        found
    }

    async fn say(&mut self, word: &str) {
        if self.alive
            && self
                .stdin
                .write_all(format!("{word}\n").as_bytes())
                .await
                .is_err()
        {
            self.alive = false;
        }
    }
}

pub async fn run_parent(
    cfg: &Config,
    child_exe: &Path,
    samples: &mut ServerSamples,
) -> std::io::Result<ProcessReport> {
    let mut children = Vec::with_capacity(cfg.procs);
    for index in 0..cfg.procs {
        let part = cfg.split(index, cfg.procs);
        let json = serde_json::to_string(&part).map_err(std::io::Error::other)?;
        let mut process = Command::new(child_exe)
            .arg("--child")
            .arg(json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(std::io::Error::other("child without pipes"));
        };
        children.push(ChildProc {
            cfg: part,
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
            alive: true,
        });
    }

    for child in &mut children {
        child.expect("READY", cfg.connect_timeout + SLACK).await;
    }
    let child_pids: Vec<u32> = children.iter().filter_map(|c| c.process.id()).collect();
    samples.connected = cfg.server_pid.and_then(probe::sample);
    samples.generator_connected = probe::generator_cpu_s(&child_pids);
    for child in &mut children {
        child.say("GO").await;
    }
    for child in &mut children {
        child
            .expect("DRAINED", cfg.duration + cfg.drain_timeout + SLACK)
            .await;
    }
    samples.end = cfg.server_pid.and_then(probe::sample);
    samples.generator_end = probe::generator_cpu_s(&child_pids);
    for child in &mut children {
        child.say("CLOSE").await;
    }
    let mut parts = Vec::with_capacity(children.len());
    for child in &mut children {
        let report = child
            .expect("REPORT", SLACK)
            .await
            .and_then(|json| serde_json::from_str::<ProcessReport>(&json).ok());
        parts.push(report.unwrap_or_else(|| failed_child(&child.cfg)));
        let _ = tokio::time::timeout(SLACK, child.process.wait()).await;
    }
    Ok(ProcessReport::merge(&parts))
}

/// A child that never reported: all its connections count as failed.
fn failed_child(cfg: &Config) -> ProcessReport {
    let mut report = ProcessReport {
        target_connections: cfg.connections(),
        ..ProcessReport::default()
    };
    report
        .details
        .connect_failures
        .insert("child_failed".to_owned(), cfg.connections());
    report
}

/// The child's side of the line protocol, over its stdin and stdout.
struct ChildBarrier {
    stdin: Lines<BufReader<tokio::io::Stdin>>,
    cfg: Arc<Config>,
}

impl ChildBarrier {
    async fn wait_for(&mut self, word: &str, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            // EOF means the parent is gone: carry on and finish within our own bounds.
            while let Ok(Some(line)) = self.stdin.next_line().await {
                if line.trim() == word {
                    return;
                }
            }
        })
        .await;
    }
}

impl Barrier for ChildBarrier {
    async fn ready(&mut self, at: &Snapshot) {
        println!("READY {}", serde_json::to_string(at).unwrap_or_default());
        self.wait_for("GO", self.cfg.connect_timeout + SLACK).await;
    }

    async fn drained(&mut self, at: &Snapshot) {
        println!("DRAINED {}", serde_json::to_string(at).unwrap_or_default());
        self.wait_for("CLOSE", SLACK).await;
    }
}

pub async fn run_child(cfg: Config) -> std::io::Result<()> {
    let cfg = Arc::new(cfg);
    let mut barrier = ChildBarrier {
        stdin: BufReader::new(tokio::io::stdin()).lines(),
        cfg: cfg.clone(),
    };
    let report = runner::run_process(cfg, &mut barrier).await?;
    println!(
        "REPORT {}",
        serde_json::to_string(&report).map_err(std::io::Error::other)?
    );
    Ok(())
}
