//! Traces: spans of HTTP/1.x exchanges exported over OTLP to a real
//! receiver (the official protobuf definitions, tests/peers/
//! otlp_receiver.py), checked by what it received: curl against a Python
//! HTTP server in the lab, both ends on this node, so every request is one
//! trace of a CLIENT span (curl) and its child SERVER span (python3). The
//! L7 histograms carry the trace ids as OpenMetrics exemplars.

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    lab::Lab,
    otlp::{self, KIND_CLIENT, KIND_SERVER, Receiver},
    peer::TempDir,
    prometheus::Prometheus,
    require_root, servers, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(30);
/// Requests per curl process (one keep-alive connection each) ...
const PER_CONNECTION: usize = 10;
/// ... and processes: 50 requests, every fifth to `/slow`.
const CONNECTIONS: usize = 5;
const REQUESTS: usize = PER_CONNECTION * CONNECTIONS;

/// An agent whose `traces:` section is `traces` (YAML lines).
fn agent_with(dir: &TempDir, traces: &str) -> Agent {
    agent_logging(dir, traces, "info")
}

/// As [`agent_with`], logging what `RUST_LOG=log_filter` lets through.
fn agent_logging(dir: &TempDir, traces: &str, log_filter: &str) -> Agent {
    let path = dir.join("weft.yaml");
    std::fs::write(&path, format!("traces:\n{traces}")).expect("write the configuration");
    Agent::start_logging(log_filter, &["--config", &path])
}

/// The paths curl asks for: `/users/N`, and every fifth `/slow`.
fn paths() -> Vec<String> {
    (0..REQUESTS)
        .map(|i| {
            if i % 5 == 4 {
                "/slow".to_owned()
            } else {
                format!("/users/{i}")
            }
        })
        .collect()
}

/// 50 GETs from curl in the client namespace, `PER_CONNECTION` per process.
fn curl_requests(lab: &Lab, base: &str, headers: &[&str]) {
    for chunk in paths().chunks(PER_CONNECTION) {
        let mut curl = Command::new("ip");
        curl.args(["netns", "exec", &lab.client_ns, "curl", "-sf"]);
        for h in headers {
            curl.args(["-H", h]);
        }
        for path in chunk {
            curl.args(["-o", "/dev/null", &format!("{base}{path}")]);
        }
        let out = curl.output().expect("run curl");
        assert!(out.status.success(), "curl failed: {out:?}");
    }
}

/// The spans of the test's requests (not of the server's readiness probe).
fn request_spans(receiver: &Receiver, port: u16) -> Vec<Value> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| s["attributes"]["server.port"] == port)
        .collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// Exactly one trace per request, each a CLIENT span of curl and its child
/// SERVER span of python3, with the HTTP attributes of the request.
fn check_traces(spans: &[Value], protocol: &str, lab: &Lab, port: u16) {
    assert_eq!(spans.len(), 2 * REQUESTS, "spans: {spans:#?}");
    let traces = otlp::traces(spans);
    assert_eq!(traces.len(), REQUESTS, "one trace per request");
    let mut paths_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (id, trace) in &traces {
        assert_eq!(id.len(), 32, "{id}");
        let client: Vec<&Value> = trace.iter().filter(|s| s["kind"] == KIND_CLIENT).collect();
        let server: Vec<&Value> = trace.iter().filter(|s| s["kind"] == KIND_SERVER).collect();
        assert_eq!((client.len(), server.len()), (1, 1), "{trace:#?}");
        let (client, server) = (client[0], server[0]);
        assert_eq!(client["parent_span_id"], "", "the client span is the root");
        assert_eq!(
            server["parent_span_id"], client["span_id"],
            "the server span is the client span's child"
        );
        for s in [client, server] {
            assert_eq!(s["protocol"], protocol);
            assert_eq!(s["scope"], "weft");
            assert_eq!(attr(s, "http.request.method"), "GET");
            assert_eq!(attr(s, "http.response.status_code"), 200);
            assert_eq!(attr(s, "server.address"), lab.server_v4.as_str());
            assert_eq!(attr(s, "server.port"), port);
            assert_eq!(attr(s, "url.path"), attr(client, "url.path"));
            assert_ne!(s["status"], otlp::STATUS_ERROR);
            let duration =
                s["end_ns"].as_u64().expect("end") - s["start_ns"].as_u64().expect("start");
            if attr(s, "url.path") == "/slow" {
                assert!(duration >= 100_000_000, "/slow took {duration} ns: {s:#}");
            }
        }
        assert_eq!(attr(server, "client.address"), lab.client_v4.as_str());
        assert_eq!(attr(client, "network.peer.port"), port);
        assert_eq!(client["resource"]["service.name"], "curl");
        assert_eq!(client["resource"]["process.executable.name"], "curl");
        assert_eq!(server["resource"]["service.name"], "python3");
        assert_eq!(server["resource"]["process.executable.name"], "python3");
        for s in [client, server] {
            assert!(
                s["resource"]["process.pid"].as_u64().is_some_and(|p| p > 0),
                "{s:#}"
            );
            assert!(
                s["resource"]["host.name"]
                    .as_str()
                    .is_some_and(|h| !h.is_empty())
            );
        }
        let path = attr(client, "url.path")
            .as_str()
            .expect("url.path")
            .to_owned();
        *paths_seen.entry(path).or_default() += 1;
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for p in paths() {
        *expected.entry(p).or_default() += 1;
    }
    assert_eq!(paths_seen, expected);
}

/// The agent's records of the requests carry the spans' ids, and
/// `weft flows --trace-id` lists both records of one trace.
fn check_records(agent: &Agent, spans: &[Value], port: u16) {
    let port_s = port.to_string();
    let records: Vec<Value> = agent
        .flows(&["--port", &port_s, "--protocol", "http", "--all"])
        .into_iter()
        .filter(|r| r["type"] == "l7" && r["l7"]["path"] != "/ready")
        .collect();
    assert_eq!(records.len(), 2 * REQUESTS, "{records:#?}");
    for r in &records {
        let span = spans
            .iter()
            .find(|s| s["span_id"] == r["span_id"])
            .unwrap_or_else(|| panic!("no span for record {r:#}"));
        assert_eq!(span["trace_id"], r["trace_id"]);
        let parent = r["parent_span_id"].as_str().unwrap_or_default();
        assert_eq!(span["parent_span_id"], parent);
    }
    let trace_id = records[0]["trace_id"].as_str().expect("trace_id");
    let one = agent.flows(&["--trace-id", trace_id, "--all"]);
    assert_eq!(one.len(), 2, "{one:#?}");
    assert!(one.iter().all(|r| r["trace_id"] == trace_id));
}

/// The HTTP histograms' buckets of the requests carry trace ids of spans
/// the receiver got (OpenMetrics exemplars, client and server side); the
/// classic text format has none.
fn check_exemplars(agent: &Agent, spans: &[Value], port: u16) {
    let om = agent.openmetrics();
    let port_label = format!("server_port=\"{port}\"");
    for family in [
        "http_server_request_duration_seconds_bucket",
        "http_client_request_duration_seconds_bucket",
    ] {
        let ids: Vec<&str> = om
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(&port_label))
            .filter_map(|l| l.split_once(" # {trace_id=\""))
            .filter_map(|(_, rest)| rest.split('"').next())
            .collect();
        assert!(!ids.is_empty(), "{family}: no exemplar:\n{om}");
        for id in ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                spans.iter().any(|s| s["trace_id"] == id),
                "{family}: exemplar trace {id} is not at the receiver"
            );
        }
    }
    assert!(om.trim_end().ends_with("# EOF"), "not OpenMetrics");
    assert!(!agent.metrics().contains("trace_id="));
}

/// A real Prometheus scraping the agent keeps the exemplars: what a
/// Grafana latency panel links to the trace with.
fn check_exemplars_in_prometheus(prometheus: &Prometheus, spans: &[Value], port: u16) {
    let query = format!("http_server_request_duration_seconds_bucket{{server_port=\"{port}\"}}");
    let series = wait_for("exemplars in Prometheus", WAIT, || {
        let series = prometheus.query_exemplars(&query, 120).ok()?;
        (!series.is_empty()).then_some(series)
    });
    let ids: Vec<&str> = series
        .iter()
        .flat_map(|s| s["exemplars"].as_array().into_iter().flatten())
        .filter_map(|e| e["labels"]["trace_id"].as_str())
        .collect();
    assert!(!ids.is_empty(), "{series:?}");
    for id in ids {
        assert!(
            spans.iter().any(|s| s["trace_id"] == id),
            "exemplar trace {id} in Prometheus is not at the receiver"
        );
    }
}

fn http1_traces_over(protocol: &str) {
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint(protocol);
    let agent = agent_with(
        &dir,
        &format!("  endpoint: {endpoint}\n  protocol: {protocol}\n"),
    );
    let prometheus = Prometheus::start(agent.metrics_port);
    let lab = Lab::new();
    let port = unique_port(30);
    let server = servers::python_http(&lab, port);
    let base = format!("http://{}", server.addr);
    curl_requests(&lab, &base, &[]);
    let spans = wait_for("the spans of 50 requests at the receiver", WAIT, || {
        let spans = request_spans(&receiver, port);
        (spans.len() >= 2 * REQUESTS).then_some(spans)
    });
    // Nothing more comes after a batch interval.
    std::thread::sleep(Duration::from_secs(1));
    let spans_after = request_spans(&receiver, port);
    assert_eq!(spans_after.len(), spans.len());
    check_traces(&spans, protocol, &lab, port);
    // The agent's own export connections are never traced (no loop).
    let own: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| {
            [receiver.grpc_port, receiver.http_port]
                .iter()
                .any(|p| s["attributes"]["server.port"] == *p)
        })
        .collect();
    assert!(own.is_empty(), "spans of the export itself: {own:#?}");
    check_records(&agent, &spans, port);
    check_exemplars(&agent, &spans, port);
    check_exemplars_in_prometheus(&prometheus, &spans, port);
    let exported = agent.metric_sum("weft_spans_exported_total", &[]);
    assert!(exported >= (2 * REQUESTS) as f64, "exported {exported}");
    let lost = agent.metric_sum("weft_events_lost_total", &["source=\"spans\""]);
    assert_eq!(lost, 0.0);
}

#[test]
fn http1_traces_over_otlp_grpc() {
    if !require_root("http1_traces_over_otlp_grpc") {
        return;
    }
    http1_traces_over("grpc");
}

#[test]
fn http1_traces_over_otlp_http_protobuf() {
    if !require_root("http1_traces_over_otlp_http_protobuf") {
        return;
    }
    http1_traces_over("http/protobuf");
}

/// No collector listening: the agent keeps running, every span it made is
/// counted as lost, none as exported.
#[test]
fn spans_for_an_absent_collector_are_counted_as_lost() {
    if !require_root("spans_for_an_absent_collector_are_counted_as_lost") {
        return;
    }
    let dir = TempDir::new("traces");
    // A port nothing listens on (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let agent = agent_with(
        &dir,
        &format!("  endpoint: http://127.0.0.1:{closed}\n  protocol: http/protobuf\n"),
    );
    let lab = Lab::new();
    let port = unique_port(31);
    let server = servers::python_http(&lab, port);
    curl_requests(&lab, &format!("http://{}", server.addr), &[]);
    let port_s = port.to_string();
    // Every L7 record with a span id is a span that was made.
    let made = wait_for("records of the 100 spans", WAIT, || {
        let with_span = agent
            .flows(&["--port", &port_s, "--protocol", "http", "--all"])
            .into_iter()
            .filter(|r| r["span_id"].is_string())
            .count();
        (with_span >= 2 * REQUESTS).then_some(with_span)
    });
    let all_spans = agent
        .flows(&["--protocol", "http", "--all"])
        .into_iter()
        .filter(|r| r["span_id"].is_string())
        .count();
    assert!(made >= 2 * REQUESTS);
    let lost = wait_for("the spans counted as lost", WAIT, || {
        let lost = agent.metric_sum("weft_events_lost_total", &["source=\"spans\""]);
        (lost >= all_spans as f64).then_some(lost)
    });
    assert_eq!(lost, all_spans as f64, "every span made is lost, once");
    assert_eq!(agent.metric_sum("weft_spans_exported_total", &[]), 0.0);
    let status = agent.status_json().expect("the agent answers");
    let losses = status.to_string();
    assert!(
        losses.contains("\"spans\""),
        "weft status shows span losses: {losses}"
    );
}

/// A bad `traces:` value stops the agent at start with status 2, naming
/// the field.
#[test]
fn bad_traces_configuration_is_refused() {
    let dir = TempDir::new("traces");
    for (yaml, field) in [
        ("traces:\n  sampling_ratio: 2\n", "traces.sampling_ratio"),
        (
            "traces:\n  inject_traceparent: true\n",
            "traces.inject_traceparent",
        ),
        (
            "traces:\n  endpoint: http://127.0.0.1:4318\n  protocol: zipkin\n",
            "traces.protocol",
        ),
    ] {
        let path = dir.join("bad.yaml");
        std::fs::write(&path, yaml).expect("write the configuration");
        let out = weft_tests::agent::weft(&["agent", "--config", &path, "--print-config"]);
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

/// A client that sends its own `traceparent`: its trace id on every span,
/// its parent as the client span's parent; with sampled=0, no spans.
/// The incoming trace context of the traceparent tests.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const STATE: &str = "vendor=abc,other=1";

#[test]
fn an_incoming_traceparent_is_honoured() {
    if !require_root("an_incoming_traceparent_is_honoured") {
        return;
    }
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("http/protobuf");
    let agent = agent_with(&dir, &format!("  endpoint: {endpoint}\n"));
    let lab = Lab::new();
    let (sampled_port, unsampled_port) = (unique_port(32), unique_port(33));
    let sampled = servers::python_http(&lab, sampled_port);
    let unsampled = servers::python_http(&lab, unsampled_port);
    let header = |flags: &str| format!("traceparent: 00-{TRACE}-{PARENT}-{flags}");
    curl_requests(
        &lab,
        &format!("http://{}", sampled.addr),
        &[&header("01"), &format!("tracestate: {STATE}")],
    );
    curl_requests(
        &lab,
        &format!("http://{}", unsampled.addr),
        &[&header("00")],
    );

    let spans = wait_for("the spans of the sampled requests", WAIT, || {
        let spans = request_spans(&receiver, sampled_port);
        (spans.len() >= 2 * REQUESTS).then_some(spans)
    });
    assert_eq!(spans.len(), 2 * REQUESTS);
    let ids: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    assert_eq!(ids.len(), 2 * REQUESTS, "every span has its own id");
    for s in &spans {
        assert_eq!(s["trace_id"], TRACE, "{s:#}");
        assert_eq!(s["trace_state"], STATE, "{s:#}");
        if s["kind"] == KIND_CLIENT {
            assert_eq!(s["parent_span_id"], PARENT, "{s:#}");
        } else {
            assert_eq!(s["kind"], KIND_SERVER);
            let parent = s["parent_span_id"].as_str().expect("parent");
            let client = spans
                .iter()
                .find(|c| c["span_id"] == parent)
                .unwrap_or_else(|| panic!("the parent of {s:#} is no client span"));
            assert_eq!(client["kind"], KIND_CLIENT);
            assert_eq!(attr(client, "url.path"), attr(s, "url.path"));
        }
    }

    // The unsampled requests were parsed (their records are there) but
    // gave no span and no trace fields.
    let port_s = unsampled_port.to_string();
    let records = wait_for("the records of the unsampled requests", WAIT, || {
        let records: Vec<Value> = agent
            .flows(&["--port", &port_s, "--protocol", "http", "--all"])
            .into_iter()
            .filter(|r| r["type"] == "l7" && r["l7"]["path"] != "/ready")
            .collect();
        (records.len() >= 2 * REQUESTS).then_some(records)
    });
    assert!(
        records.iter().all(|r| r.get("trace_id").is_none()),
        "{records:#?}"
    );
    // One more batch interval: nothing for that port arrives.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(request_spans(&receiver, unsampled_port).len(), 0);
}

/// The spans an agent exports over OTLP/gRPC for the four calls of the
/// gRPC peer (grpcio at both ends) to a server on `port`, each call
/// carrying `trace` as metadata when given: exactly 8.
fn grpc_call_spans(port: u16, trace: Option<(&str, &str)>) -> Vec<Value> {
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("grpc");
    let _agent = agent_with(&dir, &format!("  endpoint: {endpoint}\n  protocol: grpc\n"));
    let lab = Lab::new();
    let server = servers::grpc(&lab, port);
    assert_eq!(
        servers::grpc_calls_with(&lab, &server, trace),
        "SayHello OK\nSayHello OK\nLookup NOT_FOUND\nSlow OK\n"
    );
    let spans = wait_for("the spans of four gRPC calls", WAIT, || {
        let spans = request_spans(&receiver, port);
        (spans.len() >= 8).then_some(spans)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(request_spans(&receiver, port).len(), 8, "{spans:#?}");
    spans
}

/// gRPC calls (grpcio at both ends): one trace per call, CLIENT and its
/// child SERVER span, named `service/method`, NOT_FOUND an error.
#[test]
fn grpc_spans_carry_the_rpc_and_its_status() {
    if !require_root("grpc_spans_carry_the_rpc_and_its_status") {
        return;
    }
    let spans = grpc_call_spans(unique_port(34), None);
    let traces = otlp::traces(&spans);
    assert_eq!(traces.len(), 4, "{traces:#?}");
    let mut methods = Vec::new();
    for trace in traces.values() {
        let client = trace
            .iter()
            .find(|s| s["kind"] == KIND_CLIENT)
            .expect("client span");
        let server = trace
            .iter()
            .find(|s| s["kind"] == KIND_SERVER)
            .expect("server span");
        assert_eq!(server["parent_span_id"], client["span_id"]);
        for s in [client, server] {
            assert_eq!(attr(s, "rpc.system"), "grpc");
            assert_eq!(attr(s, "rpc.service"), "weft.test.Greeter");
            let method = attr(s, "rpc.method").as_str().expect("rpc.method");
            assert_eq!(s["name"], format!("weft.test.Greeter/{method}"));
            let code = attr(s, "rpc.grpc.status_code")
                .as_u64()
                .expect("status code");
            let error = s["status"] == otlp::STATUS_ERROR;
            let not_found = method == "Lookup";
            assert_eq!(code == 5, not_found, "{s:#}");
            assert_eq!(
                error, not_found,
                "NOT_FOUND, and only it, is an error: {s:#}"
            );
            if method == "Slow" {
                let d = s["end_ns"].as_u64().expect("end") - s["start_ns"].as_u64().expect("start");
                assert!(d >= 100_000_000, "Slow took {d} ns");
            }
            assert_eq!(s["resource"]["service.name"], "python3");
        }
        methods.push(
            attr(client, "rpc.method")
                .as_str()
                .expect("method")
                .to_owned(),
        );
    }
    methods.sort();
    assert_eq!(methods, ["Lookup", "SayHello", "SayHello", "Slow"]);
}

/// gRPC metadata carries the trace context as HTTP/1.x headers do: every
/// span of the four calls is in the caller's trace, with its tracestate,
/// each CLIENT span the child of the caller's span.
#[test]
fn grpc_metadata_traceparent_is_honoured() {
    if !require_root("grpc_metadata_traceparent_is_honoured") {
        return;
    }
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let spans = grpc_call_spans(unique_port(38), Some((&traceparent, STATE)));
    assert_eq!(otlp::traces(&spans).len(), 1, "one trace: the caller's");
    for s in &spans {
        assert_eq!(s["trace_id"], TRACE, "{s:#}");
        assert_eq!(s["trace_state"], STATE, "{s:#}");
        if s["kind"] == KIND_CLIENT {
            assert_eq!(s["parent_span_id"], PARENT, "{s:#}");
        } else {
            let parent = s["parent_span_id"].as_str().expect("parent");
            let client = spans
                .iter()
                .find(|c| c["span_id"] == parent)
                .unwrap_or_else(|| panic!("the parent of {s:#} is no client span"));
            assert_eq!(attr(client, "rpc.method"), attr(s, "rpc.method"));
        }
    }
}

/// PostgreSQL (psql against a real server): database spans with the
/// system, operation and obfuscated query, the failed one an error.
#[test]
fn postgres_spans_carry_the_obfuscated_query() {
    if !require_root("postgres_spans_carry_the_obfuscated_query") {
        return;
    }
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("http/protobuf");
    let agent = agent_with(&dir, &format!("  endpoint: {endpoint}\n"));
    let lab = Lab::new();
    let port = unique_port(35);
    let server = servers::postgres(&lab, port);
    let statements = [
        "CREATE TABLE weft_t (id int PRIMARY KEY, name text)",
        "SELECT name FROM weft_t WHERE id = 1",
        "SELECT * FROM weft_missing",
    ];
    let (_, stderr) = servers::psql(&lab, &server, &statements);
    assert!(stderr.contains("weft_missing"), "psql: {stderr}");
    let query = |text: &str| -> Vec<Value> {
        request_spans(&receiver, port)
            .into_iter()
            .filter(|s| attr(s, "db.query.text") == text)
            .collect()
    };
    let select = wait_for("the SELECT's spans", WAIT, || {
        let spans = query("SELECT name FROM weft_t WHERE id = ?");
        (spans.len() >= 2).then_some(spans)
    });
    let missing = wait_for("the failed SELECT's spans", WAIT, || {
        let spans = query("SELECT * FROM weft_missing");
        (spans.len() >= 2).then_some(spans)
    });
    for spans in [&select, &missing] {
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let client = spans
            .iter()
            .find(|s| s["kind"] == KIND_CLIENT)
            .expect("client span");
        let server = spans
            .iter()
            .find(|s| s["kind"] == KIND_SERVER)
            .expect("server span");
        assert_eq!(server["parent_span_id"], client["span_id"]);
        assert_eq!(client["resource"]["service.name"], "psql");
        assert_eq!(server["resource"]["service.name"], "postgres");
        for s in [client, server] {
            assert_eq!(s["name"], "SELECT");
            assert_eq!(attr(s, "db.system.name"), "postgresql");
            assert_eq!(attr(s, "db.operation.name"), "SELECT");
        }
    }
    for s in &missing {
        assert_eq!(s["status"], otlp::STATUS_ERROR, "{s:#}");
        assert_eq!(attr(s, "error.type"), "42P01");
    }
    for s in &select {
        assert_ne!(s["status"], otlp::STATUS_ERROR, "{s:#}");
    }
    drop(agent);
}

/// The collector goes away and comes back (OTLP/gRPC; the absent
/// collector above is OTLP/HTTP): the agent keeps running, counts the
/// spans it could not send, and sends again once the collector is back.
/// The first export after the collector went away waits out the export
/// timeout (10 s) before its spans count as lost.
#[test]
fn export_resumes_when_the_collector_returns() {
    if !require_root("export_resumes_when_the_collector_returns") {
        return;
    }
    {
        let protocol = "grpc";
        let started = std::time::Instant::now();
        let mut receiver = Receiver::start();
        let dir = TempDir::new("traces");
        let endpoint = receiver.endpoint(protocol);
        let agent = agent_with(
            &dir,
            &format!("  endpoint: {endpoint}\n  protocol: {protocol}\n"),
        );
        let lab = Lab::new();
        let port = unique_port(36);
        let server = servers::python_http(&lab, port);
        let base = format!("http://{}", server.addr);
        let lost = || agent.metric_sum("weft_events_lost_total", &["source=\"spans\""]);

        curl_requests(&lab, &base, &[]);
        wait_for("the first spans", WAIT, || {
            (request_spans(&receiver, port).len() >= 2 * REQUESTS).then_some(())
        });
        assert_eq!(lost(), 0.0);

        eprintln!("{protocol}: first spans after {:?}", started.elapsed());
        receiver.stop();
        eprintln!("{protocol}: receiver stopped after {:?}", started.elapsed());
        curl_requests(&lab, &base, &[]);
        let dropped = wait_for(
            "the spans sent while the collector was away counted as lost",
            WAIT,
            || {
                let lost = lost();
                (lost >= (2 * REQUESTS) as f64).then_some(lost)
            },
        );

        eprintln!("{protocol}: losses counted after {:?}", started.elapsed());
        receiver.restart();
        curl_requests(&lab, &base, &[]);
        let spans = wait_for("spans again once the collector is back", WAIT, || {
            let spans = request_spans(&receiver, port);
            (spans.len() >= 2 * REQUESTS).then_some(spans)
        });
        eprintln!("{protocol}: spans again after {:?}", started.elapsed());
        check_traces(&spans, protocol, &lab, port);
        assert_eq!(lost(), dropped, "no more losses once the collector is back");
        drop(agent);
    }
}

/// HTTP/2 (nghttp against nginx, ten multiplexed streams on one
/// connection): one trace per request, joined whatever order the streams
/// finish in on each side; a 404 is an error at the client only.
#[test]
fn http2_streams_are_joined_whatever_their_order() {
    if !require_root("http2_streams_are_joined_whatever_their_order") {
        return;
    }
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("grpc");
    let agent = agent_with(&dir, &format!("  endpoint: {endpoint}\n  protocol: grpc\n"));
    let lab = Lab::new();
    let port = unique_port(37);
    let server = servers::nginx_h2c(&lab, port);
    let urls: Vec<String> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                // Distinct URLs: nghttp fetches each URL once.
                format!("http://{}/hello?n={i}", server.addr)
            } else {
                format!("http://{}/missing/{i}", server.addr)
            }
        })
        .collect();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "nghttp", "--null-out"])
        .args(&urls)
        .output()
        .expect("run nghttp");
    assert!(out.status.success(), "nghttp: {out:?}");
    let port_s = port.to_string();
    let spans = wait_for("the spans of ten HTTP/2 requests", WAIT, || {
        let spans = request_spans(&receiver, port);
        let records = agent.flows(&["--port", &port_s, "--protocol", "http2", "--all"]);
        eprintln!("{} spans, {} records", spans.len(), records.len());
        (spans.len() >= 20).then_some(spans)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(request_spans(&receiver, port).len(), 20, "{spans:#?}");
    let traces = otlp::traces(&spans);
    assert_eq!(traces.len(), 10, "{traces:#?}");
    for trace in traces.values() {
        let client = trace
            .iter()
            .find(|s| s["kind"] == KIND_CLIENT)
            .expect("client span");
        let server = trace
            .iter()
            .find(|s| s["kind"] == KIND_SERVER)
            .expect("server span");
        assert_eq!(server["parent_span_id"], client["span_id"]);
        assert_eq!(attr(client, "url.path"), attr(server, "url.path"));
        let missing = attr(client, "url.path")
            .as_str()
            .is_some_and(|p| p.starts_with("/missing/"));
        let status = if missing { 404 } else { 200 };
        assert_eq!(
            attr(server, "http.response.status_code"),
            status,
            "{server:#}"
        );
        // The client side of the connection's last stream may end with the
        // connection before its response is parsed (an HTTP/2 parser
        // limit, seen in records too): then the span has no status.
        let client_status = attr(client, "http.response.status_code");
        if !client_status.is_null() {
            assert_eq!(client_status, status, "{client:#}");
            assert_eq!(
                client["status"] == otlp::STATUS_ERROR,
                missing,
                "{client:#}"
            );
        }
        assert_ne!(server["status"], otlp::STATUS_ERROR, "{server:#}");
        assert_eq!(client["resource"]["service.name"], "nghttp");
        assert_eq!(server["resource"]["service.name"], "nginx");
    }
    drop(agent);
}

/// Requests of the three-tier test, in curl processes of `CHAIN_PER_CURL`.
const CHAIN_REQUESTS: usize = 20;
const CHAIN_PER_CURL: usize = 5;

/// The span of `trace` with `kind` at `port`.
fn span_at(trace: &[Value], kind: u64, port: u16) -> &Value {
    let found: Vec<&Value> = trace
        .iter()
        .filter(|s| s["kind"] == kind && s["attributes"]["server.port"] == port)
        .collect();
    assert_eq!(found.len(), 1, "kind {kind} at port {port}: {trace:#?}");
    found[0]
}

/// A three-tier chain with no tracing code in it: curl calls a
/// thread-per-request Python frontend, which calls a backend HTTP server
/// (a new connection per request) and Redis (one connection per frontend
/// thread) before it answers. Every request is one trace whose spans hang
/// together: the frontend's calls are children of the frontend's SERVER
/// span because the thread that read the request made them. Redis runs on
/// this node too, so its SERVER span is in the trace as well: six spans.
#[test]
fn a_thread_per_request_chain_is_one_trace_per_request() {
    if !require_root("a_thread_per_request_chain_is_one_trace_per_request") {
        return;
    }
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("grpc");
    // Its debug lines say, should a request's calls not be tied to it,
    // which condition failed (the agent's log is shown on a failure).
    let _agent = agent_logging(
        &dir,
        &format!("  endpoint: {endpoint}\n  protocol: grpc\n"),
        "info,weft::flow::requests=debug",
    );
    let lab = Lab::new();
    let (front_port, back_port, redis_port) = (unique_port(39), unique_port(40), unique_port(41));
    let backend = servers::python_http(&lab, back_port);
    let redis = servers::redis(&lab, redis_port);
    let frontend = servers::python_frontend(&lab, front_port, &backend, &redis);
    let paths: Vec<String> = (0..CHAIN_REQUESTS).map(|i| format!("/users/{i}")).collect();
    for chunk in paths.chunks(CHAIN_PER_CURL) {
        let mut curl = Command::new("ip");
        curl.args(["netns", "exec", &lab.client_ns, "curl", "-sf"]);
        for path in chunk {
            curl.args([
                "-o",
                "/dev/null",
                &format!("http://{}{path}", frontend.addr),
            ]);
        }
        let out = curl.output().expect("run curl");
        assert!(out.status.success(), "curl failed: {out:?}");
    }

    let ports = [front_port, back_port, redis_port];
    let chain_spans = || -> Vec<Value> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| ports.iter().any(|p| s["attributes"]["server.port"] == *p))
            .collect()
    };
    let spans = wait_for("the spans of 20 chained requests", WAIT, || {
        let spans = chain_spans();
        (spans.len() >= 6 * CHAIN_REQUESTS).then_some(spans)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(chain_spans().len(), spans.len(), "no more spans come");
    let traces = otlp::traces(&spans);
    // Each trace as its spans' (kind, port, parent) in one line: which
    // span went astray, when one did.
    let summary: Vec<String> = (traces.values())
        .map(|t| {
            let spans: Vec<String> = (t.iter())
                .map(|s| {
                    let parent = s["parent_span_id"].as_str().unwrap_or_default();
                    let parent = if parent.is_empty() { "root" } else { "child" };
                    format!("{}@{} {parent}", s["kind"], s["attributes"]["server.port"])
                })
                .collect();
            spans.join(", ")
        })
        .collect();
    assert_eq!(
        traces.len(),
        CHAIN_REQUESTS,
        "one trace per request:\n{}",
        summary.join("\n")
    );
    let mut paths_seen = Vec::new();
    for trace in traces.values() {
        assert_eq!(trace.len(), 6, "{trace:#?}");
        let curl = span_at(trace, KIND_CLIENT, front_port);
        let front = span_at(trace, KIND_SERVER, front_port);
        let to_back = span_at(trace, KIND_CLIENT, back_port);
        let back = span_at(trace, KIND_SERVER, back_port);
        let to_redis = span_at(trace, KIND_CLIENT, redis_port);
        let redis_server = span_at(trace, KIND_SERVER, redis_port);
        let parent = |s: &Value| s["parent_span_id"].clone();
        assert_eq!(parent(curl), "", "curl's span is the root");
        assert_eq!(parent(front), curl["span_id"]);
        assert_eq!(parent(to_back), front["span_id"], "called while serving");
        assert_eq!(parent(back), to_back["span_id"]);
        assert_eq!(parent(to_redis), front["span_id"], "called while serving");
        assert_eq!(parent(redis_server), to_redis["span_id"]);
        assert_eq!(curl["resource"]["service.name"], "curl");
        for s in [front, to_back, to_redis, back] {
            assert_eq!(s["resource"]["service.name"], "python3", "{s:#}");
        }
        assert_eq!(redis_server["resource"]["service.name"], "redis-server");
        assert_eq!(
            front["resource"]["process.pid"], to_back["resource"]["process.pid"],
            "the frontend's server and client spans are one process's"
        );
        let path = attr(front, "url.path").as_str().expect("path").to_owned();
        assert_eq!(attr(curl, "url.path"), path.as_str());
        assert_eq!(
            attr(to_back, "url.path"),
            format!("/backend{path}").as_str()
        );
        assert_eq!(attr(back, "url.path"), format!("/backend{path}").as_str());
        assert_eq!(attr(to_redis, "db.operation.name"), "GET");
        // The children fit inside their parent.
        for child in [to_back, to_redis] {
            assert!(child["start_ns"].as_u64() >= front["start_ns"].as_u64());
            assert!(child["end_ns"].as_u64() <= front["end_ns"].as_u64());
        }
        paths_seen.push(path);
    }
    paths_seen.sort();
    let mut expected = paths.clone();
    expected.sort();
    assert_eq!(paths_seen, expected);
}

const INJECTED_REQUESTS: usize = 1000;

/// `inject_traceparent: true`: the kernel writes a `traceparent` into
/// requests that carry none. A Python client sends 1000 keep-alive POSTs
/// with bodies (0 to 70 KB) to a server that echoes what it received: each
/// body arrives byte-exact (length and SHA-256), each request with a
/// `traceparent` whose trace is the CLIENT span's trace and whose parent
/// is that span; the server's SERVER span is its child. Three pipelined
/// requests in one write still parse, byte-exact (the first one gets the
/// header). A request that carries its own keeps it (no second header).
#[test]
fn injected_traceparent_continues_the_trace_and_keeps_requests_intact() {
    if !require_root("injected_traceparent_continues_the_trace_and_keeps_requests_intact") {
        return;
    }
    let receiver = Receiver::start();
    let dir = TempDir::new("traces");
    let endpoint = receiver.endpoint("grpc");
    let agent = agent_with(
        &dir,
        &format!("  endpoint: {endpoint}\n  protocol: grpc\n  inject_traceparent: true\n"),
    );
    let status = agent.status_json().expect("the agent answers");
    let row = (status["features"].as_array().expect("features").iter())
        .find(|f| f["name"] == "traceparent injection")
        .cloned()
        .expect("a traceparent injection row");
    assert_eq!(row["available"], true, "{row}");
    let lab = Lab::new();
    // What an application's FIONREAD gets on this kernel with injection
    // on, and what the agent says of it.
    let fionread = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/fionread.py");
    let out = lab.exec(&lab.client_ns, &["python3", fionread]);
    assert!(out.status.success(), "the FIONREAD check failed: {out:?}");
    let waiting: Value = serde_json::from_slice(&out.stdout).expect("its JSON");
    let detail = row["detail"].as_str().expect("a detail");
    assert_eq!(
        detail.contains("FIONREAD (SIOCINQ) answers 0"),
        waiting["waiting"] == 0,
        "the row ({detail}) says what FIONREAD answers an application ({waiting})"
    );
    assert!(!detail.contains("not checked"), "{detail}");
    let port = unique_port(42);
    let server = servers::python_http(&lab, port);
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/inject_client.py");
    let addr = server.addr.ip().to_string();
    let n = INJECTED_REQUESTS.to_string();
    let out = lab.exec(
        &lab.client_ns,
        &["python3", client, &addr, &port.to_string(), &n],
    );
    assert!(out.status.success(), "the client failed: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");
    let requests = report["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), INJECTED_REQUESTS);
    let exact = requests.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(exact, INJECTED_REQUESTS, "every body arrives byte-exact");
    assert_eq!(report["pipelined"], serde_json::json!([200, 200, 200]));
    let pipelined = report["pipelined_traceparents"].as_array().expect("list");
    assert!(
        pipelined[0].is_string(),
        "the write's first request: {report}"
    );
    assert!(pipelined[1].is_null() && pipelined[2].is_null(), "{report}");
    // Each echoed header: 00-TRACE-PARENT-01.
    let headers: Vec<(String, String)> = (requests.iter())
        .map(|r| {
            let h = r["traceparent"].as_str().expect("a traceparent arrived");
            let parts: Vec<&str> = h.split('-').collect();
            assert_eq!(parts.len(), 4, "{h}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{h}");
            (parts[1].to_owned(), parts[2].to_owned())
        })
        .collect();

    let expected = 2 * (INJECTED_REQUESTS + 3);
    let spans = wait_for("the spans of the injected requests", WAIT, || {
        let spans = request_spans(&receiver, port);
        (spans.len() >= expected).then_some(spans)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        request_spans(&receiver, port).len(),
        expected,
        "no more spans come"
    );
    let traces = otlp::traces(&spans);
    for (trace, parent) in &headers {
        let spans = traces
            .get(trace)
            .unwrap_or_else(|| panic!("no trace {trace}"));
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let client = span_at(spans, KIND_CLIENT, port);
        let server = span_at(spans, KIND_SERVER, port);
        assert_eq!(
            client["span_id"],
            parent.as_str(),
            "the header names the client span"
        );
        assert_eq!(client["parent_span_id"], "", "the client span is the root");
        assert_eq!(server["parent_span_id"], parent.as_str());
        assert_eq!(attr(client, "http.request.method"), "POST");
    }
    // A request's own traceparent is kept: curl sends one, the server
    // sees that one only.
    let own = format!("traceparent: 00-{TRACE}-{PARENT}-01");
    let out = lab.exec(
        &lab.client_ns,
        &[
            "curl",
            "-sf",
            "-X",
            "POST",
            "--data-binary",
            "x",
            "-H",
            &own,
            &format!("http://{}/received/own", server.addr),
        ],
    );
    let echo: Value = serde_json::from_slice(&out.stdout).expect("the echo");
    assert_eq!(echo["traceparent"], format!("00-{TRACE}-{PARENT}-01"));
    let injected = agent.metric_sum("weft_events_total", &["source=\"traceparent_injected\""]);
    assert_eq!(injected, (INJECTED_REQUESTS + 1) as f64, "headers written");
}
