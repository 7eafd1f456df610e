//! Empty on the host: this crate exists as a build-dependency of the agent so
//! that cargo rebuilds the agent when the kernel programs change. The
//! programs themselves are the `weft-probes` binary, built for the BPF
//! target by `agent/build.rs`.
#![no_std]
