//! The server's resident memory and CPU time, and the generator's own CPU
//! time, read from `/proc/<pid>`.

use serde::{Deserialize, Serialize};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// User plus system CPU time used so far.
    pub cpu_s: f64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: rss_kib(&status)?,
        cpu_s: cpu_ticks(&stat)? as f64 / ticks_per_second(),
    })
}

fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15), counted after the `)` that ends the command name,
/// since the name itself may contain spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU seconds used so far by this process plus `children` (the
/// generator's other processes). A child that is already gone counts 0.
pub fn generator_cpu_s(children: &[u32]) -> Option<f64> {
    let own = sample(std::process::id())?.cpu_s;
    Some(
        own + children
            .iter()
            .filter_map(|&pid| sample(pid))
            .map(|s| s.cpu_s)
            .sum::<f64>(),
    )
}

/// The server's readings at the run's three points, and the generator's
/// CPU time at the last two.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerSamples {
    pub before: Option<ProcSample>,
    pub connected: Option<ProcSample>,
    pub end: Option<ProcSample>,
    pub generator_connected: Option<f64>,
    pub generator_end: Option<f64>,
}

/// CPU seconds each side used from "all connected" to "drained": the
/// message phases only, so divided by messages it is CPU per message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SendPhaseCpu {
    pub server_s: Option<f64>,
    pub generator_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub rss_kib_before: u64,
    pub rss_kib_connected: u64,
    pub rss_kib_end: u64,
    /// (RSS at the end of the hold − RSS before connecting) / connections established.
    pub rss_growth_per_conn_kib: f64,
    /// CPU seconds used between connecting and the end of the send/drain phases.
    pub cpu_s: f64,
}

impl ServerSamples {
    pub fn send_phase_cpu(&self) -> SendPhaseCpu {
        SendPhaseCpu {
            server_s: self
                .connected
                .zip(self.end)
                .map(|(from, to)| to.cpu_s - from.cpu_s),
            generator_s: self
                .generator_connected
                .zip(self.generator_end)
                .map(|(from, to)| to - from),
        }
    }

    pub fn usage(&self, pid: u32, established: u64) -> Option<ServerUsage> {
        let (before, connected, end) = (self.before?, self.connected?, self.end?);
        let growth = end
            .rss_kib
            .max(connected.rss_kib)
            .saturating_sub(before.rss_kib);
        Some(ServerUsage {
            pid,
            rss_kib_before: before.rss_kib,
            rss_kib_connected: connected.rss_kib,
            rss_kib_end: end.rss_kib,
            rss_growth_per_conn_kib: if established == 0 {
                0.0
            } else {
                growth as f64 / established as f64
            },
            cpu_s: end.cpu_s - before.cpu_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            rss_kib("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        let stat =
            "42 (chat service) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(sample(u32::MAX).is_none());
    }

    #[test]
    fn growth_uses_the_larger_of_connected_and_end() {
        let at = |rss_kib, cpu_s| Some(ProcSample { rss_kib, cpu_s });
        let samples = ServerSamples {
            before: at(1000, 1.0),
            connected: at(7000, 2.0),
            end: at(6000, 5.5),
            generator_connected: Some(10.0),
            generator_end: Some(12.5),
        };
        let u = samples.usage(7, 1000).unwrap();
        assert_eq!(u.rss_growth_per_conn_kib, 6.0);
        assert_eq!(u.cpu_s, 4.5);
        assert!(ServerSamples {
            end: None,
            ..samples
        }
        .usage(7, 1000)
        .is_none());
        let cpu = samples.send_phase_cpu();
        assert_eq!(cpu.server_s, Some(3.5), "connected to end only");
        assert_eq!(cpu.generator_s, Some(2.5));
    }

    #[test]
    fn generator_cpu_counts_its_children() {
        let own = generator_cpu_s(&[]).unwrap();
        let with_self_twice = generator_cpu_s(&[std::process::id()]).unwrap();
        assert!(with_self_twice >= 2.0 * own, "{own} {with_self_twice}");
        let gone = generator_cpu_s(&[u32::MAX]).unwrap();
        assert!(gone >= own && gone < own + 1.0, "a missing child counts 0");
    }
}
