//! Events lost under a burst (a one-page ring and a tiny queue, set by
//! configuration): what is reported stays true. No connection is closed
//! twice, the byte metrics are the sum of the close records, every
//! connection that was seen open is closed, the flow table returns to its
//! idle size, and the losses are counted.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use weft_tests::{
    agent::Agent,
    lab::{Lab, spawn_in},
    require_root, unique_port, wait_for,
};

const THREADS: usize = 8;
const PER_THREAD: usize = 100;
const SEND: usize = 1000;
const REPLY: usize = 100;

fn flow_table_entries(agent: &Agent) -> u64 {
    let status = agent.status_json().expect("status");
    status["flow_table"]["entries"].as_u64().expect("entries")
}

fn losses(agent: &Agent) -> f64 {
    ["kernel_ring", "userspace_queue", "close_lost"]
        .iter()
        .map(|stage| {
            agent.metric_sum(
                "weft_events_lost_total",
                &["source=\"tcp_events\"", &format!("stage=\"{stage}\"")],
            )
        })
        .sum()
}

#[test]
fn a_burst_through_a_tiny_ring_closes_each_connection_once() {
    if !require_root("a_burst_through_a_tiny_ring_closes_each_connection_once") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("weft-lossy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = dir.join("weft.yaml");
    std::fs::write(
        &config,
        "ring_buffer_bytes: 4096\nevent_queue_capacity: 16\nclose_grace: 0s\n",
    )
    .expect("write config");
    let config_s = config.to_string_lossy().into_owned();
    let agent = Agent::start(&["--config", &config_s]);
    let lab = Lab::new();
    let port = unique_port(16);
    let server = lab.server_addr(port);
    // Settled before the burst: what the table holds with no test traffic.
    std::thread::sleep(Duration::from_secs(3));
    let idle = flow_table_entries(&agent);

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "burst-server", move || {
        let listener = TcpListener::bind(server).expect("bind");
        ready_tx.send(()).expect("ready");
        for _ in 0..THREADS * PER_THREAD {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; SEND];
            c.read_exact(&mut buf).expect("server read");
            c.write_all(&[b'r'; REPLY]).expect("server write");
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listening");
    let clients: Vec<_> = (0..THREADS)
        .map(|_| {
            spawn_in(&lab.client_ns, "burst-client", move || {
                for _ in 0..PER_THREAD {
                    let mut c = TcpStream::connect(server).expect("connect");
                    c.write_all(&[b's'; SEND]).expect("client write");
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).expect("client read");
                    assert_eq!(got.len(), REPLY);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    srv.join().expect("server");

    // Every connection closes, seen or not: the table returns to idle.
    wait_for(
        "the flow table to return to its idle size",
        Duration::from_secs(30),
        || (flow_table_entries(&agent) <= idle).then_some(()),
    );
    let lost = losses(&agent);
    assert!(lost > 0.0, "the burst lost no event: make it bigger");

    let port_s = port.to_string();
    let records = agent.flows(&["--port", &port_s, "--all"]);
    let mut closes: HashMap<u64, usize> = HashMap::new();
    let mut opened = HashSet::new();
    let mut sent = 0u64;
    let mut received = 0u64;
    for r in &records {
        let source_port = r["source"]["port"].as_u64().expect("source port");
        if r["type"] != "l4" {
            continue;
        }
        match r["event"].as_str() {
            Some("close") => {
                *closes.entry(source_port).or_default() += 1;
                sent += r["bytes_sent"].as_u64().expect("bytes_sent");
                received += r["bytes_received"].as_u64().expect("bytes_received");
            }
            Some("open") => {
                opened.insert(source_port);
            }
            _ => {}
        }
    }
    let twice: Vec<_> = closes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "closed more than once: {twice:?}");
    let unclosed: Vec<_> = opened.iter().filter(|p| !closes.contains_key(p)).collect();
    assert!(unclosed.is_empty(), "opened and never closed: {unclosed:?}");
    assert!(closes.len() <= THREADS * PER_THREAD);
    assert!(!closes.is_empty());
    eprintln!(
        "{} connections, {} closed in records, {} opens seen, {lost} events lost",
        THREADS * PER_THREAD,
        closes.len(),
        opened.len()
    );

    let l = format!("destination_port=\"{port}\"");
    assert_eq!(
        agent.metric_sum("weft_tcp_sent_bytes_total", &[&l]),
        sent as f64,
        "bytes sent in the metrics and in the close records"
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_received_bytes_total", &[&l]),
        received as f64
    );
    assert_eq!(
        agent.metric_sum("weft_tcp_connections_closed_total", &[&l]),
        closes.len() as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
