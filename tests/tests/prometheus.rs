//! Every PromQL expression of every dashboard panel (and query variable)
//! runs against a real Prometheus that scraped a real agent, after traffic
//! of every kind the agent understands at L4: TCP exchanges between lab
//! namespaces, UDP with replies, a refused connection, SYNs dropped by a
//! firewall, a bulk upload through a shaper (retransmits, RTT), HTTP (curl
//! against Python's http.server), Redis (redis-cli against redis-server)
//! and DNS lookups over UDP; the L7 panels must show the last three. Each
//! expression must return data; those on the L7 families this test drives
//! no traffic for yet (gRPC, listed in weft_tests::dashboards::L7_PENDING)
//! must parse, and are reported as pending L7 when they have none.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use weft_tests::{
    agent::Agent,
    dashboards,
    lab::{Lab, spawn_in},
    peer::{Peer, exec_with_input, require_program},
    prometheus::{Prometheus, values},
    require_root, run, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);

struct Ports {
    exchange: u16,
    bulk: u16,
    udp: u16,
    refused: u16,
    dropped: u16,
    http: u16,
    redis: u16,
}

/// A server that reads `send` bytes and answers `reply` bytes, and a
/// client that sends, reads to the end and closes.
fn exchange(lab: &Lab, server: SocketAddr, send: usize, reply: usize) {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-server", move || {
        let listener = TcpListener::bind(server).expect("bind server");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < send {
            let n = conn.read(&mut buf).expect("server read");
            assert!(n > 0);
            got += n;
        }
        conn.write_all(&vec![b'r'; reply]).expect("server write");
    });
    ready_rx.recv_timeout(WAIT).expect("server listening");
    spawn_in(&lab.client_ns, "lab-client", move || {
        let mut conn = TcpStream::connect_timeout(&server, WAIT).expect("connect");
        conn.write_all(&vec![b's'; send]).expect("client write");
        let mut received = Vec::new();
        conn.read_to_end(&mut received).expect("client read");
        assert_eq!(received.len(), reply);
    })
    .join()
    .expect("client");
    srv.join().expect("server");
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

/// Its answer: the question, then one A record (10.0.0.1, TTL 60).
fn dns_answer(query: &[u8]) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] = 0x81; // QR, RD
    answer[3] = 0x80; // RA, NOERROR
    answer[7] = 1; // one answer
    answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    answer
}

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
            sock.send_to(&dns_answer(&buf[..n]), peer)
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

/// A bulk upload through the client's shaper: queueing delay (RTT) and
/// overflow drops (retransmits).
fn bulk(lab: &Lab, server: SocketAddr) {
    const BULK: usize = 4_000_000;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-bulk-server", move || {
        let listener = TcpListener::bind(server).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < BULK {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0);
            got += n;
        }
        conn.write_all(b"ok").expect("reply");
    });
    ready_rx.recv_timeout(WAIT).expect("listening");
    spawn_in(&lab.client_ns, "lab-bulk-client", move || {
        let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
        c.write_all(&vec![7u8; BULK]).expect("upload");
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("reply");
    })
    .join()
    .expect("bulk client");
    srv.join().expect("bulk server");
}

fn connect_fails(lab: &Lab, server: SocketAddr, timeout: Duration) {
    spawn_in(&lab.client_ns, "lab-client", move || {
        TcpStream::connect_timeout(&server, timeout).expect_err("the connection must fail")
    })
    .join()
    .expect("client");
}

/// A child process ended (SIGTERM, by its pid) when dropped, also when
/// the test fails.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: ending the server we started, by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// curl fetches a page from Python's http.server twice (HTTP/1.1).
fn http(lab: &Lab, port: u16) {
    let port_s = port.to_string();
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                "python3",
                "-m",
                "http.server",
                &port_s,
            ])
            .args(["--bind", &lab.server_v4])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 http.server"),
    );
    let url = format!("http://{}:{port}/Cargo.toml", lab.server_v4);
    wait_for("python3 http.server to answer", WAIT, || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.client_ns,
                "curl",
                "-sS",
                "-o",
                "/dev/null",
            ])
            .args(["-o", "/dev/null", "--max-time", "5", &url, &url])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
}

/// A few commands from redis-cli in the client namespace.
fn redis(lab: &Lab, port: u16) {
    let port_s = port.to_string();
    let (ok, out, err) = exec_with_input(
        &lab.client_ns,
        &["redis-cli", "-h", &lab.server_v4, "-p", &port_s],
        "SET weft:k hello\nGET weft:k\nINCR weft:n\nGET weft:missing\n",
    );
    assert!(ok, "redis-cli failed: {out}{err}");
}

fn round(lab: &Lab, ports: &Ports) {
    let v4 = |port| SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
    exchange(lab, v4(ports.exchange), 200_000, 50_000);
    udp(lab, v4(ports.udp), 20);
    connect_fails(lab, v4(ports.refused), WAIT);
    // The SYN and its retransmission are dropped; the client gives up.
    connect_fails(lab, v4(ports.dropped), Duration::from_millis(1500));
    bulk(lab, v4(ports.bulk));
    http(lab, ports.http);
    dns(lab, v4(53), 5);
    redis(lab, ports.redis);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !require_root("every_dashboard_query_returns_data_from_a_real_prometheus") {
        return;
    }
    let started = Instant::now();
    let agent = Agent::start(&[]);
    let prometheus = Prometheus::start(agent.metrics_port);
    prometheus.wait_for_data(r#"up{job="weft"} == 1"#, WAIT);

    let lab = Lab::new();
    lab.exec(
        &lab.client_ns,
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            &lab.client_dev,
            "root",
            "tbf",
            "rate",
            "20mbit",
            "burst",
            "16kb",
            "latency",
            "30ms",
        ],
    );
    let ports = Ports {
        exchange: unique_port(10),
        bulk: unique_port(11),
        udp: unique_port(12),
        refused: unique_port(13),
        dropped: unique_port(14),
        http: unique_port(15),
        redis: unique_port(16),
    };
    require_program("redis-server");
    require_program("redis-cli");
    let redis_port = ports.redis.to_string();
    let mut redis_server = Peer::start(
        "redis-server",
        &lab.server_ns,
        &[
            "redis-server",
            "--bind",
            &lab.server_v4,
            "--port",
            &redis_port,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    );
    redis_server.wait_tcp(
        &lab.client_ns,
        SocketAddr::new(lab.server_v4.parse().expect("lab address"), ports.redis),
        WAIT,
    );
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
    round(&lab, &ports);
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
    round(&lab, &ports);
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
    // The L7 panels show the lab's requests (both ends are on this node).
    // How many were counted is reported, not asserted: the L7 tests own
    // that. redis-cli asks `COMMAND DOCS` before the 4 commands of a round.
    for (family, dport, sent) in [
        (
            "http_server_request_duration_seconds_count",
            ports.http,
            4.0,
        ),
        (
            "http_client_request_duration_seconds_count",
            ports.http,
            4.0,
        ),
        (
            "db_client_operation_duration_seconds_count",
            ports.redis,
            10.0,
        ),
        ("dns_lookup_duration_seconds_count", 53, 10.0),
    ] {
        let selector = format!("{family}{{{}}}", port(dport));
        prometheus.wait_for_data(&format!("{selector} > 0"), WAIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        let counted = loop {
            let counted: f64 = values(&prometheus.query(&selector).unwrap_or_default())
                .iter()
                .sum();
            if counted >= sent || Instant::now() > deadline {
                break counted;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        eprintln!("{family}: {counted} of the lab's {sent}");
    }
    // A few more scrapes, so that every rate has points after round two.
    std::thread::sleep(Duration::from_secs(3));

    let queries = dashboards::queries(&dashboards::load());
    let mut failures = Vec::new();
    let (mut with_data, mut pending) = (0, 0);
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
                } else if q.is_pending_l7() {
                    pending += 1;
                    eprintln!("PENDING L7 (parses, no data yet): {}", q.place);
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
        "dashboard queries: {} in all, {with_data} with data, {pending} pending L7, \
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
