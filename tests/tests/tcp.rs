//! TCP connections between two namespaces: exact bytes both ways, both
//! processes named, IPv4 and IPv6, refused connections, periodic updates,
//! and real peers (curl against Python's http.server).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use weft_tests::{
    agent::Agent,
    lab::{Lab, spawn_in},
    peer::Peer,
    require_root,
    traffic::exchange,
    unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(15);

/// Exact bytes, both processes and the metrics for one connection, with
/// the agent started under `wrapper` (empty: as is).
fn check_exact(wrapper: &[&str], ipv6: bool, send: usize, reply: usize, port_offset: u16) {
    let agent = Agent::start_under(wrapper, &[]);
    let lab = Lab::new();
    let port = unique_port(port_offset);
    let (cip, sip) = if ipv6 {
        (&lab.client_v6, &lab.server_v6)
    } else {
        (&lab.client_v4, &lab.server_v4)
    };
    let server: SocketAddr = SocketAddr::new(sip.parse().expect("lab address"), port);
    assert_eq!(exchange(&lab, server, send, reply), reply);

    let port_s = port.to_string();
    let close = agent.wait_flow(&["--port", &port_s], "close", WAIT);
    assert_eq!(close["type"], "l4");
    assert_eq!(close["transport"], "tcp");
    assert_eq!(close["bytes_sent"], send as u64, "{close:#}");
    assert_eq!(close["bytes_received"], reply as u64, "{close:#}");
    assert_eq!(close["source"]["ip"], cip.as_str());
    assert_eq!(close["destination"]["ip"], sip.as_str());
    assert_eq!(close["destination"]["port"], port);
    let me = std::process::id();
    assert_eq!(close["source"]["process"], "lab-client", "{close:#}");
    assert_eq!(close["source"]["pid"], me);
    assert_eq!(close["destination"]["process"], "lab-server", "{close:#}");
    assert_eq!(close["destination"]["pid"], me);
    assert_eq!(close["verdict"], "forwarded");
    // Without BTF, before 6.4, tcp_probe names no socket: no RTT (docs/kernels.md).
    let rtt = agent.has_feature("smoothed RTT");
    if rtt {
        assert!(close["srtt_us"].as_u64().unwrap_or(0) > 0, "{close:#}");
    } else {
        assert!(close["srtt_us"].is_null(), "{close:#}");
    }
    assert!(close["duration_us"].as_u64().unwrap_or(0) > 0, "{close:#}");
    let flows = agent.flows(&["--port", &port_s]);
    assert_eq!(
        flows.iter().filter(|r| r["event"] == "open").count(),
        1,
        "one open record per connection: {flows:#?}"
    );
    assert_eq!(flows.iter().filter(|r| r["event"] == "close").count(), 1);
    // Both ends are on this node: the open record names both processes,
    // as the close does (the server's socket is established just after
    // the client's; the open waits for it).
    let open = flows.iter().find(|r| r["event"] == "open").expect("open");
    assert_eq!(open["source"]["process"], "lab-client", "{open:#}");
    assert_eq!(open["destination"]["process"], "lab-server", "{open:#}");

    // The same figures in the metrics.
    let port_label = format!("destination_port=\"{port}\"");
    let l = [port_label.as_str()];
    assert_eq!(
        agent.metric_sum("weft_tcp_sent_bytes_total", &l),
        send as f64
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_received_bytes_total", &l),
        reply as f64
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_opened_total", &l),
        1.0
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_closed_total", &l),
        1.0
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_srtt_seconds_count", &l),
        if rtt { 1.0 } else { 0.0 }
    );
    let named = [
        port_label.as_str(),
        "source_workload=\"lab-client\"",
        "destination_workload=\"lab-server\"",
    ];
    assert_eq!(
        agent.metric_sum("weft_tcp_sent_bytes_total", &named),
        send as f64
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_opened_total", &named),
        1.0
    );
}

#[test]
fn ipv4_exact_bytes_and_processes() {
    if !require_root("ipv4_exact_bytes_and_processes") {
        return;
    }
    check_exact(&[], false, 1_000_000, 250_000, 1);
}

#[test]
fn ipv6_exact_bytes_and_processes() {
    if !require_root("ipv6_exact_bytes_and_processes") {
        return;
    }
    check_exact(&[], true, 300_000, 75_000, 2);
}

/// Without BTF the lifecycle, RTT, retransmit and drop programs read the
/// tracepoints' records instead of the raw tracepoints' arguments: the
/// same figures, for both families.
#[test]
fn the_tracepoint_fallbacks_give_the_same_figures() {
    if !require_root("the_tracepoint_fallbacks_give_the_same_figures") {
        return;
    }
    // The byte counts at the syscall exits need BTF too: a kernel without
    // it never runs them next to the tracepoint's lifecycle program.
    if std::env::var_os("WEFT_FORCE_SYSCALL_EXIT_COUNTS").is_some() {
        eprintln!("no kernel runs the syscall exits' byte counts without BTF: not this pair");
        return;
    }
    let forced = ["env", "WEFT_FORCE_TRACEPOINTS=1"];
    {
        let agent = Agent::start_under(&forced, &[]);
        let status = agent.status_json().expect("weft status -o json");
        let programs: Vec<&str> = status["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for tracepoint in [
            "weft_tcp_state_tp",
            "weft_tcp_retrans_tp",
            "weft_rst_send_tp",
            "weft_rst_recv_tp",
            "weft_skb_drop_tp",
        ] {
            assert!(programs.contains(&tracepoint), "{programs:?}");
        }
        let raw = [
            "weft_tcp_state",
            "weft_tcp_probe",
            "weft_tcp_retrans",
            "weft_rst_send",
            "weft_rst_recv",
            "weft_skb_drop",
            "weft_skb_drop3",
            "weft_skb_drop2",
        ];
        assert!(!programs.iter().any(|p| raw.contains(p)), "{programs:?}");
        assert_eq!(
            agent.has_feature("smoothed RTT"),
            programs.contains(&"weft_tcp_probe_tp"),
            "{programs:?}"
        );
    }
    check_exact(&forced, false, 200_000, 50_000, 6);
    check_exact(&forced, true, 100_000, 25_000, 7);
}

#[test]
fn refused_connection_is_a_failure_with_a_reset() {
    if !require_root("refused_connection_is_a_failure_with_a_reset") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(3);
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
    let err = spawn_in(&lab.client_ns, "lab-client", move || {
        TcpStream::connect_timeout(&server, WAIT).expect_err("nothing listens there")
    })
    .join()
    .expect("client thread");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    let port_s = port.to_string();
    let fail = agent.wait_flow(&["--port", &port_s], "fail", WAIT);
    assert_eq!(fail["failure"], "refused", "{fail:#}");
    assert_eq!(fail["resets_received"], 1, "{fail:#}");
    assert_eq!(fail["source"]["process"], "lab-client");
    assert_eq!(fail["bytes_sent"], 0);
    let port_label = format!("destination_port=\"{port}\"");
    let l = [port_label.as_str()];
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_failed_total", &l),
        1.0
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_opened_total", &l),
        0.0
    );
    // The server's namespace sent the reset (no socket), the client got it.
    let sent = [port_label.as_str(), "direction=\"sent\""];
    let received = [port_label.as_str(), "direction=\"received\""];
    // Each reset is its own event: waited for, as it may be read after
    // the failure that it caused. Older kernels do not trace a reset sent
    // for no socket (kernel table of docs/kernels.md): there the count is 0.
    let nosock = agent.has_feature("resets sent without a socket");
    for (labels, want) in [(&received, 1.0), (&sent, if nosock { 1.0 } else { 0.0 })] {
        wait_for("a reset", WAIT, || {
            (agent.metric_sum("weft_tcp_resets_total", labels) >= want).then_some(())
        });
        assert_eq!(
            agent.metric_sum("weft_tcp_resets_total", labels),
            want,
            "{labels:?}"
        );
    }
    // The SYN itself was dropped there for want of a socket: one packet
    // (for a reason the kernel names from 5.17 on).
    let drop = agent.wait_flow(&["--port", &port_s], "drop", WAIT);
    let reason = if agent.has_feature("drop reasons") {
        "NO_SOCKET"
    } else {
        "NOT_REPORTED_BY_KERNEL"
    };
    assert_eq!(drop["drop_reason"], reason, "{drop:#}");
    assert_eq!(drop["verdict"], "dropped", "{drop:#}");
    assert_eq!(drop["packets_sent"], 1, "{drop:#}");
    assert_eq!(drop["source"]["ip"], lab.client_v4.as_str(), "{drop:#}");
    assert_eq!(drop["destination"]["port"], port, "{drop:#}");
}

#[test]
fn long_lived_connections_report_updates() {
    if !require_root("long_lived_connections_report_updates") {
        return;
    }
    let agent = Agent::start(&["--update-interval", "1s"]);
    let lab = Lab::new();
    let port = unique_port(4);
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-server", move || {
        let listener = TcpListener::bind(server).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).expect("read");
        sink.len()
    });
    ready_rx.recv_timeout(WAIT).expect("listening");
    let port_s = port.to_string();
    let mut conn = spawn_in(&lab.client_ns, "lab-client", move || {
        let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
        c.write_all(&[1u8; 1000]).expect("write");
        c
    })
    .join()
    .expect("client");
    // While the connection stays open, updates carry its progress.
    let update = agent.wait_flow(&["--port", &port_s], "update", Duration::from_secs(10));
    assert_eq!(update["bytes_sent"], 1000, "{update:#}");
    conn.write_all(&[2u8; 500]).expect("write more");
    wait_for("an update with 1500 bytes", Duration::from_secs(10), || {
        agent
            .flows(&["--port", &port_s])
            .into_iter()
            .find(|r| r["event"] == "update" && r["bytes_sent"] == 1500)
    });
    drop(conn);
    assert_eq!(srv.join().expect("server"), 1500);
    let close = agent.wait_flow(&["--port", &port_s], "close", WAIT);
    assert_eq!(close["bytes_sent"], 1500);
}

#[test]
fn curl_and_python_http_server_are_named() {
    if !require_root("curl_and_python_http_server_are_named") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(5);
    let port_s = port.to_string();
    let mut server = Command::new("ip")
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
        .expect("start python3 http.server");
    let url = format!("http://{}:{port}/Cargo.toml", lab.server_v4);
    let out = wait_for("python3 http.server to answer", WAIT, || {
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
            .args([
                "-w",
                "%{size_request} %{size_header} %{size_download}",
                &url,
            ])
            .output()
            .ok()?;
        out.status.success().then_some(out)
    });
    // SAFETY: ending the server we started, by its pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    let sizes: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().expect("curl size"))
        .collect();
    let (request, header, body) = (sizes[0], sizes[1], sizes[2]);

    // Earlier attempts may have been refused while the server started; the
    // successful one is the close record.
    let close = agent.wait_flow(&["--port", &port_s, "--process", "curl"], "close", WAIT);
    assert_eq!(close["source"]["process"], "curl", "{close:#}");
    assert_eq!(close["destination"]["process"], "python3", "{close:#}");
    assert_eq!(close["bytes_sent"], request, "{close:#}");
    assert_eq!(close["bytes_received"], header + body, "{close:#}");
}

/// What the client of a connection older than the agent sends before the
/// agent starts, and after; and its server's reply.
const OLDER_BEFORE: usize = 5_000;
const OLDER_AFTER: usize = 100_000;
const OLDER_REPLY: usize = 20_000;

/// The client of a connection older than the agent, a thread in namespace
/// `ns`: it connects to `server` (again while nothing listens yet), sends
/// `OLDER_BEFORE` bytes, and once told to go (the agent started) sends
/// `OLDER_AFTER` and reads the reply to its end. Its thread (giving the
/// reply's length), its port once connected, and the go signal.
fn older_client(
    ns: &str,
    server: SocketAddr,
) -> (JoinHandle<usize>, u16, std::sync::mpsc::Sender<()>) {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (connected_tx, connected_rx) = std::sync::mpsc::channel::<u16>();
    let cli = spawn_in(ns, "lab-client", move || {
        let mut conn = wait_for("the server to listen", WAIT, || {
            TcpStream::connect_timeout(&server, WAIT).ok()
        });
        conn.write_all(&vec![b's'; OLDER_BEFORE])
            .expect("write before");
        let port = conn.local_addr().expect("local address").port();
        connected_tx.send(port).expect("connected");
        // The agent's start-up takes far longer under emulation.
        // (The agent's own readiness wait is scaled from 30 s.)
        go_rx
            .recv_timeout(weft_tests::scaled(WAIT + Duration::from_secs(30)))
            .expect("the agent started");
        conn.write_all(&vec![b's'; OLDER_AFTER])
            .expect("write after");
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).expect("reply");
        reply.len()
    });
    let client_port = connected_rx.recv_timeout(WAIT).expect("connected");
    (cli, client_port, go_tx)
}

/// A connection older than the agent whose server's port is above its
/// client's (above the ephemeral range, so above any client port): the
/// server's listener, found when the agent starts, tells which end is the
/// server, where the ports would name them the wrong way round. (The same
/// rule names a socket whose establishment the kernel skipped running the
/// lifecycle program for.)
#[test]
fn an_older_connection_to_a_port_above_its_clients_is_named_by_its_listener() {
    if !require_root("an_older_connection_to_a_port_above_its_clients_is_named_by_its_listener") {
        return;
    }
    const BEFORE: usize = OLDER_BEFORE;
    const AFTER: usize = OLDER_AFTER;
    const REPLY: usize = OLDER_REPLY;
    // The default ephemeral range ends at 60999.
    const PORT: u16 = 61_080;
    let lab = Lab::new();
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), PORT);
    // A process of its own: the agent finds listeners through each
    // process's /proc/PID/net.
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.bind(('{ip}', {PORT}))\n\
         s.listen(1)\n\
         c, _ = s.accept()\n\
         got = 0\n\
         while got < {total}:\n\
         \x20   d = c.recv(65536)\n\
         \x20   assert d\n\
         \x20   got += len(d)\n\
         c.sendall(b'r' * {REPLY})\n\
         c.close()\n",
        ip = lab.server_v4,
        total = BEFORE + AFTER,
    );
    let _srv = Peer::start(
        "older connection's server",
        &lab.server_ns,
        &["python3", "-c", &script],
    );
    // In the server's namespace: its end is named by the same listener.
    let (cli, client_port, go_tx) = older_client(&lab.server_ns, server);
    assert!(client_port < PORT, "an ephemeral port: {client_port}");
    let agent = Agent::start(&[]);
    go_tx.send(()).expect("go");
    assert_eq!(cli.join().expect("client"), REPLY);

    let port_s = PORT.to_string();
    let filters = ["--ip", lab.server_v4.as_str(), "--port", port_s.as_str()];
    let close = agent.wait_flow(&filters, "close", WAIT);
    assert_eq!(close["destination"]["port"], PORT, "{close:#}");
    assert_eq!(close["destination"]["process"], "python3", "{close:#}");
    assert_eq!(close["source"]["port"], client_port, "{close:#}");
    assert_eq!(close["source"]["process"], "lab-client", "{close:#}");
    assert_eq!(close["bytes_sent"], AFTER as u64, "{close:#}");
    assert_eq!(close["bytes_received"], REPLY as u64, "{close:#}");
    let flows = agent.flows(&filters);
    let opens: Vec<_> = flows.iter().filter(|r| r["event"] == "open").collect();
    assert_eq!(opens.len(), 1, "{flows:#?}");
}

/// A connection made before the agent started is reported from its next
/// bytes on: an `open` then, exactly the bytes moved since, both processes,
/// and the server told from the client by the ports (the lower is the
/// server's).
#[test]
fn connections_older_than_the_agent_are_reported_from_their_next_bytes() {
    if !require_root("connections_older_than_the_agent_are_reported_from_their_next_bytes") {
        return;
    }
    const BEFORE: usize = OLDER_BEFORE;
    const AFTER: usize = OLDER_AFTER;
    const REPLY: usize = OLDER_REPLY;
    let lab = Lab::new();
    // The lab's own namespace: a low port no other test can hold.
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), 80);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-server", move || {
        let listener = TcpListener::bind(server).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < BEFORE + AFTER {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "closed early after {got} bytes");
            got += n;
        }
        conn.write_all(&vec![b'r'; REPLY]).expect("reply");
    });
    ready_rx.recv_timeout(WAIT).expect("listening");
    let (cli, client_port, go_tx) = older_client(&lab.client_ns, server);
    let agent = Agent::start(&[]);
    go_tx.send(()).expect("go");
    assert_eq!(cli.join().expect("client"), REPLY);
    srv.join().expect("server");

    let filters = ["--ip", lab.server_v4.as_str(), "--port", "80"];
    let close = agent.wait_flow(&filters, "close", WAIT);
    assert_eq!(close["bytes_sent"], AFTER as u64, "{close:#}");
    assert_eq!(close["bytes_received"], REPLY as u64, "{close:#}");
    assert_eq!(close["source"]["port"], client_port, "{close:#}");
    assert_eq!(close["source"]["process"], "lab-client", "{close:#}");
    assert_eq!(
        close["destination"]["ip"],
        lab.server_v4.as_str(),
        "{close:#}"
    );
    assert_eq!(close["destination"]["port"], 80, "{close:#}");
    assert_eq!(close["destination"]["process"], "lab-server", "{close:#}");
    let flows = agent.flows(&filters);
    let opens: Vec<_> = flows.iter().filter(|r| r["event"] == "open").collect();
    assert_eq!(opens.len(), 1, "{flows:#?}");
}
