//! The soak: steady mixed traffic through a lab for `WEFT_SOAK_MINUTES`
//! (default 3, as CI runs it; `cargo xtask soak --minutes 60` for an
//! hour), the agent sampled every 10 s, and a verdict on the samples
//! (`weft_tests::soak::verdict`): nothing lost, resident memory within
//! 10 % of its size after warm-up, descriptors, threads, series and map
//! fill bounded. The agent's L7 and connection counts must equal what the
//! clients did, exactly. Samples, summary and plot go to `WEFT_SOAK_OUT`
//! (default `target/soak/`).
//!
//! Per second: 50 HTTP/1.1 requests each on a new connection, 20 on a
//! kept-alive one, 5 answered then reset by the client (all to nginx,
//! every one a distinct URL path), 4 HTTP/2 (nghttp, h2c, nginx), 5 gRPC
//! calls (grpcio, one of five NOT_FOUND), 10 DNS lookups (each from a new
//! UDP socket), 10 Redis commands, 5 PostgreSQL statements (psql, one in
//! ten failing), 5 connects refused and 2 whose SYN a firewall rule drops.

use std::{
    path::Path,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use weft_tests::{
    agent::{Agent, metric_sum},
    lab::{Lab, spawn_in},
    require_root, run,
    servers::{self, Server},
    soak::{
        Settings,
        clients::{self, Run},
        dns, paths, peers,
        sample::{self, Sample},
        tally::{Kind, Tally},
        verdict,
    },
    unique_port,
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long the agent may take to count the last requests after the
/// traffic stopped.
const SETTLE: Duration = Duration::from_secs(30);

/// Rates per second.
const HTTP1_NEW: f64 = 50.0;
const HTTP1_KEEP_ALIVE: f64 = 20.0;
const HTTP1_RESET: f64 = 5.0;
const HTTP2: f64 = 4.0;
const GRPC: f64 = 5.0;
const DNS: f64 = 10.0;
const REDIS: f64 = 10.0;
const POSTGRES: f64 = 5.0;
const REFUSED: f64 = 5.0;
const DROPPED: f64 = 2.0;
/// How long a connect whose SYN is dropped waits before it gives up.
const DROPPED_WAIT: Duration = Duration::from_millis(300);

struct Ports {
    http1: u16,
    http2: u16,
    redis: u16,
    postgres: u16,
    grpc: u16,
    refused: u16,
    dropped: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            http1: unique_port(80),
            http2: unique_port(81),
            redis: unique_port(82),
            postgres: unique_port(83),
            grpc: unique_port(84),
            refused: unique_port(85),
            dropped: unique_port(86),
        }
    }
}

/// The real servers of the soak (the DNS responder and the refused and
/// dropped ports need no process).
struct Peers {
    _nginx: Server,
    redis: Server,
    postgres: Server,
    grpc: Server,
    _dns: dns::Responder,
}

impl Peers {
    fn start(lab: &Lab, ports: &Ports) -> Self {
        let peers = Self {
            _nginx: peers::nginx(lab, ports.http1, ports.http2),
            redis: servers::redis(lab, ports.redis),
            postgres: servers::postgres(lab, ports.postgres),
            grpc: servers::grpc(lab, ports.grpc),
            _dns: dns::Responder::start(lab, lab.server_addr(53)),
        };
        // SYNs to the dropped port die in the server's firewall.
        for rule in [
            "add table inet weftsoak".to_owned(),
            "add chain inet weftsoak input { type filter hook input priority 0 ; }".to_owned(),
            format!(
                "add rule inet weftsoak input tcp dport {} drop",
                ports.dropped
            ),
        ] {
            let mut args = vec!["ip", "netns", "exec", &lab.server_ns, "nft"];
            args.extend(rule.split(' '));
            run(&args);
        }
        peers
    }
}

/// The client threads and processes while they run.
struct Traffic {
    threads: Vec<(&'static str, JoinHandle<()>)>,
    psql: JoinHandle<Result<(u64, u64), String>>,
    grpc: peers::ClientProcess,
}

fn start_traffic(lab: &Lab, ports: &Ports, peers: &Peers, run: &Run) -> Traffic {
    type Loop = fn(&Run, std::net::SocketAddr, f64);
    let at = |port| lab.server_addr(port);
    let loops: [(&'static str, Loop, std::net::SocketAddr, f64); 6] = [
        (
            "soak-http-new",
            clients::http1_new_connections,
            at(ports.http1),
            HTTP1_NEW,
        ),
        (
            "soak-http-keep",
            clients::http1_keep_alive,
            at(ports.http1),
            HTTP1_KEEP_ALIVE,
        ),
        (
            "soak-http-reset",
            clients::http1_then_reset,
            at(ports.http1),
            HTTP1_RESET,
        ),
        (
            "soak-refused",
            clients::refused_connects,
            at(ports.refused),
            REFUSED,
        ),
        ("soak-resolver", clients::dns_lookups, at(53), DNS),
        (
            "soak-redis",
            clients::redis_commands,
            peers.redis.addr,
            REDIS,
        ),
    ];
    let mut threads: Vec<(&'static str, JoinHandle<()>)> = loops
        .into_iter()
        .map(|(name, client, addr, rate)| {
            let run = run.clone();
            (
                name,
                spawn_in(&lab.client_ns, name, move || client(&run, addr, rate)),
            )
        })
        .collect();
    let (dropped, r) = (at(ports.dropped), run.clone());
    threads.push((
        "soak-dropped",
        spawn_in(&lab.client_ns, "soak-dropped", move || {
            clients::dropped_connects(&r, dropped, DROPPED, DROPPED_WAIT);
        }),
    ));
    let (ns, h2, r) = (lab.client_ns.clone(), at(ports.http2), run.clone());
    threads.push((
        "soak-http2",
        std::thread::spawn(move || peers::http2_requests(&ns, h2, &r, HTTP2)),
    ));
    let psql = {
        let (ns, server, r) = (lab.client_ns.clone(), peers.postgres.addr, run.clone());
        std::thread::spawn(move || peers::psql_statements(&ns, server, &r, POSTGRES))
    };
    Traffic {
        threads,
        psql,
        grpc: peers::grpc_calls(lab, &peers.grpc, run, GRPC),
    }
}

/// Waits for every client to finish; what went wrong, if anything.
fn finish_traffic(traffic: Traffic, tally: &Tally) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, thread) in traffic.threads {
        if thread.join().is_err() {
            failures.push(format!("the client {name} panicked"));
        }
    }
    match traffic.psql.join() {
        Ok(Ok((sent, errors))) => eprintln!("psql: {sent} statements, {errors} errors as meant"),
        Ok(Err(e)) => tally.error(e),
        Err(_) => failures.push("the psql client panicked".into()),
    }
    if let Err(e) = traffic.grpc.finish(Duration::from_secs(60)) {
        tally.error(e);
    }
    failures
}

/// The agent's counts that must equal the clients': (what, metric,
/// labels, expected).
fn exact_counts(ports: &Ports, tally: &Tally) -> Vec<(String, &'static str, Vec<String>, u64)> {
    let port = |p: u16| format!("destination_port=\"{p}\"");
    let http1 =
        tally.get(Kind::Http1New) + tally.get(Kind::Http1KeepAlive) + tally.get(Kind::Http1Reset);
    let grpc = tally.get(Kind::GrpcOk) + tally.get(Kind::GrpcNotFound);
    let postgres_errors = tally.get(Kind::Postgres) / 10;
    let mut checks = Vec::new();
    for side in ["server", "client"] {
        let http = if side == "server" {
            "http_server_request_duration_seconds_count"
        } else {
            "http_client_request_duration_seconds_count"
        };
        let rpc = if side == "server" {
            "rpc_server_call_duration_seconds_count"
        } else {
            "rpc_client_call_duration_seconds_count"
        };
        checks.push((
            format!("HTTP/1.1 requests, {side} side"),
            http,
            vec![port(ports.http1)],
            http1,
        ));
        checks.push((
            format!("HTTP/2 requests, {side} side"),
            http,
            vec![port(ports.http2)],
            tally.get(Kind::Http2),
        ));
        checks.push((
            format!("gRPC calls, {side} side"),
            rpc,
            vec![port(ports.grpc)],
            grpc,
        ));
        checks.push((
            format!("gRPC NOT_FOUND, {side} side"),
            rpc,
            vec![
                port(ports.grpc),
                "rpc_response_status_code=\"NOT_FOUND\"".into(),
            ],
            tally.get(Kind::GrpcNotFound),
        ));
    }
    let db = "db_client_operation_duration_seconds_count";
    checks.push((
        "Redis commands".into(),
        db,
        vec![port(ports.redis), "db_system_name=\"redis\"".into()],
        tally.get(Kind::Redis),
    ));
    checks.push((
        "PostgreSQL statements".into(),
        db,
        vec![port(ports.postgres), "db_system_name=\"postgresql\"".into()],
        tally.get(Kind::Postgres),
    ));
    checks.push((
        "PostgreSQL errors".into(),
        db,
        vec![port(ports.postgres), "error_type=\"42P01\"".into()],
        postgres_errors,
    ));
    checks.push((
        "DNS lookups".into(),
        "dns_lookup_duration_seconds_count",
        vec![port(53), "source_workload=\"soak-resolver\"".into()],
        tally.get(Kind::Dns),
    ));
    let resets = "weft_tcp_resets_total";
    for (whose, direction) in [
        ("sent by the clients", "sent"),
        ("received by nginx", "received"),
    ] {
        checks.push((
            format!("resets {whose}"),
            resets,
            vec![port(ports.http1), format!("direction=\"{direction}\"")],
            tally.get(Kind::Http1Reset),
        ));
    }
    let failed = "weft_tcp_connections_failed_total";
    checks.push((
        "refused connects".into(),
        failed,
        vec![port(ports.refused)],
        tally.get(Kind::Refused),
    ));
    checks.push((
        "dropped connects".into(),
        failed,
        vec![port(ports.dropped)],
        tally.get(Kind::Dropped),
    ));
    checks
}

/// Waits (at most [`SETTLE`]) until the agent's counts since `baseline`
/// (the metrics before the traffic: the servers' readiness probes) equal
/// the clients'; the mismatches left.
fn check_exact_counts(agent: &Agent, baseline: &str, ports: &Ports, tally: &Tally) -> Vec<String> {
    let checks = exact_counts(ports, tally);
    let deadline = Instant::now() + weft_tests::scaled(SETTLE);
    loop {
        let text = agent.metrics();
        let mismatches: Vec<String> = checks
            .iter()
            .filter_map(|(what, metric, labels, want)| {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                let got =
                    metric_sum(&text, metric, &labels) - metric_sum(baseline, metric, &labels);
                (got != *want as f64).then(|| {
                    format!(
                        "{what}: the agent counted {got}, the clients {want} ({metric}{labels:?})"
                    )
                })
            })
            .collect();
        if mismatches.is_empty() {
            for (what, _, _, want) in &checks {
                eprintln!("exact: {what}: {want}");
            }
            return route_check(&text, ports);
        }
        if Instant::now() >= deadline {
            return mismatches;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `http_route` on the HTTP/1.1 port holds exactly the routes the
/// distinct paths template to (no `other`: templating bounded them).
fn route_check(metrics: &str, ports: &Ports) -> Vec<String> {
    let port = format!("destination_port=\"{}\"", ports.http1);
    let mut routes: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_server_request_duration_seconds_count{") && l.contains(&port)
        })
        .filter_map(|l| l.split("http_route=\"").nth(1)?.split('"').next())
        .collect();
    routes.sort_unstable();
    routes.dedup();
    let mut expected: Vec<&str> = paths::ROUTES.to_vec();
    expected.sort_unstable();
    if routes == expected {
        Vec::new()
    } else {
        vec![format!(
            "http_route values {routes:?}, expected {expected:?}"
        )]
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    write_text(path, &serde_json::to_string_pretty(value).expect("JSON"));
}

fn write_text(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn progress(s: &Sample, minutes: f64) {
    eprintln!(
        "soak {:.1}/{minutes:.1} min: rss {} KiB, fds {}, threads {}, series {}, flow table {}, flow store {}, lost {}, connections {}, paths {}, client errors {}",
        s.t_s / 60.0,
        s.rss_kib,
        s.fds,
        s.tasks,
        s.series,
        s.flow_table.entries,
        s.flow_store.entries,
        s.lost,
        s.traffic.get("tcp_connections").copied().unwrap_or(0),
        s.traffic.get("distinct_paths").copied().unwrap_or(0),
        s.traffic.get("client_errors").copied().unwrap_or(0),
    );
}

#[test]
fn the_agent_holds_steady_under_mixed_traffic() {
    if !require_root("the_agent_holds_steady_under_mixed_traffic") {
        return;
    }
    let settings = Settings::from_env();
    let minutes = settings.duration.as_secs_f64() / 60.0;
    std::fs::create_dir_all(&settings.out_dir).expect("the soak's output directory");
    let samples_path = settings.out_dir.join("samples.json");
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let ports = Ports::new();
    let peers = Peers::start(&lab, &ports);
    let tally = Arc::new(Tally::default());

    // The baseline: the agent with its peers up, before any traffic.
    let mut samples = vec![sample::take(&agent, 0.0, tally.snapshot())];
    let baseline = agent.metrics();
    let started = Instant::now();
    let run = Run {
        deadline: started + settings.duration,
        tally: Arc::clone(&tally),
        paths: Arc::default(),
    };
    let traffic = start_traffic(&lab, &ports, &peers, &run);
    let warm_up = started + verdict::warm_up(settings.duration);
    let mut next = started + SAMPLE_EVERY;
    while next <= run.deadline {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let s = sample::take(&agent, started.elapsed().as_secs_f64(), tally.snapshot());
        progress(&s, minutes);
        samples.push(s);
        write_json(&samples_path, &samples);
        if next < warm_up && warm_up <= next + SAMPLE_EVERY {
            // The series as they are at warm-up's end, to compare with
            // the end's when they grew.
            write_text(&settings.out_dir.join("metrics-warm.txt"), &agent.metrics());
        }
        next += SAMPLE_EVERY;
    }
    let mut failures = finish_traffic(traffic, &tally);
    failures.extend(check_exact_counts(&agent, &baseline, &ports, &tally));
    let last = sample::take(&agent, started.elapsed().as_secs_f64(), tally.snapshot());
    progress(&last, minutes);
    samples.push(last);
    write_json(&samples_path, &samples);
    write_text(&settings.out_dir.join("metrics-end.txt"), &agent.metrics());

    let mut summary = verdict::judge(&samples, settings.duration, tally.errors());
    summary.failures.extend(failures);
    if let Err(e) = weft_tests::soak::plot::draw(&settings.out_dir, &samples, &summary) {
        summary.failures.push(e);
    }
    write_json(&settings.out_dir.join("summary.json"), &summary);
    eprintln!(
        "soak summary ({}):\n{}",
        settings.out_dir.display(),
        serde_json::to_string_pretty(&summary).expect("JSON")
    );
    drop(peers);
    assert!(
        summary.failures.is_empty(),
        "the soak failed:\n{}",
        summary.failures.join("\n")
    );
}
