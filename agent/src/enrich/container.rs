//! Container ids from cgroup ids.
//!
//! The kernel gives the cgroup v2 id of a task (the inode number of its
//! cgroup directory). Container runtimes name the cgroup after the
//! container: `docker-<64 hex>.scope`, `cri-containerd-<id>.scope`,
//! `crio-<id>.scope`, or a bare `<id>` directory under cgroupfs drivers.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How often a miss may trigger a rescan of the hierarchy.
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// Bound on the directories scanned (and remembered).
const MAX_CGROUPS: usize = 65_536;

pub struct CgroupResolver {
    root: Option<PathBuf>,
    paths: HashMap<u64, PathBuf>,
    last_scan: Option<Instant>,
}

impl CgroupResolver {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// The container id of the cgroup, if it is a container's.
    pub fn container_id(&mut self, cgroup_id: u64) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        if !self.paths.contains_key(&cgroup_id) {
            self.rescan();
        }
        self.paths
            .get(&cgroup_id)
            .and_then(|p| container_id_from_path(p))
    }

    fn rescan(&mut self) {
        let Some(root) = &self.root else { return };
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return;
        }
        self.last_scan = Some(Instant::now());
        let mut paths = HashMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if paths.len() >= MAX_CGROUPS {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                paths.insert(meta.ino(), dir.clone());
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
        self.paths = paths;
    }
}

/// The last 64-hex-digit run in the path's components, which is how every
/// common runtime names a container's cgroup.
pub fn container_id_from_path(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let name = name.strip_suffix(".scope").unwrap_or(name);
        let id = name.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a6e0c9d1b8a7f3e5d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a10";

    #[test]
    fn runtime_naming_schemes() {
        for path in [
            format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope"),
            format!("/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/sys/fs/cgroup/kubepods/besteffort/pod1/{ID}"),
            format!("/sys/fs/cgroup/crio-{ID}.scope"),
        ] {
            assert_eq!(
                container_id_from_path(Path::new(&path)).as_deref(),
                Some(ID),
                "{path}"
            );
        }
    }

    #[test]
    fn plain_cgroups_are_not_containers() {
        assert_eq!(
            container_id_from_path(Path::new("/sys/fs/cgroup/user.slice/session-1.scope")),
            None
        );
        assert_eq!(container_id_from_path(Path::new("/")), None);
    }

    #[test]
    fn resolves_real_cgroup_ids() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(format!("docker-{ID}.scope"));
        std::fs::create_dir(&dir).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let mut r = CgroupResolver::new(Some(root.path().to_owned()));
        assert_eq!(r.container_id(ino).as_deref(), Some(ID));
        assert_eq!(r.container_id(0), None);
    }
}
