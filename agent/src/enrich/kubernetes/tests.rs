//! The real kube-rs client and watcher against recorded API server
//! responses (`fixtures/`), served over HTTP by [`apiserver`].
//!
//! The cluster: node `node-a` runs a Deployment's pod (frontend), a
//! StatefulSet's (cart-0), a CronJob's Job's (report), a DaemonSet's
//! host-network pod (node-exporter) and two pods that go away: old-worker
//! with a DELETED event, gone-... silently (it is missing from the list
//! after a `410 Gone` resync). checkout is ADDED while Pending, then
//! MODIFIED when it runs. A Service (payments) is added by a watch event.

mod apiserver;

use std::{
    collections::HashMap, net::IpAddr, os::unix::fs::MetadataExt, sync::Arc, time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weft_common::Owner;

use self::apiserver::{ApiServer, List, Script, Watch};
use super::{Environment, KubernetesNames, Snapshot, setup};
use crate::{
    config::{Enabled, KubernetesConfig},
    enrich::{Enricher, workload_label},
    export::{labels::LabelBudget, metrics::Metrics},
    flow::{
        addr::FlowKey,
        emit::{Emitter, Exported, Figures, Observation},
        filter::FlowFilter,
        record::{FlowEvent, Transport},
        store::FlowStore,
    },
};

const FRONTEND: &str = "1cf387c012cd2d02f1923e589f86df4a4802427057dbc90f47b87f04d29d54bc";
const CART: &str = "1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980";
const REPORT: &str = "845e91831319e89c4d656bdb80c278ac09a7230d61e5dfd2e1b1fbb436ac8917";
const OLD_WORKER: &str = "62e0248b60f206ef00a7d2bbb1fd6f034e33bf03c696e4fa5bb1fb35dad9d83c";
const GONE: &str = "283bb9deef02e6843abfb538efa1eca70801bd8a701c3f98191e123496339247";
const NODE_EXPORTER: &str = "2303824a4e3dc61fe3195d1a6e978029d4774876cc9aba9d2c60ef85eb96a845";
const CHECKOUT: &str = "c7761e58969f7edd498186641b2021e8477e1bcd230de4cf3435242da4a40d14";

const DEADLINE: Duration = Duration::from_secs(20);

fn list(body: &'static str) -> List {
    List { body, gate: None }
}

/// The recorded conversation. `resync` holds back the pods' second LIST
/// (the one after `410 Gone`) until the test releases it.
fn scripts(resync: Option<Arc<Notify>>) -> HashMap<String, Script> {
    let mut s = HashMap::new();
    s.insert(
        "/api/v1/pods".into(),
        Script {
            lists: vec![
                list(include_str!("fixtures/pods-list.json")),
                List {
                    body: include_str!("fixtures/pods-relist.json"),
                    gate: resync,
                },
            ],
            watches: vec![
                // Added, modified, deleted; then the server ends the watch.
                Watch {
                    events: include_str!("fixtures/pods-watch-1.jsonl"),
                    close: true,
                },
                // Resumed from the last version: too old, relist.
                Watch {
                    events: include_str!("fixtures/pods-watch-2.jsonl"),
                    close: true,
                },
            ],
        },
    );
    s.insert(
        "/api/v1/services".into(),
        Script {
            lists: vec![list(include_str!("fixtures/services-list.json"))],
            watches: vec![Watch {
                events: include_str!("fixtures/services-watch-1.jsonl"),
                close: false,
            }],
        },
    );
    for (path, body) in [
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            include_str!("fixtures/endpointslices-list.json"),
        ),
        (
            "/apis/apps/v1/replicasets",
            include_str!("fixtures/replicasets-list.json"),
        ),
        (
            "/apis/batch/v1/jobs",
            include_str!("fixtures/jobs-list.json"),
        ),
    ] {
        s.insert(
            path.into(),
            Script {
                lists: vec![list(body)],
                watches: vec![],
            },
        );
    }
    s
}

fn config(kubeconfig: std::path::PathBuf) -> KubernetesConfig {
    KubernetesConfig {
        enabled: Enabled::Auto,
        kubeconfig: Some(kubeconfig),
        node_name: Some("node-a".into()),
    }
}

/// Starts the watcher the way the daemon does.
fn start(config: &KubernetesConfig, shutdown: &CancellationToken) -> KubernetesNames {
    let (names, watcher) = setup(config, &Environment::default()).expect("enabled");
    tokio::spawn(watcher.run(shutdown.clone()));
    names
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn has_container(s: &Snapshot, id: &str) -> bool {
    s.names.container(id).is_some()
}

#[tokio::test]
async fn watch_names_pods_survives_disconnects_and_resyncs() {
    let resync = Arc::new(Notify::new());
    let server = ApiServer::start(scripts(Some(resync.clone()))).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut names = start(&config(server.kubeconfig(dir.path())), &shutdown);

    // After the first watch: added+modified checkout, deleted old-worker,
    // the added Service; gone-... is still there (no event said otherwise).
    let snap = names
        .wait_for(DEADLINE, |s| {
            s.names.container(CHECKOUT).is_some()
                && s.names.ip(ip("10.244.1.16")).is_some()
                && !has_container(s, OLD_WORKER)
                && s.names.ip(ip("10.96.30.7")).is_some()
                && s.names.container(REPORT).is_some()
        })
        .await
        .unwrap_or_else(|| panic!("watch events not applied: {:?}", names.snapshot().health));
    let n = &snap.names;
    assert!(has_container(&snap, GONE));
    assert_eq!(n.ip(ip("10.244.1.14")), None, "deleted pod's address");

    let frontend = n.container(FRONTEND).unwrap();
    assert_eq!(frontend.pod.as_deref(), Some("frontend-5f7c9d8b4-x2x4z"));
    assert_eq!(frontend.namespace, "shop");
    let w = frontend.workload.as_ref().unwrap();
    assert_eq!(
        (w.kind.as_str(), w.name.as_str()),
        ("Deployment", "frontend")
    );
    assert_eq!(frontend.service.as_deref(), Some("frontend"));
    // By pod IP, both families.
    assert_eq!(n.ip(ip("10.244.1.11")), Some(frontend));
    assert_eq!(n.ip(ip("fd00:10:244:1::b")), Some(frontend));

    let cart = n.container(CART).unwrap();
    assert_eq!(cart.pod.as_deref(), Some("cart-0"));
    let w = cart.workload.as_ref().unwrap();
    assert_eq!((w.kind.as_str(), w.name.as_str()), ("StatefulSet", "cart"));

    let report = n.container(REPORT).unwrap();
    let w = report.workload.as_ref().unwrap();
    assert_eq!((w.kind.as_str(), w.name.as_str()), ("CronJob", "report"));

    let checkout = n.container(CHECKOUT).unwrap();
    let w = checkout.workload.as_ref().unwrap();
    assert_eq!(
        (w.kind.as_str(), w.name.as_str()),
        ("Deployment", "checkout")
    );

    // A host-network pod is known by its container, not by the node's IP.
    let exporter = n.container(NODE_EXPORTER).unwrap();
    assert_eq!(exporter.namespace, "monitoring");
    let w = exporter.workload.as_ref().unwrap();
    assert_eq!(
        (w.kind.as_str(), w.name.as_str()),
        ("DaemonSet", "node-exporter")
    );
    assert_eq!(n.ip(ip("192.168.49.2")), None);

    // Service virtual IPs, and a pod on another node behind a Service.
    let vip = n.ip(ip("10.96.12.34")).unwrap();
    assert_eq!(
        (vip.pod.as_deref(), vip.service.as_deref()),
        (None, Some("frontend"))
    );
    assert_eq!(
        n.ip(ip("10.96.30.7")).unwrap().service.as_deref(),
        Some("payments")
    );
    let remote = n.ip(ip("10.244.2.21")).unwrap();
    assert_eq!(remote.pod.as_deref(), Some("frontend-5f7c9d8b4-r9t6y"));
    assert_eq!(remote.workload, None);
    assert_eq!(remote.service.as_deref(), Some("frontend"));
    // Unknown addresses, and a headless Service's "None".
    assert_eq!(n.ip(ip("203.0.113.7")), None);
    assert_eq!(n.ip(ip("10.96.0.99")), None);

    // The resync after 410 Gone drops the pod that vanished meanwhile.
    resync.notify_one();
    let snap = names
        .wait_for(DEADLINE, |s| {
            !has_container(s, GONE)
                && s.health.resources["pods"].relists >= 2
                && has_container(s, CHECKOUT)
        })
        .await
        .unwrap_or_else(|| panic!("no resync: {:?}", names.snapshot().health));
    assert_eq!(snap.names.ip(ip("10.244.1.15")), None);
    assert_eq!(snap.names.pods, 5);
    let status = names.status();
    assert!(status.available, "{status:?}");
    assert!(status.detail.contains("node-a"), "{status:?}");

    // What was asked of the API server.
    let requests = server.requests();
    let pods: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert!(
        pods.iter()
            .all(|r| r.query.get("fieldSelector").map(String::as_str)
                == Some("spec.nodeName=node-a")),
        "{pods:?}"
    );
    let kinds: Vec<(bool, Option<&str>)> = pods
        .iter()
        .take(5)
        .map(|r| {
            (
                r.is_watch(),
                r.query.get("resourceVersion").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        kinds[..4],
        [
            (false, Some("0")),   // list
            (true, Some("5000")), // watch from the list's version
            (true, Some("5003")), // the watch ended: resumed where it was
            (false, Some("0")),   // 410 Gone: listed again
        ],
        "{pods:?}"
    );
    for path in ["/apis/apps/v1/replicasets", "/apis/batch/v1/jobs"] {
        let r = requests.iter().find(|r| r.path == path).expect(path);
        assert!(r.accept.contains("as=PartialObjectMetadataList"), "{r:?}");
    }
    assert!(
        requests
            .iter()
            .all(|r| r.authorization == "Bearer recorded-token")
    );
    shutdown.cancel();
}

fn owner(cgroup_id: u64, comm: &str) -> Owner {
    let mut c = [0u8; weft_common::COMM_LEN];
    c[..comm.len()].copy_from_slice(comm.as_bytes());
    Owner {
        pid: 4242,
        tid: 4242,
        cgroup_id,
        comm: c,
    }
}

#[tokio::test]
async fn flows_and_metrics_carry_kubernetes_names() {
    let server = ApiServer::start(scripts(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut names = start(&config(server.kubeconfig(dir.path())), &shutdown);
    names
        .wait_for(DEADLINE, |s| {
            has_container(s, FRONTEND) && !has_container(s, GONE) && s.names.services >= 5
        })
        .await
        .unwrap_or_else(|| panic!("not synced: {:?}", names.snapshot().health));

    // The frontend's container, as the kernel names it: a cgroup id.
    let cgroups = tempfile::tempdir().unwrap();
    let scope = cgroups.path().join(format!(
        "kubepods.slice/kubepods-besteffort.slice/cri-containerd-{FRONTEND}.scope"
    ));
    std::fs::create_dir_all(&scope).unwrap();
    let frontend = owner(std::fs::metadata(&scope).unwrap().ino(), "node");
    let enricher = Enricher::new(Some(cgroups.path().to_owned())).with_kubernetes(names);
    assert!(enricher.status().unwrap().available);

    let store = Arc::new(FlowStore::new(100));
    let (metrics, l4, _health, _l7) = Metrics::new();
    let mut emitter = Emitter::new(store.clone(), l4, LabelBudget::new(100), enricher);
    // frontend -> cart's Service, frontend -> an address nobody knows.
    for server in ["10.96.20.5:6379", "203.0.113.7:443"] {
        let key = FlowKey {
            transport: Transport::Tcp,
            client: "10.244.1.11:40512".parse().unwrap(),
            server: server.parse().unwrap(),
        };
        let obs = Observation {
            key: &key,
            event: FlowEvent::Open,
            ts_ns: 1_000,
            start_ns: 0,
            client: Some(frontend),
            server: None,
            figures: Figures {
                bytes_sent: 100,
                ..Figures::default()
            },
            failure: None,
        };
        emitter.emit(&obs, &mut Exported::default());
    }

    let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
    assert_eq!(records.len(), 2);
    let src = &records[0].source;
    assert_eq!(src.container_id.as_deref(), Some(FRONTEND));
    assert_eq!(src.pod.as_deref(), Some("frontend-5f7c9d8b4-x2x4z"));
    assert_eq!(src.namespace.as_deref(), Some("shop"));
    assert_eq!(src.workload.as_deref(), Some("frontend"));
    assert_eq!(src.workload_kind.as_deref(), Some("Deployment"));
    let dst = &records[0].destination;
    assert_eq!(dst.service.as_deref(), Some("cart"));
    assert_eq!(dst.namespace.as_deref(), Some("shop"));
    assert_eq!((dst.pod.as_deref(), dst.workload.as_deref()), (None, None));
    assert_eq!(workload_label(dst), "cart");
    // An address the cluster does not know stays an address.
    let unknown = &records[1].destination;
    assert_eq!(
        (
            &unknown.pod,
            &unknown.namespace,
            &unknown.workload,
            &unknown.service
        ),
        (&None, &None, &None, &None)
    );
    assert_eq!(workload_label(unknown), "203.0.113.7");
    let json = serde_json::to_value(&*records[0]).unwrap();
    assert_eq!(json["source"]["workload_kind"], "Deployment");
    assert_eq!(json["source"]["pod"], "frontend-5f7c9d8b4-x2x4z");

    // `weft flows --pod shop/frontend --namespace shop` finds both.
    let mut filter = FlowFilter::default();
    filter.add_pod("shop/frontend").unwrap();
    filter.add_namespace("shop").unwrap();
    assert_eq!(
        store
            .query(&filter, crate::flow::store::Range::default())
            .len(),
        2
    );

    let text = metrics.encode().unwrap();
    let series = |dst_workload: &str, dst_ns: &str| {
        text.lines().any(|l| {
            l.starts_with("weft_tcp_connections_opened_total{")
                && l.contains(r#"source_workload="frontend""#)
                && l.contains(r#"source_namespace="shop""#)
                && l.contains(&format!(r#"destination_workload="{dst_workload}""#))
                && l.contains(&format!(r#"destination_namespace="{dst_ns}""#))
        })
    };
    assert!(series("cart", "shop"), "{text}");
    assert!(series("203.0.113.7", ""), "{text}");
    shutdown.cancel();
}

/// Lists of the first fixtures, and watches that stay open and quiet.
fn quiet_scripts() -> HashMap<String, Script> {
    let mut s = scripts(None);
    for script in s.values_mut() {
        script.lists.truncate(1);
        script.watches.clear();
    }
    s
}

#[tokio::test]
async fn an_outage_is_reported_names_are_kept_and_recovery_is_seen() {
    let server = ApiServer::start(scripts(None)).await;
    let addr = server.addr;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut names = start(&config(server.kubeconfig(dir.path())), &shutdown);
    let synced = |s: &Snapshot| has_container(s, FRONTEND) && !has_container(s, GONE);
    names.wait_for(DEADLINE, synced).await.expect("synced");
    assert!(names.status().available);

    // The API server goes away: its watches end, and reconnecting fails.
    drop(server);
    let down = |s: &Snapshot| s.health.resources["pods"].error.is_some();
    let snap = names.wait_for(DEADLINE, down).await.expect("outage seen");
    let status = names.status();
    assert!(!status.available, "{status:?}");
    assert!(status.detail.contains("last known state"), "{status:?}");
    assert!(has_container(&snap, FRONTEND), "names are kept meanwhile");

    // It comes back, with nothing new to say: the watches start again and
    // stay quiet, and the status says so without waiting for an event.
    let _server = ApiServer::start_at(addr, quiet_scripts()).await;
    let up = |s: &Snapshot| s.health.resources.values().all(|r| r.error.is_none());
    names
        .wait_for(DEADLINE, up)
        .await
        .unwrap_or_else(|| panic!("recovery not seen: {:?}", names.snapshot().health));
    assert!(names.status().available, "{:?}", names.status());
    shutdown.cancel();
}

#[tokio::test]
async fn unreachable_api_server_is_reported_and_flows_go_on() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let mut names = start(&config(path), &shutdown);
    names
        .wait_for(DEADLINE, |s| {
            s.health.resources.get("pods").is_some_and(|r| r.errors > 0)
        })
        .await
        .expect("the failure is published");
    let status = names.status();
    assert!(!status.available, "{status:?}");
    assert!(
        status.detail.contains(&format!("127.0.0.1:{port}")),
        "{status:?}"
    );

    let mut enricher = Enricher::new(None).with_kubernetes(names);
    let ep = enricher.endpoint(ip("10.244.1.11"), 8080, None);
    assert_eq!((ep.pod, ep.namespace, ep.workload), (None, None, None));
    shutdown.cancel();
}

#[tokio::test]
async fn enabled_outside_a_cluster_is_reported() {
    let config = KubernetesConfig {
        enabled: Enabled::True,
        ..KubernetesConfig::default()
    };
    let shutdown = CancellationToken::new();
    let mut names = start(&config, &shutdown);
    names
        .wait_for(DEADLINE, |s| s.health.error.is_some())
        .await
        .expect("the failure is published");
    let status = names.status();
    assert!(!status.available);
    assert!(
        status.detail.contains("kubernetes.kubeconfig"),
        "{status:?}"
    );
    // Off unless asked for, outside a cluster.
    assert!(setup(&KubernetesConfig::default(), &Environment::default()).is_none());
    shutdown.cancel();
}
