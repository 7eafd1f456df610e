//! Loading and attaching the kernel programs.
//!
//! Order matters for the "bad configuration is rejected before anything is
//! attached" and "say what is missing" rules: check privileges, mount what
//! is missing, read tracepoint layouts, then load and attach. Everything
//! attached is owned by [`Probes`]; dropping it detaches everything.

pub mod btf;
pub mod capture;
pub mod cleanup;
pub mod features;
pub mod listeners;
pub mod mounts;
pub mod recursion;
pub mod tracefs;

use std::{collections::BTreeMap, fs::File, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{HashMap, Map, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TracePoint},
};
use weft_common::{
    SockTuple,
    config::ProbeConfig,
    conn::TcpConn,
    drop::{DropKey, DropStats},
    udp::UdpFlow,
};

use crate::{
    config::Config,
    status::{FeatureStatus, ProgramStatus},
};

/// The kernel object built by build.rs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-probes"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "weft agent lacks {missing}: run it as root, or grant the capabilities \
         (e.g. `setcap cap_bpf,cap_perfmon,cap_net_admin+ep weft`; cap_sys_admin too \
         if tracefs is not mounted)"
    )]
    Privileges { missing: String },
    #[error(
        "{what}: {source}; mount it by hand (systemd distributions mount tracefs at \
         boot; a DaemonSet mounts the host's /sys/kernel/tracing) or run the agent with \
         CAP_SYS_ADMIN"
    )]
    Mount {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the kernel lacks the tracepoint {0}, without which weft sees no TCP connections \
         (needs Linux 4.16 or later with CONFIG_TRACEPOINTS)"
    )]
    MissingTracepoint(String),
    #[error(
        "no cgroup v2 hierarchy is mounted: weft attaches its UDP programs to the cgroup v2 \
         root (mount -t cgroup2 none /sys/fs/cgroup)"
    )]
    NoCgroup2,
    #[error("cannot open the cgroup v2 root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading weft's eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name} ({attach_point}) failed to load or attach: {source}")]
    Program {
        name: &'static str,
        attach_point: String,
        source: aya::programs::ProgramError,
    },
    #[error("cannot read the agent's network namespace (/proc/self/ns/net): {0}")]
    OwnNetns(std::io::Error),
    #[error("eBPF map {0} is missing from the object (weft was built wrong)")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// The maps the agent reads, taken out of the object so that each can be
/// handed to the one task that owns it.
pub struct ProbeMaps {
    pub events: RingBuf<aya::maps::MapData>,
    pub tcp_conns: HashMap<aya::maps::MapData, u64, TcpConn>,
    pub udp_flows: HashMap<aya::maps::MapData, SockTuple, UdpFlow>,
    pub counters: PerCpuArray<aya::maps::MapData, u64>,
    pub drop_reasons: PerCpuArray<aya::maps::MapData, u64>,
    /// Dropped packets by address pair and reason.
    pub drop_flows: HashMap<aya::maps::MapData, DropKey, DropStats>,
    /// Payload snippets, when L7 capture is on.
    pub data: Option<RingBuf<aya::maps::MapData>>,
    /// Runs of the tracing programs the kernel skipped.
    pub recursion: recursion::RecursionMisses,
}

/// Loaded and attached programs. Dropping this detaches them.
pub struct Probes {
    _ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub features: Vec<FeatureStatus>,
    /// `enum skb_drop_reason` value -> name, from the running kernel.
    pub drop_reason_names: BTreeMap<u32, String>,
    pub maps: Option<ProbeMaps>,
}

impl LoadError {
    /// The node is not set up for the agent (privileges, mounts, cgroup
    /// v2): bad configuration, exit status 2, as a bad config file is.
    pub fn is_node_setup(&self) -> bool {
        matches!(
            self,
            Self::Privileges { .. } | Self::Mount { .. } | Self::NoCgroup2
        )
    }
}

impl Probes {
    /// Checks, mounts, loads and attaches. On error nothing stays attached.
    /// `own_listener` is the agent's metrics listener, entered in the
    /// kernel's listener table before any program is attached.
    pub fn load(config: &Config, own_listener: std::net::SocketAddr) -> Result<Self, LoadError> {
        let missing = features::missing_caps(features::effective_caps());
        if !missing.is_empty() {
            return Err(LoadError::Privileges {
                missing: missing.join(", "),
            });
        }
        let mounts = mounts::mounts().map_err(|source| LoadError::Mount {
            what: "cannot read /proc/self/mountinfo",
            source,
        })?;
        let tracefs = mounts::ensure_tracefs(&mounts).map_err(|source| LoadError::Mount {
            what: "tracefs is not mounted and mounting it failed",
            source,
        })?;
        remove_stale_pins(&mounts);
        let cgroup_root = mounts::cgroup2(&mounts).ok_or(LoadError::NoCgroup2)?;

        let mut features = vec![features::btf_available()];
        for tp in features::TRACEPOINTS {
            let present = features::tracepoint_exists(&tracefs, tp.category, tp.name);
            if tp.required && !present {
                return Err(LoadError::MissingTracepoint(format!(
                    "{}:{}",
                    tp.category, tp.name
                )));
            }
            features.push(FeatureStatus {
                name: format!("tracepoint {}:{}", tp.category, tp.name),
                available: present,
                detail: if present {
                    "attached".into()
                } else {
                    tp.without.into()
                },
            });
        }
        let formats = read_formats(&tracefs);
        let offsets = formats.offsets();
        if offsets.probe_skaddr == weft_common::config::NO_FIELD {
            features.push(FeatureStatus {
                name: "tcp_probe skaddr field".into(),
                available: false,
                detail: "kernel older than 6.4: no smoothed RTT".into(),
            });
        }
        // Read once: both layouts come from the same (large) BTF blob.
        let btf = btf::Btf::from_sys_fs()
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let sock = sock_offsets(btf.as_ref(), &mut features);
        let skb = skb_offsets(btf.as_ref(), &mut features);
        let netns = netns_offsets(btf.as_ref(), &mut features);
        // Payload capture needs the syscall records in the layout the
        // programs assume; without it, L7 is off and status says why.
        let capture = if config.l7_capture_bytes == 0 {
            features.push(FeatureStatus {
                name: "L7 payload capture".into(),
                available: false,
                detail: "turned off (l7_capture_bytes: 0)".into(),
            });
            false
        } else {
            match capture::formats_match(&tracefs) {
                Ok(()) => {
                    features.push(FeatureStatus {
                        name: "L7 payload capture".into(),
                        available: true,
                        detail: format!(
                            "{} bytes per read/write from syscall tracepoints",
                            config.l7_capture_bytes
                        ),
                    });
                    true
                }
                Err(why) => {
                    features.push(FeatureStatus {
                        name: "L7 payload capture".into(),
                        available: false,
                        detail: format!("no L7: {why}"),
                    });
                    false
                }
            }
        };
        let probe_config = ProbeConfig {
            agent_pid: std::process::id(),
            snippet_bytes: if capture { config.l7_capture_bytes } else { 0 },
            offsets,
            sock,
            skb,
            drops: crate::flow::drops::drop_filter(&formats.kfree_skb.symbols()),
            netns,
        };

        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &probe_config, true)
            .map_max_entries("TCP_CONNS", config.tcp_socket_capacity)
            .map_max_entries("UDP_FLOWS", config.udp_flow_capacity)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(PROBES_OBJECT)?;

        // Before attaching: a connection the listener accepts from then on
        // is known as the agent's from its first event.
        listeners::add_own(&mut ebpf, own_listener)?;
        let mut programs = Vec::new();
        for (prog, category, name) in TRACEPOINT_PROGRAMS {
            if !features::tracepoint_exists(&tracefs, category, name) {
                continue;
            }
            attach_tracepoint(&mut ebpf, prog, category, name)?;
            programs.push(ProgramStatus {
                name: (*prog).into(),
                kind: "tracepoint".into(),
                attach_point: format!("{category}/{name}"),
            });
        }
        if capture {
            capture::attach(&mut ebpf, &mut programs)?;
        }
        let cgroup = File::open(&cgroup_root).map_err(|source| LoadError::Cgroup {
            path: cgroup_root.clone(),
            source,
        })?;
        for (prog, attach_type, label) in [
            ("weft_udp_egress", CgroupSkbAttachType::Egress, "egress"),
            ("weft_udp_ingress", CgroupSkbAttachType::Ingress, "ingress"),
        ] {
            let attach_point = format!("cgroup {} ({label})", cgroup_root.display());
            let err = |source| LoadError::Program {
                name: prog,
                attach_point: attach_point.clone(),
                source,
            };
            let program: &mut CgroupSkb = program_mut(&mut ebpf, prog, &attach_point)?;
            program.load().map_err(err)?;
            // aya attaches through a BPF link, which the kernel always
            // stacks with other programs on the cgroup (and rejects attach
            // flags for), so other tools keep working next to ours.
            program
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(err)?;
            programs.push(ProgramStatus {
                name: prog.into(),
                kind: "cgroup_skb".into(),
                attach_point,
            });
        }

        let recursion = recursion::RecursionMisses::new(tracing_fds(&ebpf, &programs));
        let maps = ProbeMaps {
            recursion,
            events: RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| {
                LoadError::Map {
                    name: "EVENTS",
                    source,
                }
            })?,
            tcp_conns: HashMap::try_from(take_map(&mut ebpf, "TCP_CONNS")?).map_err(|source| {
                LoadError::Map {
                    name: "TCP_CONNS",
                    source,
                }
            })?,
            udp_flows: HashMap::try_from(take_map(&mut ebpf, "UDP_FLOWS")?).map_err(|source| {
                LoadError::Map {
                    name: "UDP_FLOWS",
                    source,
                }
            })?,
            counters: PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(
                |source| LoadError::Map {
                    name: "COUNTERS",
                    source,
                },
            )?,
            data: if capture {
                Some(
                    RingBuf::try_from(take_map(&mut ebpf, "DATA")?).map_err(|source| {
                        LoadError::Map {
                            name: "DATA",
                            source,
                        }
                    })?,
                )
            } else {
                None
            },
            drop_reasons: PerCpuArray::try_from(take_map(&mut ebpf, "DROP_REASONS")?).map_err(
                |source| LoadError::Map {
                    name: "DROP_REASONS",
                    source,
                },
            )?,
            drop_flows: HashMap::try_from(take_map(&mut ebpf, "DROP_FLOWS")?).map_err(
                |source| LoadError::Map {
                    name: "DROP_FLOWS",
                    source,
                },
            )?,
        };

        Ok(Self {
            _ebpf: ebpf,
            programs,
            features,
            drop_reason_names: formats.kfree_skb.symbols(),
            maps: Some(maps),
        })
    }
}

/// A member's byte offset in a kernel struct, as the programs take it.
fn member_offset(btf: &btf::Btf, strukt: &str, member: &str) -> Result<u16, String> {
    btf.member_offset(strukt, member)
        .map_err(|e| e.to_string())
        .and_then(|o| u16::try_from(o).map_err(|e| e.to_string()))
}

/// `struct sk_buff` member offsets from the kernel's BTF, for the addresses
/// of dropped packets.
fn skb_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::SkbOffsets {
    use weft_common::config::SkbOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let off = |m: &str| member_offset(btf, "sk_buff", m);
        Ok(SkbOffsets {
            head: off("head")?,
            network_header: off("network_header")?,
        })
    });
    let (offsets, available, detail) = match found {
        Ok(offsets) => (
            offsets,
            true,
            "struct sk_buff offsets from /sys/kernel/btf/vmlinux".to_owned(),
        ),
        Err(why) => (
            SkbOffsets::ABSENT,
            false,
            format!("{why}: drops are counted by reason, without drop records"),
        ),
    };
    features.push(FeatureStatus {
        name: "packet layout (BTF)".into(),
        available,
        detail,
    });
    offsets
}

/// Where a socket's network namespace number is, from the kernel's BTF:
/// listening ports are told apart by namespace with it.
fn netns_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::NetnsOffsets {
    use weft_common::config::NetnsOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let ns = member_offset(btf, "net", "ns")?;
        let inum = member_offset(btf, "ns_common", "inum")?;
        Ok(NetnsOffsets {
            // `possible_net_t skc_net` holds one `struct net *`.
            skc_net: member_offset(btf, "sock_common", "skc_net")?,
            net_inum: ns.checked_add(inum).ok_or("struct net too large")?,
        })
    });
    let (offsets, available, detail) = match found {
        Ok(offsets) => (
            offsets,
            true,
            "listening ports per network namespace (BTF)".to_owned(),
        ),
        Err(why) => (
            NetnsOffsets::ABSENT,
            false,
            format!("{why}: a port's listeners in different namespaces are not told apart"),
        ),
    };
    features.push(FeatureStatus {
        name: "network namespaces".into(),
        available,
        detail,
    });
    offsets
}

/// `struct sock_common` member offsets from the kernel's BTF, for the
/// addresses of sockets no tracepoint describes (UDP, pre-existing TCP).
fn sock_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::SockOffsets {
    use weft_common::config::SockOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let off = |m: &str| member_offset(btf, "sock_common", m);
        Ok(SockOffsets {
            daddr: off("skc_daddr")?,
            rcv_saddr: off("skc_rcv_saddr")?,
            dport: off("skc_dport")?,
            num: off("skc_num")?,
            family: off("skc_family")?,
            v6_daddr: off("skc_v6_daddr")?,
            v6_rcv_saddr: off("skc_v6_rcv_saddr")?,
            state: off("skc_state")?,
        })
    });
    match found {
        Ok(offsets) => {
            features.push(FeatureStatus {
                name: "socket layout (BTF)".into(),
                available: true,
                detail: "struct sock_common offsets from /sys/kernel/btf/vmlinux".into(),
            });
            offsets
        }
        Err(why) => {
            features.push(FeatureStatus {
                name: "socket layout (BTF)".into(),
                available: false,
                detail: format!("{why}: no L7 for UDP or for connections older than the agent"),
            });
            SockOffsets::ABSENT
        }
    }
}

/// (program, tracepoint category, tracepoint name).
const TRACEPOINT_PROGRAMS: &[(&str, &str, &str)] = &[
    ("weft_tcp_state", "sock", "inet_sock_set_state"),
    ("weft_sock_send", "sock", "sock_send_length"),
    ("weft_sock_recv", "sock", "sock_recv_length"),
    ("weft_tcp_probe", "tcp", "tcp_probe"),
    ("weft_tcp_retrans", "tcp", "tcp_retransmit_skb"),
    ("weft_rst_send", "tcp", "tcp_send_reset"),
    ("weft_rst_recv", "tcp", "tcp_receive_reset"),
    ("weft_skb_drop", "skb", "kfree_skb"),
];

/// Removes what an earlier run left pinned. The observation programs pin
/// nothing (they are attached by links that die with the agent), so a
/// node without bpffs, where an agent without CAP_SYS_ADMIN cannot mount
/// it, has nothing to clean and the agent runs without it.
fn remove_stale_pins(mounts: &[mounts::Mount]) {
    let bpffs = match mounts::ensure_bpffs(mounts) {
        Ok(bpffs) => bpffs,
        Err(err) => {
            log::info!("bpffs is not mounted and mounting it failed ({err}): nothing to clean up");
            return;
        }
    };
    if let Err(err) = cleanup::remove_stale_pins(&bpffs) {
        log::warn!(
            "could not remove stale pins under {}: {err}",
            bpffs.display()
        );
    }
}

fn read_formats(tracefs: &std::path::Path) -> tracefs::Formats {
    let read = |category, name| {
        tracefs::read_format(tracefs, category, name).unwrap_or_else(|err| {
            log::debug!("no format for {category}:{name}: {err}");
            tracefs::Format::default()
        })
    };
    tracefs::Formats {
        set_state: read("sock", "inet_sock_set_state"),
        send_length: read("sock", "sock_send_length"),
        recv_length: read("sock", "sock_recv_length"),
        tcp_probe: read("tcp", "tcp_probe"),
        retransmit: read("tcp", "tcp_retransmit_skb"),
        receive_reset: read("tcp", "tcp_receive_reset"),
        send_reset: read("tcp", "tcp_send_reset"),
        kfree_skb: read("skb", "kfree_skb"),
    }
}

fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    attach_point: &str,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| LoadError::Program {
        name,
        attach_point: attach_point.to_owned(),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| LoadError::Program {
        name,
        attach_point: attach_point.to_owned(),
        source,
    })
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
) -> Result<(), LoadError> {
    let attach_point = format!("{category}/{tracepoint}");
    let err = |source| LoadError::Program {
        name,
        attach_point: attach_point.clone(),
        source,
    };
    let program: &mut TracePoint = program_mut(ebpf, name, &attach_point)?;
    program.load().map_err(err)?;
    program.attach(category, tracepoint).map_err(err)?;
    Ok(())
}

/// Handles on the attached tracepoint programs, for their recursion
/// misses (cgroup_skb programs are not skipped that way).
fn tracing_fds(ebpf: &Ebpf, programs: &[ProgramStatus]) -> Vec<aya::programs::ProgramFd> {
    programs
        .iter()
        .filter(|p| p.kind == "tracepoint")
        .filter_map(|p| ebpf.program(&p.name)?.fd().ok()?.try_clone().ok())
        .collect()
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

/// Compile-time check that the shared types are usable as map values.
#[allow(dead_code)]
fn assert_pod<T: Pod>() {}
const _: fn() = || {
    assert_pod::<TcpConn>();
    assert_pod::<UdpFlow>();
};
