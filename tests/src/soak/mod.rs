//! The soak (tests/tests/soak.rs): steady mixed traffic through a lab for
//! minutes or hours while the agent is sampled every 10 s, then judged
//! ([`verdict`]) and drawn ([`plot`]).
//!
//! `WEFT_SOAK_MINUTES` sets the run's length (default 3, as CI runs it;
//! fractions allowed), `WEFT_SOAK_OUT` where the samples, summary and plot
//! go (default `target/soak/` of the workspace). `cargo xtask soak
//! --minutes N` sets both.

pub mod clients;
pub mod dns;
pub mod http1;
pub mod pace;
pub mod paths;
pub mod peers;
pub mod plot;
pub mod sample;
pub mod tally;
pub mod verdict;

use std::{path::PathBuf, time::Duration};

/// The run's length and where its output goes.
pub struct Settings {
    pub duration: Duration,
    pub out_dir: PathBuf,
}

/// The run's length when `WEFT_SOAK_MINUTES` is not set: CI's soak.
const DEFAULT_MINUTES: f64 = 3.0;

impl Settings {
    pub fn from_env() -> Self {
        let minutes = match std::env::var("WEFT_SOAK_MINUTES") {
            Ok(text) => text
                .parse::<f64>()
                .ok()
                .filter(|m| m.is_finite() && *m > 0.0)
                .unwrap_or_else(|| panic!("WEFT_SOAK_MINUTES={text:?}: minutes above zero")),
            Err(_) => DEFAULT_MINUTES,
        };
        let out_dir = std::env::var_os("WEFT_SOAK_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/soak"))
            });
        Self {
            duration: Duration::from_secs_f64(minutes * 60.0),
            out_dir,
        }
    }
}
