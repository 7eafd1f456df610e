//! Every PromQL expression of every dashboard panel (and query variable)
//! runs against a real Prometheus that scraped a real agent, after two
//! rounds of traffic of every kind the agent understands. At L4: TCP
//! exchanges between lab namespaces, UDP with replies, a refused
//! connection, SYNs dropped by a firewall, a bulk upload through a shaper
//! (retransmits, RTT). At L7, against real servers: HTTP/1.1 (curl and
//! Python's http.server), HTTP/2 (curl with prior knowledge and nginx
//! h2c), gRPC (grpcio on both ends), Redis, PostgreSQL, MySQL (MariaDB)
//! and DNS over UDP. Steering: curls to a service address balanced over
//! two backends, one of which answers 503 and is ejected, and connects to
//! a service without backends. The L7 histograms must count exactly the
//! requests made, and every expression must return data.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use weft_tests::{
    agent::Agent,
    dashboards,
    lab::{Lab, spawn_in},
    peer::{Peer, exec_with_input},
    prometheus::{Prometheus, values},
    require_root, run,
    servers::{self, Server},
    steer::{PinCleanup, SteerLab},
    traffic::{connect_fails, exchange},
    unique_port,
};

const WAIT: Duration = Duration::from_secs(20);

struct Ports {
    exchange: u16,
    bulk: u16,
    udp: u16,
    refused: u16,
    dropped: u16,
    http: u16,
}

/// Datagrams from the client namespace, each echoed by the server.
fn udp(lab: &Lab, server: SocketAddr, datagrams: usize) {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-udp-server", move || {
        let sock = UdpSocket::bind(server).expect("bind udp");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..datagrams {
            let (n, peer) = sock.recv_from(&mut buf).expect("udp recv");
            sock.send_to(&buf[..n / 2], peer).expect("udp reply");
        }
    });
    ready_rx.recv_timeout(WAIT).expect("udp server bound");
    spawn_in(&lab.client_ns, "lab-udp-client", move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..datagrams {
            sock.send_to(&[7u8; 1000], server).expect("udp send");
            sock.recv_from(&mut buf).expect("udp reply");
        }
    })
    .join()
    .expect("udp client");
    srv.join().expect("udp server");
}

/// A DNS query for `weft.test` (A), as a resolver sends it.
const DNS_QUERY: &[u8] = &[
    0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // id, RD, one question
    4, b'w', b'e', b'f', b't', 4, b't', b'e', b's', b't', 0, // weft.test
    0, 1, 0, 1, // A, IN
];

/// `lookups` DNS lookups over UDP from the client namespace to a
/// responder on port 53 of the server namespace.
fn dns(lab: &Lab, server: SocketAddr, lookups: usize) {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-dns-server", move || {
        let sock = UdpSocket::bind(server).expect("bind dns");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 512];
        for _ in 0..lookups {
            let (n, peer) = sock.recv_from(&mut buf).expect("dns query");
            sock.send_to(&weft_tests::soak::dns::answer(&buf[..n]), peer)
                .expect("dns answer");
        }
    });
    ready_rx.recv_timeout(WAIT).expect("dns server bound");
    spawn_in(&lab.client_ns, "lab-resolver", move || {
        // Connected, as glibc's resolver does.
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect(server).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = [0u8; 512];
        for _ in 0..lookups {
            sock.send(DNS_QUERY).expect("dns send");
            let n = sock.recv(&mut buf).expect("dns answer");
            assert_eq!(&buf[..2], &DNS_QUERY[..2], "answer to our query");
            assert!(n > DNS_QUERY.len());
        }
    })
    .join()
    .expect("resolver");
    srv.join().expect("dns server");
}

/// curl fetches a page from Python's http.server twice (HTTP/1.1), once
/// the server accepts connections.
fn http(lab: &Lab, port: u16) {
    let port_s = port.to_string();
    let mut server = Peer::start(
        "python3 http.server",
        &lab.server_ns,
        &[
            "python3",
            "-m",
            "http.server",
            &port_s,
            "--bind",
            &lab.server_v4,
        ]
        .into_iter()
        .chain(["--directory", env!("CARGO_MANIFEST_DIR")])
        .collect::<Vec<_>>(),
    );
    server.wait_tcp(&lab.client_ns, lab.server_addr(port), WAIT);
    let url = format!("http://{}:{port}/Cargo.toml", lab.server_v4);
    lab.exec(
        &lab.client_ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            &url,
            &url,
        ],
    );
}

/// A few commands from redis-cli.
fn redis(lab: &Lab, server: &Server) {
    let port = server.addr.port().to_string();
    let (ok, out, err) = exec_with_input(
        &lab.client_ns,
        &["redis-cli", "-h", &lab.server_v4, "-p", &port],
        "SET weft:k hello\nGET weft:k\nINCR weft:n\nGET weft:missing\n",
    );
    assert!(ok, "redis-cli failed: {out}{err}");
}

/// Statements from psql, one of them failing (42P01).
fn postgres(lab: &Lab, server: &Server) {
    let (out, err) = servers::psql(
        lab,
        server,
        &[
            "SELECT 1",
            "SELECT * FROM weft_missing",
            "SELECT pg_sleep(0.05)",
        ],
    );
    assert!(err.contains("weft_missing"), "psql: {out}{err}");
}

/// Statements from the mariadb client, one of them failing (1146).
fn mariadb(lab: &Lab, server: &Server) {
    let (out, err) = servers::mariadb_client(
        lab,
        server,
        &[
            "SELECT 1",
            "SELECT * FROM mysql.weft_missing",
            "SELECT SLEEP(0.05)",
        ],
    );
    assert!(err.contains("ERROR 1146"), "mariadb: {out}{err}");
}

/// HTTP/2 with prior knowledge (h2c): one 200 and one 404.
fn http2(lab: &Lab, server: &Server) {
    for (path, status) in [("/hello", "200"), ("/missing", "404")] {
        let url = format!("http://{}{path}", server.addr);
        let out = lab.exec(
            &lab.client_ns,
            &[
                "curl",
                "-sS",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &url,
            ],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), status, "{url}");
    }
}

/// Four gRPC calls: OK, OK, NOT_FOUND, OK (100 ms).
fn grpc(lab: &Lab, server: &Server) {
    assert_eq!(
        servers::grpc_calls(lab, server),
        "SayHello OK\nSayHello OK\nLookup NOT_FOUND\nSlow OK\n"
    );
}

/// The real servers the L7 traffic goes to.
struct L7Servers {
    redis: Server,
    postgres: Server,
    mariadb: Server,
    nginx_h2c: Server,
    grpc: Server,
}

/// Two services over the steering lab's backends: `web` on port 80 (the
/// second backend answers 503 and one error ejects it) and `nobody` on
/// port 81, with no backend; and a rule denying port 82. Returns the
/// configuration file.
fn steering_config(steer: &SteerLab) -> std::path::PathBuf {
    let mut web = steer.service_yaml("web", 80, &[1, 1]);
    web.push_str("    health: {consecutive_failures: 1, eject_on_l7_errors: true}\n");
    // A policy rule that denies connects to port 82 of the service
    // address (the policy panel's verdicts).
    let policy = format!(
        "policies:\n  - name: no-82\n    direction: egress\n    to: {{cidr: [{}/32], ports: [82], protocol: tcp}}\n    action: deny\n",
        steer.service_ip
    );
    let text = format!(
        "services:\n{web}{}{policy}",
        steer.service_yaml("nobody", 81, &[])
    );
    let path = std::env::temp_dir().join(format!("weft-prom-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Curls to both services (their outcomes are the steering metrics'
/// business, not this test's).
fn steer_round(steer: &SteerLab) {
    assert_eq!(steer.curls(80, 10).len(), 10);
    assert_eq!(steer.curls(81, 2).len(), 2);
    assert_eq!(steer.curls(82, 2).len(), 2);
}

fn round(lab: &Lab, ports: &Ports, l7: &L7Servers) {
    let v4 = |port| lab.server_addr(port);
    assert_eq!(exchange(lab, v4(ports.exchange), 200_000, 50_000), 50_000);
    udp(lab, v4(ports.udp), 20);
    connect_fails(lab, v4(ports.refused), WAIT);
    // The SYN and its retransmission are dropped; the client gives up.
    connect_fails(lab, v4(ports.dropped), Duration::from_millis(1500));
    // A bulk upload through the client's shaper: queueing delay (RTT) and
    // overflow drops (retransmits).
    assert_eq!(exchange(lab, v4(ports.bulk), 4_000_000, 2), 2);
    http(lab, ports.http);
    dns(lab, v4(53), 5);
    redis(lab, &l7.redis);
    postgres(lab, &l7.postgres);
    mariadb(lab, &l7.mariadb);
    http2(lab, &l7.nginx_h2c);
    grpc(lab, &l7.grpc);
}

/// The histogram `family`'s observation count for the series that
/// `matchers` select.
fn count(prometheus: &Prometheus, family: &str, matchers: &str) -> f64 {
    let promql = format!("sum({family}_count{{{matchers}}})");
    values(&prometheus.query(&promql).unwrap_or_default())
        .iter()
        .sum()
}

/// Waits until Prometheus has scraped exactly `expected` observations of
/// `family` for the series `matchers` select; panics with what it has
/// otherwise.
fn expect_count(prometheus: &Prometheus, family: &str, matchers: &str, expected: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = count(prometheus, family, matchers);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{family}{{{matchers}}}: {got} observations, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !require_root("every_dashboard_query_returns_data_from_a_real_prometheus") {
        return;
    }
    let started = Instant::now();
    let _cleanup = PinCleanup;
    let mut steer = SteerLab::new(2, unique_port(21));
    steer.backends[1].answer_every_request_with(503);
    let config = steering_config(&steer);
    let agent = Agent::start(&["--config", config.to_str().expect("utf-8")]);
    let prometheus = Prometheus::start(agent.metrics_port);
    prometheus.wait_for_data(r#"up{job="weft"} == 1"#, WAIT);

    let lab = Lab::new();
    lab.shape_client_egress();
    let ports = Ports {
        exchange: unique_port(10),
        bulk: unique_port(11),
        udp: unique_port(12),
        refused: unique_port(13),
        dropped: unique_port(14),
        http: unique_port(15),
    };
    let l7 = L7Servers {
        redis: servers::redis(&lab, unique_port(16)),
        postgres: servers::postgres(&lab, unique_port(17)),
        mariadb: servers::mariadb(&lab, unique_port(18)),
        nginx_h2c: servers::nginx_h2c(&lab, unique_port(19)),
        grpc: servers::grpc(&lab, unique_port(20)),
    };
    for rule in [
        "add table inet weftprom",
        "add chain inet weftprom input { type filter hook input priority 0 ; }",
        &format!(
            "add rule inet weftprom input tcp dport {} drop",
            ports.dropped
        ),
    ] {
        let mut args = vec!["ip", "netns", "exec", &lab.server_ns, "nft"];
        args.extend(rule.split(' '));
        run(&args);
    }

    // Round one creates the series; once Prometheus has scraped them,
    // round two makes every counter and histogram move inside the rate
    // windows.
    round(&lab, &ports, &l7);
    steer_round(&steer);
    let port = |p: u16| format!(r#"destination_port="{p}""#);
    prometheus.wait_for_data(
        &format!(
            "weft_tcp_connections_opened_total{{{}}} == 1",
            port(ports.exchange)
        ),
        WAIT,
    );
    prometheus.wait_for_data(
        &format!("weft_udp_sent_bytes_total{{{}}}", port(ports.udp)),
        WAIT,
    );
    prometheus.wait_for_data(
        &format!(
            "weft_tcp_connections_failed_total{{{}}}",
            port(ports.dropped)
        ),
        WAIT,
    );
    prometheus.wait_for_data(
        r#"weft_service_backend_ejections_total{service="web",reason="consecutive_l7_errors"} == 1"#,
        WAIT,
    );
    round(&lab, &ports, &l7);
    steer_round(&steer);
    prometheus.wait_for_data(
        &format!(
            "weft_tcp_connections_opened_total{{{}}} == 2",
            port(ports.exchange)
        ),
        WAIT,
    );
    prometheus.wait_for_data(
        &format!(
            "weft_tcp_connections_failed_total{{{}}} == 2",
            port(ports.dropped)
        ),
        WAIT,
    );
    prometheus.wait_for_data(
        &format!("weft_tcp_srtt_seconds_count{{{}}} == 2", port(ports.bulk)),
        WAIT,
    );
    prometheus.wait_for_data(
        &format!(
            "increase(weft_udp_received_bytes_total{{{}}}[1m]) > 0",
            port(ports.udp)
        ),
        WAIT,
    );
    // The L7 panels show the lab's requests (both ends are on this node),
    // exactly as many as the two rounds made.
    let rounds = 2.0;
    for family in [
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
    ] {
        expect_count(&prometheus, family, &port(ports.http), rounds * 2.0);
    }
    for (family, server, per_round) in [
        // COMMAND DOCS (redis-cli's own), then the 4 commands.
        ("db_client_operation_duration_seconds", &l7.redis, 5.0),
        ("db_client_operation_duration_seconds", &l7.postgres, 3.0),
        ("db_client_operation_duration_seconds", &l7.mariadb, 3.0),
        ("http_server_request_duration_seconds", &l7.nginx_h2c, 2.0),
        ("http_client_request_duration_seconds", &l7.nginx_h2c, 2.0),
        ("rpc_server_call_duration_seconds", &l7.grpc, 4.0),
        ("rpc_client_call_duration_seconds", &l7.grpc, 4.0),
    ] {
        let matchers = port(server.addr.port());
        expect_count(&prometheus, family, &matchers, rounds * per_round);
    }
    // Port 53 is everyone's: the lab's resolver thread narrows it down.
    expect_count(
        &prometheus,
        "dns_lookup_duration_seconds",
        r#"destination_port="53",source_workload="lab-resolver""#,
        rounds * 5.0,
    );
    // A few more scrapes, so that every rate has points after round two.
    std::thread::sleep(Duration::from_secs(3));

    let queries = dashboards::queries(&dashboards::load());
    let mut failures = Vec::new();
    let mut with_data = 0;
    for q in &queries {
        match prometheus.query(&q.promql) {
            Err(err) => failures.push(format!(
                "{}: does not run: {err}\n    {}",
                q.place, q.promql
            )),
            Ok(result) => {
                let vals = values(&result);
                if vals.iter().any(|v| !v.is_nan()) {
                    with_data += 1;
                } else {
                    failures.push(format!(
                        "{}: no data ({} samples: {vals:?})\n    {}",
                        q.place,
                        result.len(),
                        q.promql
                    ));
                }
            }
        }
    }
    eprintln!(
        "dashboard queries: {} in all, {with_data} with data, \
         {} failed; {:?} from the agent's start",
        queries.len(),
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(with_data > 40, "only {with_data} queries returned data");
    let _ = std::fs::remove_file(&config);

    // The service map's frames carry the fields Grafana's node graph reads.
    for (query, fields) in [
        ("[nodes]", &["id", "title"][..]),
        ("[edges]", &["id", "source", "target"][..]),
    ] {
        let q = queries
            .iter()
            .find(|q| q.place.ends_with(query))
            .unwrap_or_else(|| panic!("no {query} query"));
        let result = prometheus.query(&q.promql).expect("runs");
        assert!(!result.is_empty(), "{query}: no data");
        for series in &result {
            for field in fields {
                assert!(
                    series["metric"][field]
                        .as_str()
                        .is_some_and(|v| !v.is_empty()),
                    "{query}: a series without {field}: {series}"
                );
            }
        }
        let lab_edge = result
            .iter()
            .any(|s| s["metric"]["source"] == "lab-client" || s["metric"]["id"] == "lab-client");
        assert!(
            lab_edge,
            "{query}: the lab's client is not on the map: {result:?}"
        );
    }
}
