//! The standard `process_*` metrics every Prometheus exporter serves (memory,
//! CPU, file descriptors, start time), read from procfs at scrape time, so
//! that the sidecar's own footprint is on the dashboard beside what it watches.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Reads `/proc/self` on every scrape; a value procfs cannot give is left
/// out of that scrape rather than reported as 0.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        #[cfg(target_os = "linux")]
        for (name, help, kind, value) in linux::sample() {
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric)?,
                _ => ConstGauge::new(value).encode(metric)?,
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = &mut encoder;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::MetricType;
    use procfs::process::{LimitValue, Process, Stat};

    type Sample = (&'static str, &'static str, MetricType, f64);

    /// The values procfs can read now, with their names and help texts.
    pub(super) fn sample() -> Vec<Sample> {
        let Ok(me) = Process::myself() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(6);
        if let Ok(stat) = me.stat() {
            sample_stat(&stat, &mut out);
        }
        sample_fds(&me, &mut out);
        out
    }

    /// CPU time, memory and start time: one read of `/proc/self/stat`.
    fn sample_stat(stat: &Stat, out: &mut Vec<Sample>) {
        let ticks = procfs::ticks_per_second() as f64;
        out.push((
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
            (stat.utime + stat.stime) as f64 / ticks,
        ));
        out.push((
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            MetricType::Gauge,
            (stat.rss * procfs::page_size()) as f64,
        ));
        out.push((
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            MetricType::Gauge,
            stat.vsize as f64,
        ));
        if let Ok(boot) = procfs::boot_time_secs() {
            out.push((
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                MetricType::Gauge,
                boot as f64 + stat.starttime as f64 / ticks,
            ));
        }
    }

    fn sample_fds(me: &Process, out: &mut Vec<Sample>) {
        if let Ok(open) = me.fd_count() {
            out.push((
                "process_open_fds",
                "Number of open file descriptors.",
                MetricType::Gauge,
                open as f64,
            ));
        }
        if let Ok(limits) = me.limits() {
            let max = match limits.max_open_files.soft_limit {
                LimitValue::Value(max) => max as f64,
                LimitValue::Unlimited => f64::INFINITY,
            };
            out.push((
                "process_max_fds",
                "Maximum number of open file descriptors.",
                MetricType::Gauge,
                max,
            ));
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn every_process_metric_is_read_from_procfs() {
        let names: Vec<&str> = linux::sample().iter().map(|s| s.0).collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_start_time_seconds",
                "process_open_fds",
                "process_max_fds",
            ]
        );
    }
}
