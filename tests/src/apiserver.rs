//! A stand-in for the Kubernetes API server, for root tests that run the
//! agent with Kubernetes identity: it answers each LIST with a response
//! given by the test (API server JSON, as recorded from a real cluster)
//! and keeps each WATCH open, idle until the test sends an event on it
//! ([`RecordedApi::send`]), as the API server streams them. Real HTTP/1.1
//! on loopback, so the agent's real kube-rs client talks to it.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The open watches, by request path.
type Watches = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

pub struct RecordedApi {
    pub addr: SocketAddr,
    watches: Watches,
}

impl RecordedApi {
    /// Serves `lists` (request path -> LIST response body). A path not in
    /// it gets 404, as an API server answers for an unknown resource.
    pub fn start(lists: HashMap<&'static str, String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind API server");
        let addr = listener.local_addr().expect("API server address");
        let lists = Arc::new(lists);
        let watches = Watches::default();
        let open = Arc::clone(&watches);
        // Detached: it lives as long as the test process; each connection
        // ends when the agent (its only client) goes away.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let lists = Arc::clone(&lists);
                let open = Arc::clone(&open);
                std::thread::spawn(move || serve(stream, &lists, &open));
            }
        });
        Self { addr, watches }
    }

    /// Waits (up to `timeout`) until the agent watches `path`.
    pub fn wait_for_watch(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.watching(path) == 0 {
            assert!(
                Instant::now() < deadline,
                "no watch of {path} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn watching(&self, path: &str) -> usize {
        self.watches
            .lock()
            .expect("watches")
            .get(path)
            .map_or(0, Vec::len)
    }

    /// Sends one watch event (`ADDED`, `MODIFIED` or `DELETED` with the
    /// object) on every open watch of `path`, as one chunk; returns on how
    /// many watches it went out.
    pub fn send(&self, path: &str, event_type: &str, object: &serde_json::Value) -> usize {
        let line = serde_json::json!({"type": event_type, "object": object}).to_string() + "\n";
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        let mut watches = self.watches.lock().expect("watches");
        let Some(open) = watches.get_mut(path) else {
            return 0;
        };
        // A watch the agent closed fails to take it and is forgotten.
        open.retain_mut(|s| {
            s.write_all(chunk.as_bytes())
                .and_then(|()| s.flush())
                .is_ok()
        });
        open.len()
    }

    /// A kubeconfig file in `dir` that points the agent at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig_for(&dir.join("kubeconfig"), &self.addr.to_string())
    }

    /// A kubeconfig file in `dir` like [`RecordedApi::kubeconfig`] but
    /// pointing at an address where nothing listens: the API server cannot
    /// be reached.
    pub fn unreachable_kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig_for(&dir.join("unreachable-kubeconfig"), "127.0.0.1:1")
    }
}

/// Writes a kubeconfig at `path` for the API server at `server`.
fn kubeconfig_for(path: &Path, server: &str) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: recorded\n  cluster:\n    server: http://{server}\n\
         contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: weft\n\
         current-context: recorded\n\
         users:\n- name: weft\n  user:\n    token: recorded-token\n"
    );
    std::fs::write(path, text).expect("write kubeconfig");
    path.to_owned()
}

/// An empty LIST response of `kind` (e.g. `ServiceList` in `v1`).
pub fn empty_list(kind: &str, api_version: &str) -> String {
    serde_json::json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": "1"},
        "items": [],
    })
    .to_string()
}

fn serve(mut stream: TcpStream, lists: &HashMap<&'static str, String>, watches: &Watches) {
    let Some(target) = read_request_target(&mut stream) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let head = |status: &str, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    match lists.get(path) {
        None => {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
            let text = head(
                "404 Not Found",
                &format!("Content-Length: {}\r\n", body.len()),
            );
            let _ = stream.write_all(format!("{text}{body}").as_bytes());
        }
        Some(_) if watch => {
            let text = head("200 OK", "Transfer-Encoding: chunked\r\n");
            if stream.write_all(text.as_bytes()).is_ok() {
                if let Ok(writer) = stream.try_clone() {
                    let mut open = watches.lock().expect("watches");
                    open.entry(path.to_owned()).or_default().push(writer);
                }
                // Open until the client goes away.
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                let mut open = watches.lock().expect("watches");
                if let Some(list) = open.get_mut(path) {
                    let me = stream.peer_addr().ok();
                    list.retain(|s| s.peer_addr().ok() != me);
                }
            }
        }
        Some(body) => {
            let text = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
            let _ = stream.write_all(format!("{text}{body}").as_bytes());
        }
    }
}

/// The request line's target (`/api/v1/pods?...`), after reading the head.
fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Some(text.split("\r\n").next()?.split(' ').nth(1)?.to_owned())
}
