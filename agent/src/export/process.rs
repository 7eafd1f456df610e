//! The agent's own CPU, memory and file descriptors, read from procfs at
//! each scrape, under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so
//! that the usual dashboards and alerts work on the agent as they are.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

/// What /proc/self/stat says about the process (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time, in clock ticks after boot.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name, field 3 (state) is the first: field N is at N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// `btime` of /proc/stat: the boot time in seconds since the epoch.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Collects the `process_*` families at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A procfs that cannot be read (it always can, for our own
        // process) yields no samples rather than a failed scrape.
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t))
        else {
            return Ok(());
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;

        let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent by the agent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let memory = [
            (
                "process_resident_memory",
                "Resident memory size of the agent",
                stat.resident_pages.saturating_mul(page),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size of the agent",
                stat.virtual_bytes,
            ),
        ];
        for (name, help, bytes) in memory {
            let gauge = ConstGauge::new(bytes as f64);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?)?;
        }
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_boot_time(&t));
        if let Some(boot) = boot {
            let start = ConstGauge::new(boot as f64 + stat.start_ticks as f64 / ticks);
            start.encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the agent since the Unix epoch",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(fds.count() as f64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the agent",
                None,
                open.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_name() {
        // comm "a) b (c" contains both parentheses and spaces.
        let text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1048576 300 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.cpu_ticks, 300);
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(s.virtual_bytes, 1_048_576);
        assert_eq!(s.resident_pages, 300);
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(parse_stat("4242 (weft) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn reads_boot_time() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764363600\nprocesses 9\n"),
            Some(1_764_363_600)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn our_own_process_is_measured() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
            let value: f64 = line[name.len()..].trim().parse().unwrap();
            assert!(value >= 0.0, "{line}");
        }
        let rss = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap();
        assert!(rss.trim().parse::<f64>().unwrap() > 1e6, "{out}");
    }
}
