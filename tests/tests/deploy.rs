//! The Kubernetes manifests (deploy/kubernetes): kubectl's kustomize renders
//! them, they validate against the Kubernetes JSON schemas
//! (kubernetes-validate), they are least-privilege (no privileged container,
//! every added capability justified in docs/deployment.md), they agree with the
//! agent (probe paths and port, configuration accepted), and the agent runs
//! and sees traffic with exactly the capabilities the DaemonSet gives it,
//! also from its container image run by Podman as the DaemonSet's pod
//! (tests/src/image.rs).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, free_port, http_get, local, weft, weft_bin},
    image::{Podman, host_ulimits},
    node::NodeMounts,
    peer::TempDir,
    require_root, wait_for,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// True when the checks must run here (CI, `cargo xtask test`): a missing
/// tool is then a failure, not a skip.
fn required() -> bool {
    std::env::var_os("WEFT_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1")
}

/// A tool, or `None` after a loud skip (a panic where the checks must run).
fn tool(test: &str, name: &str, path: Option<PathBuf>) -> Option<PathBuf> {
    let found = path.filter(|p| p.is_file()).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let message = format!("{test}: {name} is not installed: run `cargo xtask setup`");
        assert!(!required(), "{message}");
        eprintln!("SKIPPED {message}");
    }
    found
}

/// `kubectl kustomize DIR`, as YAML text.
fn render(kubectl: &Path, dir: &str) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// The documents of a rendered stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            let value: Value =
                serde::Deserialize::deserialize(doc).expect("each document is valid YAML");
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The rendered base, or `None` after a loud skip.
fn rendered_base(test: &str) -> Option<Vec<Value>> {
    let kubectl = tool(test, "kubectl", None)?;
    Some(documents(&render(&kubectl, "deploy/kubernetes")))
}

#[test]
fn manifests_render_and_validate_against_the_kubernetes_schemas() {
    let test = "manifests_render_and_validate_against_the_kubernetes_schemas";
    let Some(kubectl) = tool(test, "kubectl", None) else {
        return;
    };
    let validator = std::env::var_os("WEFT_KUBERNETES_VALIDATE").map(PathBuf::from);
    let Some(validate) = tool(test, "kubernetes-validate", validator) else {
        return;
    };
    let yaml = render(&kubectl, "deploy/kubernetes");
    let kinds: Vec<String> = documents(&yaml)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_owned())
        .collect();
    eprintln!("rendered: {}", kinds.join(", "));
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
        "ConfigMap",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    let dir = TempDir::new("manifests");
    let file = dir.path.join("manifests.yaml");
    std::fs::write(&file, &yaml).expect("write rendered manifests");
    // The oldest and the newest Kubernetes whose schemas it ships that we
    // claim; --strict also rejects fields the schema does not know.
    for version in ["1.29.0", "1.37.0"] {
        let out = Command::new(&validate)
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate {version} failed:\n{text}"
        );
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(passed, kinds.len(), "every resource validated:\n{text}");
        eprintln!("kubernetes-validate --strict {version}: {passed} resources passed");
    }
    drop(dir);

    // The optional ServiceMonitor: a custom resource, so no schema ships
    // with kubernetes-validate; check that it selects the metrics Service.
    let monitoring = documents(&render(&kubectl, "deploy/kubernetes/monitoring"));
    let monitor = find(&monitoring, "ServiceMonitor");
    let docs = documents(&yaml);
    let service = find(&docs, "Service");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], "weft");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "label {k}");
    }
    let port = monitor["spec"]["endpoints"][0]["port"]
        .as_str()
        .expect("port");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == port),
        "the Service has no port named {port}"
    );
}

#[test]
fn the_daemonset_is_least_privilege() {
    let Some(docs) = rendered_base("the_daemonset_is_least_privilege") else {
        return;
    };
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect();
    assert!(!containers.is_empty());
    let mut added = Vec::new();
    for c in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true, "{name} is privileged");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        added.extend(strings(&sc["capabilities"]["add"]));
        for mount in c["volumeMounts"].as_array().into_iter().flatten() {
            assert_ne!(
                mount["mountPropagation"], "Bidirectional",
                "{name}: Bidirectional propagation needs a privileged container"
            );
        }
    }
    assert_eq!(pod["securityContext"]["privileged"], Value::Null);
    // Every added capability is one the agent checks for, and
    // docs/deployment.md says why it is needed.
    let page =
        std::fs::read_to_string(repo().join("docs/deployment.md")).expect("docs/deployment.md");
    let section = page
        .split("\n## ")
        .find(|s| s.starts_with("Deploying on Kubernetes"))
        .expect("docs/deployment.md has a `## Deploying on Kubernetes` section");
    for cap in &added {
        assert!(
            ["BPF", "PERFMON", "NET_ADMIN"].contains(cap),
            "CAP_{cap} is added but the agent does not need it"
        );
        assert!(
            section.contains(&format!("`CAP_{cap}`")),
            "the Deploying section of docs/deployment.md does not justify CAP_{cap}"
        );
    }
    assert!(!section.contains("privileged: true"));

    // Read-only RBAC on exactly what the agent watches
    // (agent/src/enrich/kubernetes/watch.rs).
    let role = find(&docs, "ClusterRole");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs = strings(&rule["verbs"]);
        for r in strings(&rule["resources"]) {
            for g in strings(&rule["apiGroups"]) {
                granted.push(format!("{g}/{r}:{}", verbs.join(",")));
            }
        }
        assert!(
            verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
            "{rule}"
        );
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/pods:get,list,watch",
            "/services:get,list,watch",
            "apps/replicasets:get,list,watch",
            "batch/jobs:get,list,watch",
            "discovery.k8s.io/endpointslices:get,list,watch",
        ]
    );
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);

    // A node agent: every node, host namespaces it needs, priority.
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
        "tolerates every taint"
    );
    let priority = find(&docs, "PriorityClass");
    assert_eq!(pod["priorityClassName"], priority["metadata"]["name"]);
    let agent = containers[0];
    for key in ["requests", "limits"] {
        assert!(
            agent["resources"][key]["memory"].is_string(),
            "resources.{key}"
        );
    }
    // The host file systems the agent uses are mounted from the host.
    let volumes = pod["volumes"].as_array().expect("volumes");
    for (path, mount) in [
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/run/weft", "/run/weft"),
    ] {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == path)
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"));
        assert!(
            agent["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .any(|m| m["name"] == volume["name"] && m["mountPath"] == mount),
            "{path} is not mounted at {mount}"
        );
    }

    // Probes on the metrics port, which is the configured one.
    let config = agent_config(&docs);
    let port: u16 = config["metrics_addr"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("metrics_addr in the ConfigMap");
    assert_eq!(config["api_socket"], "/run/weft/weft.sock");
    let ports = agent["ports"].as_array().expect("ports");
    assert_eq!(ports[0]["containerPort"], port);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], ports[0]["name"], "{probe}");
    }
    let service = find(&docs, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert_eq!(service["spec"]["ports"][0]["port"], port);
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "the Service selects the agent's pods");
    }
    let args = strings(&agent["args"]);
    assert_eq!(args, ["agent", "--config", "/etc/weft/weft.yaml"]);
}

/// The agent's configuration file from the ConfigMap.
fn agent_config(docs: &[Value]) -> Value {
    let text = find(docs, "ConfigMap")["data"]["weft.yaml"]
        .as_str()
        .expect("weft.yaml in the ConfigMap")
        .to_owned();
    serde_yaml_ng::from_str(&text).expect("the configuration is YAML")
}

/// What a test running the agent as the DaemonSet does needs: root, the
/// rendered manifests, the DaemonSet's capabilities and setpriv. `None`
/// when the test is skipped (each step says why).
fn daemonset_agent_setup(test: &str) -> Option<(Vec<Value>, Vec<String>, PathBuf)> {
    if !require_root(test) {
        return None;
    }
    let docs = rendered_base(test)?;
    let setpriv = tool(test, "setpriv", None)?;
    let caps = daemonset_caps(&docs);
    Some((docs, caps, setpriv))
}

/// The capabilities the DaemonSet adds, lower-case (`bpf`, ...).
fn daemonset_caps(docs: &[Value]) -> Vec<String> {
    let pod = &find(docs, "DaemonSet")["spec"]["template"]["spec"];
    strings(&pod["containers"][0]["securityContext"]["capabilities"]["add"])
        .iter()
        .map(|c| c.to_lowercase())
        .collect()
}

/// Writes the ConfigMap's weft.yaml into `dir`, checks that the agent
/// accepts it, and returns its path.
fn configmap_config(docs: &[Value], dir: &Path) -> PathBuf {
    let config = dir.join("weft.yaml");
    let text = find(docs, "ConfigMap")["data"]["weft.yaml"]
        .as_str()
        .expect("weft.yaml")
        .to_owned();
    std::fs::write(&config, &text).expect("write config");
    let out = weft(&[
        "agent",
        "--config",
        config.to_str().expect("path"),
        "--print-config",
    ]);
    assert!(
        out.status.success(),
        "the agent rejects the ConfigMap's configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    config
}

/// `setpriv` arguments for uid 0 with only `caps`, as in the container
/// (bounding set: nothing else can be regained).
fn setpriv_only(setpriv: &Path, caps: &[String]) -> Vec<String> {
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let setpriv = setpriv.to_str().expect("path").to_owned();
    [
        setpriv.as_str(),
        "--bounding-set",
        &set,
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn without_tracefs_the_agent_says_what_to_do() {
    let test = "without_tracefs_the_agent_says_what_to_do";
    let Some((docs, caps, setpriv)) = daemonset_agent_setup(test) else {
        return;
    };
    let dir = TempDir::new("no-tracefs");
    let config = configmap_config(&docs, &dir.path);
    // A fresh node that mounts nothing at boot, and an agent with the
    // DaemonSet's capabilities, which cannot mount tracefs itself.
    let mut command = NodeMounts::Nothing.wrapper();
    command.extend(setpriv_only(&setpriv, &caps));
    let socket = dir.path.join("weft.sock");
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .arg(weft_bin())
        .args(["agent", "--config"])
        .arg(&config)
        .args(["--metrics-addr", "127.0.0.1:0", "--api-socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    // It must stop at once with the reason; never run half-attached.
    let status = wait_for("the agent to exit", Duration::from_secs(30), || {
        child.try_wait().expect("wait")
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(
        status.code(),
        Some(2),
        "bad node setup is exit status 2: {stderr}"
    );
    for says in [
        "tracefs is not mounted and mounting it failed",
        "Operation not permitted",
        "mount it by hand",
        "CAP_SYS_ADMIN",
    ] {
        assert!(stderr.contains(says), "the error says {says:?}: {stderr}");
    }
    assert!(
        !socket.exists(),
        "no API socket from an agent that did not start"
    );
}

#[test]
fn the_agent_runs_with_the_daemonsets_capabilities_and_configuration() {
    let test = "the_agent_runs_with_the_daemonsets_capabilities_and_configuration";
    let Some((docs, caps, setpriv)) = daemonset_agent_setup(test) else {
        return;
    };
    // The ConfigMap's configuration, as the agent reads it (the harness's
    // flags then move the listener and socket to private ones).
    let dir = TempDir::new("config");
    let config = configmap_config(&docs, &dir.path);

    // A node as systemd distributions and the DaemonSet give it: tracefs
    // mounted, and here no bpffs (the observation programs pin nothing).
    // The agent cannot mount anything without CAP_SYS_ADMIN.
    let mut wrapper = NodeMounts::Tracefs.wrapper();
    wrapper.extend(setpriv_only(&setpriv, &caps));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_under(&wrapper, &["--config", config.to_str().expect("path")]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    let bit = |name: &str| match name {
        "bpf" => 39,
        "perfmon" => 38,
        "net_admin" => 12,
        other => panic!("unexpected capability {other}"),
    };
    let want: u64 = caps.iter().map(|c| 1u64 << bit(c)).sum();
    assert_eq!(eff, want, "the agent runs with exactly {caps:?}");

    // The probes' endpoints.
    assert_eq!(agent.http_get("/healthz"), Some((200, "ok\n".into())));
    assert_eq!(agent.http_get("/readyz"), Some((200, "ready\n".into())));

    // The same programs attached as by an agent with every capability,
    // and TCP traffic is seen.
    let names = |a: &Agent| {
        let status = a.status_json().expect("status");
        let mut names: Vec<String> = status["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .map(|p| format!("{} {}", p["name"], p["attach_point"]))
            .collect();
        names.sort();
        names
    };
    let root = Agent::start(&[]);
    let mut all = names(&root);
    drop(root);
    assert!(!all.is_empty());
    // But the TLS uprobes: the kernel creates uprobes for CAP_SYS_ADMIN
    // only, which the DaemonSet does not grant; the agent says so.
    all.retain(|p| !p.starts_with("\"weft_ssl_"));
    assert_eq!(names(&agent), all, "programs attached without root");
    let status = agent.status_json().expect("status");
    let tls = status["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["name"] == "tls plaintext (uprobes)")
        .expect("the TLS plaintext feature is reported");
    assert_eq!(tls["available"], false, "{tls}");
    assert!(
        tls["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SYS_ADMIN")),
        "{tls}"
    );
    let port = one_connection(4096);
    let label = format!("destination_port=\"{port}\"");
    wait_for("the connection's bytes", Duration::from_secs(15), || {
        (agent.metric_sum("weft_tcp_sent_bytes_total", &[label.as_str()]) == 4096.0).then_some(())
    });
    drop(agent);
}

/// The agent's container in the rendered DaemonSet.
fn agent_container(docs: &[Value]) -> &Value {
    &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

/// `podman run` options that give the container what the DaemonSet's pod
/// gives it: the host's network and pids, the security context, the
/// environment, the memory limit and the volumes. The ConfigMap is
/// `config_dir`, and the API socket's hostPath is `api_dir` (the test's
/// own, not the node's /run/weft); every other hostPath is the host's.
/// `seccomp` is the profile standing in for the runtime's default. A field
/// this does not know fails the test, so a new one in the manifests gets
/// its Podman equivalent here rather than being left out unseen.
fn podman_run_options(
    docs: &[Value],
    config_dir: &Path,
    api_dir: &Path,
    seccomp: &Path,
) -> Vec<String> {
    let pod = &find(docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let mut options = vec!["--network=host".to_owned(), "--pid=host".to_owned()];
    let container = agent_container(docs);
    options.extend(security_options(&container["securityContext"], seccomp));
    for env in container["env"].as_array().expect("env") {
        let name = env["name"].as_str().expect("env name");
        let value = match (&env["value"], &env["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "spec.nodeName" => {
                String::from_utf8(weft_tests::run(&["hostname"]).stdout)
                    .expect("hostname")
                    .trim()
                    .to_owned()
            }
            other => panic!("env {name}: no Podman equivalent for {other:?}"),
        };
        options.push(format!("--env={name}={value}"));
    }
    let memory = container["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    let mebibytes = memory.strip_suffix("Mi").expect("a limit in Mi");
    options.push(format!("--memory={mebibytes}m"));
    options.extend(volume_options(pod, container, config_dir, api_dir));
    options
}

/// The container's securityContext as `podman run` options.
fn security_options(context: &Value, seccomp: &Path) -> Vec<String> {
    let mut options = Vec::new();
    let (mut user, mut group) = (None, None);
    for (key, value) in context.as_object().expect("securityContext") {
        match (key.as_str(), value) {
            ("privileged", Value::Bool(false)) | ("runAsNonRoot", Value::Bool(false)) => {}
            ("allowPrivilegeEscalation", Value::Bool(false)) => {
                options.push("--security-opt=no-new-privileges".to_owned());
            }
            ("readOnlyRootFilesystem", Value::Bool(true)) => options.push("--read-only".to_owned()),
            ("runAsUser", id) => user = id.as_u64(),
            ("runAsGroup", id) => group = id.as_u64(),
            ("capabilities", caps) => {
                assert_eq!(strings(&caps["drop"]), ["ALL"]);
                options.push("--cap-drop=ALL".to_owned());
                for cap in strings(&caps["add"]) {
                    options.push(format!("--cap-add={cap}"));
                }
            }
            ("seccompProfile", profile) if profile["type"] == "RuntimeDefault" => {
                options.push(format!("--security-opt=seccomp={}", seccomp.display()));
            }
            (key, value) => panic!("securityContext.{key}: {value}: no Podman equivalent here"),
        }
    }
    let user = user.expect("runAsUser");
    let group = group.expect("runAsGroup");
    options.push(format!("--user={user}:{group}"));
    options
}

/// The container's volumeMounts as `podman run --volume` options.
fn volume_options(
    pod: &Value,
    container: &Value,
    config_dir: &Path,
    api_dir: &Path,
) -> Vec<String> {
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mut options = Vec::new();
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let name = mount["name"].as_str().expect("volume name");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let source = match (&volume["configMap"], volume["hostPath"]["path"].as_str()) {
            (Value::Object(_), _) => config_dir.to_path_buf(),
            (_, Some("/run/weft")) => api_dir.to_path_buf(),
            (_, Some(path)) => PathBuf::from(path),
            _ => panic!("volume {name}: no Podman equivalent here"),
        };
        let mut modes = Vec::new();
        if mount["readOnly"] == true {
            modes.push("ro");
        }
        match mount["mountPropagation"].as_str() {
            None => {}
            Some("HostToContainer") => modes.push("rslave"),
            Some(other) => panic!("mountPropagation {other}: no Podman equivalent here"),
        }
        let target = mount["mountPath"].as_str().expect("mountPath");
        let modes = if modes.is_empty() {
            String::new()
        } else {
            format!(":{}", modes.join(","))
        };
        options.push(format!("--volume={}:{target}{modes}", source.display()));
    }
    options
}

/// The seccomp profile the DaemonSet's `RuntimeDefault` stands for:
/// Podman's default with bpf(2) and perf_event_open(2) allowed by CAP_BPF
/// and CAP_PERFMON (deploy/podman/seccomp.jq, as docs/deployment.md says).
fn podman_seccomp_profile(dir: &Path) -> PathBuf {
    let profile = dir.join("seccomp.json");
    let out = weft_tests::run(&[
        "jq",
        "--from-file",
        repo()
            .join("deploy/podman/seccomp.jq")
            .to_str()
            .expect("path"),
        "/usr/share/containers/seccomp.json",
    ]);
    std::fs::write(&profile, out.stdout).expect("write the seccomp profile");
    profile
}

/// The capability bits of `caps` (lower-case names).
fn capability_bits(caps: &[String]) -> u64 {
    let bit = |name: &str| match name {
        "bpf" => 39,
        "perfmon" => 38,
        "net_admin" => 12,
        other => panic!("unexpected capability {other}"),
    };
    caps.iter().map(|c| 1u64 << bit(c)).sum()
}

/// A `Name:\tvalue` line of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// One TCP connection on loopback that sends `bytes` bytes; its server port.
fn one_connection(bytes: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < bytes {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0);
            got += n;
        }
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(&vec![1u8; bytes]).expect("write");
    server.join().expect("server");
    drop(client);
    port
}

/// `curl`-free HTTP GET of the metrics listener: (status, body).

#[test]
fn the_podman_image_runs_the_agent_as_the_daemonset_does_and_shows_flows() {
    let test = "the_podman_image_runs_the_agent_as_the_daemonset_does_and_shows_flows";
    let Some((docs, caps, _)) = daemonset_agent_setup(test) else {
        return;
    };
    for program in ["podman", "runc", "debootstrap", "jq"] {
        if tool(test, program, None).is_none() {
            return;
        }
    }
    let podman = Podman::new("image");
    podman.import_base();
    podman.build_runtime_image("localhost/weft:test");
    let ulimits = host_ulimits();
    let mut version = vec!["run", "--rm", "--network=host"];
    version.extend(ulimits.iter().map(String::as_str));
    version.extend(["localhost/weft:test", "--version"]);
    let version = podman.run(&version);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        String::from_utf8_lossy(&weft(&["--version"]).stdout),
        "the image runs the binary under test"
    );

    let config_dir = podman.dir().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    configmap_config(&docs, &config_dir);
    let api_dir = podman.dir().join("api");
    std::fs::create_dir_all(&api_dir).expect("api dir");
    let seccomp = podman_seccomp_profile(podman.dir());
    let metrics_port = free_port();

    // A node with tracefs mounted, as the DaemonSet's hostPath expects;
    // the container is made in that mount namespace (the vfs store mounts
    // nothing, so the other podman commands work from this one).
    let mut command = NodeMounts::Tracefs.wrapper();
    command.extend(podman.command_line());
    command.extend(["run", "--detach", "--name", "weft"].map(str::to_owned));
    command.extend(podman_run_options(&docs, &config_dir, &api_dir, &seccomp));
    command.extend(ulimits);
    command.push("localhost/weft:test".to_owned());
    command.extend(
        strings(&agent_container(&docs)["args"])
            .iter()
            .map(|s| s.to_string()),
    );
    command.extend([
        "--metrics-addr".to_owned(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let words: Vec<&str> = command.iter().map(String::as_str).collect();
    weft_tests::run(&words);

    let logs = || {
        let out = podman
            .command()
            .args(["logs", "weft"])
            .output()
            .expect("podman logs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let ready = weft_tests::try_wait_for(Duration::from_secs(60), || {
        (http_get(local(metrics_port), "/readyz", "")? == (200, "ready\n".to_owned())).then_some(())
    });
    assert!(
        ready.is_some(),
        "the agent in the container never turned ready:\n{}",
        logs()
    );

    // Exactly the DaemonSet's capabilities, no way to gain more, and a
    // seccomp filter.
    let pid: u32 = String::from_utf8_lossy(
        &podman
            .run(&["inspect", "--format", "{{.State.Pid}}", "weft"])
            .stdout,
    )
    .trim()
    .parse()
    .expect("the container's pid");
    let want = format!("{:016x}", capability_bits(&caps));
    assert_eq!(
        proc_status(pid, "CapEff"),
        want,
        "effective: exactly {caps:?}"
    );
    assert_eq!(
        proc_status(pid, "CapBnd"),
        want,
        "bounding: exactly {caps:?}"
    );
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2", "a seccomp filter");

    // Flows from it: one connection of 4096 bytes, in its metrics, in the
    // flow API through the host's socket, and in `weft flows` inside.
    let port = one_connection(4096);
    let label = format!("destination_port=\"{port}\"");
    let sent = |text: &str| {
        weft_tests::agent::metric_sum(text, "weft_tcp_sent_bytes_total", &[label.as_str()])
    };
    let counted = weft_tests::try_wait_for(Duration::from_secs(15), || {
        let (_, text) = http_get(local(metrics_port), "/metrics", "")?;
        (sent(&text) == 4096.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "4096 bytes sent in the metrics:\n{}",
        logs()
    );
    let port_arg = port.to_string();
    let socket = api_dir.join("weft.sock");
    let from_host = weft(&[
        "flows",
        "--port",
        &port_arg,
        "-o",
        "json",
        "--api-socket",
        socket.to_str().expect("path"),
    ]);
    let inside = podman.run(&[
        "exec", "weft", "weft", "flows", "--port", &port_arg, "-o", "json",
    ]);
    for (who, out) in [("the host", from_host.stdout), ("inside", inside.stdout)] {
        let records: Vec<Value> = serde_json::from_slice(&out).expect("JSON records");
        let close = records
            .iter()
            .find(|r| r["event"] == "close" && r["destination"]["port"] == port)
            .unwrap_or_else(|| panic!("no close record from {who}: {records:#?}"));
        assert_eq!(close["bytes_sent"], 4096, "{close:#}");
        // The host's pid of this test, the client: the agent sees the
        // node's processes (hostPID).
        assert_eq!(close["source"]["pid"], std::process::id(), "{close:#}");
    }
    let status = podman.run(&["exec", "weft", "weft", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("weft_tcp_state"));

    // SIGTERM (podman stop), as the kubelet ends the pod: a clean exit
    // that detaches everything and removes its socket.
    podman.run(&["stop", "--time", "30", "weft"]);
    let code = podman.run(&["inspect", "--format", "{{.State.ExitCode}}", "weft"]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs()
    );
    assert!(
        logs().contains("detached all observation programs"),
        "{}",
        logs()
    );
    assert!(!socket.exists(), "the API socket is removed at exit");
}
