//! UDP flows: exact datagram and byte counts both ways, both processes,
//! IPv4 and IPv6, closed after the idle timeout.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    lab::{Lab, spawn_in},
    require_root, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);
const DATAGRAMS: usize = 10;

fn echo(ipv6: bool, offset: u16) {
    let agent = Agent::start(&["--udp-idle-timeout", "2s"]);
    let lab = Lab::new();
    let port = unique_port(offset);
    let (cip, sip) = if ipv6 {
        (lab.client_v6.clone(), lab.server_v6.clone())
    } else {
        (lab.client_v4.clone(), lab.server_v4.clone())
    };
    let server = SocketAddr::new(sip.parse().expect("lab address"), port);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    // The server answers each 100-byte datagram with 40 bytes.
    let srv = spawn_in(&lab.server_ns, "udp-server", move || {
        let sock = UdpSocket::bind(server).expect("bind");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS {
            let (n, peer) = sock.recv_from(&mut buf).expect("recv");
            assert_eq!(n, 100);
            sock.send_to(&[b'a'; 40], peer).expect("reply");
        }
    });
    ready_rx.recv_timeout(WAIT).expect("server ready");
    spawn_in(&lab.client_ns, "udp-client", move || {
        let bind: SocketAddr = SocketAddr::new(cip.parse().expect("lab address"), 0);
        let sock = UdpSocket::bind(bind).expect("bind client");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS {
            sock.send_to(&[b'q'; 100], server).expect("send");
            let (n, _) = sock.recv_from(&mut buf).expect("answer");
            assert_eq!(n, 40);
        }
    })
    .join()
    .expect("client");
    srv.join().expect("server");

    let port_s = port.to_string();
    let close = agent.wait_flow(&["--port", &port_s, "--protocol", "udp"], "close", WAIT);
    assert_eq!(close["transport"], "udp");
    assert_eq!(close["bytes_sent"], 100 * DATAGRAMS as u64, "{close:#}");
    assert_eq!(close["bytes_received"], 40 * DATAGRAMS as u64, "{close:#}");
    assert_eq!(close["packets_sent"], DATAGRAMS as u64, "{close:#}");
    assert_eq!(close["packets_received"], DATAGRAMS as u64, "{close:#}");
    // Older kernels (5.10, 6.1 and 6.12 among those tested) refuse task
    // helpers in cgroup_skb programs: UDP flows then carry no process.
    let (client, server) = if agent.lacks_feature("UDP sender process") {
        (Value::Null, Value::Null)
    } else {
        (Value::from("udp-client"), Value::from("udp-server"))
    };
    assert_eq!(close["source"]["process"], client, "{close:#}");
    assert_eq!(close["destination"]["process"], server, "{close:#}");
    assert_eq!(close["destination"]["ip"], sip.as_str());
    assert_eq!(close["destination"]["port"], port);
    let flows = agent.flows(&["--port", &port_s]);
    assert_eq!(
        flows.iter().filter(|r| r["event"] == "open").count(),
        1,
        "{flows:#?}"
    );
    assert_eq!(
        flows.iter().filter(|r| r["event"] == "close").count(),
        1,
        "{flows:#?}"
    );

    let port_label = format!("destination_port=\"{port}\"");
    let l = [port_label.as_str()];
    assert_eq!(
        agent.metric_sum("weft_udp_sent_bytes_total", &l),
        (100 * DATAGRAMS) as f64
    );
    assert_eq!(
        agent.metric_sum("weft_udp_received_bytes_total", &l),
        (40 * DATAGRAMS) as f64
    );
}

#[test]
fn udp_ipv4_exact_datagrams() {
    if !require_root("udp_ipv4_exact_datagrams") {
        return;
    }
    echo(false, 8);
}

#[test]
fn udp_ipv6_exact_datagrams() {
    if !require_root("udp_ipv6_exact_datagrams") {
        return;
    }
    echo(true, 9);
}
