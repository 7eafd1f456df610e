//! Load points and what a load generator reports about one.

use std::fmt;

use serde_json::{Value, json};

/// How one load point is driven.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Open loop: requests are sent on a fixed schedule of this many per
    /// second, whether or not earlier ones were answered, and each latency
    /// is measured from the request's scheduled time (coordinated-omission
    /// correction), so a stall shows up in the percentiles.
    Rate(u32),
    /// Open loop as [`Load::Rate`], every request on a new connection (a
    /// connect, and a steered connect's rewrite, per request).
    NewConnections(u32),
    /// Closed loop: every connection sends its next request as soon as the
    /// previous one is answered; the achieved rate is the maximum
    /// throughput.
    Max,
}

impl Load {
    /// The label used in the report and the JSON.
    pub fn label(self) -> String {
        match self {
            Load::Rate(rate) => format!("{rate} req/s"),
            Load::NewConnections(rate) => format!("{rate} req/s, a new connection each"),
            Load::Max => "max (closed loop)".to_owned(),
        }
    }

    /// The open loop's rate (`None`: closed loop).
    pub fn rate(self) -> Option<u32> {
        match self {
            Load::Rate(rate) | Load::NewConnections(rate) => Some(rate),
            Load::Max => None,
        }
    }

    /// Whether every request opens a connection of its own.
    pub fn new_connections(self) -> bool {
        matches!(self, Load::NewConnections(_))
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Latency percentiles, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Latency {
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "p50" => self.p50,
            "p90" => self.p90,
            "p99" => self.p99,
            _ => self.p999,
        }
    }

    pub fn from_fn(f: impl Fn(&str) -> f64) -> Self {
        Self {
            p50: f("p50"),
            p90: f("p90"),
            p99: f("p99"),
            p999: f("p99.9"),
        }
    }
}

/// What the load generator measured at one load point.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests answered successfully (HTTP: any status; the workload
    /// checks that they are the expected one).
    pub ok: u64,
    /// Requests that failed (connection errors, timeouts, bad status).
    pub errors: u64,
    /// Seconds the generator ran.
    pub seconds: f64,
    pub latency: Latency,
}

impl Outcome {
    pub fn achieved_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "achieved_rate": round(self.achieved_rate(), 1),
            "latency_us": {
                "p50": round(self.latency.p50, 1),
                "p90": round(self.latency.p90, 1),
                "p99": round(self.latency.p99, 1),
                "p99.9": round(self.latency.p999, 1),
            },
        })
    }
}

/// `x` rounded to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
