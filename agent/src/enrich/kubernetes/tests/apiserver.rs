//! A stand-in for the Kubernetes API server: answers LIST and WATCH
//! requests with responses kept as fixtures, over real HTTP/1.1 on
//! loopback, so the real kube-rs client and watcher run against it.
//!
//! Each resource (request path) has a script: the n-th LIST gets the n-th
//! list response (the last one once they run out), the n-th WATCH gets the
//! n-th watch script, and watches beyond the scripts stay open with no
//! events, as an idle watch does. Every request is logged.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinSet,
};

/// One LIST response, optionally held back until the test releases it.
pub struct List {
    pub body: &'static str,
    pub gate: Option<Arc<Notify>>,
}

/// One WATCH response: events (JSON lines), then the server ends the
/// stream (`close`) or keeps it open.
pub struct Watch {
    pub events: &'static str,
    pub close: bool,
}

#[derive(Default)]
pub struct Script {
    pub lists: Vec<List>,
    pub watches: Vec<Watch>,
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub authorization: String,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    counts: HashMap<(String, bool), usize>,
    log: Vec<Request>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: JoinSet<()>,
}

impl ApiServer {
    pub async fn start(scripts: HashMap<String, Script>) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), scripts).await
    }

    /// On a given address (to come back where an earlier one was).
    pub async fn start_at(addr: SocketAddr, scripts: HashMap<String, Script>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            scripts,
            ..State::default()
        }));
        let mut tasks = JoinSet::new();
        let st = state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve(stream, st.clone()));
            }
        });
        Self { addr, state, tasks }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// A kubeconfig file that points kube-rs at this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: recorded\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: weft\n\
             current-context: recorded\n\
             users:\n- name: weft\n  user:\n    token: recorded-token\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    enum Reply {
        List(&'static str, Option<Arc<Notify>>),
        Watch(&'static str, bool),
        NotFound,
    }
    let reply = {
        let mut st = state.lock().unwrap();
        st.log.push(request.clone());
        let watch = request.is_watch();
        let n = {
            let c = st.counts.entry((request.path.clone(), watch)).or_default();
            *c += 1;
            *c - 1
        };
        match st.scripts.get(&request.path) {
            None => Reply::NotFound,
            Some(script) if watch => match script.watches.get(n) {
                Some(w) => Reply::Watch(w.events, w.close),
                None => Reply::Watch("", false),
            },
            Some(script) => match script.lists.get(n).or(script.lists.last()) {
                Some(l) => Reply::List(l.body, l.gate.clone()),
                None => Reply::NotFound,
            },
        }
    };
    let head = |status: &str, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    match reply {
        Reply::NotFound => {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
            let text = head(
                "404 Not Found",
                &format!("Content-Length: {}\r\n", body.len()),
            );
            let _ = stream.write_all(format!("{text}{body}").as_bytes()).await;
        }
        Reply::List(body, gate) => {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            let text = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
            let _ = stream.write_all(format!("{text}{body}").as_bytes()).await;
        }
        Reply::Watch(events, close) => {
            let mut out = head("200 OK", "Transfer-Encoding: chunked\r\n");
            for line in events.lines().filter(|l| !l.trim().is_empty()) {
                let chunk = format!("{line}\n");
                out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            if stream.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            if close {
                let _ = stream.write_all(b"0\r\n\r\n").await;
            } else {
                // An idle watch: open until the client goes away.
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let header = |name: &str| {
        text.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    Some(Request {
        path: path.to_owned(),
        query,
        accept: header("accept"),
        authorization: header("authorization"),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
