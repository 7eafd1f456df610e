//! A busy node: pods listen on the same port each in their own network
//! namespace, and one of them uses the port the agent's own metrics
//! endpoint is bound to on all addresses. Every connection must name its
//! own server, and only the agent's own connections may be left out.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    apiserver::RecordedApi,
    lab::{Lab, spawn_in},
    pods::{self, ContainerCgroup},
    require_root, servers, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);
const CONNS: usize = 20;

/// A server thread named `name` in `ns` that listens on `addr` and answers
/// `conns` connections with `answer(request)`, one after the other. Returns
/// once it listens.
fn serve(
    ns: &str,
    name: &str,
    addr: SocketAddr,
    conns: usize,
    answer: fn(&mut TcpStream),
) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let handle = spawn_in(ns, name, move || {
        let listener = TcpListener::bind(addr).expect("bind server");
        ready_tx.send(()).expect("signal ready");
        for _ in 0..conns {
            let (mut conn, _) = listener.accept().expect("accept");
            answer(&mut conn);
        }
    });
    ready_rx.recv_timeout(WAIT).expect("server listening");
    handle
}

/// Reads 100 bytes and answers 50.
fn echo_answer(conn: &mut TcpStream) {
    let mut buf = [0u8; 100];
    conn.read_exact(&mut buf).expect("server read");
    conn.write_all(&[b'r'; 50]).expect("server write");
}

/// `conns` connections from a thread named `name` in `ns`, each sending
/// 100 bytes and reading the answer to its end.
fn clients(ns: &str, name: &str, server: SocketAddr, conns: usize) -> JoinHandle<()> {
    spawn_in(ns, name, move || {
        for _ in 0..conns {
            let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
            c.write_all(&[b's'; 100]).expect("client write");
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("client read");
            assert_eq!(got.len(), 50);
        }
    })
}

/// Every record on `port` once at least `closes` connections on it have
/// closed (their close records written).
fn records_after_closes(agent: &Agent, port: &str, closes: usize) -> Vec<Value> {
    wait_for(&format!("{closes} close records"), WAIT, || {
        let records = agent.flows(&["--port", port, "--all"]);
        let closed = records
            .iter()
            .filter(|r| r["type"] == "l4" && r["event"] == "close")
            .count();
        (closed >= closes).then_some(records)
    })
}

/// The records of `event` whose destination is `ip`.
fn of<'a>(records: &'a [Value], event: &str, ip: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l4" && r["event"] == event && r["destination"]["ip"] == ip)
        .collect()
}

#[test]
fn same_port_in_two_namespaces_names_each_server() {
    if !require_root("same_port_in_two_namespaces_names_each_server") {
        return;
    }
    let agent = Agent::start(&[]);
    let (lab_a, lab_b) = (Lab::new(), Lab::new());
    let port = unique_port(15);
    let (addr_a, addr_b) = (lab_a.server_addr(port), lab_b.server_addr(port));
    // srvB listens after srvA: a table keyed by port alone would name srvB
    // for srvA's connections.
    let srv_a = serve(&lab_a.server_ns, "srvA", addr_a, CONNS, echo_answer);
    let srv_b = serve(&lab_b.server_ns, "srvB", addr_b, CONNS, echo_answer);
    let cli_a = clients(&lab_a.client_ns, "cliA", addr_a, CONNS);
    let cli_b = clients(&lab_b.client_ns, "cliB", addr_b, CONNS);
    for t in [cli_a, cli_b, srv_a, srv_b] {
        t.join().expect("traffic thread");
    }

    let port_s = port.to_string();
    let records = records_after_closes(&agent, &port_s, 2 * CONNS);
    for (lab, server, client) in [(&lab_a, "srvA", "cliA"), (&lab_b, "srvB", "cliB")] {
        for event in ["open", "close"] {
            let seen = of(&records, event, &lab.server_v4);
            assert_eq!(seen.len(), CONNS, "{event} records to {server}: {seen:#?}");
            for r in seen {
                assert_eq!(r["destination"]["process"], server, "{r:#}");
                assert_eq!(r["source"]["process"], client, "{r:#}");
                if event == "close" {
                    assert_eq!(r["bytes_sent"], 100, "{r:#}");
                    assert_eq!(r["bytes_received"], 50, "{r:#}");
                }
            }
        }
        let labels = [
            format!("destination_port=\"{port}\""),
            format!("destination_workload=\"{server}\""),
            format!("source_workload=\"{client}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        for family in [
            "weft_tcp_connections_opened_total",
            "weft_tcp_connections_closed_total",
        ] {
            assert_eq!(
                agent.metric_sum(family, &labels),
                CONNS as f64,
                "{family} for {server}"
            );
        }
        assert_eq!(
            agent.metric_sum("weft_tcp_sent_bytes_total", &labels),
            (CONNS * 100) as f64
        );
    }
    let port_label = format!("destination_port=\"{port}\"");
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_opened_total", &[&port_label]),
        (2 * CONNS) as f64
    );
}

/// Reads an HTTP/1.1 request head and answers 200 with a short body.
fn http_answer(conn: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut buf).expect("server read");
        assert!(n > 0, "request head cut short: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        .expect("server write");
}

#[test]
fn the_agents_port_in_another_namespace_is_observed() {
    if !require_root("the_agents_port_in_another_namespace_is_observed") {
        return;
    }
    // Bound on all addresses, as the DaemonSet binds it.
    let agent = Agent::start_metrics_on("0.0.0.0", &[]);
    let lab = Lab::new();
    let port = agent.metrics_port;
    let server = lab.server_addr(port);
    let app = serve(&lab.server_ns, "otel-app", server, CONNS, http_answer);
    let scraper = spawn_in(&lab.client_ns, "otel-scraper", move || {
        for _ in 0..CONNS {
            let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: app\r\n\r\n")
                .expect("client write");
            let mut got = String::new();
            c.read_to_string(&mut got).expect("client read");
            assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        }
    });
    // The agent's own endpoint is scraped meanwhile, on the same port.
    for _ in 0..5 {
        agent.metrics();
    }
    scraper.join().expect("scraper");
    app.join().expect("app");

    let port_s = port.to_string();
    let records = records_after_closes(&agent, &port_s, CONNS);
    for event in ["open", "close"] {
        let seen = of(&records, event, &lab.server_v4);
        assert_eq!(seen.len(), CONNS, "{event} records: {seen:#?}");
        for r in seen {
            assert_eq!(r["source"]["process"], "otel-scraper", "{r:#}");
            assert_eq!(r["destination"]["process"], "otel-app", "{r:#}");
        }
    }
    // Requests seen from both ends, each once.
    let requests = wait_for("40 HTTP records", WAIT, || {
        let all = agent.flows(&["--port", &port_s, "--protocol", "http", "--all"]);
        let l7: Vec<Value> = all.into_iter().filter(|r| r["type"] == "l7").collect();
        (l7.len() >= 2 * CONNS).then_some(l7)
    });
    assert_eq!(requests.len(), 2 * CONNS, "{requests:#?}");
    for r in &requests {
        assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
        assert_eq!(r["l7"]["path"], "/metrics", "{r:#}");
    }
    // Nothing of the agent's own scrapes: no record of any other address.
    let all = agent.flows(&["--port", &port_s, "--all"]);
    let own: Vec<&Value> = all
        .iter()
        .filter(|r| r["destination"]["ip"] != lab.server_v4.as_str())
        .filter(|r| !weft_tests::agent::refused_while_loading(r))
        .collect();
    assert!(own.is_empty(), "the agent's own connections: {own:#?}");

    let dport = format!("destination_port=\"{port}\"");
    let sport = format!("server_port=\"{port}\"");
    for (family, label) in [
        ("weft_tcp_connections_opened_total", &dport),
        ("weft_tcp_connections_closed_total", &dport),
        ("http_client_request_duration_seconds_count", &sport),
        ("http_server_request_duration_seconds_count", &sport),
    ] {
        assert_eq!(
            agent.metric_sum(family, &[label.as_str()]),
            CONNS as f64,
            "{family}"
        );
    }
}

/// One connection per request, as curl makes them.
fn http_clients(ns: &str, server: SocketAddr, conns: usize) -> JoinHandle<()> {
    spawn_in(ns, "pod-client", move || {
        for _ in 0..conns {
            let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
                .expect("client write");
            let mut got = String::new();
            c.read_to_string(&mut got).expect("client read");
            assert!(
                got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"),
                "{got}"
            );
        }
    })
}

#[test]
fn same_port_in_two_pods_names_each_pod() {
    if !require_root("same_port_in_two_pods_names_each_pod") {
        return;
    }
    let (lab_a, lab_b) = (Lab::new(), Lab::new());
    let (cg_a, cg_b) = (ContainerCgroup::create(), ContainerCgroup::create());
    // The cluster as the API server describes it: one pod per namespace,
    // each at its lab's server address, both on this node.
    let pods = [
        pods::pod("team-a", "web-a", &lab_a.server_v4, &cg_a.id),
        pods::pod("team-b", "web-b", &lab_b.server_v4, &cg_b.id),
    ];
    let api = RecordedApi::start(pods::pods_only_lists(pods::pod_list(&pods)));
    let dir = std::env::temp_dir().join(format!("weft-pods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = pods::kubernetes_config(&dir, "weft.yaml", &api.kubeconfig(&dir), "");
    let agent = Agent::start(&["--config", &config.to_string_lossy()]);
    wait_for("the pods to be named", WAIT, || {
        let status = agent.status_json()?;
        let features = status["features"].as_array()?.clone();
        features
            .iter()
            .any(|f| f["name"] == "kubernetes" && f["available"] == true)
            .then_some(())
    });

    let port = unique_port(17);
    // web-b listens after web-a: a table keyed by port alone would name
    // web-b's container (and so its pod) for web-a's connections.
    let mut web_a = servers::python_http_in(&lab_a, port, Some(cg_a.path()));
    let mut web_b = servers::python_http_in(&lab_b, port, Some(cg_b.path()));
    let cli_a = http_clients(&lab_a.client_ns, web_a.addr, CONNS);
    let cli_b = http_clients(&lab_b.client_ns, web_b.addr, CONNS);
    cli_a.join().expect("clients of web-a");
    cli_b.join().expect("clients of web-b");

    let port_s = port.to_string();
    // Each lab's readiness probe is a connection too (it sends nothing).
    let records = records_after_closes(&agent, &port_s, 2 * (CONNS + 1));
    web_a.stop();
    web_b.stop();
    for (lab, namespace, pod) in [(&lab_a, "team-a", "web-a"), (&lab_b, "team-b", "web-b")] {
        for event in ["open", "close"] {
            let seen = of(&records, event, &lab.server_v4);
            assert_eq!(seen.len(), CONNS + 1, "{event} records to {pod}: {seen:#?}");
            for r in seen {
                assert_eq!(r["destination"]["pod"], pod, "{r:#}");
                assert_eq!(r["destination"]["namespace"], namespace, "{r:#}");
                assert_eq!(r["destination"]["process"], "python3", "{r:#}");
            }
        }
        let labels = [
            format!("destination_port=\"{port}\""),
            format!("destination_workload=\"{pod}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            agent.metric_sum("weft_tcp_connections_opened_total", &labels),
            (CONNS + 1) as f64,
            "weft_tcp_connections_opened_total for {pod}"
        );
    }
    drop((web_a, web_b));
    drop((cg_a, cg_b));
    let _ = std::fs::remove_dir_all(&dir);
}
