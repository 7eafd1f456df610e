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
mod first_bytes;
mod server;

pub use client::connect;
pub use server::{clear_stale, serve};

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

    #[error(
        "cannot give the flow API socket {path} the group {gid} (api_socket_group): {error}; \
         give the agent CAP_CHOWN or that group as a supplementary group, or leave \
         api_socket_group unset",
        path = .path.display())]
    Chown {
        path: PathBuf,
        gid: u32,
        error: io::Error,
    },

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
         the socket's group (the agent's api_socket_group, `ls -l {path}` shows it)",
        path = .path.display())]
    PermissionDenied { path: PathBuf, error: io::Error },

    #[error("cannot talk to the weft agent at {path}: {error}", path = .path.display())]
    Connect {
        path: PathBuf,
        error: tonic::transport::Error,
    },
}

/// The server and the client together, over a real socket.
#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use super::proto::{FlowFilter, GetFlowsRequest, GetStatusRequest};
    use super::*;
    use crate::flow::filter::test_support::tcp_record;
    use crate::flow::record::FlowRecord;
    use crate::flow::store::FlowStore;
    use crate::status::StatusReport;

    const WAIT: Duration = Duration::from_secs(10);

    struct Agent {
        store: Arc<FlowStore>,
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), ApiError>>,
    }

    /// Starts a server on `socket` and waits until it answers.
    async fn start(socket: &Path) -> Agent {
        start_with_group(socket, None).await
    }

    /// [`start`], the socket given `group`.
    async fn start_with_group(socket: &Path, group: Option<u32>) -> Agent {
        let store = Arc::new(FlowStore::new(100));
        let report = StatusReport {
            version: "test".into(),
            pid: 7,
            ..Default::default()
        };
        let (_tx, status) = watch::channel(report);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (socket, store, shutdown) = (socket.to_owned(), store.clone(), shutdown.clone());
            async move {
                serve(
                    &socket,
                    group,
                    store,
                    status,
                    watch::channel(Vec::new()).1,
                    watch::channel(Vec::new()).1,
                    shutdown,
                )
                .await
            }
        });
        tokio::time::timeout(WAIT, async {
            while connect(socket).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the server did not come up");
        Agent {
            store,
            shutdown,
            task,
        }
    }

    fn record(port: u16) -> FlowRecord {
        let mut r = tcp_record();
        r.source.port = port;
        r
    }

    fn port_of(json: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["source"]["port"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn serves_stored_and_live_flows_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/weft/weft.sock");
        let agent = start(&socket).await;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);

        for port in 1..=3 {
            agent.store.push(record(port));
        }
        let mut client = connect(&socket).await.unwrap();

        // Stored, filtered, newest N.
        let request = GetFlowsRequest {
            filter: Some(FlowFilter {
                port: vec![1, 3],
                ..Default::default()
            }),
            last: 1,
            ..Default::default()
        };
        let mut stream = client.get_flows(request).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(port_of(&first.json), 3);
        assert!(stream.message().await.unwrap().is_none(), "not following");

        // Following: the backlog, then live records that match.
        let request = GetFlowsRequest {
            follow: true,
            filter: Some(FlowFilter {
                port: vec![2, 5],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut stream = client.get_flows(request).await.unwrap().into_inner();
        let backlog = stream.message().await.unwrap().unwrap();
        assert_eq!(port_of(&backlog.json), 2);
        agent.store.push(record(4));
        agent.store.push(record(5));
        let live = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(port_of(&live.json), 5);

        let status = client.get_status(GetStatusRequest {}).await.unwrap();
        let report: StatusReport = serde_json::from_str(&status.into_inner().json).unwrap();
        assert_eq!((report.version.as_str(), report.pid), ("test", 7));

        // Shutdown ends the follower's stream and removes the socket.
        agent.shutdown.cancel();
        let end = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
        tokio::time::timeout(WAIT, agent.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn the_socket_gets_its_group_before_it_appears() {
        use std::os::unix::fs::MetadataExt;
        // Root may give any gid; anyone else only a group of their own.
        // SAFETY: no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let gid = if euid == 0 { 4242 } else { egid };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("weft.sock");
        let agent = start_with_group(&socket, Some(gid)).await;
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert_eq!((meta.gid(), meta.uid()), (gid, euid));
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        agent.shutdown.cancel();
        agent.task.await.unwrap().unwrap();

        if euid != 0 {
            // A group the user is not in: refused, named, nothing left.
            let err = serve(
                &socket,
                Some(0),
                Arc::new(FlowStore::new(1)),
                watch::channel(StatusReport::default()).1,
                watch::channel(Vec::new()).1,
                watch::channel(Vec::new()).1,
                CancellationToken::new(),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, ApiError::Chown { gid: 0, .. }), "{err:?}");
            assert!(err.to_string().contains("api_socket_group"), "{err}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn bad_filter_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("weft.sock");
        let agent = start(&socket).await;
        let mut client = connect(&socket).await.unwrap();
        let request = GetFlowsRequest {
            filter: Some(FlowFilter {
                protocol: vec!["htp".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = client.get_flows(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("invalid --protocol \"htp\""));
        agent.shutdown.cancel();
    }

    #[tokio::test]
    async fn refuses_a_socket_in_use_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("weft.sock");
        let agent = start(&socket).await;

        let (_tx, status) = watch::channel(StatusReport::default());
        let store = Arc::new(FlowStore::new(1));
        let err = serve(
            &socket,
            None,
            store.clone(),
            status.clone(),
            watch::channel(Vec::new()).1,
            watch::channel(Vec::new()).1,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::AlreadyServing { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!(
            "another weft agent is already serving on {}",
            socket.display()
        )));
        agent.shutdown.cancel();
        agent.task.await.unwrap().unwrap();

        // A socket file nobody listens on, as a killed agent leaves it.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let agent = start(&socket).await;
        agent.shutdown.cancel();
        agent.task.await.unwrap().unwrap();

        std::fs::write(&socket, "not a socket").unwrap();
        let err = serve(
            &socket,
            None,
            store,
            status,
            watch::channel(Vec::new()).1,
            watch::channel(Vec::new()).1,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
        assert!(socket.exists(), "a regular file is never removed");
    }
}
