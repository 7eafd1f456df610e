//! The agent's side of the flow API: the socket's life cycle and the
//! RPCs.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ApiError;
use super::first_bytes::{FIRST_BYTES_WITHIN, SpeaksFirst};
use super::proto::flow_api_server::{FlowApi, FlowApiServer};
use super::proto::{
    self, Flow, GetFlowsRequest, GetPoliciesRequest, GetServicesRequest, GetStatusRequest,
    GetTopRequest,
};
use crate::flow::filter::FlowFilter;
use crate::flow::record::FlowRecord;
use crate::flow::store::{FlowStore, Range};
use crate::flow::top::{self, GroupBy};
use crate::status::StatusReport;
use crate::steer::{policy::PolicyReport, report::ServiceReport};

/// Messages buffered between a stream's producer task and the connection.
/// Small: the follower's real buffer is the store's broadcast channel; this
/// only smooths the hand-off.
const RESPONSE_BUFFER: usize = 128;

/// Serves the flow API on `socket` until `shutdown` is cancelled, then lets
/// open streams end and removes the socket file.
///
/// The socket's directory is created (0755) if needed. A socket file left by
/// an agent that died is replaced; one that an agent still answers on is an
/// error. The socket is 0660: root and the socket's group may read flows;
/// `group` is that group's gid (unset: the agent's own group, root's).
pub async fn serve(
    socket: &Path,
    group: Option<u32>,
    store: Arc<FlowStore>,
    status: watch::Receiver<StatusReport>,
    services: watch::Receiver<Vec<ServiceReport>>,
    policies: watch::Receiver<Vec<PolicyReport>>,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let (listener, socket_file) = bind(socket, group).await?;
    let service = FlowService {
        store,
        status,
        services,
        policies,
        shutdown: shutdown.clone(),
    };
    let served = tonic::transport::Server::builder()
        .add_service(FlowApiServer::new(service))
        .serve_with_incoming_shutdown(accepted(listener), shutdown.cancelled())
        .await;
    drop(socket_file);
    served.map_err(|error| ApiError::Serve {
        path: socket.to_path_buf(),
        error,
    })
}

/// How long the API stops accepting after an accept failed: out of file
/// descriptors (EMFILE), retrying at once would spin a core and starve the
/// agent's other work until connections close.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The accepted connections, each closed unless it speaks within
/// [`FIRST_BYTES_WITHIN`]; an accept that fails is retried after
/// [`ACCEPT_PAUSE`], and logged once until one succeeds again.
fn accepted(listener: UnixListener) -> impl futures::Stream<Item = io::Result<SpeaksFirst>> {
    futures::stream::unfold((listener, false), |(listener, mut failing)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if failing {
                        log::info!("the flow API accepts connections again");
                    }
                    let stream = SpeaksFirst::new(stream, FIRST_BYTES_WITHIN);
                    return Some((Ok(stream), (listener, false)));
                }
                Err(error) => {
                    if !failing {
                        log::warn!(
                            "the flow API cannot accept connections ({error}); retrying every {}ms",
                            ACCEPT_PAUSE.as_millis()
                        );
                        failing = true;
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    })
}

/// Prepares the directory, clears a stale socket, and binds.
async fn bind(socket: &Path, group: Option<u32>) -> Result<(UnixListener, SocketFile), ApiError> {
    let path = || socket.to_path_buf();
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|error| ApiError::CreateDir {
                path: dir.to_path_buf(),
                error,
            })?;
    }
    clear_stale(socket).await?;

    // Bind under a temporary name, set the mode and group, then rename into
    // place: the socket never appears at its public path with the umask's
    // mode or the wrong group.
    let tmp = temp_path(socket);
    let bind_error = |error| ApiError::Bind {
        path: path(),
        error,
    };
    remove_if_exists(&tmp).map_err(bind_error)?;
    let listener = UnixListener::bind(&tmp).map_err(bind_error)?;
    if let Some(gid) = group
        && let Err(error) = std::os::unix::fs::chown(&tmp, None, Some(gid))
    {
        let _ = fs::remove_file(&tmp);
        return Err(ApiError::Chown {
            path: path(),
            gid,
            error,
        });
    }
    let placed = fs::set_permissions(&tmp, Permissions::from_mode(0o660))
        .and_then(|()| fs::rename(&tmp, socket))
        .and_then(|()| fs::symlink_metadata(socket));
    match placed {
        Ok(meta) => Ok((
            listener,
            SocketFile {
                path: path(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        )),
        Err(error) => {
            let _ = fs::remove_file(&tmp);
            Err(bind_error(error))
        }
    }
}

/// Removes a socket file that no agent answers on; refuses to touch
/// anything else. The agent calls it at start too, before it loads or
/// mounts anything: pointed at another agent's socket, it stops at once.
pub async fn clear_stale(socket: &Path) -> Result<(), ApiError> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(ApiError::Probe {
                path: socket.to_path_buf(),
                error,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    match UnixStream::connect(socket).await {
        Ok(_) => Err(ApiError::AlreadyServing {
            path: socket.to_path_buf(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => remove_if_exists(socket)
            .map_err(|error| ApiError::Bind {
                path: socket.to_path_buf(),
                error,
            }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ApiError::Probe {
            path: socket.to_path_buf(),
            error,
        }),
    }
}

fn temp_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The bound socket file, removed when dropped, unless another agent has
/// replaced it meanwhile (then it is that agent's, not ours).
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours && let Err(error) = fs::remove_file(&self.path) {
            log::warn!(
                "cannot remove the API socket {}: {error}",
                self.path.display()
            );
        }
    }
}

/// The windows `weft top` may ask for.
const TOP_WINDOWS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// How far before a `weft top` window its connections' previous records
/// are looked for: past the flow table's longest interval between a
/// connection's records (`update` every 10 s, by default).
const TOP_LOOKBACK: Duration = Duration::from_secs(60);

/// The RPC handlers.
struct FlowService {
    store: Arc<FlowStore>,
    status: watch::Receiver<StatusReport>,
    services: watch::Receiver<Vec<ServiceReport>>,
    policies: watch::Receiver<Vec<PolicyReport>>,
    shutdown: CancellationToken,
}

impl FlowService {
    /// The request's filter, checked: a bad value, or a service the agent
    /// does not steer, is an error, never an empty result.
    fn filter(&self, filter: Option<&proto::FlowFilter>) -> Result<FlowFilter, Status> {
        let filter = match filter {
            Some(filter) => FlowFilter::try_from(filter)?,
            None => FlowFilter::default(),
        };
        let unknown = filter
            .services()
            .into_iter()
            .find(|name| !self.services.borrow().iter().any(|s| &s.name == *name));
        if let Some(name) = unknown {
            return Err(Status::invalid_argument(format!(
                "invalid service {name:?}: the agent steers no service of that name (see `weft services`)"
            )));
        }
        Ok(filter)
    }
}

#[tonic::async_trait]
impl FlowApi for FlowService {
    type GetFlowsStream = ReceiverStream<Result<Flow, Status>>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        let filter = self.filter(request.filter.as_ref())?;
        let range = range(
            &request,
            SystemTime::now(),
            Instant::now(),
            self.store.before_first(),
        )?;

        let (backlog, live) = if request.follow {
            let (backlog, live) = self.store.query_and_subscribe(&filter, range);
            (backlog, Some(live))
        } else {
            (self.store.query(&filter, range), None)
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let stream = FlowStream {
            tx,
            filter,
            store: Arc::clone(&self.store),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(backlog, live));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_top(
        &self,
        request: Request<GetTopRequest>,
    ) -> Result<Response<proto::Top>, Status> {
        let request = request.into_inner();
        let filter = self.filter(request.filter.as_ref())?;
        let by = GroupBy::parse(&request.by).map_err(Status::invalid_argument)?;
        let window = Duration::from_millis(request.window_ms);
        if !(TOP_WINDOWS.contains(&window)) {
            return Err(Status::invalid_argument(format!(
                "invalid --window {}: expected from 1s to 1h",
                humantime::format_duration(window)
            )));
        }
        let now = Instant::now();
        // A clock younger than the window: everything there is.
        let window_from = now.checked_sub(window).unwrap_or(now);
        let lookback_from = window_from.checked_sub(TOP_LOOKBACK).unwrap_or(window_from);
        let found = self.store.window(&filter, lookback_from, window_from);
        let covered = now.saturating_duration_since(found.covered_from);
        let snapshot = top::snapshot(
            &found.observed,
            by,
            window.as_secs_f64(),
            covered.as_secs_f64(),
            found.complete,
        );
        let json = serde_json::to_string(&snapshot)
            .map_err(|e| Status::internal(format!("cannot encode the top view: {e}")))?;
        Ok(Response::new(proto::Top { json }))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        let report = self.status.borrow().clone();
        let json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("cannot encode the status report: {e}")))?;
        Ok(Response::new(proto::Status { json }))
    }

    async fn get_services(
        &self,
        _request: Request<GetServicesRequest>,
    ) -> Result<Response<proto::Services>, Status> {
        let report = self.services.borrow().clone();
        let json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("cannot encode the services: {e}")))?;
        Ok(Response::new(proto::Services { json }))
    }

    async fn get_policies(
        &self,
        _request: Request<GetPoliciesRequest>,
    ) -> Result<Response<proto::Policies>, Status> {
        let report = self.policies.borrow().clone();
        let json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("cannot encode the policies: {e}")))?;
        Ok(Response::new(proto::Policies { json }))
    }
}

/// The stored records a request asks for, besides its filter; a request
/// whose bounds contradict each other is refused, naming the flags.
fn range(
    request: &GetFlowsRequest,
    now: SystemTime,
    now_mono: Instant,
    earliest: Instant,
) -> Result<Range, Status> {
    let count = |n: u64| (n != 0).then(|| usize::try_from(n).unwrap_or(usize::MAX));
    if request.first != 0 && request.last != 0 {
        return Err(Status::invalid_argument(
            "--first and --last cannot be used together",
        ));
    }
    if request.follow && (request.first != 0 || request.until_unix_nanos != 0) {
        return Err(Status::invalid_argument(
            "--first and --until select stored flows only: they cannot be used with --follow",
        ));
    }
    Ok(Range {
        since: since_instant(request.since_unix_nanos, now, now_mono),
        until: until_instant(request.until_unix_nanos, now, now_mono, earliest),
        last: count(request.last),
        first: count(request.first),
    })
}

/// Maps the request's wall-clock `until` onto the store's monotonic
/// stamps, by its age now. `None`: no upper bound (none given, or in the
/// future). A time before `earliest` (before anything stored, perhaps
/// before the monotonic clock began) is `earliest`: an empty selection.
fn until_instant(
    unix_nanos: u64,
    now: SystemTime,
    now_mono: Instant,
    earliest: Instant,
) -> Option<Instant> {
    if unix_nanos == 0 {
        return None;
    }
    let until = UNIX_EPOCH + Duration::from_nanos(unix_nanos);
    let age = now.duration_since(until).ok()?;
    Some(
        now_mono
            .checked_sub(age)
            .map_or(earliest, |t| t.max(earliest)),
    )
}

/// Maps the request's wall-clock `since` onto the store's monotonic stamps,
/// by its age now. `None`: no lower bound.
fn since_instant(unix_nanos: u64, now: SystemTime, now_mono: Instant) -> Option<Instant> {
    if unix_nanos == 0 {
        return None;
    }
    let since = UNIX_EPOCH + Duration::from_nanos(unix_nanos);
    match now.duration_since(since) {
        // Older than the monotonic clock can express: older than anything
        // stored, so no bound.
        Ok(age) => now_mono.checked_sub(age),
        // In the future: nothing stored qualifies yet.
        Err(_) => Some(now_mono),
    }
}

/// One GetFlows response being produced: the stored records, then the live
/// ones when following. Ends when the client goes away (the receiver is
/// dropped) or the agent shuts down, so that graceful shutdown does not wait
/// on followers.
struct FlowStream {
    tx: mpsc::Sender<Result<Flow, Status>>,
    filter: FlowFilter,
    store: Arc<FlowStore>,
    shutdown: CancellationToken,
}

impl FlowStream {
    async fn run(
        self,
        backlog: Vec<Arc<FlowRecord>>,
        live: Option<broadcast::Receiver<Arc<FlowRecord>>>,
    ) {
        for record in backlog {
            if !self.send_record(&record).await {
                return;
            }
        }
        let Some(mut live) = live else { return };
        loop {
            let next = tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.tx.closed() => return,
                next = live.recv() => next,
            };
            match next {
                Ok(record) => {
                    if self.filter.matches(&record) && !self.send_record(&record).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.store.record_follower_lost(missed);
                    log::warn!(
                        "a `weft flows -f` client fell behind; skipped {missed} live records"
                    );
                    let notice = Flow {
                        json: String::new(),
                        lost: missed,
                    };
                    if !self.send(Ok(notice)).await {
                        return;
                    }
                }
                // The store is gone: the agent is stopping.
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Sends one record; `false` when the stream is over.
    async fn send_record(&self, record: &FlowRecord) -> bool {
        match serde_json::to_string(record) {
            Ok(json) => self.send(Ok(Flow { json, lost: 0 })).await,
            Err(e) => {
                let status = Status::internal(format!("cannot encode a flow record: {e}"));
                let _ = self.send(Err(status)).await;
                false
            }
        }
    }

    /// Waits for room in the response buffer, unless the agent is stopping;
    /// `false` when the stream is over.
    async fn send(&self, item: Result<Flow, Status>) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.tx.send(item) => sent.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_maps_wall_time_to_monotonic_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mono = Instant::now();
        assert_eq!(since_instant(0, now, mono), None);
        let five_s_ago = 1_000_000_000_000_000 - 5_000_000_000;
        assert_eq!(
            since_instant(five_s_ago, now, mono),
            mono.checked_sub(Duration::from_secs(5))
        );
        let future = 2_000_000 * 1_000_000_000;
        assert_eq!(since_instant(future, now, mono), Some(mono));
    }

    #[test]
    fn until_maps_wall_time_and_refuses_contradictions() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mono = Instant::now();
        let earliest = mono.checked_sub(Duration::from_secs(60)).unwrap_or(mono);
        assert_eq!(until_instant(0, now, mono, earliest), None);
        let five_s_ago = 1_000_000_000_000_000 - 5_000_000_000;
        assert_eq!(
            until_instant(five_s_ago, now, mono, earliest),
            mono.checked_sub(Duration::from_secs(5))
        );
        assert_eq!(
            until_instant(2_000_000 * 1_000_000_000, now, mono, earliest),
            None
        );
        // Thirty years ago: before anything stored, an empty selection.
        let later = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(until_instant(1, later, mono, earliest), Some(earliest));

        let refused = |request: GetFlowsRequest| {
            let status = range(&request, now, mono, earliest).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            status.message().to_owned()
        };
        let both = refused(GetFlowsRequest {
            first: 3,
            last: 3,
            ..Default::default()
        });
        assert!(both.contains("--first and --last"), "{both}");
        let live = refused(GetFlowsRequest {
            follow: true,
            until_unix_nanos: five_s_ago,
            ..Default::default()
        });
        assert!(live.contains("--follow"), "{live}");
        let ok = range(
            &GetFlowsRequest {
                first: 2,
                ..Default::default()
            },
            now,
            mono,
            earliest,
        )
        .unwrap();
        assert_eq!((ok.first, ok.last), (Some(2), None));
    }
}
