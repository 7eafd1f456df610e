//! What the agent exports: Prometheus metrics and their HTTP endpoint.

pub mod l7_metrics;
pub mod labels;
pub mod metrics;
pub mod process;
pub mod server;
pub mod text_format;
