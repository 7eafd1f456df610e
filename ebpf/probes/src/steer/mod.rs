//! Connect-time load balancing and L3/L4 policy (see `steer_main.rs`).

mod connect;
mod maps;
mod policy;
mod udp;
