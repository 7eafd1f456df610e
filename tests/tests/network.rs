//! What the network does to connections: RTT and retransmits through a
//! shaped link (compared with the kernel's own `ss -tin` view), and packets
//! dropped by a firewall, with the kernel's drop reason.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use weft_tests::{
    agent::Agent,
    lab::{Lab, spawn_in},
    require_root, run, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);

/// `rtt:<srtt ms>/<rttvar>` and `retrans:<cur>/<total>` of the connection
/// to `dport` in `ss -tin` output.
fn ss_rtt_and_retrans(ss: &str, dport: u16) -> (f64, u64) {
    let needle = format!(":{dport}");
    let mut lines = ss.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("ESTAB")
            && line
                .split_whitespace()
                .nth(4)
                .is_some_and(|p| p.ends_with(&needle))
        {
            let info = lines.next().expect("ss info line");
            let rtt = info
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rtt:"))
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.parse().ok())
                .expect("rtt in ss output");
            let retrans = info
                .split_whitespace()
                .find_map(|w| w.strip_prefix("retrans:"))
                .and_then(|v| v.split('/').nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return (rtt, retrans);
        }
    }
    panic!("no established connection to port {dport} in:\n{ss}");
}

#[test]
fn srtt_agrees_with_ss_and_retransmits_are_counted() {
    if !require_root("srtt_agrees_with_ss_and_retransmits_are_counted") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    lab.shape_client_egress();
    let port = unique_port(6);
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
    const BULK: usize = 6_000_000;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-server", move || {
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
        // Wait for the client to close.
        let _ = conn.read(&mut buf);
        got
    });
    ready_rx.recv_timeout(WAIT).expect("listening");
    // The client uploads, reads the reply, then holds the connection open
    // while the test reads `ss`, and closes when told.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let cli = spawn_in(&lab.client_ns, "lab-client", move || {
        let mut c = TcpStream::connect_timeout(&server, WAIT).expect("connect");
        c.write_all(&vec![7u8; BULK]).expect("upload");
        let mut reply = [0u8; 2];
        c.read_exact(&mut reply).expect("reply");
        done_tx.send(()).expect("done");
        close_rx.recv_timeout(WAIT).expect("close signal");
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("upload finished");
    let ss =
        String::from_utf8_lossy(&lab.exec(&lab.client_ns, &["ss", "-tin"]).stdout).into_owned();
    close_tx.send(()).expect("close");
    cli.join().expect("client");
    assert_eq!(srv.join().expect("server"), BULK);
    let (ss_rtt_ms, ss_retrans) = ss_rtt_and_retrans(&ss, port);

    let port_s = port.to_string();
    let close = agent.wait_flow(&["--port", &port_s], "close", WAIT);
    let srtt_ms = close["srtt_us"].as_u64().expect("srtt") as f64 / 1000.0;
    let retrans = close["retransmits"].as_u64().expect("retransmits");
    eprintln!(
        "weft srtt {srtt_ms} ms, retransmits {retrans}; ss rtt {ss_rtt_ms} ms, retrans {ss_retrans}"
    );
    assert_eq!(close["bytes_sent"], BULK as u64);
    // A veth pair's RTT is tens of µs; the shaper's queue adds
    // milliseconds (how many depends on how full the queue is when the
    // upload ends: 5 to 30 ms seen here).
    assert!(
        ss_rtt_ms > 1.0,
        "the shaper should add queueing delay (ss rtt {ss_rtt_ms} ms)"
    );
    let ratio = srtt_ms / ss_rtt_ms;
    assert!(
        (0.7..=1.3).contains(&ratio),
        "weft srtt {srtt_ms} ms vs ss rtt {ss_rtt_ms} ms: more than 30% apart"
    );
    assert!(
        ss_retrans > 0,
        "the shaper should have dropped segments: {ss}"
    );
    assert!(
        retrans > 0,
        "weft reported no retransmits (ss: {ss_retrans})"
    );
    // The tracepoint fires once per retransmitted skb; ss counts segments,
    // and one skb may carry several.
    assert!(retrans <= ss_retrans, "weft {retrans} > ss {ss_retrans}");
    let port_label = format!("destination_port=\"{port}\"");
    assert_eq!(
        agent.metric_sum("weft_tcp_retransmits_total", &[port_label.as_str()]),
        retrans as f64
    );
}

#[test]
fn firewall_drops_show_their_reason() {
    if !require_root("firewall_drops_show_their_reason") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(7);
    let port_s = port.to_string();
    for rule in [
        "add table inet wefttest",
        "add chain inet wefttest input { type filter hook input priority 0 ; }",
        &format!("add rule inet wefttest input tcp dport {port} drop"),
    ] {
        let mut args = vec!["ip", "netns", "exec", &lab.server_ns, "nft"];
        args.extend(rule.split(' '));
        run(&args);
    }
    let label = "reason=\"NETFILTER_DROP\"";
    let before = agent.metric_sum("weft_packet_drops_total", &[label]);
    let server = SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
    // The SYN is dropped at t=0 and its retransmission at t=1s; the client
    // gives up at 1.5s.
    let err = spawn_in(&lab.client_ns, "lab-client", move || {
        TcpStream::connect_timeout(&server, Duration::from_millis(1500)).expect_err("dropped")
    })
    .join()
    .expect("client");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let fail = agent.wait_flow(&["--port", &port_s], "fail", WAIT);
    assert_eq!(fail["failure"], "timeout", "{fail:#}");
    assert_eq!(fail["resets_received"], 0);
    let syns = 1 + fail["retransmits"].as_u64().expect("retransmits");
    assert!(
        syns >= 2,
        "the SYN was retransmitted at least once: {fail:#}"
    );
    // Every SYN was dropped by the firewall, each counted once.
    let drops = weft_tests::wait_for("the drops in the metrics", WAIT, || {
        let after = agent.metric_sum("weft_packet_drops_total", &[label]);
        (after - before >= syns as f64).then_some(after - before)
    });
    assert_eq!(drops, syns as f64);

    // And as `drop` records: the SYNs from the client's address to the
    // server's port, with their reason and count, summed over the polls
    // they fell in.
    let records = weft_tests::wait_for("drop records of every SYN", WAIT, || {
        let records = agent.flows(&["--port", &port_s, "--verdict", "dropped", "--all"]);
        let packets: u64 = records
            .iter()
            .filter_map(|r| r["packets_sent"].as_u64())
            .sum();
        (packets >= syns).then_some(records)
    });
    for r in &records {
        assert_eq!(r["event"], "drop", "{r:#}");
        assert_eq!(r["verdict"], "dropped", "{r:#}");
        assert_eq!(r["drop_reason"], "NETFILTER_DROP", "{r:#}");
        assert_eq!(r["transport"], "tcp", "{r:#}");
        assert_eq!(r["source"]["ip"], lab.client_v4.as_str(), "{r:#}");
        assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
        assert_eq!(r["destination"]["port"], port, "{r:#}");
    }
    let packets: u64 = records
        .iter()
        .filter_map(|r| r["packets_sent"].as_u64())
        .sum();
    assert_eq!(packets, syns, "{records:#?}");
}

/// curl in the lab's client namespace: `requests` GETs of `url`, all on one
/// keep-alive connection (one curl), or each on a new connection (one
/// curl each, as a user runs it: curl closes first); returns how many
/// answered 200.
fn curl_gets(lab: &Lab, url: &str, requests: usize, new_connections: bool) -> usize {
    let curl = |n: usize| {
        let mut curl = std::process::Command::new("ip");
        curl.args(["netns", "exec", &lab.client_ns, "curl", "-s"]);
        for _ in 0..n {
            curl.args(["-o", "/dev/null", "-w", "%{http_code}\n", url]);
        }
        let out = curl.output().expect("curl");
        assert!(out.status.success(), "curl failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|code| *code == "200")
            .count()
    };
    if new_connections {
        (0..requests).map(|_| curl(1)).sum()
    } else {
        curl(requests)
    }
}

/// The kernel's frees that were not drops (`weft_events_total`).
const NOT_DROP: &str = "source=\"skb_not_drop\"";

/// Connections that open, exchange and close normally lose no packet, so
/// they make no `drop` record and no `weft_packet_drops_total`: the kernel
/// frees a closed socket's queued FIN with `QUEUE_PURGE` at teardown, the
/// peer's FIN that a TIME_WAIT socket acknowledged with `NOT_SPECIFIED`,
/// and the lab's IPv6 multicast (MLD, router solicitations) for groups
/// nobody joined with `NOT_SPECIFIED`; none of them is a loss.
#[test]
fn ordinary_connections_are_not_drops() {
    if !require_root("ordinary_connections_are_not_drops") {
        return;
    }
    // The lab and the server first: the harness's connects before the
    // server listened were refused (real NO_SOCKET drops), and the lab's
    // link setup is not what this test is about.
    let lab = Lab::new();
    let port = unique_port(8);
    let mut server = weft_tests::servers::python_http(&lab, port);
    let url = format!("http://{}:{port}/", lab.server_v4);
    let agent = Agent::start(&[]);
    let server_port = format!("destination_port=\"{port}\"");
    let settled = |agent: &Agent| {
        let labels = [server_port.as_str()];
        let opened = agent.metric_sum("weft_tcp_connections_opened_total", &labels);
        let closed = agent.metric_sum("weft_tcp_connections_closed_total", &labels);
        (opened == closed).then_some(opened)
    };
    let warmup = weft_tests::wait_for("no connection to the server open", WAIT, || settled(&agent));
    let lab_drops = |agent: &Agent| -> Vec<serde_json::Value> {
        [lab.client_v4.as_str(), lab.server_v4.as_str()]
            .into_iter()
            .flat_map(|ip| agent.flows(&["--ip", ip, "--verdict", "dropped", "--all"]))
            .collect()
    };
    // The metric is the node's: a drop elsewhere on the machine while this
    // test runs is counted too, and has its own record. So every drop
    // counted during the traffic must be a record of another address pair.
    let dropped_packets = |agent: &Agent| -> f64 {
        agent
            .flows(&["--verdict", "dropped", "--all"])
            .iter()
            .filter_map(|r| r["packets_sent"].as_u64())
            .sum::<u64>() as f64
    };
    // The baseline once the metric is steady: unchanged over more than
    // two polls.
    let drops_before = weft_tests::wait_for("the drop metric to settle", WAIT, || {
        let first = agent.metric_sum("weft_packet_drops_total", &[]);
        std::thread::sleep(Duration::from_millis(2500));
        (agent.metric_sum("weft_packet_drops_total", &[]) == first).then_some(first)
    });
    let packets_before = dropped_packets(&agent);
    let not_drops_before = agent.metric_sum("weft_events_total", &[NOT_DROP]);

    assert_eq!(curl_gets(&lab, &url, 200, true), 200);
    assert_eq!(curl_gets(&lab, &url, 50, false), 50);
    // 200 connections of one request, one of 50; all closed.
    weft_tests::wait_for("all 201 connections closed", WAIT, || {
        settled(&agent).filter(|&n| n == warmup + 201.0)
    });
    // Two polls (1 s each) for any drop to reach records and metrics.
    std::thread::sleep(Duration::from_millis(2500));
    let drops = lab_drops(&agent);
    assert!(
        drops.is_empty(),
        "ordinary connections made drop records: {drops:#?}"
    );
    let drops_after = agent.metric_sum("weft_packet_drops_total", &[]);
    let elsewhere = dropped_packets(&agent) - packets_before;
    assert_eq!(
        drops_after - drops_before,
        elsewhere,
        "weft_packet_drops_total grew by more than the drops recorded elsewhere: {}",
        agent
            .metrics()
            .lines()
            .filter(|l| l.starts_with("weft_packet_drops_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if elsewhere > 0.0 {
        eprintln!("{elsewhere} packets dropped elsewhere on the machine meanwhile");
    }
    // What was freed and is not a drop is still counted, apart. How many
    // of the 201 closes free a FIN so depends on which end closed first
    // and on timing, so only its growth is certain.
    let not_drops_after = agent.metric_sum("weft_events_total", &[NOT_DROP]);
    assert!(
        not_drops_after > not_drops_before,
        "teardown frees counted apart: {not_drops_before} -> {not_drops_after}"
    );
    server.stop();
}
