//! Pods for the root tests: a container's cgroup, named as containerd
//! names it, for a server process to run in, and the pod object the API
//! server returns for it (the fields the agent reads, as a real API server
//! serialises them).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{Value, json};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The node the pods run on (`kubernetes.node_name` of the agent).
pub const NODE: &str = "node-a";

/// Writes `dir/name`: a configuration that names pods from the API server
/// `kubeconfig` points at, as node [`NODE`], then `more` (other sections,
/// YAML). Returns its path.
pub fn kubernetes_config(dir: &Path, name: &str, kubeconfig: &Path, more: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "kubernetes:\n  enabled: true\n  kubeconfig: {}\n  node_name: {NODE}\n{more}",
            kubeconfig.display()
        ),
    )
    .expect("write the agent's configuration");
    path
}

/// `CGROUP2/weft-test-PID-N/cri-containerd-ID.scope` under the cgroup v2
/// mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
/// node), removed on drop (drop the processes in it first).
pub struct ContainerCgroup {
    parent: PathBuf,
    pub path: PathBuf,
    /// The container id (64 hex digits).
    pub id: String,
}

impl ContainerCgroup {
    /// Creates the cgroup (a container's, not started yet).
    pub fn create() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 64 hex digits, distinct per test process and container.
        let id = format!("{:032x}{:032x}", 0x5eed_0000_u64 + u64::from(n), pid);
        let parent = cgroup2_mount().join(format!("weft-test-{pid}-{n}"));
        let path = parent.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", path.display()));
        Self { parent, path, id }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// Where cgroup v2 is mounted, from this process's mount table.
fn cgroup2_mount() -> PathBuf {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    table
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if !fs.starts_with("cgroup2 ") {
                return None;
            }
            mount.split(' ').nth(4).map(PathBuf::from)
        })
        .expect("cgroup v2 is mounted (the agent needs it too)")
}

/// A running bare pod (no controller) on [`NODE`] with one container.
pub fn pod(namespace: &str, name: &str, ip: &str, container_id: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            // Distinct per container (its id's low digits differ).
            "uid": format!("00000000-0000-4000-8000-{}", &container_id[20..32]),
            "resourceVersion": "100",
            "labels": {"app": name},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "web", "image": "registry.example/web:1"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "containerStatuses": [{
                "name": "web",
                "image": "registry.example/web:1",
                "imageID": "",
                "containerID": format!("containerd://{container_id}"),
                "ready": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}},
            }],
        },
    })
}

/// A `PodList` response holding `pods`.
pub fn pod_list(pods: &[Value]) -> String {
    pod_list_at(pods, "100")
}

/// A `PodList` response holding `pods`, listed at `resource_version` (a
/// watch from an older version is told `410 Gone` by
/// [`crate::apiserver::RecordedApi`]).
pub fn pod_list_at(pods: &[Value], resource_version: &str) -> String {
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": resource_version},
        "items": pods,
    })
    .to_string()
}

/// The API server's LIST responses for a cluster of `pods` alone (a
/// `PodList` body, see [`pod_list`]): no Services, EndpointSlices,
/// ReplicaSets or Jobs.
pub fn pods_only_lists(pod_list: String) -> std::collections::HashMap<&'static str, String> {
    use crate::apiserver::empty_list;
    let metadata = || empty_list("PartialObjectMetadataList", "meta.k8s.io/v1");
    std::collections::HashMap::from([
        ("/api/v1/pods", pod_list),
        ("/api/v1/services", empty_list("ServiceList", "v1")),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            empty_list("EndpointSliceList", "discovery.k8s.io/v1"),
        ),
        ("/apis/apps/v1/replicasets", metadata()),
        ("/apis/batch/v1/jobs", metadata()),
    ])
}
