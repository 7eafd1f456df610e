//! A real OTLP trace receiver (tests/peers/otlp_receiver.py, built from the
//! official OpenTelemetry protobuf definitions) listening on loopback for
//! both OTLP/gRPC and OTLP/HTTP, and the spans it received.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::{
    peer::{Peer, TempDir},
    wait_for,
};

/// The Python with `opentelemetry-proto` and grpcio.
pub fn python() -> String {
    crate::venv_python("WEFT_OTLP_PYTHON", "otlp-venv", "the OTLP receiver")
}

pub struct Receiver {
    peer: Peer,
    pub grpc_port: u16,
    pub http_port: u16,
    out: String,
    _dir: TempDir,
}

/// OTLP span kinds.
pub const KIND_SERVER: u64 = 2;
pub const KIND_CLIENT: u64 = 3;
/// OTLP status code of an error.
pub const STATUS_ERROR: u64 = 2;

impl Receiver {
    pub fn start() -> Self {
        let dir = TempDir::new("otlp");
        let out = dir.join("spans.jsonl");
        let (grpc_port, http_port) = (free_port(), free_port());
        let peer = listen(grpc_port, http_port, &out);
        Self {
            peer,
            grpc_port,
            http_port,
            out,
            _dir: dir,
        }
    }

    /// Starts a stopped receiver again on the same ports; what it received
    /// before is forgotten.
    pub fn restart(&mut self) {
        self.peer.stop();
        self.peer = listen(self.grpc_port, self.http_port, &self.out);
    }

    /// The base URL of the collector for `protocol` (`grpc` or
    /// `http/protobuf`).
    pub fn endpoint(&self, protocol: &str) -> String {
        let port = if protocol == "grpc" {
            self.grpc_port
        } else {
            self.http_port
        };
        format!("http://127.0.0.1:{port}")
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn stop(&mut self) {
        self.peer.stop();
    }
}

/// Spans grouped by trace id.
pub fn traces(spans: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in spans {
        let id = s["trace_id"].as_str().unwrap_or_default().to_owned();
        out.entry(id).or_default().push(s.clone());
    }
    out
}

/// The receiver on `grpc_port` and `http_port`, once both accept.
fn listen(grpc_port: u16, http_port: u16, out: &str) -> Peer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/otlp_receiver.py");
    let python = python();
    let (g, h) = (grpc_port.to_string(), http_port.to_string());
    let args = [python.as_str(), script, "127.0.0.1", &g, &h, out];
    let mut peer = Peer::start_here("otlp receiver", &args);
    for port in [grpc_port, http_port] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(
            "the OTLP receiver to listen",
            Duration::from_secs(20),
            || {
                peer.assert_running();
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .ok()
                    .map(|_| ())
            },
        );
    }
    peer
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}
