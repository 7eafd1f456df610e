//! The flow API: gRPC on a unix socket, between the agent ([`serve`]) and
//! the `weft flows` / `weft status` clients ([`connect`]).
//!
//! A unix socket rather than TCP: file permissions decide who may read
//! flows (they name processes and peers), and nothing listens on the
//! network. Records cross as JSON in the `weft flows -o json` schema; see
//! `proto/weft/v1/flows.proto`.

use std::io;
use std::path::PathBuf;

mod client;
mod server;

pub use client::connect;
pub use server::serve;

/// Where the agent serves and the CLI connects unless `--api-socket` says
/// otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";

/// The generated messages, client and server of `weft.v1`.
pub mod proto {
    tonic::include_proto!("weft.v1");
}

/// What can go wrong serving or reaching the flow API. Each message names
/// the socket and what to do, since the socket path is the usual culprit.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the directory {path} for the flow API socket: {error}", path = .path.display())]
    CreateDir { path: PathBuf, error: io::Error },

    #[error(
        "another weft agent is already serving on {path}; stop it, or give this one \
         another --api-socket", path = .path.display())]
    AlreadyServing { path: PathBuf },

    #[error(
        "{path} exists and is not a socket; remove it, or choose another --api-socket", path = .path.display())]
    NotASocket { path: PathBuf },

    #[error("cannot check whether an agent still serves on {path}: {error}", path = .path.display())]
    Probe { path: PathBuf, error: io::Error },

    #[error("cannot listen on {path}: {error}", path = .path.display())]
    Bind { path: PathBuf, error: io::Error },

    #[error("the flow API server on {path} failed: {error}", path = .path.display())]
    Serve {
        path: PathBuf,
        error: tonic::transport::Error,
    },

    #[error(
        "cannot reach the weft agent at {path}: {error}; is `weft agent` running? \
         (use --api-socket to point at another socket)", path = .path.display())]
    Unreachable { path: PathBuf, error: io::Error },

    #[error(
        "cannot reach the weft agent at {path}: {error}; run as root, or as a member of \
         the socket's group", path = .path.display())]
    PermissionDenied { path: PathBuf, error: io::Error },

    #[error("cannot talk to the weft agent at {path}: {error}", path = .path.display())]
    Connect {
        path: PathBuf,
        error: tonic::transport::Error,
    },
}
