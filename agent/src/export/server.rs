//! The Prometheus endpoint, and the health endpoints for probes on the same
//! listener: `/healthz` (the process serves HTTP) and `/readyz` (the
//! programs are attached and the flow table has read the kernel's tables
//! once, so the metrics mean something).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// OpenMetrics, for scrapers that ask for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format, for everyone else (curl, promtool).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for metrics: {source}; is another agent running? \
     (use --metrics-addr to choose another address)"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The metrics socket, bound but not listening yet.
pub struct Bound {
    socket: tokio::net::TcpSocket,
    /// The address bound (its port chosen by the kernel when 0 was asked).
    pub addr: SocketAddr,
}

/// Binds now, so that a taken port is reported at start-up before any
/// program is loaded. The socket listens only once the programs are
/// attached ([`Bound::listen`]): a connection made while they load is
/// refused, as by an agent not started yet, rather than accepted unseen
/// and then taken for somebody else's traffic.
pub fn bind(addr: SocketAddr) -> Result<Bound, BindError> {
    let err = |source| BindError { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std's listeners do: a restart binds while old connections linger.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let bound = socket.local_addr().map_err(err)?;
    Ok(Bound {
        socket,
        addr: bound,
    })
}

impl Bound {
    pub fn listen(self) -> Result<tokio::net::TcpListener, BindError> {
        let addr = self.addr;
        self.socket
            .listen(1024)
            .map_err(|source| BindError { addr, source })
    }
}

/// Paths of the health endpoints (the metrics path may not take them).
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

/// Whether the agent is ready: set once by the flow table after its first
/// poll (the programs are attached before any task starts). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    path: String,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(&path, metrics, readiness))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn router(path: &str, metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    let health = Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .with_state(readiness);
    Router::new()
        .route(path, get(render))
        .with_state(metrics)
        .merge(health)
}

/// Liveness: answering at all is the proof.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness, with a one-line reason when not ready.
async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the flow table has not completed its first poll of the kernel tables\n",
        )
    }
}

async fn render(
    State(metrics): State<Arc<Metrics>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match metrics.encode() {
        Ok(body) if wants_openmetrics => {
            ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
        }
        Ok(body) => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            super::text_format::to_prometheus_text(&body),
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves on a free loopback port; returns its address.
    async fn start(readiness: Readiness) -> (SocketAddr, CancellationToken) {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.addr;
        let listener = bound.listen().unwrap();
        let metrics = Metrics::new().0;
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            "/metrics".into(),
            Arc::new(metrics),
            readiness,
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    /// A minimal HTTP/1.1 GET: (status code, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn a_bound_port_is_taken_but_refuses_until_it_listens() {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.addr;
        // Taken: a second agent on the same address fails at start...
        let listener = bound.listen().unwrap();
        assert!(bind(addr).and_then(Bound::listen).is_err());
        drop(listener);
        // ... and before it listens, a connect is refused at once.
        let bound = bind(addr).unwrap();
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        drop(bound);
    }

    #[tokio::test]
    async fn healthz_always_and_readyz_once_ready() {
        let readiness = Readiness::default();
        let (addr, shutdown) = start(readiness.clone()).await;
        assert_eq!(get(addr, HEALTHZ).await, (200, "ok\n".into()));
        let (code, body) = get(addr, READYZ).await;
        assert_eq!(code, 503);
        assert!(body.starts_with("not ready: "), "{body}");
        assert_eq!(body.lines().count(), 1, "one line: {body}");
        readiness.set_ready();
        assert_eq!(get(addr, READYZ).await, (200, "ready\n".into()));
        assert_eq!(get(addr, HEALTHZ).await.0, 200);
        // The metrics page is still there, and nothing else is.
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("process_cpu_seconds_total"), "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);
        shutdown.cancel();
    }
}
