//! Workloads: a server in the server pod and a load generator in the client
//! pod. Adding one (memcached with memtier, say) is a module with an
//! implementation of [`Workload`] and a line in [`by_name`]: the lab, the
//! configurations (B0, B1, B2 and the sidecars, which proxy in `tcp` mode
//! for protocols other than HTTP), the measurements and the report are
//! shared. [`postgres`] is the example: a server started in its pod, a load
//! generator with an open-loop mode whose latencies it reads itself.

mod http;
mod postgres;
mod redis;

use std::net::SocketAddrV4;

use anyhow::{Result, bail};

use super::lab::Lab;
use super::load::{Latency, Load, Outcome};
use super::proc::Proc;
use crate::setup::CrateTool;

/// What a load point asks of the connections.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Concurrent connections of the generator.
    pub connections: u32,
    /// Open a new connection for every request (stresses weft's
    /// per-connection events), instead of keep-alive.
    pub connection_per_request: bool,
}

/// Tools a workload needs, installed by `setup::bench_tools`.
pub struct Tools {
    /// Debian packages.
    pub packages: &'static [&'static str],
    /// Crates installed with `cargo install --locked`.
    pub crates: &'static [CrateTool],
}

pub trait Workload {
    /// The name for `--workload`.
    fn name(&self) -> &'static str;
    /// One line for the report: server, payload, protocol, generator.
    fn describe(&self) -> String;
    fn tools(&self) -> Tools;
    /// The port the server listens on, on every address of the server pod
    /// (the sidecar reaches it on 127.0.0.1).
    fn port(&self) -> u16;
    /// haproxy's `mode` for the sidecars: `http` or `tcp`.
    fn proxy_mode(&self) -> &'static str;
    /// Starts the server in the server pod and waits until it listens.
    fn start_server(&self, lab: &Lab) -> Result<Vec<Proc>>;
    /// Drives one load point from the client pod against `target` for
    /// `seconds`. `Ok(None)` when the generator cannot drive this kind of
    /// load (a closed-loop-only tool asked for a fixed rate).
    fn drive(
        &self,
        lab: &Lab,
        target: SocketAddrV4,
        load: Load,
        shape: Shape,
        seconds: u64,
    ) -> Result<Option<Outcome>>;
    /// Versions of the server and generator, for the report.
    fn versions(&self, lab: &Lab) -> Vec<(&'static str, String)>;
}

/// The workload named `name` (`--workload`).
pub fn by_name(name: &str) -> Result<Box<dyn Workload>> {
    match name {
        "http" => Ok(Box::new(http::Http { tls: false })),
        "https" => Ok(Box::new(http::Http { tls: true })),
        "postgres" => Ok(Box::new(postgres::Postgres)),
        "redis" => Ok(Box::new(redis::Redis { pipeline: 1 })),
        "redis-pipelined" => Ok(Box::new(redis::Redis { pipeline: 16 })),
        other => bail!(
            "unknown workload {other:?}; known: http, https, postgres, redis, redis-pipelined"
        ),
    }
}

/// Latency percentiles (µs) of `latencies_us`, by the nearest-rank method.
pub fn percentiles(mut latencies_us: Vec<f64>) -> Latency {
    latencies_us.sort_by(f64::total_cmp);
    let n = latencies_us.len();
    Latency::from_fn(|name| {
        latencies_us
            .get(nearest_rank(quantile(name), n as u64) as usize - 1)
            .copied()
            .unwrap_or(f64::NAN)
    })
}

/// The quantile a [`Latency`] field names (`p99` is 0.99, `p99.9` 0.999).
pub fn quantile(name: &str) -> f64 {
    name[1..].parse::<f64>().unwrap_or(100.0) / 100.0
}

/// The 1-based rank of quantile `q` among `n` ordered values (nearest
/// rank; at least 1).
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    // The epsilon keeps 0.999 × 1000 from rounding up to rank 1000.
    ((q * n as f64 - 1e-9).ceil() as u64).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = percentiles(xs);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (500.0, 900.0, 990.0, 999.0));
        assert!(percentiles(Vec::new()).p99.is_nan());
    }
}
