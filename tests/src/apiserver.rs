//! A stand-in for the Kubernetes API server, for root tests that run the
//! agent with Kubernetes identity: it answers each LIST with a response
//! given by the test (API server JSON, as recorded from a real cluster)
//! and keeps each WATCH open, idle until the test sends an event on it
//! ([`RecordedApi::send`]), as the API server streams them. Real HTTP/1.1
//! on loopback, so the agent's real kube-rs client talks to it.
//!
//! It can go away and come back on the same address ([`RecordedApi::stop`],
//! [`RecordedApi::restart`]), as an API server restarts: a WATCH from a
//! resource version older than the LIST's then gets `410 Gone`, as from an
//! API server whose watch cache no longer reaches back that far, and the
//! client lists again.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The open watches, by request path.
type Watches = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

/// LIST responses by request path.
type Lists = HashMap<&'static str, String>;

pub struct RecordedApi {
    pub addr: SocketAddr,
    watches: Watches,
    /// The server while it runs; `None` between [`RecordedApi::stop`] and
    /// [`RecordedApi::restart`].
    serving: Mutex<Option<Serving>>,
}

/// One run of the server: its accepting thread and every connection it
/// accepted (to close them all when it stops).
struct Serving {
    stop: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
    connections: Connections,
}

/// The connections being served, by the client's address.
type Connections = Arc<Mutex<HashMap<SocketAddr, TcpStream>>>;

impl RecordedApi {
    /// Serves `lists` (request path -> LIST response body). A path not in
    /// it gets 404, as an API server answers for an unknown resource.
    pub fn start(lists: Lists) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind API server");
        let addr = listener.local_addr().expect("API server address");
        let watches = Watches::default();
        let serving = Serving::run(listener, lists, Arc::clone(&watches));
        Self {
            addr,
            watches,
            serving: Mutex::new(Some(serving)),
        }
    }

    /// Goes away: stops listening (a connect is refused) and closes every
    /// connection, open watches included, as a stopped API server does.
    pub fn stop(&self) {
        let Some(serving) = self.serving.lock().expect("serving").take() else {
            return;
        };
        serving.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        serving
            .accepting
            .join()
            .expect("the API server's accepting thread");
        for (_, connection) in serving.connections.lock().expect("connections").drain() {
            let _ = connection.shutdown(Shutdown::Both);
        }
        self.watches.lock().expect("watches").clear();
    }

    /// Comes back on the same address, serving `lists`.
    pub fn restart(&self, lists: Lists) {
        self.stop();
        let listener = TcpListener::bind(self.addr).expect("bind the API server's address again");
        let serving = Serving::run(listener, lists, Arc::clone(&self.watches));
        *self.serving.lock().expect("serving") = Some(serving);
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
        let mut watches = self.watches.lock().expect("watches");
        let Some(open) = watches.get_mut(path) else {
            return 0;
        };
        // A watch the agent closed fails to take it and is forgotten.
        open.retain_mut(|s| write_chunk(s, &line).is_ok());
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

impl Drop for RecordedApi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Serving {
    /// Accepts on `listener` (a thread per connection) until stopped.
    fn run(listener: TcpListener, lists: Lists, watches: Watches) -> Self {
        let lists = Arc::new(lists);
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Connections::default();
        let (stopped, accepted) = (Arc::clone(&stop), Arc::clone(&connections));
        let accepting = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(clone)) = (stream.peer_addr(), stream.try_clone()) else {
                    continue;
                };
                accepted.lock().expect("connections").insert(client, clone);
                let (lists, open) = (Arc::clone(&lists), Arc::clone(&watches));
                let served = Arc::clone(&accepted);
                // Each connection ends when the agent (its only client)
                // goes away, or when the server stops.
                std::thread::spawn(move || {
                    serve(stream, &lists, &open);
                    served.lock().expect("connections").remove(&client);
                });
            }
        });
        Self {
            stop,
            accepting,
            connections,
        }
    }
}

/// Writes `text` as one chunk of a chunked response.
fn write_chunk(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())?;
    stream.flush()
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
        Some(body) if watch => {
            let text = head("200 OK", "Transfer-Encoding: chunked\r\n");
            if stream.write_all(text.as_bytes()).is_err() {
                return;
            }
            if let Some(gone) = expired(query, body) {
                // The event, then the end of the stream.
                let _ = write_chunk(&mut stream, &gone).and_then(|()| write_chunk(&mut stream, ""));
                return;
            }
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
        Some(body) => {
            let text = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
            let _ = stream.write_all(format!("{text}{body}").as_bytes());
        }
    }
}

/// The `410 Gone` watch event (a line) for a watch from a resource version
/// older than the LIST's (`list`), as an API server sends it when its watch
/// cache no longer holds that version; `None` for a watch it can serve.
fn expired(query: &str, list: &str) -> Option<String> {
    let wanted: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("resourceVersion="))?
        .parse()
        .ok()?;
    let listed: serde_json::Value = serde_json::from_str(list).ok()?;
    let current: u64 = listed["metadata"]["resourceVersion"]
        .as_str()?
        .parse()
        .ok()?;
    (wanted < current).then(|| {
        let status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {wanted} ({current})"),
            "reason": "Expired",
            "code": 410,
        });
        serde_json::json!({"type": "ERROR", "object": status}).to_string() + "\n"
    })
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
