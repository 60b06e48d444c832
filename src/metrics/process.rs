//! The standard `process_*` metrics (CPU, memory, open files, threads,
//! start time), read from the kernel at each scrape.
//!
//! Hand-written over `/proc` and `getrusage`: the ready collectors belong
//! to other metric libraries (`metrics-process` to the `metrics` facade,
//! the `prometheus` crate's own) and would bring a second registry; this is
//! a handful of reads.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = Sample::read();
        if let Some(cpu) = sample.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                sample.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                sample.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                None,
                sample.threads,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                sample.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// One reading; a value the platform cannot give is left out.
#[derive(Debug, Default)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    threads: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl Sample {
    fn read() -> Sample {
        let mut sample = Sample {
            cpu_seconds: cpu_seconds(),
            max_fds: max_fds(),
            ..Sample::default()
        };
        #[cfg(target_os = "linux")]
        linux::read(&mut sample);
        sample
    }
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur as f64)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Sample;

    pub(super) fn read(sample: &mut Sample) {
        // SAFETY: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let mut pages = statm.split_whitespace().map(|n| n.parse::<f64>().ok());
            sample.virtual_bytes = pages.next().flatten().map(|n| n * page);
            sample.resident_bytes = pages.next().flatten().map(|n| n * page);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor of the listing itself.
            sample.open_fds = Some(dir.count().saturating_sub(1) as f64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which may hold spaces and
            // parentheses: the last ')' ends it.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // Field 20 (threads) and 22 (start time in ticks since boot);
            // `fields[0]` is field 3.
            sample.threads = fields.get(17).and_then(|n| n.parse().ok());
            let started_ticks = fields.get(19).and_then(|n| n.parse::<f64>().ok());
            if let (Some(started), Some(boot)) = (started_ticks, boot_time()) {
                if ticks > 0.0 {
                    sample.start_time_seconds = Some(boot + started / ticks);
                }
            }
        }
    }

    /// Seconds since the epoch at boot (`btime` in /proc/stat).
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|n| n.trim().parse().ok())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_sample_of_this_process_is_plausible() {
        let sample = Sample::read();
        let resident = sample.resident_bytes.unwrap_or_default();
        assert!(resident > 1e6, "resident {resident}");
        assert!(sample.virtual_bytes.unwrap_or_default() >= resident);
        let file = std::fs::File::open("/proc/self/stat").ok();
        assert!(sample.open_fds.unwrap_or_default() >= 3.0);
        drop(file);
        assert!(sample.threads.unwrap_or_default() >= 1.0);
        assert!(sample.max_fds.unwrap_or_default() >= sample.open_fds.unwrap_or_default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let started = sample.start_time_seconds.unwrap_or_default();
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
        assert!(sample.cpu_seconds.is_some());
    }
}
