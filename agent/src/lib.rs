//! weft: an eBPF-based, sidecarless observability agent.
//!
//! The daemon (`weft agent`) loads the kernel programs of `weft-ebpf`, reads
//! their events, keeps a table of live connections and UDP flows, and serves
//! what it saw as Prometheus metrics and as flow records over a gRPC API on a
//! unix socket. The same binary is the client of that API (`weft flows`,
//! `weft status`). See ARCHITECTURE.md for the data flow.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod enrich;
pub mod events;
pub mod export;
pub mod flow;
// The fuzz targets' bodies: tests and the fuzz crate only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod l7;
pub mod loader;
pub mod status;
pub mod steer;
pub mod trace;
