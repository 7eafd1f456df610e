//! Connect-time load balancing (see `steer_main.rs`).

mod connect;
mod maps;
mod udp;
