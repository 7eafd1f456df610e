//! Steering: connects to a service address are balanced in the kernel over
//! real HTTP servers in backend namespaces, every connect accounted for in
//! flow records and metrics; a service with no backend refuses at once;
//! session affinity keeps each client namespace on its backend; open
//! connections are counted per backend; Kubernetes Services follow their
//! EndpointSlices (from a recorded API server); passive
//! health ejects a backend whose connects fail, or that answers with
//! errors where `eject_on_l7_errors` is on; steering survives the agent being killed, and `weft cleanup` leaves nothing of
//! it in the kernel.
//!
//! Steering state is one per node (pinned under bpffs), so these tests run
//! one at a time.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft},
    apiserver::{RecordedApi, empty_list},
    require_root, run,
    steer::{PinCleanup, SteerLab},
    unique_port, wait_for,
};

/// One steering test at a time: they share the node's pinned maps.
static STEERING: Mutex<()> = Mutex::new(());

fn config(tag: &str, services: &[String]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("weft-steer-{}-{tag}.yaml", std::process::id()));
    let text = format!("services:\n{}", services.concat());
    std::fs::write(&path, text).expect("write config");
    path
}

fn start(config: &std::path::Path) -> Agent {
    Agent::start(&["--config", config.to_str().expect("utf-8")])
}

/// Connects per backend body, after checking that every curl got a 200
/// and saw the service address as its peer.
fn shares(lab: &SteerLab, lines: &[String], port: u16) -> BTreeMap<String, usize> {
    let peer = format!("{}:{port}", lab.service_ip);
    let mut counts = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "curl output {line:?}");
        assert_eq!(fields[1], "200", "{line}");
        assert_eq!(fields[2], peer, "{line}");
        *counts.entry(fields[0].to_owned()).or_insert(0) += 1;
    }
    counts
}

/// `close` records of service `name`, per destination address.
fn records_by_backend(agent: &Agent, name: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in agent.flows(&["--all", "--service", name]) {
        if r["event"] != "close" {
            continue;
        }
        assert_eq!(r["service"]["name"], name, "{r}");
        let dst = format!(
            "{}:{}",
            r["destination"]["ip"].as_str().unwrap_or("?"),
            r["destination"]["port"]
        );
        *out.entry(dst).or_insert(0) += 1;
    }
    out
}

/// Waits until records and metrics account for exactly `expected`
/// (backend body -> connects).
fn assert_accounted(agent: &Agent, lab: &SteerLab, name: &str, expected: &BTreeMap<String, usize>) {
    let want: BTreeMap<String, usize> = lab
        .backends
        .iter()
        .filter_map(|b| expected.get(&b.name).map(|&n| (b.addr.to_string(), n)))
        .collect();
    let total: usize = want.values().sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = records_by_backend(agent, name);
    while got.values().sum::<usize>() < total && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = records_by_backend(agent, name);
    }
    if got != want {
        // What the agent recorded for the backends, service or not.
        let port = lab.backends[0].addr.port().to_string();
        let all = agent.flows(&["--all", "--port", &port]);
        let mut summary = BTreeMap::new();
        for r in &all {
            let key = format!("{} service={}", r["event"], r["service"]["name"]);
            *summary.entry(key).or_insert(0) += 1;
        }
        eprintln!("records on port {port}: {summary:?}");
        let services = agent.client(&["services", "-o", "json"]);
        eprintln!("services: {}", String::from_utf8_lossy(&services.stdout));
    }
    assert_eq!(got, want, "records per backend");
    wait_for("the service metrics", Duration::from_secs(10), || {
        let metrics = agent.metrics();
        let all = want.iter().all(|(addr, &n)| {
            let labels = [format!("service=\"{name}\""), format!("backend=\"{addr}\"")];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            weft_tests::agent::metric_sum(&metrics, "weft_service_connections_total", &labels)
                == n as f64
        });
        all.then_some(())
    });
}

#[test]
fn connects_are_balanced_over_real_backends() {
    if !require_root("connects_are_balanced_over_real_backends") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(1);
    let lab = SteerLab::new(3, port);
    // Without steering the service address is unreachable.
    let script = format!(
        "curl -s --max-time 2 http://{}:80/ || echo failed $?",
        lab.service_ip
    );
    assert_eq!(lab.client_sh(&script).trim(), "failed 7");

    let cfg = config(
        "even",
        &[
            lab.service_yaml("web", 80, &[1, 1, 1]),
            lab.service_yaml("nobody", 81, &[]),
        ],
    );
    let agent = start(&cfg);
    let lines = lab.curls(80, 300);
    assert_eq!(lines.len(), 300);
    let counts = shares(&lab, &lines, 80);
    for b in &lab.backends {
        let n = counts.get(&b.name).copied().unwrap_or(0);
        assert!(
            (60..=141).contains(&n),
            "{} got {n} of 300: {counts:?}",
            b.name
        );
    }
    assert_accounted(&agent, &lab, "web", &counts);

    // getpeername: the application sees the address it dialed.
    let peer = format!(
        "import socket\nfor _ in range(10):\n    s = socket.create_connection(('{}', 80), timeout=5)\n    print('%s:%d' % s.getpeername())\n    s.close()\n",
        lab.service_ip
    );
    let out = lab.client_sh(&format!("python3 -c \"{peer}\""));
    let want = format!("{}:80", lab.service_ip);
    assert_eq!(out.lines().filter(|l| *l == want).count(), 10, "{out}");

    // No backend: refused at once, counted. The resolver is warmed up
    // first: its first call loads libraries, which under emulation takes
    // longer than the bound.
    let refused = format!(
        "import socket, time, errno\nsocket.getaddrinfo('{0}', 81)\nfor _ in range(20):\n    t = time.monotonic()\n    try:\n        socket.create_connection(('{0}', 81), timeout=5)\n        print('connected')\n    except OSError as e:\n        print(errno.errorcode.get(e.errno), int((time.monotonic() - t) * 1000))\n",
        lab.service_ip
    );
    let out = lab.client_sh(&format!("python3 -c \"{refused}\""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20, "{out}");
    // Before 5.18 (no bpf_set_retval) the refusal's error is EPERM, as
    // `weft status` says.
    let want = if agent.lacks_feature("steer_econnrefused") {
        "EPERM"
    } else {
        "ECONNREFUSED"
    };
    for line in &lines {
        let (err, ms) = line.split_once(' ').expect("errno and time");
        assert_eq!(err, want, "{out}");
        assert!(ms.parse::<u64>().expect("ms") < 100, "{out}");
    }
    wait_for(
        "weft_service_no_backend_total",
        Duration::from_secs(10),
        || {
            (agent.metric_sum("weft_service_no_backend_total", &["service=\"nobody\""]) == 20.0)
                .then_some(())
        },
    );

    // Nothing the steering programs could not do, in the metric and in
    // `weft status`.
    let metrics = agent.metrics();
    for stage in ["kernel_map_full", "incomplete_service"] {
        let series = format!("weft_events_lost_total{{source=\"steer\",stage=\"{stage}\"}} 0");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    let status = agent.status_json().expect("status");
    let steer_losses: Vec<&Value> = status["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .filter(|l| l["source"] == "steer" || l["source"] == "policy")
        .collect();
    assert_eq!(steer_losses.len(), 7, "{steer_losses:?}");
    assert!(
        steer_losses.iter().all(|l| l["total"] == 0),
        "{steer_losses:?}"
    );

    let out = agent.client(&["services", "-o", "json"]);
    assert!(out.status.success());
    let services: Vec<Value> = serde_json::from_slice(&out.stdout).expect("services JSON");
    assert_eq!(services.len(), 2);
    let web = services.iter().find(|s| s["name"] == "web").expect("web");
    assert_eq!(web["address"], lab.service_ip.as_str());
    assert_eq!(web["source"], "config");
    assert_eq!(web["backends"].as_array().map(Vec::len), Some(3));
    assert!(
        web["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .all(|b| b["state"] == "active")
    );
    assert_eq!(
        agent.metric_sum(
            "weft_service_backends",
            &["service=\"web\"", "state=\"active\""]
        ),
        3.0
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn weights_shape_the_shares() {
    if !require_root("weights_shape_the_shares") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(2);
    let lab = SteerLab::new(3, port);
    let cfg = config("weighted", &[lab.service_yaml("weighted", 80, &[2, 1, 1])]);
    let agent = start(&cfg);
    let lines = lab.curls(80, 600);
    assert_eq!(lines.len(), 600);
    let counts = shares(&lab, &lines, 80);
    for (b, want) in lab.backends.iter().zip([50.0, 25.0, 25.0]) {
        let share = counts.get(&b.name).copied().unwrap_or(0) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 7.0,
            "{}: {share:.1} % (want {want} %): {counts:?}",
            b.name
        );
    }
    assert_accounted(&agent, &lab, "weighted", &counts);
    let _ = std::fs::remove_file(cfg);
}

/// `lines` of curls (see [`shares`]) that all reached one backend: its
/// body.
fn one_backend(lab: &SteerLab, lines: &[String], port: u16, n: usize, who: &str) -> String {
    assert_eq!(lines.len(), n, "{who}: {lines:?}");
    let counts = shares(lab, lines, port);
    assert_eq!(
        counts.len(),
        1,
        "{who} reached several backends: {counts:?}"
    );
    counts.into_keys().next().expect("one backend")
}

/// A `services:` entry with `session_affinity: client_ip` (and
/// `timeout`, unless empty) in front of every lab backend but the one
/// whose body is `skip`.
fn sticky_yaml(lab: &SteerLab, name: &str, port: u16, timeout: &str, skip: &str) -> String {
    let mut y = format!(
        "  - name: {name}\n    address: {}\n    port: {port}\n    session_affinity: client_ip\n",
        lab.service_ip
    );
    if !timeout.is_empty() {
        y.push_str(&format!("    session_affinity_timeout: {timeout}\n"));
    }
    y.push_str("    backends:\n");
    for b in lab.backends.iter().filter(|b| b.name != skip) {
        y.push_str(&format!(
            "      - {{address: {}, port: {}}}\n",
            b.addr.ip(),
            b.addr.port()
        ));
    }
    y
}

#[test]
fn session_affinity_keeps_each_client_on_its_backend() {
    if !require_root("session_affinity_keeps_each_client_on_its_backend") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(5);
    let mut lab = SteerLab::new(3, port);
    let services = [
        sticky_yaml(&lab, "sticky", 80, "", ""),
        sticky_yaml(&lab, "brief", 81, "2s", ""),
    ];
    let cfg = config("affinity", &services);
    let agent = start(&cfg);

    // One client: 50 connects, each a new curl and connection, one backend.
    let lines = lab.curls(80, 50);
    let first = one_backend(&lab, &lines, 80, 50, "the first client");
    let mut expected = BTreeMap::from([(first.clone(), 50)]);

    // Other clients (each its own network namespace) stick to their own
    // backend, chosen at random: within 12 of them one reaches another
    // backend than the first client's (all 12 on the same one: (1/3)^12).
    let mut other = None;
    for _ in 0..12 {
        let ns = lab.add_client();
        let lines = lab.curls_in(&ns, 80, 10);
        let body = one_backend(&lab, &lines, 80, 10, &ns);
        *expected.entry(body.clone()).or_insert(0) += 10;
        if body != first {
            other = Some(body);
            break;
        }
    }
    let other = other.expect("no second client reached another backend in 12 tries");
    eprintln!("first client on {first}, another on {other}: {expected:?}");
    assert_accounted(&agent, &lab, "sticky", &expected);

    // The timeout runs from a client's last connect: connects in a row
    // stay, and after 2 s without one the choice is made anew (a different
    // backend within 12 rounds: the same one 12 times is (1/3)^12).
    let lines = lab.curls(81, 5);
    let mut last = one_backend(&lab, &lines, 81, 5, "the first client (brief)");
    let mut moved = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(2500));
        let lines = lab.curls(81, 1);
        let now = one_backend(&lab, &lines, 81, 1, "the first client (brief)");
        if now != last {
            moved = true;
            break;
        }
        last = now;
    }
    assert!(moved, "the brief service's choice never expired");

    let out = agent.client(&["services", "-o", "json"]);
    assert!(out.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("services JSON");
    let by_name = |n: &str| listed.iter().find(|s| s["name"] == n).cloned();
    let sticky = by_name("sticky").expect("sticky");
    assert_eq!(sticky["session_affinity"], "client_ip");
    assert_eq!(sticky["session_affinity_timeout_s"], 10_800);
    let brief = by_name("brief").expect("brief");
    assert_eq!(brief["session_affinity_timeout_s"], 2);
    let lost = "weft_events_lost_total{source=\"steer\",stage=\"affinity_not_remembered\"} 0";
    assert!(agent.metrics().contains(lost), "no {lost}");

    // The clients' choices are pinned: a restarted agent keeps them.
    drop(agent);
    let agent = start(&cfg);
    let lines = lab.curls(80, 10);
    assert_eq!(
        one_backend(&lab, &lines, 80, 10, "after a restart"),
        first,
        "the first client lost its backend over a restart"
    );
    drop(agent);

    // A reconcile that removes the first client's backend: its connects
    // all succeed on one other backend, never the removed one.
    let without = config(
        "affinity-without",
        &[sticky_yaml(&lab, "sticky", 80, "", &first)],
    );
    let agent = start(&without);
    let lines = lab.curls(80, 20);
    let moved_to = one_backend(&lab, &lines, 80, 20, "after its backend was removed");
    assert_ne!(moved_to, first);
    drop(agent);
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(without);
}

/// Ids of loaded programs and maps whose names are steering's.
fn steering_objects() -> (Vec<u64>, Vec<u64>) {
    let ids = |kind: &str, names: &[&str]| -> Vec<u64> {
        let out = run(&["bpftool", "-j", kind, "show"]);
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        all.iter()
            // A kernel without bpf_set_retval runs the `_eperm` variants.
            .filter(|o| {
                o["name"]
                    .as_str()
                    .is_some_and(|n| names.contains(&n.trim_end_matches("_eperm")))
            })
            .filter_map(|o| o["id"].as_u64())
            .collect()
    };
    // bpftool shows a program's full name (from its BTF), a map's as the
    // kernel keeps it (cut at 15 characters).
    let progs = ids(
        "prog",
        &[
            "weft_steer_connect4",
            "weft_steer_peername4",
            "weft_steer_sendmsg4",
            "weft_steer_recvmsg4",
            "weft_steer_connect6",
            "weft_steer_peername6",
            "weft_steer_sendmsg6",
            "weft_steer_recvmsg6",
        ],
    );
    let maps = ids(
        "map",
        &[
            "SERVICES",
            "SLOTS",
            "BACKENDS",
            "BACKEND_CONNECT",
            "SERVICE_NO_BACK",
            "ORIGINS",
            "STEERED",
            "STEER_COUNTERS",
            "AFFINITY",
            "REPLIES",
            // The policy maps (the object holds them even without rules).
            "POLICY_GLOBALS",
            "POLICY_SRC",
            "POLICY_DST",
            "POLICY_PORTS",
            "POLICY_NETNS",
            "POLICY_CGROUPS",
            "POLICY_VERDICTS",
            "POLICY_COUNTERS",
            "POLICY_EVENTS",
        ],
    );
    (progs, maps)
}

#[test]
fn steering_survives_a_killed_agent_and_cleanup_removes_it() {
    if !require_root("steering_survives_a_killed_agent_and_cleanup_removes_it") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(3);
    let lab = SteerLab::new(3, port);
    let cfg = config("restart", &[lab.service_yaml("web", 80, &[1, 1, 1])]);
    let mut first = start(&cfg);
    // A bounded loop of connects, each its own curl, running while the
    // agent is killed and replaced.
    let script = format!(
        "ok=0; bad=0; for i in $(seq 400); do if curl -sf --max-time 5 -o /dev/null http://{}:80/; then ok=$((ok+1)); else bad=$((bad+1)); fi; done; echo $ok $bad",
        lab.service_ip
    );
    let looping = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the connect loop");
    std::thread::sleep(Duration::from_millis(1500));
    first.signal_and_wait(libc::SIGKILL);
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    let second = start(&cfg);
    let out = looping.wait_with_output().expect("connect loop");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "400 0",
        "connects that failed"
    );
    assert!(
        second.log().contains("adopted 8 pinned steering programs"),
        "{}",
        second.log()
    );

    // A stopped agent leaves steering in place: connects keep working.
    drop(second);
    let one = format!("curl -sf --max-time 5 http://{}:80/", lab.service_ip);
    assert!(lab.client_sh(&one).starts_with("backend-"));
    let (progs, maps) = steering_objects();
    assert_eq!(progs.len(), 8, "steering programs while no agent runs");
    assert_eq!(maps.len(), 19, "steering maps while no agent runs");

    let out = weft(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the kernel to free steering",
        Duration::from_secs(10),
        || (steering_objects() == (vec![], vec![])).then_some(()),
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/weft").exists(),
        "pins left"
    );
    let script = format!(
        "curl -s --max-time 2 http://{}:80/ || echo failed $?",
        lab.service_ip
    );
    assert_eq!(lab.client_sh(&script).trim(), "failed 7");
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn an_agent_without_services_removes_steering() {
    if !require_root("an_agent_without_services_removes_steering") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(4);
    let lab = SteerLab::new(1, port);
    let cfg = config("once", &[lab.service_yaml("web", 80, &[1])]);
    drop(start(&cfg));
    assert_eq!(steering_objects().0.len(), 8);
    let plain = Agent::start(&[]);
    wait_for("steering to be removed", Duration::from_secs(10), || {
        (steering_objects() == (vec![], vec![])).then_some(())
    });
    let status = plain.status_json().expect("status");
    let programs = status["programs"].as_array().expect("programs");
    assert!(
        programs
            .iter()
            .all(|p| !p["name"].as_str().unwrap_or("").starts_with("weft_steer"))
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn bad_steering_configuration_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("weft-steer-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("weft.yaml");
    let web = "services:\n  - name: web\n    address: 10.96.0.10\n    port: 80\n    backends:\n      - {address: 10.0.1.2, port: 8080}\n";
    for (yaml, field) in [
        (
            format!("{web}  - name: web2\n    address: 10.96.0.10\n    port: 80\n"),
            "services[1].address",
        ),
        (
            "services:\n  - name: a\n    address: 10.96.0.10\n    port: 80\n    backends:\n      - {address: 10.0.1.2}\n".to_owned(),
            "services[0].backends[0]",
        ),
        (
            "policies:\n  - name: r\n    direction: egress\n    action: deny\n    colour: red\n".to_owned(),
            "colour",
        ),
        (
            format!("{web}policies:\n  - name: r\n    direction: egress\n    to: {{service: db}}\n    action: deny\n"),
            "policies[0].to.service",
        ),
        (
            format!("l7_capture_bytes: 0\n{web}health:\n  eject_on_l7_errors: true\n"),
            "health.eject_on_l7_errors",
        ),
        (
            "kubernetes:\n  enabled: false\nkubernetes_services: true\n".to_owned(),
            "kubernetes_services",
        ),
        // Not in a cluster and no kubeconfig: no API to read Services from.
        ("kubernetes_services: true\n".to_owned(), "kubernetes_services"),
        // Nor pods to select.
        (
            "policies:\n  - name: r\n    direction: ingress\n    from: {namespace: prod}\n    action: deny\n".to_owned(),
            "policies[0].from.namespace selects pods",
        ),
        (
            "kubernetes:\n  enabled: false\npolicies:\n  - name: r\n    direction: egress\n    from: {pod_labels: {app: web}}\n    action: deny\n".to_owned(),
            "policies[0].from.pod_labels",
        ),
    ] {
        std::fs::write(&file, &yaml).expect("write config");
        let out = weft(&["agent", "--config", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{yaml}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One curl at a time from the lab's client: `Some(body)` when it got a
/// 200 from the service address, `None` when its connect failed.
fn one_curl(lab: &SteerLab, port: u16) -> Option<String> {
    let lines = lab.curls(port, 1);
    let line = lines.first().map(String::as_str).unwrap_or("");
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        [body, "200", _peer] => Some((*body).to_owned()),
        ["000", ..] => None,
        _ => panic!("unexpected curl output {line:?}"),
    }
}

/// The state of the backend at `addr` in `weft services -o json`.
fn backend_state(agent: &Agent, service: &str, addr: std::net::SocketAddr) -> Value {
    let out = agent.client(&["services", "-o", "json"]);
    assert!(out.status.success(), "weft services failed");
    let services: Vec<Value> = serde_json::from_slice(&out.stdout).expect("services JSON");
    let s = services
        .iter()
        .find(|s| s["name"] == service)
        .expect("the service");
    s["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.ip().to_string().as_str() && b["port"] == addr.port())
        .cloned()
        .expect("the backend")
}

/// `ejected` / `returned` records of `service`.
fn health_records(agent: &Agent, service: &str, event: &str) -> Vec<Value> {
    agent
        .flows(&["--all", "--service", service])
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

#[test]
fn a_failing_backend_is_ejected_and_comes_back() {
    if !require_root("a_failing_backend_is_ejected_and_comes_back") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(6);
    let mut lab = SteerLab::new(3, port);
    let mut svc = lab.service_yaml("health", 80, &[1, 1, 1]);
    // Long enough for the 200 connects below to run while it is out
    // (scaled: each is a curl of its own, slow under emulation).
    let ejection = weft_tests::scaled(Duration::from_secs(15)).as_secs();
    svc.push_str(&format!(
        "    health: {{consecutive_failures: 5, base_ejection_time: {ejection}s}}\n"
    ));
    let cfg = config("health", &[svc]);
    let agent = start(&cfg);
    let warm = lab.curls(80, 30);
    assert_eq!(shares(&lab, &warm, 80).values().sum::<usize>(), 30);

    let dead = lab.backends[1].addr;
    let dead_name = lab.backends[1].name.clone();
    lab.backends[1].stop();
    // One connect at a time (each a new curl) until five have failed: a
    // third of them reach the stopped backend and are refused.
    let mut failed = 0;
    for _ in 0..300 {
        if let Some(body) = one_curl(&lab, 80) {
            assert_ne!(body, dead_name, "the stopped backend answered");
            continue;
        }
        failed += 1;
        if failed == 4 {
            // Four in a row is not yet enough: once the agent has counted
            // them, the backend is still in rotation.
            let b = wait_for("4 failures counted", Duration::from_secs(5), || {
                let b = backend_state(&agent, "health", dead);
                (b["recent_failures"] == 4).then_some(b)
            });
            assert_eq!(b["state"], "active", "ejected after 4 failures: {b}");
        }
        if failed == 5 {
            break;
        }
    }
    assert_eq!(
        failed, 5,
        "fewer than 5 connects reached the stopped backend"
    );
    let ejected = wait_for("the ejection", Duration::from_secs(3), || {
        let b = backend_state(&agent, "health", dead);
        (b["state"] == "ejected").then_some(b)
    });
    assert_eq!(
        ejected["reason"], "consecutive_connect_failures",
        "{ejected}"
    );
    assert_eq!(ejected["ejections"], 1, "{ejected}");
    assert!(ejected["ejected_until"].is_string(), "{ejected}");

    // Out of rotation: the next 200 connects all succeed on the others.
    let lines = lab.curls(80, 200);
    let counts = shares(&lab, &lines, 80);
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    assert!(!counts.contains_key(&dead_name), "{counts:?}");

    // A record and the metrics show it.
    let records = health_records(&agent, "health", "ejected");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["destination"]["ip"], dead.ip().to_string().as_str());
    assert_eq!(r["destination"]["port"], dead.port());
    assert_eq!(r["health"]["consecutive_failures"], 5, "{r}");
    assert_eq!(r["health"]["reason"], "consecutive_connect_failures", "{r}");
    assert_eq!(r["health"]["ejection_time_s"], ejection, "{r}");
    let backend_label = format!("backend=\"{dead}\"");
    let ejection_labels = [
        "service=\"health\"",
        backend_label.as_str(),
        "reason=\"consecutive_connect_failures\"",
    ];
    assert_eq!(
        agent.metric_sum("weft_service_backend_ejections_total", &ejection_labels),
        1.0
    );
    for (state, n) in [("ejected", 1.0), ("active", 2.0)] {
        let state = format!("state=\"{state}\"");
        assert_eq!(
            agent.metric_sum("weft_service_backends", &["service=\"health\"", &state]),
            n,
            "{state}"
        );
    }

    // Running again, it comes back by itself when the ejection runs out.
    lab.backends[1].start();
    wait_for("the backend's return", Duration::from_secs(25), || {
        (backend_state(&agent, "health", dead)["state"] == "active").then_some(())
    });
    let lines = lab.curls(80, 60);
    let counts = shares(&lab, &lines, 80);
    assert!(
        counts.get(&dead_name).copied().unwrap_or(0) > 0,
        "no traffic after its return: {counts:?}"
    );
    let back = health_records(&agent, "health", "returned");
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0]["destination"]["port"], dead.port());
    let _ = std::fs::remove_file(cfg);
}

/// `active_connections` of every backend of `service`, by backend address.
fn active_by_backend(agent: &Agent, service: &str) -> BTreeMap<String, u64> {
    let out = agent.client(&["services", "-o", "json"]);
    assert!(out.status.success(), "weft services failed");
    let services: Vec<Value> = serde_json::from_slice(&out.stdout).expect("services JSON");
    let s = services
        .iter()
        .find(|s| s["name"] == service)
        .expect("the service");
    s["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let addr = format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]);
            (addr, b["active_connections"].as_u64().expect("a count"))
        })
        .collect()
}

#[test]
fn open_connections_are_counted_per_backend() {
    if !require_root("open_connections_are_counted_per_backend") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(11);
    let lab = SteerLab::new(3, port);
    let cfg = config("active", &[lab.service_yaml("held", 80, &[1, 1, 1])]);
    let agent = start(&cfg);
    let zero: BTreeMap<String, u64> = lab
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), 0))
        .collect();
    assert_eq!(active_by_backend(&agent, "held"), zero);

    // Nine connections held open until stdin closes (30 s at most).
    const HELD: u64 = 9;
    let script = format!(
        "import signal, socket, sys\n\
         signal.alarm(30)\n\
         s = [socket.create_connection(('{}', 80), timeout=5) for _ in range({HELD})]\n\
         print('open', flush=True)\n\
         sys.stdin.read()\n\
         [c.close() for c in s]\n",
        lab.service_ip
    );
    let mut client = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read the client");
    assert_eq!(line.trim(), "open");

    // Each backend counts the connections whose `open` record names it.
    let active = wait_for("the open connections", Duration::from_secs(5), || {
        let a = active_by_backend(&agent, "held");
        (a.values().sum::<u64>() == HELD).then_some(a)
    });
    let mut opened: BTreeMap<String, u64> = zero.clone();
    for r in agent.flows(&["--all", "--service", "held"]) {
        if r["event"] == "open" {
            let dst = format!(
                "{}:{}",
                r["destination"]["ip"].as_str().unwrap_or("?"),
                r["destination"]["port"]
            );
            *opened.entry(dst).or_insert(0) += 1;
        }
    }
    assert_eq!(active, opened, "active connections vs open records");

    // Closed: none left.
    drop(client.stdin.take());
    let status = client.wait().expect("the client's exit");
    assert!(status.success(), "client: {status}");
    wait_for("the closes", Duration::from_secs(10), || {
        (active_by_backend(&agent, "held") == zero).then_some(())
    });
    let _ = std::fs::remove_file(cfg);
}

/// One curl at a time from the lab's client: the HTTP status it got from
/// the service address (`000` when its connect failed).
fn one_status(lab: &SteerLab, port: u16) -> String {
    let lines = lab.curls(port, 1);
    let line = lines.first().map(String::as_str).unwrap_or("");
    // Body (which may hold spaces), status, peer.
    let fields: Vec<&str> = line.rsplitn(3, ' ').collect();
    assert_eq!(fields.len(), 3, "curl output {line:?}");
    fields[1].to_owned()
}

#[test]
fn a_backend_answering_errors_is_ejected_with_eject_on_l7_errors() {
    if !require_root("a_backend_answering_errors_is_ejected_with_eject_on_l7_errors") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(10);
    let mut lab = SteerLab::new(3, port);
    let mut errs = lab.service_yaml("errs", 80, &[1, 1, 1]);
    // Long enough for the 100 requests below to run while it is out, each
    // a curl of its own (slow under emulation, hence scaled).
    let ejection = weft_tests::scaled(Duration::from_secs(60)).as_secs();
    errs.push_str(&format!(
        "    health: {{consecutive_failures: 3, base_ejection_time: {ejection}s, eject_on_l7_errors: true}}\n",
    ));
    // The same backends behind a service that counts failed connects only
    // (the default).
    let mut plain = lab.service_yaml("plain", 81, &[1, 1, 1]);
    plain.push_str("    health: {consecutive_failures: 3}\n");
    let cfg = config("l7errs", &[errs, plain]);
    let agent = start(&cfg);
    let bad = lab.backends[1].addr;
    lab.backends[1].answer_every_request_with(503);

    // One request at a time (each a new connection, which the backend
    // accepts) until three have got a 503: each is counted before the
    // next, and two in a row leave the backend in.
    let mut errors = 0;
    for _ in 0..300 {
        let status = one_status(&lab, 80);
        if status != "503" {
            assert_eq!(status, "200");
            continue;
        }
        errors += 1;
        if errors == 3 {
            break;
        }
        let counted = weft_tests::try_wait_for(Duration::from_secs(5), || {
            let b = backend_state(&agent, "errs", bad);
            (b["recent_l7_errors"] == errors).then_some(b)
        });
        let Some(b) = counted else {
            let port = bad.port().to_string();
            for r in agent.flows(&["--all", "--port", &port]) {
                eprintln!("{r}");
            }
            panic!(
                "error {errors} not counted: {}",
                backend_state(&agent, "errs", bad)
            );
        };
        assert_eq!(b["state"], "active", "ejected after {errors} errors: {b}");
        assert_eq!(b["recent_failures"], 0, "{b}");
    }
    assert_eq!(
        errors, 3,
        "fewer than 3 requests reached the failing backend"
    );
    let ejected = wait_for("the ejection", Duration::from_secs(5), || {
        let b = backend_state(&agent, "errs", bad);
        (b["state"] == "ejected").then_some(b)
    });
    assert_eq!(ejected["reason"], "consecutive_l7_errors", "{ejected}");
    assert_eq!(ejected["ejections"], 1, "{ejected}");

    // Out of rotation: the next 100 requests all get a 200 (one shell
    // loop of curls: a process per request is slow under emulation).
    let counts = shares(&lab, &lab.curls(80, 100), 80);
    assert_eq!(counts.values().sum::<usize>(), 100, "{counts:?}");
    let records = health_records(&agent, "errs", "ejected");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["destination"]["port"], bad.port());
    assert_eq!(r["destination"]["ip"], bad.ip().to_string().as_str());
    assert_eq!(r["health"]["reason"], "consecutive_l7_errors", "{r}");
    assert_eq!(r["health"]["consecutive_failures"], 3, "{r}");
    let backend_label = format!("backend=\"{bad}\"");
    let labels = [
        "service=\"errs\"",
        backend_label.as_str(),
        "reason=\"consecutive_l7_errors\"",
    ];
    assert_eq!(
        agent.metric_sum("weft_service_backend_ejections_total", &labels),
        1.0
    );

    // Behind the other service the same backend stays in: its 503s are
    // answers, and its connects succeed.
    let mut plain_errors = 0;
    for _ in 0..30 {
        if one_status(&lab, 81) == "503" {
            plain_errors += 1;
        }
    }
    assert!(plain_errors >= 3, "{plain_errors} of 30 requests got a 503");
    std::thread::sleep(Duration::from_millis(500));
    let b = backend_state(&agent, "plain", bad);
    assert_eq!(b["state"], "active", "{b}");
    assert_eq!(b["recent_l7_errors"], 0, "{b}");
    assert!(health_records(&agent, "plain", "ejected").is_empty());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn at_most_max_ejection_percent_of_backends_are_ejected() {
    if !require_root("at_most_max_ejection_percent_of_backends_are_ejected") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(7);
    let mut lab = SteerLab::new(3, port);
    let mut svc = lab.service_yaml("half", 80, &[1, 1, 1]);
    svc.push_str("    health: {consecutive_failures: 3, max_ejection_percent: 50}\n");
    let cfg = config("half", &[svc]);
    let agent = start(&cfg);
    let stopped = [lab.backends[0].addr, lab.backends[1].addr];
    lab.backends[0].stop();
    lab.backends[1].stop();
    // Enough connects for both stopped backends to fail 3 times in a row
    // (bounded; after one is out, half the connects reach the other).
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..60 {
        match one_curl(&lab, 80) {
            Some(body) => {
                assert_eq!(body, lab.backends[2].name);
                ok += 1;
            }
            None => failed += 1,
        }
    }
    eprintln!("{ok} connects succeeded, {failed} failed");
    std::thread::sleep(Duration::from_millis(500));
    let states: Vec<Value> = stopped
        .iter()
        .map(|&a| backend_state(&agent, "half", a))
        .collect();
    let ejected = states.iter().filter(|b| b["state"] == "ejected").count();
    assert_eq!(ejected, 1, "one of 3 at most with 50 %: {states:?}");
    let active = states
        .iter()
        .find(|b| b["state"] == "active")
        .expect("the other stopped backend");
    assert!(
        active["recent_failures"].as_u64().unwrap_or(0) >= 3,
        "{active}"
    );
    assert_eq!(health_records(&agent, "half", "ejected").len(), 1);
    assert_eq!(
        agent.metric_sum(
            "weft_service_backend_ejections_total",
            &["service=\"half\""]
        ),
        1.0
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn udp_datagrams_to_a_service_reach_dnsmasq_backends() {
    if !require_root("udp_datagrams_to_a_service_reach_dnsmasq_backends") {
        return;
    }
    weft_tests::peer::require_program("dnsmasq");
    weft_tests::peer::require_program("dig");
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(8);
    let dns_port = unique_port(9);
    let lab = SteerLab::new(2, port);
    let _servers = lab.dnsmasqs(dns_port);
    let svc = lab.service_yaml_at("dns", 53, "udp", dns_port);
    let cfg = config("dns", &[svc]);
    let agent = start(&cfg);
    // 100 lookups, each a new dig with its own unconnected socket: dig
    // takes an answer only from the address it asked, so every answer
    // counted below had its source rewritten to the service address.
    let script = format!(
        "for i in $(seq 100); do dig @{} -p 53 +short +tries=1 +time=3 which.test A || echo failed; done",
        lab.service_ip
    );
    let out = lab.client_sh(&script);
    let mut answers = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        *answers.entry(line.to_owned()).or_insert(0) += 1;
    }
    let total: usize = answers.values().sum();
    assert_eq!(total, 100, "{answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        ["10.250.0.0", "10.250.0.1"],
        "both backends answer and nothing else: {answers:?}"
    );
    // Datagrams rewritten per backend, as the kernel counted them.
    wait_for("the service metrics", Duration::from_secs(10), || {
        let sum = agent.metric_sum("weft_service_connections_total", &["service=\"dns\""]);
        (sum == 100.0).then_some(())
    });
    let metrics = agent.metrics();
    let series = "weft_events_lost_total{source=\"steer\",stage=\"reply_not_remembered\"} 0";
    assert!(metrics.contains(series), "no {series} in\n{metrics}");
    let _ = std::fs::remove_file(cfg);
}

const K8S_SERVICES: &str = "/api/v1/services";
const K8S_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

/// Service `shop/web` as the API server returns it: cluster IP the lab's
/// service address, port `port` named `http`.
fn k8s_service(lab: &SteerLab, port: u16) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "10"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": lab.service_ip,
            "clusterIPs": [lab.service_ip],
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}],
        },
    })
}

/// The EndpointSlice of `shop/web`: one endpoint per lab backend, ready as
/// `ready` says, serving port `http` on `port`.
fn k8s_slice(lab: &SteerLab, port: u16, ready: &[bool], version: u32) -> Value {
    let endpoints: Vec<Value> = lab
        .backends
        .iter()
        .zip(ready)
        .map(|(b, ready)| {
            serde_json::json!({
                "addresses": [b.addr.ip().to_string()],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-7xk2p",
            "namespace": "shop",
            "resourceVersion": version.to_string(),
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn k8s_list(kind: &str, api_version: &str, items: &[Value]) -> String {
    serde_json::json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": "20"},
        "items": items,
    })
    .to_string()
}

/// The backends in the kernel's BACKENDS map now (bpftool's dump).
fn kernel_backends() -> std::collections::BTreeSet<std::net::SocketAddr> {
    let out = run(&["bpftool", "-j", "map", "show"]);
    let maps: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let ids: Vec<u64> = maps
        .iter()
        .filter(|m| m["name"] == "BACKENDS")
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 1, "one BACKENDS map on the node: {ids:?}");
    let out = run(&["bpftool", "-j", "map", "dump", "id", &ids[0].to_string()]);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    entries
        .iter()
        .map(|e| {
            // struct Backend: 16 address bytes (IPv4 first), port in host
            // order.
            let bytes: Vec<u8> = e["value"]
                .as_array()
                .expect("value bytes")
                .iter()
                .map(|b| {
                    let hex = b.as_str().expect("hex byte").trim_start_matches("0x");
                    u8::from_str_radix(hex, 16).expect("hex byte")
                })
                .collect();
            let ip = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            std::net::SocketAddr::from((ip, u16::from_ne_bytes([bytes[16], bytes[17]])))
        })
        .collect()
}

/// `shop/web` in `weft services -o json`, if listed.
fn listed_service(agent: &Agent, name: &str) -> Option<Value> {
    let out = agent.client(&["services", "-o", "json"]);
    let services: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    services.into_iter().find(|s| s["name"] == name)
}

#[test]
fn kubernetes_services_follow_their_endpointslices() {
    if !require_root("kubernetes_services_follow_their_endpointslices") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _pins = PinCleanup;
    let target = unique_port(42);
    let port = unique_port(43);
    let lab = SteerLab::new(3, target);
    let addr = |i: usize| lab.backends[i].addr;
    // Two endpoints ready, one not.
    let api = RecordedApi::start(HashMap::from([
        ("/api/v1/pods", empty_list("PodList", "v1")),
        (
            K8S_SERVICES,
            k8s_list("ServiceList", "v1", &[k8s_service(&lab, port)]),
        ),
        (
            K8S_SLICES,
            k8s_list(
                "EndpointSliceList",
                "discovery.k8s.io/v1",
                &[k8s_slice(&lab, target, &[true, true, false], 11)],
            ),
        ),
        (
            "/apis/apps/v1/replicasets",
            empty_list("PartialObjectMetadataList", "meta.k8s.io/v1"),
        ),
        (
            "/apis/batch/v1/jobs",
            empty_list("PartialObjectMetadataList", "meta.k8s.io/v1"),
        ),
    ]));
    let dir = std::env::temp_dir().join(format!("weft-k8s-steer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = weft_tests::pods::kubernetes_config(
        &dir,
        "weft.yaml",
        &api.kubeconfig(&dir),
        "kubernetes_services: true\n",
    );
    let agent = start(&config);

    // Exactly the two ready endpoints, at the slice's port.
    let service = wait_for("shop/web to be steered", Duration::from_secs(20), || {
        listed_service(&agent, "shop/web")
    });
    assert_eq!(service["source"], "kubernetes", "{service:#}");
    assert_eq!(service["address"], lab.service_ip.as_str(), "{service:#}");
    assert_eq!(service["port"], port, "{service:#}");
    let listed: Vec<String> = service["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]))
        .collect();
    assert_eq!(listed, vec![addr(0).to_string(), addr(1).to_string()]);
    assert_eq!(
        kernel_backends(),
        [addr(0), addr(1)].into_iter().collect(),
        "BACKENDS in the kernel"
    );
    let counts = shares(&lab, &lab.curls(port, 60), port);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["backend-0", "backend-1"],
        "{counts:?}"
    );

    // Killed, and started again while the API server cannot be reached:
    // the cluster's services stay in the kernel until they are listed.
    let mut agent = agent;
    agent.signal_and_wait(libc::SIGKILL);
    drop(agent);
    let blind_config = dir.join("blind.yaml");
    let blind_kubeconfig = api.unreachable_kubeconfig(&dir);
    std::fs::write(
        &blind_config,
        std::fs::read_to_string(&config).expect("config").replace(
            &api.kubeconfig(&dir).display().to_string(),
            &blind_kubeconfig.display().to_string(),
        ),
    )
    .expect("write config");
    let blind = start(&blind_config);
    assert_eq!(kernel_backends(), [addr(0), addr(1)].into_iter().collect());
    let during = shares(&lab, &lab.curls(port, 20), port);
    assert_eq!(during.values().sum::<usize>(), 20, "{during:?}");
    drop(blind);
    let agent = start(&config);
    // Listed again: the backends kept their ids, so their kernel counts
    // (60 + 20 connects) carry on.
    let service = wait_for(
        "shop/web to be steered again",
        Duration::from_secs(20),
        || listed_service(&agent, "shop/web"),
    );
    let connects: u64 = service["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["connections"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(connects, 80, "{service:#}");

    // The slice changes: backend-0 is no longer ready, backend-2 is.
    api.wait_for_watch(K8S_SLICES, Duration::from_secs(10));
    let sent = std::time::Instant::now();
    let update = k8s_slice(&lab, target, &[false, true, true], 12);
    assert!(
        api.send(K8S_SLICES, "MODIFIED", &update) > 0,
        "no watch took the update"
    );
    let want: std::collections::BTreeSet<_> = [addr(1), addr(2)].into_iter().collect();
    while kernel_backends() != want {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the update never reached the kernel: {:?}",
            kernel_backends()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = sent.elapsed();
    eprintln!("the slice update reached the kernel in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let counts = shares(&lab, &lab.curls(port, 40), port);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["backend-1", "backend-2"],
        "{counts:?}"
    );
    // Records name the service, also for the backend it gained.
    let want: BTreeMap<String, usize> = [1, 2]
        .iter()
        .map(|&i| (addr(i).to_string(), counts[&lab.backends[i].name]))
        .collect();
    let got = wait_for("the records of shop/web", Duration::from_secs(20), || {
        let got = records_by_backend(&agent, "shop/web");
        (got.values().sum::<usize>() >= 40).then_some(got)
    });
    assert_eq!(got, want, "close records per backend");

    // The Service is deleted: connects to its address are no longer
    // rewritten (the address is routed nowhere: the connect fails).
    api.wait_for_watch(K8S_SERVICES, Duration::from_secs(10));
    assert!(api.send(K8S_SERVICES, "DELETED", &k8s_service(&lab, port)) > 0);
    wait_for("shop/web to be gone", Duration::from_secs(5), || {
        kernel_backends().is_empty().then_some(())
    });
    assert_eq!(
        one_curl(&lab, port),
        None,
        "a connect to the deleted Service's address"
    );
    wait_for("weft services to drop it", Duration::from_secs(5), || {
        listed_service(&agent, "shop/web").is_none().then_some(())
    });
    let metrics = agent.metrics();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("weft_service_backends{") && l.contains("shop/web")),
        "a gauge of the deleted Service stayed:\n{metrics}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The script of one IPv6 socket (Python, in the client namespace) that
/// dials `::ffff:IP` `n` times, one connection each, and prints per
/// connection `<body> <peer>` (the peer as getpeername gives it).
fn v4_mapped_dials(ip: &str, port: u16, n: usize) -> String {
    format!(
        "import socket\n\
         for _ in range({n}):\n\
         \x20   s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
         \x20   s.settimeout(5)\n\
         \x20   s.connect(('::ffff:{ip}', {port}))\n\
         \x20   peer = s.getpeername()[0]\n\
         \x20   s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   data = b''\n\
         \x20   while True:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk:\n\
         \x20           break\n\
         \x20       data += chunk\n\
         \x20   s.close()\n\
         \x20   print(data.split(b'\\r\\n\\r\\n', 1)[1].decode().strip(), peer)\n"
    )
}

#[test]
fn ipv6_services_and_v4_mapped_dials_are_steered() {
    if !require_root("ipv6_services_and_v4_mapped_dials_are_steered") {
        return;
    }
    weft_tests::peer::require_program("dnsmasq");
    weft_tests::peer::require_program("dig");
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(44);
    let dns_port = unique_port(45);
    let lab = SteerLab::new(3, port);
    let _http6 = lab.v6_servers();
    let _dns6 = lab.dnsmasqs_at(dns_port, true);
    let cfg = config(
        "v6",
        &[
            lab.service_yaml6("web6", port, "tcp", port),
            lab.service_yaml6("dns6", 53, "udp", dns_port),
            lab.service_yaml("web4", port, &[1, 1, 1]),
        ],
    );
    let agent = start(&cfg);

    // TCP over IPv6: 90 curls, each a new connection, all answered from the
    // service address, balanced over the three backends.
    let peer = format!("{}:{port}", lab.service_ip6);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in lab.curls6(port, 90) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "curl output {line:?}");
        assert_eq!((fields[1], fields[2]), ("200", peer.as_str()), "{line}");
        *counts.entry(fields[0].to_owned()).or_insert(0) += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 90, "{counts:?}");
    assert_eq!(counts.len(), 3, "every backend used: {counts:?}");
    assert!(
        counts.values().all(|&n| (10..=50).contains(&n)),
        "{counts:?}"
    );
    // Records name the service and keep each IPv6 backend as destination.
    let want: BTreeMap<String, usize> = lab
        .backends
        .iter()
        .map(|b| (format!("{}:{}", b.addr6.ip(), port), counts[&b.name]))
        .collect();
    let got = wait_for("the records of web6", Duration::from_secs(20), || {
        let got = records_by_backend(&agent, "web6");
        (got.values().sum::<usize>() >= 90).then_some(got)
    });
    assert_eq!(got, want, "close records per backend");

    // An IPv4 service dialed by an IPv6 socket as ::ffff:a.b.c.d: steered,
    // and the socket's peer reads as the address it dialed.
    let out = lab.client_sh(&format!(
        "python3 -c \"$(cat <<'PY'\n{}PY\n)\"",
        v4_mapped_dials(&lab.service_ip, port, 30)
    ));
    let mapped = format!("::ffff:{}", lab.service_ip);
    let mut bodies: BTreeMap<String, usize> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let (body, peer) = line.split_once(' ').expect("body and peer");
        assert_eq!(peer, mapped, "{line}");
        *bodies.entry(body.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(bodies.values().sum::<usize>(), 30, "{out}");
    assert!(
        bodies.keys().all(|b| b.starts_with("backend-")),
        "{bodies:?}"
    );

    // UDP over IPv6: dig takes an answer only from the address it asked,
    // so each of the 60 answers had its source rewritten by recvmsg6.
    let script = format!(
        "for i in $(seq 60); do dig -6 @{} -p 53 +short +tries=1 +time=3 which.test A || echo failed; done",
        lab.service_ip6
    );
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for line in lab.client_sh(&script).lines().filter(|l| !l.is_empty()) {
        *answers.entry(line.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(answers.values().sum::<usize>(), 60, "{answers:?}");
    assert!(
        answers.len() >= 2 && answers.keys().all(|a| a.starts_with("10.250.0.")),
        "answers from at least two backends and nothing else: {answers:?}"
    );
    wait_for("the dns6 metric", Duration::from_secs(10), || {
        let sum = agent.metric_sum("weft_service_connections_total", &["service=\"dns6\""]);
        (sum == 60.0).then_some(())
    });
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn the_active_check_takes_out_a_backend_before_any_client_fails() {
    if !require_root("the_active_check_takes_out_a_backend_before_any_client_fails") {
        return;
    }
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let port = unique_port(46);
    let mut lab = SteerLab::new(3, port);
    // The agent checks from the node's namespace, as it would reach pods.
    lab.route_from_node();
    let mut svc = lab.service_yaml("checked", 80, &[1, 1, 1]);
    svc.push_str("    health: {health_check_interval: 1s}\n");
    let cfg = config("check", &[svc]);
    let agent = start(&cfg);
    let warm = shares(&lab, &lab.curls(80, 30), 80);
    assert_eq!(warm.len(), 3, "every backend checked in and used: {warm:?}");

    // Stopped: two failed checks (about two seconds) take it out, with no
    // client connect involved.
    let dead = lab.backends[1].addr;
    let dead_name = lab.backends[1].name.clone();
    lab.backends[1].stop();
    let stopped = std::time::Instant::now();
    let out = wait_for("the failed checks", Duration::from_secs(10), || {
        let b = backend_state(&agent, "checked", dead);
        (b["state"] == "ejected").then_some(b)
    });
    eprintln!(
        "out of rotation {:?} after the backend stopped",
        stopped.elapsed()
    );
    assert_eq!(out["reason"], "active_check_failed", "{out}");
    assert!(
        out["ejected_until"].is_null(),
        "out until a check passes: {out}"
    );
    assert_eq!(out["recent_failures"], 0, "no client connect failed: {out}");
    let counts = shares(&lab, &lab.curls(80, 60), 80);
    assert_eq!(counts.values().sum::<usize>(), 60, "{counts:?}");
    assert!(!counts.contains_key(&dead_name), "{counts:?}");
    let records = health_records(&agent, "checked", "ejected");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["health"]["reason"], "active_check_failed");
    assert_eq!(records[0]["health"]["consecutive_failures"], 2);
    let backend_label = format!("backend=\"{dead}\"");
    assert_eq!(
        agent.metric_sum(
            "weft_service_backend_ejections_total",
            &[
                "service=\"checked\"",
                backend_label.as_str(),
                "reason=\"active_check_failed\""
            ]
        ),
        1.0
    );

    // Running again: the first check that passes brings it back.
    lab.backends[1].start();
    wait_for("the passing check", Duration::from_secs(10), || {
        (backend_state(&agent, "checked", dead)["state"] == "active").then_some(())
    });
    let returned = health_records(&agent, "checked", "returned");
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0]["health"]["reason"], "active_check_failed");
    let counts = shares(&lab, &lab.curls(80, 60), 80);
    assert!(
        counts.get(&dead_name).copied().unwrap_or(0) > 0,
        "no traffic after its return: {counts:?}"
    );
    let _ = std::fs::remove_file(cfg);
}
