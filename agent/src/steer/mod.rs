//! Steering: services balanced at connect time by the cgroup sock_addr
//! programs of the `weft-steer` object.
//!
//! Unlike the observation programs, these outlive the agent: programs (by
//! their links) and maps are pinned under `<bpffs>/weft/steer/<version>/`
//! (see [`pins`]). A starting agent adopts what its own version pinned,
//! rewrites the maps to match its configuration ([`sync`]) and removes
//! other versions; with no service configured it removes everything, so
//! no steering program stays attached. `weft cleanup` removes it all.

pub mod check;
pub mod eject;
pub mod health;
pub mod kubernetes;
pub mod pins;
pub mod plan;
pub mod policy;
pub mod replan;
pub mod report;
pub mod sync;
pub mod tags;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSockAddr, links::FdLink, links::PinnedLink},
};
use weft_common::steer::Origin;

use crate::{config::Config, loader::mounts, status::ProgramStatus};
use plan::Plan;
use policy::{PolicyMaps, PolicyTask, plan::PolicyPlan};
use sync::ServiceMaps;

/// The steering object built by build.rs.
static STEER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-steer"));

/// Every map of the object: each is pinned by name.
const MAPS: &[&str] = &[
    "SERVICES",
    "SLOTS",
    "BACKENDS",
    "BACKEND_CONNECTS",
    "SERVICE_NO_BACKEND",
    "ORIGINS",
    "STEERED",
    "STEER_COUNTERS",
    "AFFINITY",
    "REPLIES",
    "POLICY_GLOBALS",
    "POLICY_SRC",
    "POLICY_DST",
    "POLICY_PORTS",
    "POLICY_NETNS",
    "POLICY_CGROUPS",
    "POLICY_VERDICTS",
    "POLICY_COUNTERS",
    "POLICY_EVENTS",
];

/// The ingress policy program: attached only while an ingress rule
/// exists (it runs for every packet a local socket receives).
const INGRESS_PROGRAM: &str = "weft_policy_ingress";

/// (program, attach type name, the program to load instead where the
/// kernel refuses it). The fallbacks lack only `bpf_set_retval` (Linux
/// 5.18): a connect or datagram to a service without backends fails with
/// EPERM instead of ECONNREFUSED. Either is pinned under the first name.
const PROGRAMS: &[(&str, &str, Option<&str>)] = &[
    (
        "weft_steer_connect4",
        "connect4",
        Some("weft_steer_connect4_eperm"),
    ),
    (
        "weft_steer_connect6",
        "connect6",
        Some("weft_steer_connect6_eperm"),
    ),
    ("weft_steer_peername4", "getpeername4", None),
    ("weft_steer_peername6", "getpeername6", None),
    (
        "weft_steer_sendmsg4",
        "sendmsg4",
        Some("weft_steer_sendmsg4_eperm"),
    ),
    (
        "weft_steer_sendmsg6",
        "sendmsg6",
        Some("weft_steer_sendmsg6_eperm"),
    ),
    ("weft_steer_recvmsg4", "recvmsg4", None),
    ("weft_steer_recvmsg6", "recvmsg6", None),
];

/// Every `weft_events_lost_total` series of steering and policy (source,
/// stage), which `weft status` lists while steering runs.
pub const LOSS_STAGES: &[(&str, &str)] = &[
    ("steer", "kernel_map_full"),
    ("steer", "incomplete_service"),
    ("steer", "affinity_not_remembered"),
    ("steer", "reply_not_remembered"),
    ("steer", "health_outcome_dropped"),
    ("policy", "ring_full"),
    ("policy", "decode_error"),
];

/// The feature `weft status` lists for the refusal's error.
pub const ECONNREFUSED_FEATURE: &str = "steer_econnrefused";

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error(
        "services need bpffs, where steering is pinned to outlive the agent, and it is not \
         mounted (mounting it failed: {0}); mount it (mount -t bpf bpf /sys/fs/bpf) or run \
         the agent with CAP_SYS_ADMIN"
    )]
    NoBpffs(std::io::Error),
    #[error(
        "services need a writable bpffs, where steering is pinned to outlive the agent, and \
         {path} is mounted read-only; remount it read-write (mount -o remount,rw {path}), or \
         leave services and policies out", path = .0.display()
    )]
    ReadOnlyBpffs(PathBuf),
    #[error("services need a cgroup v2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup)")]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mounts(std::io::Error),
    #[error("steering pins under {path}: {source}")]
    Pins {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading weft's steering object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("steering map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("steering program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(
        "policies[{index}].from.{key} ({name}): an egress rule's source address needs the \
         network namespace cookie (SO_NETNS_COOKIE, Linux 5.14), which this kernel lacks, to \
         match sockets not bound yet; name the source by `from.cgroup`, or leave `from` out"
    )]
    NoNetnsCookie {
        index: usize,
        key: &'static str,
        name: String,
    },
    #[error(
        "{what} from the Kubernetes API, and Kubernetes is off here (not in a pod with a \
         service account): set kubernetes.enabled: true with kubernetes.kubeconfig, or leave \
         {key} out"
    )]
    NoKubernetes { what: String, key: String },
    #[error("steering program {name}: cannot pin its link at {path}: {reason}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl SteerError {
    /// The node is not set up for services (bpffs, cgroup v2): bad
    /// configuration, exit status 2, as the loader's own node errors are.
    pub fn is_node_setup(&self) -> bool {
        matches!(
            self,
            Self::NoBpffs(_)
                | Self::ReadOnlyBpffs(_)
                | Self::NoCgroup2
                | Self::NoNetnsCookie { .. }
                | Self::NoKubernetes { .. }
        )
    }
}

/// The running steering datapath.
pub struct Steering {
    /// Keeps the object's map descriptors (the programs stay attached by
    /// their pinned links whatever happens to this).
    _ebpf: Ebpf,
    pub maps: ServiceMaps,
    /// `struct sock` address -> what the socket dialed (flow records).
    pub steered: HashMap<MapData, u64, Origin>,
    pub counters: PerCpuArray<MapData, u64>,
    pub plan: Plan,
    /// Owns the policy maps (written before any program is attached).
    pub policy: PolicyTask,
    /// Denied and audited connects, datagrams and packets.
    pub policy_events: RingBuf<MapData>,
    pub programs: Vec<ProgramStatus>,
    /// Programs found attached and pinned by an earlier agent.
    pub adopted: usize,
    /// What this kernel's steering can and cannot do (`weft status`).
    pub features: Vec<crate::status::FeatureStatus>,
}

impl Steering {
    /// Sets up steering for `config`; `None` when it has no services, no
    /// policies and no `kubernetes_services` (after removing whatever an
    /// earlier agent pinned).
    pub fn start(config: &Config) -> Result<Option<Self>, SteerError> {
        let mounts = mounts::mounts().map_err(SteerError::Mounts)?;
        if config.services.is_empty() && config.policies.is_empty() && !config.kubernetes_services {
            remove_all_if_mounted(&mounts);
            return Ok(None);
        }
        refuse_unmatchable_sources(config)?;
        let bpffs = mounts::ensure_bpffs(&mounts).map_err(SteerError::NoBpffs)?;
        // No pin could be made there: say so before loading the steering object.
        if mounts::is_read_only(&bpffs).unwrap_or(false) {
            return Err(SteerError::ReadOnlyBpffs(bpffs));
        }
        let cgroup_root = mounts::cgroup2(&mounts).ok_or(SteerError::NoCgroup2)?;
        let root = pins::steer_root(&bpffs);
        let version = pins::version(STEER_OBJECT);
        let dir = root.join(&version);
        for sub in ["maps", "links"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| SteerError::Pins { path, source })?;
        }
        let mut steering = Self::load_maps(config, &dir, &cgroup_root)?;
        steering.attach(&dir, &cgroup_root)?;
        // Only now that this version's programs run are older ones removed.
        let others = pins::other_versions(&root, &version).map_err(|source| SteerError::Pins {
            path: root.clone(),
            source,
        })?;
        for other in others {
            match pins::remove(&other) {
                Ok(n) => log::info!("removed {n} steering pins of {}", other.display()),
                Err(e) => log::warn!("cannot remove {}: {e}", other.display()),
            }
        }
        Ok(Some(steering))
    }

    /// Loads the object with every map pinned (created, or reused as an
    /// earlier agent left it) and writes the configuration into them.
    fn load_maps(config: &Config, dir: &Path, cgroup_root: &Path) -> Result<Self, SteerError> {
        let paths: Vec<(&str, PathBuf)> = MAPS
            .iter()
            .map(|&name| (name, dir.join("maps").join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(STEER_OBJECT)?;
        let mut maps = ServiceMaps {
            services: take(&mut ebpf, "SERVICES", HashMap::try_from)?,
            slots: take(&mut ebpf, "SLOTS", HashMap::try_from)?,
            backends: take(&mut ebpf, "BACKENDS", HashMap::try_from)?,
            backend_connects: take(&mut ebpf, "BACKEND_CONNECTS", HashMap::try_from)?,
            service_no_backend: take(&mut ebpf, "SERVICE_NO_BACKEND", HashMap::try_from)?,
            affinity: take(&mut ebpf, "AFFINITY", HashMap::try_from)?,
        };
        let policy_maps = PolicyMaps {
            globals: take(&mut ebpf, "POLICY_GLOBALS", Array::try_from)?,
            src: take(&mut ebpf, "POLICY_SRC", LpmTrie::try_from)?,
            dst: take(&mut ebpf, "POLICY_DST", LpmTrie::try_from)?,
            ports: take(&mut ebpf, "POLICY_PORTS", HashMap::try_from)?,
            netns: take(&mut ebpf, "POLICY_NETNS", HashMap::try_from)?,
            cgroups: take(&mut ebpf, "POLICY_CGROUPS", HashMap::try_from)?,
            verdicts: take(&mut ebpf, "POLICY_VERDICTS", PerCpuArray::try_from)?,
            counters: take(&mut ebpf, "POLICY_COUNTERS", PerCpuArray::try_from)?,
        };
        let policy_plan = PolicyPlan::new(&config.policies, config.policy_mode, &config.services);
        let policy_events = take(&mut ebpf, "POLICY_EVENTS", RingBuf::try_from)?;
        let mut policy = PolicyTask::new(policy_maps, policy_plan, Some(cgroup_root.to_owned()));
        policy
            .resolve_and_apply()
            .map_err(|source| SteerError::Map {
                name: "POLICY_GLOBALS",
                source,
            })?;
        if !config.policies.is_empty() {
            log::info!(
                "enforcing {} policy rules ({:?} mode)",
                config.policies.len(),
                config.policy_mode
            );
        }
        let plan = Plan::new(&config.services, &maps.in_kernel(), &config.health);
        // The cluster's services of an earlier agent stay until the
        // Services are listed again.
        let prune = !config.kubernetes_services;
        let removed = maps.apply(&plan, prune).map_err(|source| SteerError::Map {
            name: "SERVICES",
            source,
        })?;
        log::info!(
            "steering {} services ({removed} stale map entries removed)",
            plan.services.len()
        );
        Ok(Self {
            steered: take(&mut ebpf, "STEERED", HashMap::try_from)?,
            counters: take(&mut ebpf, "STEER_COUNTERS", PerCpuArray::try_from)?,
            _ebpf: ebpf,
            maps,
            plan,
            policy,
            policy_events,
            programs: Vec::new(),
            adopted: 0,
            features: Vec::new(),
        })
    }

    /// Adopts each program's pinned link, or loads, attaches and pins it.
    /// The ingress policy program only while an ingress rule exists; its
    /// link is removed otherwise.
    fn attach(&mut self, dir: &Path, cgroup_root: &Path) -> Result<(), SteerError> {
        let cgroup = File::open(cgroup_root).map_err(|source| SteerError::Pins {
            path: cgroup_root.to_owned(),
            source,
        })?;
        let mut fell_back = false;
        for &(name, hook, fallback) in PROGRAMS {
            let first = self.attach_one(
                dir,
                &cgroup,
                cgroup_root,
                name,
                name,
                hook,
                "cgroup_sock_addr",
            );
            match (first, fallback) {
                // Adopted as pinned: which variant an earlier agent chose
                // is not known, so whether this kernel takes the first is
                // asked by loading it (not attached).
                (Ok(()), Some(_)) => fell_back |= !self.loads(name),
                (Ok(()), None) => {}
                (Err(e), Some(other)) => {
                    log::debug!("{name} refused ({e}); loading {other}");
                    self.attach_one(
                        dir,
                        &cgroup,
                        cgroup_root,
                        other,
                        name,
                        hook,
                        "cgroup_sock_addr",
                    )?;
                    fell_back = true;
                }
                (Err(e), None) => return Err(e),
            }
        }
        self.features.push(crate::status::FeatureStatus {
            name: ECONNREFUSED_FEATURE.into(),
            available: !fell_back,
            detail: if fell_back {
                "bpf_set_retval is missing (Linux 5.18): a connect or datagram to a service \
                 without backends fails with EPERM instead of ECONNREFUSED"
                    .into()
            } else {
                "a connect to a service without backends fails with ECONNREFUSED".into()
            },
        });
        let link = dir.join("links").join(INGRESS_PROGRAM);
        if self.policy.plan.has_ingress() {
            self.attach_one(
                dir,
                &cgroup,
                cgroup_root,
                INGRESS_PROGRAM,
                INGRESS_PROGRAM,
                "ingress",
                "cgroup_skb",
            )?;
        } else if link.exists() {
            std::fs::remove_file(&link)
                .map_err(|source| SteerError::Pins { path: link, source })?;
        }
        Ok(())
    }

    /// Whether the kernel takes program `name` (loaded now if it was not).
    fn loads(&mut self, name: &str) -> bool {
        let Some(program) = self._ebpf.program_mut(name) else {
            return false;
        };
        let Ok(program): Result<&mut CgroupSockAddr, _> = program.try_into() else {
            return false;
        };
        program.fd().is_ok() || program.load().is_ok()
    }

    /// Adopts the link pinned as `link_name`, or loads `name`, attaches
    /// it and pins its link as `link_name`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call per program kind, all of them needed"
    )]
    fn attach_one(
        &mut self,
        dir: &Path,
        cgroup: &File,
        cgroup_root: &Path,
        name: &'static str,
        link_name: &str,
        hook: &str,
        kind: &str,
    ) -> Result<(), SteerError> {
        let link_path = dir.join("links").join(link_name);
        if PinnedLink::from_pin(&link_path).is_ok() {
            self.adopted += 1;
        } else {
            let pin = |reason: String| SteerError::Pin {
                name,
                path: link_path.clone(),
                reason,
            };
            let program = self
                ._ebpf
                .program_mut(name)
                .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
                .map_err(|source| SteerError::Program { name, source })?;
            let link = match kind {
                "cgroup_skb" => {
                    let p: &mut CgroupSkb = program
                        .try_into()
                        .map_err(|source| SteerError::Program { name, source })?;
                    p.load()
                        .map_err(|source| SteerError::Program { name, source })?;
                    let id = p
                        .attach(
                            cgroup,
                            aya::programs::CgroupSkbAttachType::Ingress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(|source| SteerError::Program { name, source })?;
                    let link = p
                        .take_link(id)
                        .map_err(|source| SteerError::Program { name, source })?;
                    FdLink::try_from(link).map_err(|e| pin(e.to_string()))?
                }
                _ => {
                    let p: &mut CgroupSockAddr = program
                        .try_into()
                        .map_err(|source| SteerError::Program { name, source })?;
                    p.load()
                        .map_err(|source| SteerError::Program { name, source })?;
                    let id = p
                        .attach(cgroup, CgroupAttachMode::Single)
                        .map_err(|source| SteerError::Program { name, source })?;
                    let link = p
                        .take_link(id)
                        .map_err(|source| SteerError::Program { name, source })?;
                    FdLink::try_from(link).map_err(|e| pin(e.to_string()))?
                }
            };
            link.pin(&link_path).map_err(|e| pin(e.to_string()))?;
        }
        self.programs.push(ProgramStatus {
            name: name.into(),
            kind: kind.into(),
            attach_point: format!("cgroup {} ({hook}, pinned)", cgroup_root.display()),
        });
        Ok(())
    }
}

/// An egress rule with a source address (`from.cidr`, or pods) on a
/// kernel that cannot tell a namespace's cookie would silently match
/// nothing from unbound sockets: refused before anything is attached.
fn refuse_unmatchable_sources(config: &Config) -> Result<(), SteerError> {
    use crate::config::steer::Direction;
    let needs = config.policies.iter().enumerate().find_map(|(index, p)| {
        let key = if p.from.cidr.is_empty() {
            p.from.pod_key()?
        } else {
            "cidr"
        };
        (p.direction == Direction::Egress).then_some((index, key))
    });
    match needs {
        Some((index, key)) if !policy::resolve::cookies_supported() => {
            Err(SteerError::NoNetnsCookie {
                index,
                key,
                name: config.policies[index].name.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The error for a `config` that needs the Kubernetes API, if it does.
pub fn needs_kubernetes(config: &Config) -> Option<SteerError> {
    if config.kubernetes_services {
        return Some(SteerError::NoKubernetes {
            what: "kubernetes_services: true reads Services and EndpointSlices".into(),
            key: "kubernetes_services".into(),
        });
    }
    let (index, key) =
        (config.policies.iter().enumerate()).find_map(|(i, p)| Some((i, p.from.pod_key()?)))?;
    let key = format!("policies[{index}].from.{key}");
    Some(SteerError::NoKubernetes {
        what: format!("{key} selects pods"),
        key,
    })
}

/// With no service configured nothing of steering may stay attached.
fn remove_all_if_mounted(mounts: &[mounts::Mount]) {
    let Some(bpffs) = mounts.iter().find(|m| m.fs_type == "bpf") else {
        return;
    };
    let root = pins::steer_root(&bpffs.mount_point);
    match pins::remove(&root) {
        Ok(0) => {}
        Ok(n) => log::info!("no services configured: removed {n} steering pins"),
        Err(e) => log::warn!("cannot remove steering pins under {}: {e}", root.display()),
    }
}

/// `weft cleanup`: removes every pinned weft object (steering programs
/// and maps included). Returns how many pins were removed.
pub fn cleanup() -> Result<usize, SteerError> {
    let mounts = mounts::mounts().map_err(SteerError::Mounts)?;
    let mut removed = 0;
    for m in mounts.iter().filter(|m| m.fs_type == "bpf") {
        let dir = m.mount_point.join(crate::loader::cleanup::PIN_DIR);
        removed += pins::remove(&dir).map_err(|source| SteerError::Pins { path: dir, source })?;
    }
    Ok(removed)
}

fn take<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    into: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, SteerError> {
    let map = ebpf.take_map(name).ok_or(SteerError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    into(map).map_err(|source| SteerError::Map { name, source })
}
