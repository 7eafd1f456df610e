//! The Kubernetes API server down and back, with the real agent on the real
//! kernel and its real kube-rs client against the stand-in API server:
//!
//! - With the API server up, a pod's connections are named with its pod,
//!   namespace and workload.
//! - The API server goes away (its listener closed, every watch cut): the
//!   agent keeps running and recording, names the pod it knew from what it
//!   had listed, says in `weft status` and its log that the API server is
//!   unreachable, and a pod that started meanwhile is not named (the agent
//!   cannot know it).
//! - The API server comes back on the same address with a changed pod list
//!   (one pod more, at a newer resource version: the agent's watches are
//!   told `410 Gone` and it lists again): the new pod's connections are
//!   named within a bounded time, `weft status` is healthy again, and every
//!   connection of the run was recorded exactly once (one `open`, one
//!   `close`).

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    apiserver::RecordedApi,
    lab::{Lab, spawn_in},
    pods::{self, ContainerCgroup},
    require_root, servers, try_wait_for, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);
/// Connections per batch.
const CONNS: usize = 5;
/// How long the agent may take to see the API server again and list:
/// kube-rs backs off (0.8 s doubling, with jitter, to 30 s) while it is
/// gone, so the first try after its return may come a backoff step later.
const RECOVERY: Duration = Duration::from_secs(60);

/// The API server's LIST responses: `pods` listed at `pods_version`, and
/// no Services, EndpointSlices, ReplicaSets or Jobs.
fn lists(pods: &[Value], pods_version: &str) -> HashMap<&'static str, String> {
    pods::pods_only_lists(pods::pod_list_at(pods, pods_version))
}

/// An agent with Kubernetes identity from `api` (its configuration in
/// `dir`), once the pods are listed.
fn agent_of(api: &RecordedApi, dir: &std::path::Path) -> Agent {
    let config = pods::kubernetes_config(dir, "weft.yaml", &api.kubeconfig(dir), "");
    let agent = Agent::start(&["--config", &config.to_string_lossy()]);
    wait_for("the pods to be listed", WAIT, || {
        kubernetes(&agent).0.then_some(())
    });
    agent
}

/// The `kubernetes` row of `weft status`: (available, detail).
fn kubernetes(agent: &Agent) -> (bool, String) {
    let status = agent.status_json().expect("weft status -o json");
    let features = status["features"].as_array().expect("features");
    let row = features
        .iter()
        .find(|f| f["name"] == "kubernetes")
        .unwrap_or_else(|| panic!("no kubernetes row in {features:#?}"));
    (
        row["available"].as_bool().expect("available"),
        row["detail"].as_str().unwrap_or("").to_owned(),
    )
}

/// `conns` HTTP/1.1 requests to `server` from the lab's client namespace,
/// a connection each; returns the clients' ports.
fn requests(lab: &Lab, server: SocketAddr, conns: usize) -> Vec<u16> {
    spawn_in(&lab.client_ns, "pod-client", move || {
        (0..conns)
            .map(|_| {
                let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
                let port = c.local_addr().expect("client address").port();
                c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
                    .expect("client write");
                let mut got = String::new();
                c.read_to_string(&mut got).expect("client read");
                assert!(got.starts_with("HTTP/1."), "{got}");
                port
            })
            .collect()
    })
    .join()
    .expect("the clients")
}

/// `conns` connections to `server` from the lab's client namespace (see
/// [`requests`]) and their records: exactly one `open` and one `close`
/// each, once each has its close. Records made before the batch are left
/// out: a client port may come again (the server closes first, so the
/// client's end is free at once).
fn batch(agent: &Agent, lab: &Lab, server: SocketAddr, conns: usize) -> Vec<(Value, Value)> {
    let port = server.port().to_string();
    let ip = server.ip().to_string();
    let to_server = || -> Vec<Value> {
        agent
            .flows(&["--port", &port, "--all"])
            .into_iter()
            .filter(|r| r["type"] == "l4" && r["destination"]["ip"] == ip.as_str())
            .collect()
    };
    let before: HashSet<String> = to_server().iter().map(Value::to_string).collect();
    let ports = requests(lab, server, conns);
    let records = wait_for("every connection's close", WAIT, || {
        let records: Vec<Value> = to_server()
            .into_iter()
            .filter(|r| !before.contains(&r.to_string()))
            .filter(|r| ports.iter().any(|&p| r["source"]["port"] == p))
            .collect();
        let closed = records.iter().filter(|r| r["event"] == "close").count();
        (closed >= ports.len()).then_some(records)
    });
    ports
        .iter()
        .map(|&p| {
            let of = |event: &str| -> Vec<&Value> {
                records
                    .iter()
                    .filter(|r| r["event"] == event && r["source"]["port"] == p)
                    .collect()
            };
            let (opens, closes) = (of("open"), of("close"));
            assert!(
                opens.len() == 1 && closes.len() == 1,
                "client port {p}: {} opens, {} closes: {records:#?}",
                opens.len(),
                closes.len()
            );
            (opens[0].clone(), closes[0].clone())
        })
        .collect()
}

/// Asserts that every record names the server as pod `pod` of `namespace`
/// (`None`: as no pod).
fn assert_named(records: &[(Value, Value)], pod: Option<(&str, &str)>) {
    for (open, close) in records {
        for r in [open, close] {
            let server = &r["destination"];
            assert_eq!(server["process"], "python3", "{r:#}");
            match pod {
                Some((namespace, name)) => {
                    assert_eq!(server["pod"], name, "{r:#}");
                    assert_eq!(server["namespace"], namespace, "{r:#}");
                    assert_eq!(server["workload"], name, "a bare pod's workload: {r:#}");
                }
                None => assert!(server["pod"].is_null(), "{r:#}"),
            }
        }
    }
}

/// This test's directory, removed when dropped.
struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn api_server_down_and_back_keeps_names_and_learns_new_pods() {
    if !require_root("api_server_down_and_back_keeps_names_and_learns_new_pods") {
        return;
    }
    let (lab_a, lab_b) = (Lab::new(), Lab::new());
    let (cg_a, cg_b) = (ContainerCgroup::create(), ContainerCgroup::create());
    let web_a = pods::pod("team-a", "web-a", &lab_a.server_v4, &cg_a.id);
    let web_b = pods::pod("team-b", "web-b", &lab_b.server_v4, &cg_b.id);
    let api = RecordedApi::start(lists(std::slice::from_ref(&web_a), "100"));
    let dir = TestDir(std::env::temp_dir().join(format!("weft-kube-down-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("config dir");
    let agent = agent_of(&api, &dir.0);

    // Up: web-a's connections are named.
    let port = unique_port(66);
    let mut server_a = servers::python_http_in(&lab_a, port, Some(cg_a.path()));
    let records = batch(&agent, &lab_a, server_a.addr, CONNS);
    assert_named(&records, Some(("team-a", "web-a")));

    // Down: reported; flows go on, named from what was listed.
    api.stop();
    let down = wait_for("weft status to report the API server gone", WAIT, || {
        let (available, detail) = kubernetes(&agent);
        (!available).then_some(detail)
    });
    assert!(
        down.contains(&api.addr.to_string())
            && down.contains("names are from the last known state"),
        "{down}"
    );
    assert!(
        agent.log().contains("Kubernetes: cannot watch pods"),
        "{}",
        agent.log()
    );
    let records = batch(&agent, &lab_a, server_a.addr, CONNS);
    assert_named(&records, Some(("team-a", "web-a")));
    // web-b starts while the API server is away: the agent cannot know it.
    let mut server_b = servers::python_http_in(&lab_b, port, Some(cg_b.path()));
    let records = batch(&agent, &lab_b, server_b.addr, CONNS);
    assert_named(&records, None);
    let (available, _) = kubernetes(&agent);
    assert!(!available, "still down");

    // Back, on the same address, with web-b: listed again and named.
    let back = Instant::now();
    api.restart(lists(&[web_a, web_b], "200"));
    let named = try_wait_for(RECOVERY, || {
        let records = batch(&agent, &lab_b, server_b.addr, 1);
        (records[0].1["destination"]["pod"] == "web-b").then_some(())
    });
    assert!(
        named.is_some(),
        "web-b not named within {RECOVERY:?} of the API server's return; status: {:?}",
        kubernetes(&agent)
    );
    eprintln!(
        "the new pod was named {:?} after the API server came back",
        back.elapsed()
    );
    let records = batch(&agent, &lab_b, server_b.addr, CONNS);
    assert_named(&records, Some(("team-b", "web-b")));
    let records = batch(&agent, &lab_a, server_a.addr, CONNS);
    assert_named(&records, Some(("team-a", "web-a")));
    // Every kind watched again (each retries on its own backoff): the
    // detail then lists no kind's error.
    let healthy = try_wait_for(RECOVERY, || {
        let (available, detail) = kubernetes(&agent);
        (available && !detail.contains(';')).then_some(detail)
    });
    assert!(
        healthy.is_some_and(|detail| detail.contains(&api.addr.to_string())),
        "weft status: {:?}",
        kubernetes(&agent)
    );
    assert!(
        agent.log().contains("Kubernetes: watching pods again"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.losses(), Vec::<(String, String, u64)>::new());
    server_a.stop();
    server_b.stop();
    drop(agent);
    drop((server_a, server_b));
    drop((cg_a, cg_b));
}
