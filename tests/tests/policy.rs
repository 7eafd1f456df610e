//! Policy: named L3/L4 rules enforced in the kernel against real servers
//! in lab namespaces. An egress deny fails each connect with EPERM at
//! once while another port of the same server still answers; audit mode
//! lets the same connects through and records them; an ingress deny
//! drops the SYNs of one source while another connects; rules that select
//! pods by namespace and labels follow the pods the (recorded) Kubernetes
//! API lists. Every decision is
//! a record with the rule's name and counted exactly in
//! `weft_policy_verdicts_total` and `weft policies`.
//!
//! Policy state is one per node (pinned under bpffs), so these tests run
//! one at a time.

use std::{path::PathBuf, process::Command, sync::Mutex, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft},
    apiserver::RecordedApi,
    lab::Lab,
    peer::Peer,
    pods::ContainerCgroup,
    require_root, run,
    steer::PinCleanup,
    wait_for,
};

static POLICY: Mutex<()> = Mutex::new(());

fn config(tag: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("weft-policy-{}-{tag}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Real HTTP servers in the lab's server namespace, one per port.
fn servers(lab: &Lab, ports: &[u16]) -> Vec<Peer> {
    ports
        .iter()
        .map(|&port| {
            let p = port.to_string();
            let mut s = Peer::start(
                "http",
                &lab.server_ns,
                &["python3", "-m", "http.server", &p, "--bind", &lab.server_v4],
            );
            s.wait_tcp(
                &lab.server_ns,
                lab.server_addr(port),
                Duration::from_secs(20),
            );
            s
        })
        .collect()
}

/// `count` connects from namespace `ns`: (errno, milliseconds) each;
/// errno 0 is success, -1 a timeout.
fn connects(lab: &Lab, ns: &str, port: u16, count: u32, timeout_s: f64) -> Vec<(i64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/connects.py");
    let out = lab.exec(
        ns,
        &[
            "python3",
            script,
            &lab.server_v4,
            &port.to_string(),
            &count.to_string(),
            &timeout_s.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["errno"].as_i64().expect("errno"),
                v["ms"].as_f64().expect("ms"),
            )
        })
        .collect()
}

/// Whether this kernel tells a network namespace's cookie
/// (`SO_NETNS_COOKIE`, Linux 5.14), which egress rules with `from.cidr`
/// need.
fn netns_cookies() -> bool {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a local of the size given.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            71,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Without namespace cookies an agent given an egress `from.cidr` rule
/// refuses to start (exit 2, naming it): it could not enforce it.
fn refused_without_cookies(cfg: &std::path::Path) -> bool {
    refused_without_cookies_at(cfg, "policies[0].from.cidr")
}

/// As [`refused_without_cookies`], the refusal naming `field`.
fn refused_without_cookies_at(cfg: &std::path::Path, field: &str) -> bool {
    if netns_cookies() {
        return false;
    }
    let out = weft(&["agent", "--config", cfg.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(field) && err.contains("SO_NETNS_COOKIE"),
        "{err}"
    );
    true
}

/// The agent's `policy` records of rule `name` with `verdict`.
fn policy_records(agent: &Agent, name: &str, verdict: &str) -> Vec<Value> {
    agent
        .flows(&["--all", "--verdict", verdict])
        .into_iter()
        .filter(|r| r["event"] == "policy" && r["policy"] == name)
        .collect()
}

/// `weft policies -o json`, the rule named `name`.
fn policy_report(agent: &Agent, name: &str) -> Value {
    let out = agent.client(&["policies", "-o", "json"]);
    assert!(out.status.success(), "weft policies failed");
    let rules: Vec<Value> = serde_json::from_slice(&out.stdout).expect("policies JSON");
    rules
        .into_iter()
        .find(|r| r["name"] == name)
        .expect("the rule")
}

fn verdicts(agent: &Agent, name: &str, verdict: &str) -> f64 {
    agent.metric_sum(
        "weft_policy_verdicts_total",
        &[
            &format!("policy=\"{name}\""),
            &format!("verdict=\"{verdict}\""),
        ],
    )
}

/// Waits until rule `name` has exactly `n` records, metric samples and
/// report counts of `verdict`, then checks nothing more arrives.
fn assert_counted(agent: &Agent, name: &str, verdict: &str, n: usize) {
    wait_for(
        &format!("{n} {verdict} verdicts of {name}"),
        Duration::from_secs(10),
        || {
            let counted = policy_records(agent, name, verdict).len() == n
                && verdicts(agent, name, verdict) == n as f64
                && policy_report(agent, name)[verdict] == n as u64;
            counted.then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(policy_records(agent, name, verdict).len(), n);
    assert_eq!(verdicts(agent, name, verdict), n as f64);
}

fn egress_rule(lab: &Lab, mode: &str) -> String {
    format!(
        "policy_mode: {mode}\npolicies:\n  - name: no-8080\n    direction: egress\n    \
         from: {{cidr: [{}/32]}}\n    to: {{cidr: [{}/32], ports: [8080], protocol: tcp}}\n    \
         action: deny\n",
        lab.client_v4, lab.server_v4
    )
}

#[test]
fn an_egress_deny_fails_connects_with_eperm_at_once() {
    if !require_root("an_egress_deny_fails_connects_with_eperm_at_once") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[8080, 8081]);
    let cfg = config("egress", &egress_rule(&lab, "enforce"));
    if refused_without_cookies(&cfg) {
        return;
    }
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);

    let denied = connects(&lab, &lab.client_ns, 8080, 20, 2.0);
    assert_eq!(denied.len(), 20);
    // 10 ms on the machine (stretched under emulation, where a Python
    // loop's own pauses exceed it).
    let bound = weft_tests::scaled(Duration::from_millis(10)).as_secs_f64() * 1000.0;
    for (errno, ms) in &denied {
        assert_eq!(*errno, libc::EPERM as i64, "{denied:?}");
        assert!(*ms < bound, "a denied connect took {ms} ms: {denied:?}");
    }
    let allowed = connects(&lab, &lab.client_ns, 8081, 20, 2.0);
    assert!(allowed.iter().all(|(e, _)| *e == 0), "{allowed:?}");

    assert_counted(&agent, "no-8080", "dropped", 20);
    let record = &policy_records(&agent, "no-8080", "dropped")[0];
    assert_eq!(record["drop_reason"], "POLICY_DENIED");
    assert_eq!(record["traffic_direction"], "egress");
    assert_eq!(record["source"]["ip"], lab.client_v4.as_str());
    assert_eq!(record["destination"]["ip"], lab.server_v4.as_str());
    assert_eq!(record["destination"]["port"], 8080);
    let report = policy_report(&agent, "no-8080");
    assert_eq!(
        (report["mode"].as_str(), report["audit"].as_u64()),
        (Some("enforce"), Some(0))
    );
    assert_eq!(policy_records(&agent, "no-8080", "audit").len(), 0);
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn audit_mode_records_the_denies_and_lets_them_through() {
    if !require_root("audit_mode_records_the_denies_and_lets_them_through") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[8080]);
    let cfg = config("audit", &egress_rule(&lab, "audit"));
    if refused_without_cookies(&cfg) {
        return;
    }
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);

    let through = connects(&lab, &lab.client_ns, 8080, 20, 2.0);
    assert!(through.iter().all(|(e, _)| *e == 0), "{through:?}");
    assert_counted(&agent, "no-8080", "audit", 20);
    assert_eq!(policy_records(&agent, "no-8080", "dropped").len(), 0);
    assert_eq!(verdicts(&agent, "no-8080", "dropped"), 0.0);
    assert_eq!(policy_report(&agent, "no-8080")["mode"], "audit");
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn an_ingress_deny_drops_the_syns_of_one_source_only() {
    if !require_root("an_ingress_deny_drops_the_syns_of_one_source_only") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[9090]);
    let rule = format!(
        "policies:\n  - name: no-9090-from-client\n    direction: ingress\n    \
         from: {{cidr: [{}/32]}}\n    to: {{ports: [9090], protocol: tcp}}\n    action: deny\n",
        lab.client_v4
    );
    let cfg = config("ingress", &rule);
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);

    // Half a second is less than the SYN's first retransmission (1 s):
    // one SYN per connect.
    let dropped = connects(&lab, &lab.client_ns, 9090, 5, 0.5);
    assert!(dropped.iter().all(|(e, _)| *e == -1), "{dropped:?}");
    // Another source (the server's own namespace, from its address).
    let other = connects(&lab, &lab.server_ns, 9090, 5, 2.0);
    assert!(other.iter().all(|(e, _)| *e == 0), "{other:?}");
    assert_counted(&agent, "no-9090-from-client", "dropped", 5);
    let record = &policy_records(&agent, "no-9090-from-client", "dropped")[0];
    assert_eq!(record["traffic_direction"], "ingress");
    assert_eq!(record["source"]["ip"], lab.client_v4.as_str());
    assert_eq!(record["destination"]["port"], 9090);
    assert_ne!(record["source"]["port"], 0);
    let _ = std::fs::remove_file(cfg);
}

/// Loaded programs and maps of the policy, by name (bpftool shows map
/// names cut at 15 characters).
fn policy_objects() -> (usize, usize) {
    let count = |kind: &str, keep: &dyn Fn(&str) -> bool| -> usize {
        let out = run(&["bpftool", "-j", kind, "show"]);
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        all.iter()
            .filter(|o| o["name"].as_str().is_some_and(keep))
            .count()
    };
    (
        count("prog", &|n| {
            // A kernel without bpf_set_retval runs the `_eperm` variant.
            n == "weft_policy_ingress" || n.trim_end_matches("_eperm") == "weft_steer_connect4"
        }),
        count("map", &|n| n.starts_with("POLICY_")),
    )
}

fn both_rules(lab: &Lab) -> String {
    format!(
        "{}  - name: no-9090-in\n    direction: ingress\n    from: {{cidr: [{}/32]}}\n    \
         to: {{ports: [9090]}}\n    action: deny\n",
        egress_rule(lab, "enforce"),
        lab.client_v4
    )
}

#[test]
fn rules_outlive_a_killed_agent_and_cleanup_removes_them() {
    if !require_root("rules_outlive_a_killed_agent_and_cleanup_removes_them") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[8080, 9090]);
    let cfg = config("restart", &both_rules(&lab));
    if refused_without_cookies(&cfg) {
        return;
    }
    let mut first = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);
    let eperm = |n| {
        let r = connects(&lab, &lab.client_ns, 8080, n, 2.0);
        assert!(r.iter().all(|(e, _)| *e == libc::EPERM as i64), "{r:?}");
    };
    eperm(3);
    first.signal_and_wait(libc::SIGKILL);
    drop(first);

    // No agent: the kernel keeps enforcing both directions.
    eperm(3);
    let r = connects(&lab, &lab.client_ns, 9090, 2, 0.5);
    assert!(r.iter().all(|(e, _)| *e == -1), "{r:?}");
    assert_eq!(
        policy_objects(),
        (2, 9),
        "policy programs and maps while no agent runs"
    );

    // The next agent adopts them, and with them the kernel's counts.
    let second = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);
    assert!(
        second.log().contains("adopted 9 pinned steering programs"),
        "{}",
        second.log()
    );
    eperm(3);
    wait_for("the counts of both agents", Duration::from_secs(10), || {
        let (egress, ingress) = (
            policy_report(&second, "no-8080"),
            policy_report(&second, "no-9090-in"),
        );
        (egress["dropped"] == 9 && ingress["dropped"] == 2).then_some(())
    });
    // Records are the running agent's: those of its own three connects
    // (the others happened while no agent read the ring, or were read by
    // the first).
    assert!(policy_records(&second, "no-8080", "dropped").len() >= 3);

    drop(second);
    let out = weft(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the kernel to free the policy",
        Duration::from_secs(10),
        || (policy_objects() == (0, 0)).then_some(()),
    );
    let r = connects(&lab, &lab.client_ns, 8080, 3, 2.0);
    assert!(r.iter().all(|(e, _)| *e == 0), "after cleanup: {r:?}");
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn an_egress_rule_matches_the_processes_of_a_cgroup() {
    if !require_root("an_egress_rule_matches_the_processes_of_a_cgroup") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[8080]);
    let cgroup = ContainerCgroup::create();
    // The rule names the container's parent, a prefix of its path.
    let parent = cgroup.path().parent().expect("a parent");
    let prefix = format!("/{}", parent.file_name().expect("a name").to_string_lossy());
    let rule = format!(
        "policies:\n  - name: no-8080-from-cgroup\n    direction: egress\n    \
         from: {{cgroup: {prefix}}}\n    to: {{ports: [8080], protocol: tcp}}\n    action: deny\n"
    );
    let cfg = config("cgroup", &rule);
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);

    // The same client namespace, in the cgroup and outside it.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/connects.py");
    let procs = cgroup.path().join("cgroup.procs");
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0\" && exec ip netns exec \"$@\""])
        .arg(&procs)
        .args([
            &lab.client_ns,
            "python3",
            script,
            &lab.server_v4,
            "8080",
            "5",
            "2",
        ])
        .output()
        .expect("run the connects in the cgroup");
    let inside = String::from_utf8_lossy(&out.stdout);
    assert_eq!(inside.lines().count(), 5, "{inside}");
    assert!(
        inside
            .lines()
            .all(|l| l.contains(&format!("\"errno\": {}", libc::EPERM))),
        "{inside}"
    );
    let outside = connects(&lab, &lab.client_ns, 8080, 5, 2.0);
    assert!(outside.iter().all(|(e, _)| *e == 0), "{outside:?}");
    assert_counted(&agent, "no-8080-from-cgroup", "dropped", 5);
    drop(agent);
    drop(cgroup);
    let _ = std::fs::remove_file(cfg);
}

/// The API objects of the pod test: the client's namespace is pod
/// `prod/web`, the server's is pod `shop/db` (labels `app: NAME`).
fn lab_pods(lab: &Lab) -> [Value; 2] {
    let id = |n: u32| {
        format!(
            "{:032x}{:032x}",
            0xc0de_0000_u64 + u64::from(n),
            std::process::id()
        )
    };
    [
        weft_tests::pods::pod("prod", "web", &lab.client_v4, &id(1)),
        weft_tests::pods::pod("shop", "db", &lab.server_v4, &id(2)),
    ]
}

/// A recorded API server listing `pods` (and nothing else).
fn pods_api(pods: &[Value]) -> RecordedApi {
    RecordedApi::start(weft_tests::pods::pods_only_lists(
        weft_tests::pods::pod_list(pods),
    ))
}

const PODS: &str = "/api/v1/pods";

/// One connect from the client every 100 ms until its errno is `want`
/// (bounded by `within`): how many connects it took.
fn connects_until(lab: &Lab, port: u16, want: i64, within: Duration) -> usize {
    let start = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (errno, _) = connects(lab, &lab.client_ns, port, 1, 2.0)[0];
        if errno == want {
            return n;
        }
        assert!(
            start.elapsed() < within,
            "connects to {port} still errno {errno} after {within:?} (want {want})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rules_that_select_pods_follow_the_pods_and_outlive_a_restart() {
    if !require_root("rules_that_select_pods_follow_the_pods_and_outlive_a_restart") {
        return;
    }
    let _one = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = PinCleanup;
    let lab = Lab::new();
    let _servers = servers(&lab, &[8080, 9090]);
    let [web, db] = lab_pods(&lab);
    let api = pods_api(&[web.clone(), db]);
    let dir = std::env::temp_dir().join(format!("weft-policy-pods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let rules = "policies:\n  - name: web-no-8080\n    direction: egress\n    \
                 from: {namespace: prod, pod_labels: {app: web}}\n    \
                 to: {ports: [8080], protocol: tcp}\n    action: deny\n  \
                 - name: prod-no-9090\n    direction: ingress\n    from: {namespace: prod}\n    \
                 to: {ports: [9090], protocol: tcp}\n    action: deny\n";
    let with_api = |name: &str, kubeconfig: &std::path::Path| {
        weft_tests::pods::kubernetes_config(&dir, name, kubeconfig, rules)
    };
    let cfg = with_api("weft.yaml", &api.kubeconfig(&dir));
    if refused_without_cookies_at(&cfg, "policies[0].from.namespace") {
        return;
    }
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);

    // Until the pods are listed the rule selects nobody; then each connect
    // of prod/web to 8080 fails at once.
    let probes = connects_until(&lab, 8080, libc::EPERM as i64, Duration::from_secs(20));
    assert!(probes >= 1);
    let denied = connects(&lab, &lab.client_ns, 8080, 20, 2.0);
    assert!(
        denied.iter().all(|(e, _)| *e == libc::EPERM as i64),
        "{denied:?}"
    );
    // shop/db is not selected: its own connects to 8080 go through.
    let other = connects(&lab, &lab.server_ns, 8080, 5, 2.0);
    assert!(other.iter().all(|(e, _)| *e == 0), "{other:?}");
    assert_counted(&agent, "web-no-8080", "dropped", 21);
    let record = &policy_records(&agent, "web-no-8080", "dropped")[0];
    assert_eq!(record["source"]["ip"], lab.client_v4.as_str());
    assert_eq!(record["destination"]["port"], 8080);
    let report = policy_report(&agent, "web-no-8080");
    assert_eq!(report["from"], "namespace prod,pods app=web", "{report}");

    // Ingress: SYNs from the prod namespace's pod are dropped, shop/db's
    // reach the server.
    let dropped = connects(&lab, &lab.client_ns, 9090, 5, 0.5);
    assert!(dropped.iter().all(|(e, _)| *e == -1), "{dropped:?}");
    let other = connects(&lab, &lab.server_ns, 9090, 5, 2.0);
    assert!(other.iter().all(|(e, _)| *e == 0), "{other:?}");
    assert_counted(&agent, "prod-no-9090", "dropped", 5);

    // Killed, and started again while the API server cannot be reached:
    // the pods selected before stay selected.
    let mut agent = agent;
    agent.signal_and_wait(libc::SIGKILL);
    drop(agent);
    let blind = with_api("blind.yaml", &api.unreachable_kubeconfig(&dir));
    let agent = Agent::start(&["--config", blind.to_str().expect("utf-8")]);
    // Past the agent's first resolve passes (one per second).
    std::thread::sleep(Duration::from_millis(2500));
    let denied = connects(&lab, &lab.client_ns, 8080, 5, 2.0);
    assert!(
        denied.iter().all(|(e, _)| *e == libc::EPERM as i64),
        "{denied:?}"
    );
    let dropped = connects(&lab, &lab.client_ns, 9090, 2, 0.5);
    assert!(dropped.iter().all(|(e, _)| *e == -1), "{dropped:?}");
    drop(agent);

    // With the API again: prod/web loses its label, and the egress rule
    // lets it through within a second or two; the ingress rule (the whole
    // namespace) still holds.
    let agent = Agent::start(&["--config", cfg.to_str().expect("utf-8")]);
    api.wait_for_watch(PODS, Duration::from_secs(20));
    let mut relabelled = web.clone();
    relabelled["metadata"]["labels"]["app"] = "web-v2".into();
    relabelled["metadata"]["resourceVersion"] = "101".into();
    let changed_at = std::time::Instant::now();
    assert_eq!(api.send(PODS, "MODIFIED", &relabelled), 1);
    connects_until(&lab, 8080, 0, Duration::from_secs(10));
    let took = changed_at.elapsed();
    assert!(
        took < weft_tests::scaled(Duration::from_secs(3)),
        "the label change took {took:?} to reach the kernel"
    );
    let through = connects(&lab, &lab.client_ns, 8080, 20, 2.0);
    assert!(through.iter().all(|(e, _)| *e == 0), "{through:?}");
    let dropped = connects(&lab, &lab.client_ns, 9090, 2, 0.5);
    assert!(dropped.iter().all(|(e, _)| *e == -1), "{dropped:?}");

    // The pod is deleted: nothing selects its address any more.
    relabelled["metadata"]["resourceVersion"] = "102".into();
    assert_eq!(api.send(PODS, "DELETED", &relabelled), 1);
    connects_until(&lab, 9090, 0, Duration::from_secs(10));
    println!("label change reached the kernel in {took:?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}
