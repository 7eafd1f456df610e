//! Redis: a redis-server of its own in the server pod, driven by
//! redis-benchmark (GET and SET, 64-byte values over 10,000 keys), one
//! command per round trip or pipelined (`-P 16`: sixteen commands in
//! flight per connection, each its own request to weft's parser).
//!
//! redis-benchmark has no open-loop mode and no duration: it is measured at
//! its maximum only (fixed rates are `None`), with a request count sized by
//! a short first run to last about the point's seconds (the point's
//! requests and seconds are both runs', as its costs are). Latency
//! percentiles come from the distributions it prints per command (merged:
//! GET's and SET's counts added at each bound), at its histogram's
//! resolution.

use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Shape, Tools, Workload, nearest_rank, quantile};
use crate::bench::lab::Lab;
use crate::bench::load::{Latency, Load, Outcome};
use crate::bench::proc::Proc;
use crate::cmd::probe;

pub struct Redis {
    /// Commands in flight per connection (`-P`); 1 is no pipelining.
    pub pipeline: u32,
}

const PORT: u16 = 6379;
/// The sizing run: enough requests to measure the rate, well under a second.
const PROBE_REQUESTS: u64 = 20_000;

impl Workload for Redis {
    fn name(&self) -> &'static str {
        if self.pipeline > 1 {
            "redis-pipelined"
        } else {
            "redis"
        }
    }

    fn describe(&self) -> String {
        let pipelining = if self.pipeline > 1 {
            format!("{} commands pipelined per connection (-P)", self.pipeline)
        } else {
            "no pipelining".to_owned()
        };
        format!(
            "redis-server (no persistence) serving redis-benchmark's GET and SET \
             (64-byte values, 10,000 keys, {pipelining}); load from redis-benchmark \
             (closed loop only: measured at its maximum)"
        )
    }

    fn tools(&self) -> Tools {
        Tools {
            packages: &[
                "redis-server",
                "redis-tools",
                "haproxy",
                "bpftool",
                "iproute2",
                "util-linux",
            ],
            crates: &[],
        }
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn proxy_mode(&self) -> &'static str {
        "tcp"
    }

    fn start_server(&self, lab: &Lab) -> Result<Vec<Proc>> {
        let dir = lab.dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let dir = dir.display().to_string();
        let port = PORT.to_string();
        let argv = [
            "redis-server",
            "--port",
            &port,
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--maxclients",
            "1000",
        ];
        let mut server = lab.server.spawn(lab, "redis-server", &argv)?;
        lab.server
            .wait_listening(PORT, Duration::from_secs(30))
            .or_else(|e| server.check_alive().and(Err(e)))?;
        Ok(vec![server])
    }

    fn drive(
        &self,
        lab: &Lab,
        target: SocketAddrV4,
        load: Load,
        shape: Shape,
        seconds: u64,
    ) -> Result<Option<Outcome>> {
        if load.rate().is_some() {
            return Ok(None);
        }
        let sizing = self.run(lab, target, shape, PROBE_REQUESTS, 30)?;
        let rate = sizing.achieved_rate().max(1.0);
        let requests = ((rate * seconds as f64) as u64).max(PROBE_REQUESTS);
        let main = self.run(lab, target, shape, requests, seconds * 4 + 30)?;
        // The point's costs (CPU, eBPF time, weft's records) cover both
        // runs, so its requests do too; the percentiles are the main run's.
        Ok(Some(Outcome {
            ok: sizing.ok + main.ok,
            errors: sizing.errors + main.errors,
            seconds: sizing.seconds + main.seconds,
            latency: main.latency,
        }))
    }

    fn versions(&self, _lab: &Lab) -> Vec<(&'static str, String)> {
        // "redis-benchmark 7.0.15"; "Redis server v=7.0.15 sha=..."
        let benchmark = probe(Command::new("redis-benchmark").arg("--version"))
            .and_then(|out| out.split_whitespace().nth(1).map(str::to_owned));
        let server = probe(Command::new("redis-server").arg("--version")).and_then(|out| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix("v="))
                .map(str::to_owned)
        });
        vec![
            ("redis-server", server.unwrap_or_else(|| "?".into())),
            ("redis-benchmark", benchmark.unwrap_or_else(|| "?".into())),
        ]
    }
}

impl Redis {
    /// One redis-benchmark run of `requests` per command, GET and SET.
    fn run(
        &self,
        lab: &Lab,
        target: SocketAddrV4,
        shape: Shape,
        requests: u64,
        timeout_s: u64,
    ) -> Result<Outcome> {
        // (Options and values apart: redis-benchmark reads no `-h10.0.0.2`.)
        let args = [
            "redis-benchmark".to_owned(),
            "-h".into(),
            target.ip().to_string(),
            "-p".into(),
            target.port().to_string(),
            "-c".into(),
            shape.connections.to_string(),
            "-n".into(),
            requests.to_string(),
            "-P".into(),
            self.pipeline.to_string(),
            // Reconnect for every request when the point asks for it.
            "-k".into(),
            u8::from(!shape.connection_per_request).to_string(),
            "-t".into(),
            "get,set".into(),
            "-d".into(),
            "64".into(),
            "-r".into(),
            "10000".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = lab.client.spawn(lab, "redis-benchmark", &argv)?;
        let status = proc.wait(Duration::from_secs(timeout_s))?;
        let log = proc.log();
        if !status.success() {
            bail!("redis-benchmark failed ({status}): {}", proc.log_tail());
        }
        parse_output(&log).context("reading redis-benchmark's output")
    }
}

/// One command's section of redis-benchmark's output.
struct Section {
    requests: u64,
    seconds: f64,
    /// `(latency bound in ms, requests at or under it)`, ascending.
    cumulative: Vec<(f64, u64)>,
}

/// The sections of redis-benchmark's output (progress lines, which it
/// rewrites with `\r`, are skipped), as one outcome: requests and seconds
/// added, percentiles of the merged distributions.
fn parse_output(text: &str) -> Result<Outcome> {
    let mut sections = Vec::new();
    for part in text.split("====== ").skip(1) {
        let mut section = Section {
            requests: 0,
            seconds: 0.0,
            cumulative: Vec::new(),
        };
        let mut in_percentiles = false;
        for line in part.lines().map(str::trim) {
            // "3000 requests completed in 0.07 seconds"
            if let Some((n, rest)) = line.split_once(" requests completed in ") {
                section.requests = n.trim().parse().context("request count")?;
                let s = rest.trim_end_matches(" seconds");
                section.seconds = s.parse().context("seconds")?;
            } else if line.starts_with("Latency by percentile distribution") {
                in_percentiles = true;
            } else if in_percentiles && line.is_empty() {
                in_percentiles = false;
            } else if in_percentiles {
                // "50.000% <= 0.071 milliseconds (cumulative count 1586)"
                let bound = line.split("<= ").nth(1).and_then(|r| r.split(' ').next());
                let count = line
                    .split("cumulative count ")
                    .nth(1)
                    .map(|r| r.trim_end_matches(')'));
                if let (Some(bound), Some(count)) = (bound, count) {
                    section.cumulative.push((bound.parse()?, count.parse()?));
                }
            }
        }
        if section.requests > 0 {
            sections.push(section);
        }
    }
    if sections.is_empty() {
        bail!(
            "no completed test in: {}",
            text.chars().take(500).collect::<String>()
        );
    }
    let requests: u64 = sections.iter().map(|s| s.requests).sum();
    Ok(Outcome {
        ok: requests,
        errors: 0,
        seconds: sections.iter().map(|s| s.seconds).sum(),
        latency: Latency::from_fn(|name| merged_quantile(&sections, quantile(name)) * 1000.0),
    })
}

/// The smallest bound (ms) under which at least `q` of all requests of the
/// sections fall (nearest rank, at the histograms' resolution).
fn merged_quantile(sections: &[Section], q: f64) -> f64 {
    let total: u64 = sections.iter().map(|s| s.requests).sum();
    let rank = nearest_rank(q, total);
    let mut bounds: Vec<f64> = sections
        .iter()
        .flat_map(|s| s.cumulative.iter().map(|&(b, _)| b))
        .collect();
    bounds.sort_by(f64::total_cmp);
    let under = |s: &Section, bound: f64| {
        s.cumulative
            .iter()
            .take_while(|&&(b, _)| b <= bound)
            .last()
            .map_or(0, |&(_, n)| n)
    };
    bounds
        .into_iter()
        .find(|&bound| sections.iter().map(|s| under(s, bound)).sum::<u64>() >= rank)
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::parse_output;

    const OUTPUT: &str = "SET: rps=0.0 (overall: 20000.0) avg_msec=0.069\r====== SET ======
  1000 requests completed in 0.50 seconds
  4 parallel clients

Latency by percentile distribution:
0.000% <= 0.020 milliseconds (cumulative count 10)
50.000% <= 0.100 milliseconds (cumulative count 500)
90.000% <= 0.200 milliseconds (cumulative count 900)
99.000% <= 0.400 milliseconds (cumulative count 990)
100.000% <= 1.000 milliseconds (cumulative count 1000)

Cumulative distribution of latencies:
100.000% <= 1.003 milliseconds (cumulative count 1000)

Summary:
  throughput summary: 2000.00 requests per second
====== GET ======
  1000 requests completed in 0.25 seconds

Latency by percentile distribution:
50.000% <= 0.050 milliseconds (cumulative count 500)
100.000% <= 0.300 milliseconds (cumulative count 1000)
";

    #[test]
    fn merges_the_commands() {
        let out = parse_output(OUTPUT).expect("parsed");
        assert_eq!((out.ok, out.errors), (2000, 0));
        assert_eq!(out.seconds, 0.75);
        // Rank 1000 of 2000: GET's 500 at 0.05 ms and SET's 10 make 510;
        // at 0.1 ms, 500 + 500.
        assert_eq!(out.latency.p50, 100.0);
        // Rank 1980: at 0.3 ms, 1000 (GET) + 900 (SET); at 0.4, 990 + 1000.
        assert_eq!(out.latency.p99, 400.0);
        assert!(parse_output("nothing").is_err());
    }
}
