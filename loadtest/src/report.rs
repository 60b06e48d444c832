//! The run's report: JSON for machines, a table for people, a Markdown table
//! for BENCHMARKS.md, and `--expect` checks on its flat metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::probe::{SendPhaseCpu, ServerUsage};
use crate::runner::ProcessReport;
use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub config: ConfigSummary,
    pub connections: Connections,
    pub messages: Messages,
    pub throughput: Throughput,
    /// End-to-end, sender's write to peer's read, microseconds.
    pub latency_us: Percentiles,
    pub errors: Errors,
    pub server: Option<ServerUsage>,
    /// CPU of both sides while messages flowed; the server's only with its pid.
    pub cpu: SendPhaseCpu,
    /// Requests the Django stand-in served during the run.
    pub django_requests: Option<u64>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub target: String,
    pub pairs: u64,
    pub connections: u64,
    pub tabs: u32,
    pub procs: usize,
    pub threads: usize,
    pub source_addrs: usize,
    pub ramp_rate: u64,
    pub rate: String,
    pub window: u32,
    pub message_bytes: usize,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connections {
    pub target: u64,
    pub established: u64,
    pub failed: u64,
    /// Failures by cause: `http_503`, `timeout`, `refused`, `not_started`, …
    pub failures: BTreeMap<String, u64>,
    pub connect_phase_s: f64,
    /// TCP connect plus upgrade, microseconds.
    pub connect_time_us: Percentiles,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Messages {
    pub sent: u64,
    /// Received by the peer (the sender's own echo is not counted).
    pub delivered: u64,
    pub acked: u64,
    /// Answered with an `error` naming their `client_id`.
    pub refused: u64,
    /// sent − delivered − refused, after the drain.
    pub lost: u64,
    /// sent − acked − refused, after the drain.
    pub unacked: u64,
    pub echoes: u64,
    pub other_events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub send_phase_s: f64,
    pub drain_s: f64,
    pub sent_per_s: f64,
    /// Deliveries counted by the end of the send phase, per second of it.
    pub delivered_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Errors {
    pub error_events: BTreeMap<String, u64>,
    /// Close codes the server sent before the generator closed.
    pub close_codes: BTreeMap<u16, u64>,
    /// Connections that ended without a close frame, by cause.
    pub disconnects: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub expect: String,
    pub value: Option<f64>,
    pub pass: bool,
}

impl Report {
    pub fn build(
        cfg: &Config,
        run: &ProcessReport,
        server: Option<ServerUsage>,
        cpu: SendPhaseCpu,
        django_requests: Option<u64>,
    ) -> Report {
        let end = run.at_end;
        let mut failures = run.details.connect_failures.clone();
        if run.not_started > 0 {
            failures.insert("not_started".to_owned(), run.not_started);
        }
        let per_s = |n: u64| {
            if run.send_phase_s > 0.0 {
                n as f64 / run.send_phase_s
            } else {
                0.0
            }
        };
        let mut report = Report {
            label: cfg.label.clone(),
            config: ConfigSummary {
                target: cfg.target.to_string(),
                pairs: cfg.pairs,
                connections: cfg.connections(),
                tabs: cfg.tabs,
                procs: cfg.procs,
                threads: cfg.threads,
                source_addrs: cfg.sources.len(),
                ramp_rate: cfg.ramp_rate,
                rate: cfg.rate.to_string(),
                window: cfg.window,
                message_bytes: cfg.message_bytes,
                duration_s: cfg.duration.as_secs_f64(),
            },
            connections: Connections {
                target: run.target_connections,
                established: run.at_ready.connected,
                failed: run.target_connections - run.at_ready.connected.min(run.target_connections),
                failures,
                connect_phase_s: run.connect_phase_s,
                connect_time_us: Percentiles::of(&run.details.connect),
            },
            messages: Messages {
                sent: end.sent,
                delivered: end.delivered,
                acked: end.acked,
                refused: end.refused,
                lost: end.sent.saturating_sub(end.delivered + end.refused),
                unacked: end.sent.saturating_sub(end.acked + end.refused),
                echoes: run.details.echoes,
                other_events: run.details.other_events,
            },
            throughput: Throughput {
                send_phase_s: run.send_phase_s,
                drain_s: run.drain_s,
                sent_per_s: per_s(run.at_send_end.sent),
                delivered_per_s: per_s(run.at_send_end.delivered),
            },
            latency_us: Percentiles::of(&run.details.latency),
            errors: Errors {
                error_events: run.details.error_events.clone(),
                close_codes: run.details.close_codes.clone(),
                disconnects: run.details.disconnects.clone(),
            },
            server,
            cpu,
            django_requests,
            checks: Vec::new(),
        };
        report.checks = cfg
            .expect
            .iter()
            .map(|e| e.check(&report.metrics()))
            .collect();
        report
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// Flat numbers `--expect` can name.
    pub fn metrics(&self) -> BTreeMap<&'static str, f64> {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut m = BTreeMap::from([
            ("connections_target", self.connections.target as f64),
            (
                "connections_established",
                self.connections.established as f64,
            ),
            ("connections_failed", self.connections.failed as f64),
            ("connect_phase_s", self.connections.connect_phase_s),
            ("connect_p50_ms", ms(self.connections.connect_time_us.p50)),
            ("connect_p99_ms", ms(self.connections.connect_time_us.p99)),
            ("connect_max_ms", ms(self.connections.connect_time_us.max)),
            ("sent", self.messages.sent as f64),
            ("delivered", self.messages.delivered as f64),
            ("acked", self.messages.acked as f64),
            ("refused", self.messages.refused as f64),
            ("lost", self.messages.lost as f64),
            ("unacked", self.messages.unacked as f64),
            ("sent_per_s", self.throughput.sent_per_s),
            ("delivered_per_s", self.throughput.delivered_per_s),
            ("latency_p50_ms", ms(self.latency_us.p50)),
            ("latency_p90_ms", ms(self.latency_us.p90)),
            ("latency_p99_ms", ms(self.latency_us.p99)),
            ("latency_p99_9_ms", ms(self.latency_us.p99_9)),
            ("latency_max_ms", ms(self.latency_us.max)),
            (
                "error_events",
                self.errors.error_events.values().sum::<u64>() as f64,
            ),
            (
                "server_closes",
                self.errors.close_codes.values().sum::<u64>() as f64,
            ),
            (
                "disconnects",
                self.errors.disconnects.values().sum::<u64>() as f64,
            ),
        ]);
        if let Some(s) = &self.server {
            m.insert("server_rss_before_kib", s.rss_kib_before as f64);
            m.insert("server_rss_end_kib", s.rss_kib_end as f64);
            m.insert("server_rss_growth_per_conn_kib", s.rss_growth_per_conn_kib);
            m.insert("server_cpu_s", s.cpu_s);
        }
        if let Some(n) = self.django_requests {
            m.insert("django_requests", n as f64);
        }
        for (name, cpu_s) in [
            ("server_cpu_us_per_msg", self.cpu.server_s),
            ("generator_cpu_us_per_msg", self.cpu.generator_s),
        ] {
            if let Some(us) = self.cpu_us_per_message(cpu_s) {
                m.insert(name, us);
            }
        }
        m
    }

    /// CPU microseconds per message sent, when messages were sent.
    fn cpu_us_per_message(&self, cpu_s: Option<f64>) -> Option<f64> {
        let sent = self.messages.sent;
        cpu_s.filter(|_| sent > 0).map(|s| s * 1e6 / sent as f64)
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.config;
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(t, "== {} ==", self.label);
        let _ = writeln!(
            t,
            "run          target {}  pairs {}  connections {}  procs {}  threads {}  rate {}  window {}  {} B  {} s",
            c.target, c.pairs, c.connections, c.procs, c.threads, c.rate, c.window, c.message_bytes, c.duration_s
        );
        let k = &self.connections;
        let ct = &k.connect_time_us;
        let _ = writeln!(
            t,
            "connections  established {}/{}  failed {} {:?}  phase {:.2} s  connect ms p50 {} p99 {} max {}",
            k.established,
            k.target,
            k.failed,
            k.failures,
            k.connect_phase_s,
            ms(ct.p50),
            ms(ct.p99),
            ms(ct.max)
        );
        let m = &self.messages;
        let _ = writeln!(
            t,
            "messages     sent {}  delivered {}  acked {}  refused {}  lost {}  unacked {}  (echoes {})",
            m.sent, m.delivered, m.acked, m.refused, m.lost, m.unacked, m.echoes
        );
        let p = &self.throughput;
        let _ = writeln!(
            t,
            "throughput   sent {:.0}/s  delivered {:.0}/s  (send {:.2} s, drain {:.2} s)",
            p.sent_per_s, p.delivered_per_s, p.send_phase_s, p.drain_s
        );
        let l = &self.latency_us;
        let _ = writeln!(
            t,
            "latency ms   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n {})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p99_9),
            ms(l.max),
            l.count
        );
        let e = &self.errors;
        let _ = writeln!(
            t,
            "errors       events {:?}  close codes {:?}  disconnects {:?}",
            e.error_events, e.close_codes, e.disconnects
        );
        if let Some(s) = &self.server {
            let _ = writeln!(
                t,
                "server {:<6} rss KiB before {}  connected {}  end {}  growth {:.2} KiB/conn  cpu {:.2} s",
                s.pid, s.rss_kib_before, s.rss_kib_connected, s.rss_kib_end, s.rss_growth_per_conn_kib, s.cpu_s
            );
        }
        if self.messages.sent > 0 {
            let side = |cpu_s: Option<f64>| match (cpu_s, self.cpu_us_per_message(cpu_s)) {
                (Some(s), Some(us)) => format!("{s:.2} s ({us:.1} µs/message)"),
                _ => "unknown".to_owned(),
            };
            let _ = writeln!(
                t,
                "cpu          while sending and draining: server {}  generator {}",
                side(self.cpu.server_s),
                side(self.cpu.generator_s)
            );
        }
        if let Some(n) = self.django_requests {
            let _ = writeln!(t, "django       {n} requests");
        }
        for check in &self.checks {
            let value = check
                .value
                .map_or("missing".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                t,
                "check        {} {} (got {value})",
                if check.pass { "PASS" } else { "FAIL" },
                check.expect
            );
        }
        t
    }

    pub fn markdown(&self) -> String {
        let mut t = String::from("| metric | value |\n|---|---|\n");
        for (name, value) in self.metrics() {
            let shown = if value.fract() == 0.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.3}")
            };
            let _ = writeln!(t, "| {name} | {shown} |");
        }
        let e = &self.errors;
        let _ = writeln!(t, "| connect failures | {:?} |", self.connections.failures);
        let _ = writeln!(t, "| error events | {:?} |", e.error_events);
        let _ = writeln!(t, "| close codes | {:?} |", e.close_codes);
        if !self.checks.is_empty() {
            t.push_str("\n| check | got | result |\n|---|---|---|\n");
            for c in &self.checks {
                let got = c.value.map_or("missing".to_owned(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    t,
                    "| `{}` | {got} | {} |",
                    c.expect,
                    if c.pass { "PASS" } else { "**FAIL**" }
                );
            }
        }
        t
    }
}

/// `metric<=value` (also `>=`, `==`, `<`, `>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Le,
    Ge,
    Eq,
    Lt,
    Gt,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Lt => "<",
            Op::Gt => ">",
        }
    }
}

impl FromStr for Expectation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Two-character operators first, so `<=` is not read as `<`.
        for op in [Op::Le, Op::Ge, Op::Eq, Op::Lt, Op::Gt] {
            if let Some((metric, value)) = s.split_once(op.symbol()) {
                let metric = metric.trim();
                if metric.is_empty()
                    || !metric
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("bad metric name in `{s}`"));
                }
                let value = value
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("bad number in `{s}`"))?;
                return Ok(Expectation {
                    metric: metric.to_owned(),
                    op,
                    value,
                });
            }
        }
        Err(format!(
            "expected `metric<=value` (or >=, ==, <, >), not `{s}`"
        ))
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.metric, self.op.symbol(), self.value)
    }
}

impl Expectation {
    /// A metric the report lacks fails the check: a typo must not pass silently.
    pub fn check(&self, metrics: &BTreeMap<&'static str, f64>) -> Check {
        let value = metrics.get(self.metric.as_str()).copied();
        let pass = value.is_some_and(|v| match self.op {
            Op::Le => v <= self.value,
            Op::Ge => v >= self.value,
            Op::Eq => v == self.value,
            Op::Lt => v < self.value,
            Op::Gt => v > self.value,
        });
        Check {
            expect: self.to_string(),
            value,
            pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use crate::stats::{new_histogram, Buckets, Details, Snapshot};
    use clap::Parser;

    fn sample_report(expect: &[&str]) -> Report {
        let mut args = vec!["loadtest", "--pairs", "10", "--rate", "max", "--label", "t"];
        for e in expect {
            args.extend(["--expect", e]);
        }
        let cfg = Args::try_parse_from(args)
            .unwrap()
            .validate(20_000, 2)
            .unwrap();
        let mut latency = new_histogram();
        for us in [1_000, 2_000, 3_000, 40_000] {
            latency.record(us).unwrap();
        }
        let run = ProcessReport {
            target_connections: 20,
            not_started: 1,
            at_ready: Snapshot {
                connected: 18,
                failed: 1,
                ..Snapshot::default()
            },
            at_send_end: Snapshot {
                sent: 100,
                delivered: 90,
                ..Snapshot::default()
            },
            at_end: Snapshot {
                sent: 104,
                delivered: 102,
                acked: 101,
                refused: 1,
                ..Snapshot::default()
            },
            connect_phase_s: 0.5,
            send_phase_s: 2.0,
            drain_s: 0.1,
            details: Details {
                latency: Buckets::of(&latency),
                close_codes: BTreeMap::from([(1013, 2)]),
                connect_failures: BTreeMap::from([("http_503".to_owned(), 1)]),
                ..Details::default()
            },
        };
        let cpu = SendPhaseCpu {
            server_s: None,
            generator_s: Some(0.0026),
        };
        Report::build(&cfg, &run, None, cpu, Some(40))
    }

    #[test]
    fn cpu_is_reported_per_message_sent() {
        let r = sample_report(&[]);
        let metrics = r.metrics();
        // 2.6 ms over 104 messages.
        let per_message = metrics["generator_cpu_us_per_msg"];
        assert!((per_message - 25.0).abs() < 1e-9, "{per_message}");
        assert!(
            !metrics.contains_key("server_cpu_us_per_msg"),
            "no server pid, no server figure"
        );
        let table = r.table();
        assert!(table.contains("server unknown"), "{table}");
        assert!(
            table.contains("generator 0.00 s (25.0 µs/message)"),
            "{table}"
        );
    }

    #[test]
    fn report_counts_and_rates() {
        let r = sample_report(&[]);
        assert_eq!(r.connections.established, 18);
        assert_eq!(r.connections.failed, 2);
        assert_eq!(r.connections.failures.get("not_started"), Some(&1));
        assert_eq!(r.messages.lost, 1);
        assert_eq!(r.messages.unacked, 2);
        assert_eq!(r.throughput.sent_per_s, 50.0);
        assert_eq!(r.throughput.delivered_per_s, 45.0);
        assert_eq!(r.latency_us.count, 4);
        assert!(r.latency_us.max >= 40_000 && r.latency_us.max < 40_100);
    }

    #[test]
    fn json_report_has_the_documented_shape() {
        let v = serde_json::to_value(sample_report(&["lost<=0"])).unwrap();
        for key in [
            "label",
            "config",
            "connections",
            "messages",
            "throughput",
            "latency_us",
            "errors",
            "server",
            "cpu",
            "django_requests",
            "checks",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p99_9", "max", "count", "mean", "min"] {
            assert!(
                v["latency_us"].get(key).is_some(),
                "missing latency_us.{key}"
            );
        }
        for key in ["sent", "delivered", "acked", "lost", "unacked", "refused"] {
            assert!(v["messages"][key].is_u64(), "messages.{key}");
        }
        assert_eq!(v["errors"]["close_codes"]["1013"], 2);
        assert_eq!(v["connections"]["failures"]["http_503"], 1);
        assert_eq!(v["checks"][0]["pass"], false);
        assert_eq!(v["django_requests"], 40);
        assert!(v["server"].is_null());
    }

    #[test]
    fn table_and_markdown_show_the_numbers() {
        let r = sample_report(&["latency_p50_ms<=5", "delivered_per_s>=1000"]);
        let table = r.table();
        assert!(table.contains("lost 1"), "{table}");
        assert!(table.contains("PASS latency_p50_ms<=5"), "{table}");
        assert!(table.contains("FAIL delivered_per_s>=1000"), "{table}");
        let md = r.markdown();
        assert!(md.contains("| delivered_per_s | 45 |"), "{md}");
        assert!(md.contains("**FAIL**"), "{md}");
        assert!(!r.passed());
    }

    #[test]
    fn expectations_parse_and_check() {
        let e: Expectation = "latency_p99_ms<=5".parse().unwrap();
        assert_eq!(
            e,
            Expectation {
                metric: "latency_p99_ms".into(),
                op: Op::Le,
                value: 5.0
            }
        );
        assert_eq!("lost == 0".parse::<Expectation>().unwrap().op, Op::Eq);
        assert_eq!("x>1".parse::<Expectation>().unwrap().op, Op::Gt);
        for bad in ["lost", "<=5", "lost<=five", "a b<=1"] {
            assert!(bad.parse::<Expectation>().is_err(), "{bad}");
        }
        let metrics = BTreeMap::from([("lost", 0.0)]);
        assert!(
            e.check(&metrics).value.is_none() && !e.check(&metrics).pass,
            "a missing metric fails"
        );
        assert!(
            "lost<=0"
                .parse::<Expectation>()
                .unwrap()
                .check(&metrics)
                .pass
        );
        assert!(
            !"lost<0"
                .parse::<Expectation>()
                .unwrap()
                .check(&metrics)
                .pass
        );
    }
}
