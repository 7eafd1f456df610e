//! HTTP/1.1 requests between two namespaces, seen from both sockets: curl
//! (client, egress records) against a real Python HTTP server (ingress
//! records), over one keep-alive connection; and hundreds of requests each
//! on a connection of its own.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::Agent, lab::Lab, output_within, require_root, servers, thread_states, unique_port,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(20);

/// The L7 records seen at one side, without the readiness probe's.
fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .filter(|r| r["l7"]["path"] != "/ready")
        .cloned()
        .collect()
}

#[test]
fn http1_requests_from_both_sides() {
    if !require_root("http1_requests_from_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(10);
    let port_s = port.to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http_server.py");
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server_ns,
            "python3",
            script,
            &lab.server_v4,
            &port_s,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Python HTTP server");
    let base = format!("http://{}:{port}", lab.server_v4);
    wait_for("the HTTP server to listen", WAIT, || {
        let ready = format!("{base}/ready");
        let out = lab.curl(&["-s", "-o", "/dev/null", &ready], Duration::from_secs(10))?;
        out.status.success().then_some(())
    });
    // Five requests on one keep-alive connection.
    let paths = [
        "/users/17",
        "/users/42?token=secret",
        "/slow",
        "/status/404",
        "/",
    ];
    let mut args = vec!["-s".to_owned()];
    for path in paths {
        args.extend([
            "-o".to_owned(),
            "/dev/null".to_owned(),
            format!("{base}{path}"),
        ]);
    }
    let out = lab.curl(&args, Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "curl did not finish; the agent's threads:\n{}",
            thread_states(agent.pid())
        )
    });
    assert!(out.status.success(), "curl failed");
    // SAFETY: ending the server we started, by its pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();

    let curl_records = wait_for("five egress HTTP records from curl", WAIT, || {
        let records = agent.flows(&["--port", &port_s, "--protocol", "http", "--all"]);
        let egress: Vec<Value> = l7(&records, "egress")
            .into_iter()
            .filter(|r| r["source"]["process"] == "curl")
            .collect();
        (egress.len() >= 5 && l7(&records, "ingress").len() >= 5).then_some(records)
    });
    let egress: Vec<Value> = l7(&curl_records, "egress")
        .into_iter()
        .filter(|r| r["source"]["process"] == "curl")
        .collect();
    let ingress = l7(&curl_records, "ingress");
    assert_eq!(egress.len(), 5, "{egress:#?}");
    assert_eq!(ingress.len(), 5, "{ingress:#?}");
    for r in egress.iter().chain(&ingress) {
        assert_eq!(r["l7"]["protocol"], "http");
        assert_eq!(r["l7"]["method"], "GET");
        assert_eq!(r["destination"]["process"], "python3", "{r:#}");
        assert_eq!(r["destination"]["port"], port);
    }
    let by_path = |path: &str| -> Value {
        egress
            .iter()
            .find(|r| {
                r["l7"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(path))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no egress record for {path}: {egress:#?}"))
    };
    assert_eq!(by_path("/users/17")["l7"]["status"], 200);
    assert_eq!(by_path("/status/404")["l7"]["status"], 404);
    // Query values are redacted by default.
    let with_query = by_path("/users/42");
    let path = with_query["l7"]["path"].as_str().expect("path");
    assert!(!path.contains("secret"), "query value leaked: {path}");
    // The handler sleeps 100 ms.
    let slow = by_path("/slow");
    let latency = slow["l7"]["latency_us"].as_u64().expect("latency");
    assert!(latency >= 100_000, "slow request took only {latency} µs");
    assert!(latency < 2_000_000, "slow request took {latency} µs");

    // The L7 filters of `weft flows`.
    let not_found = agent.flows(&["--port", &port_s, "--http-status", "4xx", "--all"]);
    assert_eq!(
        not_found.len(),
        2,
        "one 404 seen from each side: {not_found:#?}"
    );
    let users = agent.flows(&["--port", &port_s, "--http-path", "/users/", "--all"]);
    assert_eq!(users.len(), 4, "{users:#?}");
    let out = agent.client(&["flows", "--http-status", "600"]);
    assert_eq!(out.status.code(), Some(2));

    let port_label = format!("server_port=\"{port}\"");
    let route = "http_route=\"/users/{id}\"";
    assert_eq!(
        agent.metric_sum(
            "http_client_request_duration_seconds_count",
            &[&port_label, route]
        ),
        2.0
    );
    assert_eq!(
        agent.metric_sum(
            "http_server_request_duration_seconds_count",
            &[&port_label, route]
        ),
        2.0
    );
    // Five requests and the readiness probe's.
    assert_eq!(
        agent.metric_sum(
            "http_client_request_duration_seconds_count",
            &[&port_label, "source_workload=\"curl\""]
        ),
        6.0
    );
    assert_eq!(
        agent.metric_sum(
            "http_server_request_duration_seconds_count",
            &[&port_label, "http_response_status_code=\"404\""]
        ),
        1.0
    );
}

/// Requests each on a new connection, one after the other: the kernel
/// hands the memory of the socket just freed to the next connection, so a
/// few kernel socket addresses serve them all, faster than the agent reads
/// payload records (in batches). Every request must still be counted on
/// both sides, and no stream given up.
#[test]
fn http1_new_connection_per_request() {
    if !require_root("http1_new_connection_per_request") {
        return;
    }
    const REQUESTS: usize = 400;
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(12);
    let server = servers::python_http(&lab, port);
    // Threads of the client, each making its share of the requests.
    const THREADS: usize = 16;
    let client = format!(
        "import http.client, threading\n\
         def run(t):\n\
         \x20   for i in range(t, {REQUESTS}, {THREADS}):\n\
         \x20       c = http.client.HTTPConnection('{}', {port}, timeout=10)\n\
         \x20       c.request('GET', f'/users/{{i}}')\n\
         \x20       assert c.getresponse().read()\n\
         \x20       c.close()\n\
         ts = [threading.Thread(target=run, args=(t,)) for t in range({THREADS})]\n\
         [t.start() for t in ts]\n\
         [t.join() for t in ts]\n",
        lab.server_v4
    );
    let mut python = Command::new("ip");
    python.args(["netns", "exec", &lab.client_ns, "python3", "-c", &client]);
    let out = output_within(&mut python, Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "the Python client did not finish; the agent's threads:\n{}",
            thread_states(agent.pid())
        )
    });
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);

    let port_label = format!("server_port=\"{port}\"");
    let route = "http_route=\"/users/{id}\"";
    let counted = |family: &str| agent.metric_sum(family, &[&port_label, route]);
    let families = [
        "http_client_request_duration_seconds_count",
        "http_server_request_duration_seconds_count",
    ];
    // Stretched under emulation, as every other wait is.
    let deadline = std::time::Instant::now() + weft_tests::scaled(WAIT);
    while families.iter().any(|f| counted(f) < REQUESTS as f64)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    for family in families {
        let seen = counted(family);
        if seen != REQUESTS as f64 {
            // Late or lost? The same count once more after another wait,
            // and the L7 records the agent holds for the port.
            std::thread::sleep(weft_tests::scaled(WAIT));
            let port_s = port.to_string();
            let records = agent.flows(&["--port", &port_s, "--protocol", "http", "--all"]);
            let by_side = |side: &str| {
                records
                    .iter()
                    .filter(|r| r["traffic_direction"] == side)
                    .count()
            };
            eprintln!(
                "{family}: {seen} at the deadline, {} after another wait; \
                 L7 records held: {} egress, {} ingress",
                counted(family),
                by_side("egress"),
                by_side("ingress")
            );
            let metrics = agent.metrics();
            let losses: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("weft_events_lost_total") && !l.ends_with(" 0"))
                .collect();
            eprintln!("losses:\n{}", losses.join("\n"));
            let series: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("http_") && l.contains("_count"))
                .collect();
            eprintln!("series:\n{}", series.join("\n"));
            eprintln!("status: {:?}", agent.status_json());
        }
        assert_eq!(seen, REQUESTS as f64, "{family}");
    }
    for stage in ["evicted", "unattributed"] {
        let lost = agent.metric_sum("weft_events_lost_total", &[&format!("stage=\"{stage}\"")]);
        assert_eq!(lost, 0.0, "L7 streams or records lost ({stage})");
    }
}
