//! Loading and attaching the kernel programs.
//!
//! Order matters for the "bad configuration is rejected before anything is
//! attached" and "say what is missing" rules: check privileges, mount what
//! is missing, read tracepoint layouts, then load and attach. Everything
//! attached is owned by [`Probes`]; dropping it detaches everything.

pub mod attach;
pub mod btf;
pub mod capture;
pub mod cleanup;
mod existing_listeners;
pub mod features;
pub mod go_tls;
mod inject;
pub mod kernel_log;
pub mod layouts;
pub mod listeners;
pub mod maps;
pub mod mounts;
pub mod raw;
pub mod recursion;
#[cfg(test)]
mod stack;
pub mod tls;
pub mod tracefs;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use attach::{Attached, Need};
use aya::{Ebpf, EbpfLoader, Pod, programs::CgroupSkbAttachType};
use weft_common::{config::ProbeConfig, conn::TcpConn, udp::UdpFlow};

pub use maps::ProbeMaps;

use crate::{
    config::Config,
    status::{FeatureStatus, LateAttachments, ProgramFailure, ProgramStatus},
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
    #[error("{0}")]
    KernelLog(anyhow::Error),
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

/// Loaded and attached programs. Dropping this detaches them.
pub struct Probes {
    /// Shared with the TLS library watcher, which attaches to library
    /// files found later.
    _ebpf: Arc<Mutex<Ebpf>>,
    /// The sockets the traceparent injection sees, while it runs.
    _inject_socks: Option<aya::maps::SockHash<aya::maps::MapData, u64>>,
    /// The TLS library watcher, for the daemon to run.
    pub tls: Option<tls::TlsLibraries>,
    pub programs: Vec<ProgramStatus>,
    /// Attachments the TLS library watcher makes after start.
    pub late_programs: LateAttachments,
    /// Optional programs the running kernel refused.
    pub failed: Vec<ProgramFailure>,
    pub features: Vec<FeatureStatus>,
    /// `enum skb_drop_reason` value -> name, from the running kernel.
    pub drop_reason_names: BTreeMap<u32, String>,
    pub maps: Option<ProbeMaps>,
    /// The programs' log ring, with `--bpf-log` (see kernel_log.rs).
    pub kernel_log: Option<kernel_log::KernelLog>,
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

/// What the kernel offers, found before anything is loaded.
struct Prepared {
    tracefs: PathBuf,
    cgroup_root: PathBuf,
    features: Vec<FeatureStatus>,
    probe_config: ProbeConfig,
    capture: bool,
    /// The data syscalls' exits count bytes (no socket tracepoints).
    fd_fallback: bool,
    /// The offsets from a task to the socket behind an fd are known.
    fd_table: bool,
    /// `tcp:tcp_probe`'s record names its socket (6.4+); before, its
    /// program could only skip every packet, so it is not attached.
    rtt_record: bool,
    /// The programs that read the raw tracepoints' arguments.
    raw: raw::RawChoice,
    drop_reason_names: BTreeMap<u32, String>,
}

impl Probes {
    /// Checks, mounts, loads and attaches. On error nothing stays attached.
    /// `own_listener` is the agent's metrics listener, entered in the
    /// kernel's listener table before any program is attached.
    pub fn load(config: &Config, own_listener: std::net::SocketAddr) -> Result<Self, LoadError> {
        let env = prepare(config)?;
        let (mut ebpf, kernel_log) = load_object(config, &env, own_listener)?;
        let mut attached = Attached::default();
        attach_tracing(&mut ebpf, &env, &mut attached)?;
        let mut features = env.features;
        let tls_plaintext = env.capture && config.l7_tls_plaintext && tls_feature(&mut features);
        let cgroup = File::open(&env.cgroup_root).map_err(|source| LoadError::Cgroup {
            path: env.cgroup_root.clone(),
            source,
        })?;
        udp(
            &mut ebpf,
            &mut attached,
            (&cgroup, &env.cgroup_root),
            &mut features,
        )?;
        let inject_socks = inject::attach(
            &mut ebpf,
            &mut attached,
            (&cgroup, &env.cgroup_root),
            (config.traces.inject_traceparent, env.capture),
            &mut features,
        )?;
        let recursion = recursion::RecursionMisses::new(tracing_fds(&ebpf, &attached.programs));
        let maps = maps::take(&mut ebpf, env.capture, recursion)?;
        let ebpf = Arc::new(Mutex::new(ebpf));
        let go = tls_plaintext && go_tls_feature(env.fd_table, &mut features);
        let tls = tls_plaintext.then(|| tls::TlsLibraries::start(ebpf.clone(), go));
        if let Some(tls) = &tls {
            attached.programs.extend(tls.attached.iter().cloned());
        }
        let late_programs =
            (tls.as_ref()).map_or_else(LateAttachments::default, |t| t.late.clone());
        Ok(Self {
            _ebpf: ebpf,
            _inject_socks: inject_socks,
            tls,
            programs: attached.programs,
            late_programs,
            failed: attached.failed,
            features,
            drop_reason_names: env.drop_reason_names,
            maps: Some(maps),
            kernel_log,
        })
    }
}

/// Whether Go's `crypto/tls` can be read: its programs need the task's
/// file table offsets from BTF (`fd_table`), and amd64's registers.
fn go_tls_feature(fd_table: bool, features: &mut Vec<FeatureStatus>) -> bool {
    let (available, detail) = if !cfg!(target_arch = "x86_64") {
        (false, "Go's registers are read on x86-64 only".to_owned())
    } else if !fd_table {
        (
            false,
            "no BTF offsets for the task's file table: a Go call's socket cannot be named".into(),
        )
    } else {
        (
            true,
            "crypto/tls.(*Conn).Read/Write in Go 1.18+ x86-64 binaries with a symbol table, \
             attached per binary when a process running it is first seen"
                .into(),
        )
    };
    features.push(FeatureStatus {
        name: "Go crypto/tls plaintext".into(),
        available,
        detail,
    });
    available
}

/// Whether TLS plaintext can be read (uprobes need CAP_SYS_ADMIN), noted
/// in `features` either way.
fn tls_feature(features: &mut Vec<FeatureStatus>) -> bool {
    let feature = features::uprobes_available(features::effective_caps());
    let available = feature.available;
    features.push(feature);
    available
}

/// Loads the object with the load-time settings, and enters the agent's
/// own and the already open listeners in the kernel's listener table.
fn load_object(
    config: &Config,
    env: &Prepared,
    own_listener: std::net::SocketAddr,
) -> Result<(Ebpf, Option<kernel_log::KernelLog>), LoadError> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global("CONFIG", &env.probe_config, true)
        .map_max_entries("TCP_CONNS", config.tcp_socket_capacity)
        .map_max_entries("UDP_FLOWS", config.udp_flow_capacity)
        .map_max_entries("EVENTS", config.ring_buffer_bytes);
    kernel_log::set_level(&mut loader, config.bpf_log);
    let mut ebpf = loader.load(PROBES_OBJECT)?;
    let kernel_log = kernel_log::take(&mut ebpf, config.bpf_log).map_err(LoadError::KernelLog)?;
    // Before attaching: a connection the listener accepts from then on
    // is known as the agent's from its first event.
    listeners::add_own(&mut ebpf, own_listener)?;
    // Before attaching too: a connection accepted while the programs
    // attach is named after its server. (A listener opened between
    // this scan and the attach goes unnamed: a far narrower window.)
    let existing = listeners::add_existing(&mut ebpf, &env.cgroup_root)?;
    log::info!("{existing} listening TCP sockets found already open");
    Ok((ebpf, kernel_log))
}

/// The TCP lifecycle program, the other tracepoints this kernel has, and
/// the payload capture.
fn attach_tracing(
    ebpf: &mut Ebpf,
    env: &Prepared,
    attached: &mut Attached,
) -> Result<(), LoadError> {
    // Without the TCP lifecycle the agent sees no TCP: required.
    let lifecycle = env.raw.lifecycle.then_some("weft_tcp_state");
    let programs = (lifecycle, Some("weft_tcp_state_tp"));
    raw::attach_either(ebpf, attached, Need::Required, programs, LIFECYCLE)?;
    softirq_programs(ebpf, env, attached)?;
    for (prog, category, name) in TRACEPOINT_PROGRAMS {
        if !features::tracepoint_exists(&env.tracefs, category, name) {
            continue;
        }
        // Bytes are counted at the syscall exits instead: not twice.
        if env.fd_fallback && matches!(*prog, "weft_sock_send" | "weft_sock_recv") {
            continue;
        }
        attached.tracepoint(ebpf, Need::Optional, prog, category, name)?;
    }
    if env.capture || env.fd_fallback {
        capture::attach(ebpf, attached)?;
    }
    Ok(())
}

const LIFECYCLE: (&str, &str) = ("sock", "inet_sock_set_state");

/// The optional programs that run in softirq: on raw tracepoints where
/// the kernel allows (see `raw`), else on the tracepoints.
fn softirq_programs(
    ebpf: &mut Ebpf,
    env: &Prepared,
    attached: &mut Attached,
) -> Result<(), LoadError> {
    let raw = env.raw;
    let rtt = (
        raw.rtt.then_some("weft_tcp_probe"),
        env.rtt_record.then_some("weft_tcp_probe_tp"),
    );
    let retransmits = (
        raw.retransmits.then_some("weft_tcp_retrans"),
        Some("weft_tcp_retrans_tp"),
    );
    let reset_sent = (
        raw.resets.then_some("weft_rst_send"),
        Some("weft_rst_send_tp"),
    );
    let reset_received = (
        raw.resets.then_some("weft_rst_recv"),
        Some("weft_rst_recv_tp"),
    );
    let drops = (raw.drops, Some("weft_skb_drop_tp"));
    for (programs, point) in [
        (rtt, ("tcp", "tcp_probe")),
        (retransmits, ("tcp", "tcp_retransmit_skb")),
        (reset_sent, ("tcp", "tcp_send_reset")),
        (reset_received, ("tcp", "tcp_receive_reset")),
        (drops, ("skb", "kfree_skb")),
    ] {
        if features::tracepoint_exists(&env.tracefs, point.0, point.1) {
            raw::attach_either(ebpf, attached, Need::Optional, programs, point)?;
        }
    }
    Ok(())
}

/// The UDP programs on the cgroup v2 root. Egress with the sending
/// process where the kernel allows task helpers in cgroup_skb programs,
/// else without it.
fn udp(
    ebpf: &mut Ebpf,
    attached: &mut Attached,
    cgroup: (&File, &Path),
    features: &mut Vec<FeatureStatus>,
) -> Result<(), LoadError> {
    let egress = CgroupSkbAttachType::Egress;
    let with_owner =
        attached.cgroup_skb(ebpf, Need::Optional, "weft_udp_egress", cgroup, egress)?;
    if !with_owner
        && attached.cgroup_skb(ebpf, Need::Optional, "weft_udp_egress_anon", cgroup, egress)?
    {
        features.push(FeatureStatus {
            name: "UDP sender process".into(),
            available: false,
            detail: "the kernel refuses task helpers in cgroup_skb programs: UDP flows \
                     carry no process (weft_udp_egress_anon runs instead)"
                .into(),
        });
    }
    let ingress = CgroupSkbAttachType::Ingress;
    attached.cgroup_skb(ebpf, Need::Optional, "weft_udp_ingress", cgroup, ingress)?;
    Ok(())
}

/// Privileges, mounts, hooks and layouts: everything checked and read
/// before the object is loaded.
fn prepare(config: &Config) -> Result<Prepared, LoadError> {
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
    hook_features(&tracefs, &mut features)?;
    let formats = read_formats(&tracefs);
    let offsets = formats.offsets();
    let rtt_record = offsets.probe_skaddr != weft_common::config::NO_FIELD;
    // The skb-based record (28-byte addresses) also fires for resets that
    // answer a packet no socket matched; the older sock-based one cannot.
    let nosock = offsets.srst_saddr != weft_common::config::NO_FIELD;
    features.push(FeatureStatus {
        name: "resets sent without a socket".into(),
        available: nosock,
        detail: if nosock {
            "tcp:tcp_send_reset also reports resets answering a closed port".into()
        } else {
            "older tcp:tcp_send_reset fires only for a socket's own resets: a reset \
             answering a packet to a closed port is not seen (the client's received \
             reset and the dropped packet are)"
                .into()
        },
    });
    // Read once: both layouts come from the same (large) BTF blob.
    let btf = btf::Btf::from_sys_fs()
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let sock = layouts::sock_offsets(btf.as_ref(), &mut features);
    let skb = layouts::skb_offsets(btf.as_ref(), &mut features);
    let raw = raw::RawChoice::new(&sock, &skb, &offsets);
    features.push(rtt_feature(raw.rtt, rtt_record));
    let netns = layouts::netns_offsets(btf.as_ref(), &mut features);
    let capture = capture_feature(config, &tracefs, &mut features);
    let has_reason = offsets.drop_reason != weft_common::config::NO_FIELD;
    let reasons = crate::flow::drops::reason_names(formats.kfree_skb.symbols(), has_reason);
    features.push(FeatureStatus {
        name: "drop reasons".into(),
        available: has_reason,
        detail: if has_reason {
            "skb:kfree_skb reports the kernel's drop reason".into()
        } else {
            format!(
                "skb:kfree_skb has no reason before 5.17: every drop is {}, and packets \
                 freed at a socket's teardown (QUEUE_PURGE on newer kernels) count as drops",
                crate::flow::drops::NOT_REPORTED
            )
        },
    });
    let fd = fd_fallback(&tracefs, btf.as_ref(), &mut features);
    Ok(Prepared {
        probe_config: ProbeConfig {
            agent_pid: std::process::id(),
            snippet_bytes: if capture { config.l7_capture_bytes } else { 0 },
            offsets,
            sock,
            skb,
            drops: crate::flow::drops::drop_filter(&reasons),
            netns,
            fd,
            inject: inject::probe_config(
                capture && config.traces.inject_traceparent,
                config.traces.sampling_ratio,
            ),
        },
        tracefs,
        cgroup_root,
        features,
        capture,
        fd_fallback: fd.enabled != 0,
        fd_table: fd.file_private_data != weft_common::config::NO_FIELD,
        rtt_record,
        raw,
        drop_reason_names: reasons,
    })
}

/// One feature row per tracepoint; a missing required one stops here.
fn hook_features(tracefs: &Path, features: &mut Vec<FeatureStatus>) -> Result<(), LoadError> {
    for tp in features::TRACEPOINTS {
        let present = features::tracepoint_exists(tracefs, tp.category, tp.name);
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
                "present".into()
            } else {
                tp.without.into()
            },
        });
    }
    Ok(())
}

/// Whether the smoothed RTT of each connection is sampled: from the raw
/// tracepoint's socket (BTF), else from the tracepoint's record where it
/// names the socket (6.4+).
fn rtt_feature(raw: bool, record: bool) -> FeatureStatus {
    FeatureStatus {
        name: "smoothed RTT".into(),
        available: raw || record,
        detail: if raw {
            "tcp_probe's socket, tcp_sock.srtt_us at its BTF offset".into()
        } else if record {
            "tcp:tcp_probe's record".into()
        } else {
            "no BTF, and tcp:tcp_probe names no socket before 6.4: no RTT \
             (weft_tcp_probe is not attached)"
                .into()
        },
    }
}

/// Set (to anything), the agent counts bytes at the data syscalls' exits
/// as on kernels before 6.3, even where the socket tracepoints exist.
pub const FORCE_SYSCALL_EXIT_COUNTS: &str = "WEFT_FORCE_SYSCALL_EXIT_COUNTS";

/// On kernels without `sock:sock_send_length`/`sock_recv_length` (before
/// 6.3), TCP bytes are counted at the data syscalls' exits, with the fd
/// resolved to its socket at offsets from BTF. Only there: where the
/// tracepoints exist they are exact for every way of sending (sendfile,
/// splice, io_uring), which the syscall exits are not. The offsets are
/// set wherever BTF has them (`enabled` says whether to count).
fn fd_fallback(
    tracefs: &Path,
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::FdOffsets {
    use weft_common::config::FdOffsets;
    let has = |name| features::tracepoint_exists(tracefs, "sock", name);
    // For developers: the older kernels' path on a newer kernel, at native
    // speed (the kernel matrix runs under emulation).
    let forced = std::env::var_os(FORCE_SYSCALL_EXIT_COUNTS).is_some();
    if forced {
        log::warn!("{FORCE_SYSCALL_EXIT_COUNTS} is set: bytes are counted at the syscall exits");
    }
    let table = btf.map_err(Clone::clone).and_then(layouts::fd_offsets);
    if !forced && has("sock_send_length") && has("sock_recv_length") {
        // Not for counting; Go's TLS programs still name a connection's
        // socket by its fd (ebpf/probes/src/go_tls.rs).
        return table.unwrap_or(FdOffsets::ABSENT);
    }
    let found = table.and_then(|o| capture::formats_match(tracefs).map(|()| o));
    let (offsets, available, detail) = match found {
        Ok(o) => (
            FdOffsets { enabled: 1, ..o },
            true,
            "the kernel lacks sock:sock_send_length/sock_recv_length (6.3+): TCP bytes \
             are counted at the exits of read/write/send*/recv*/readv/writev, with the fd \
             resolved to its socket through the task's file table (BTF offsets); bytes \
             moved by sendfile, splice or io_uring are not counted"
                .to_owned(),
        ),
        Err(why) => (
            FdOffsets::ABSENT,
            false,
            format!("{why}: no TCP byte counts, no process for accepted sockets, no L7"),
        ),
    };
    features.push(FeatureStatus {
        name: "byte counts from syscall exits".into(),
        available,
        detail,
    });
    offsets
}

/// Payload capture needs the syscall records in the layout the programs
/// assume; without it, L7 is off and status says why.
fn capture_feature(config: &Config, tracefs: &Path, features: &mut Vec<FeatureStatus>) -> bool {
    let (available, detail) = if config.l7_capture_bytes == 0 {
        (false, "turned off (l7_capture_bytes: 0)".to_owned())
    } else {
        match capture::formats_match(tracefs) {
            Ok(()) => (
                true,
                format!(
                    "{} bytes per read/write from syscall tracepoints",
                    config.l7_capture_bytes
                ),
            ),
            Err(why) => (false, format!("no L7: {why}")),
        }
    };
    features.push(FeatureStatus {
        name: "L7 payload capture".into(),
        available,
        detail,
    });
    available
}

/// The optional programs only on tracepoints: (program, tracepoint
/// category, tracepoint name). The TCP lifecycle's and the other softirq
/// programs are chosen apart (`softirq_programs`).
const TRACEPOINT_PROGRAMS: &[(&str, &str, &str)] = &[
    ("weft_sock_send", "sock", "sock_send_length"),
    ("weft_sock_recv", "sock", "sock_recv_length"),
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

/// Handles on the attached tracing programs, for their recursion misses
/// (cgroup_skb programs are not skipped that way; a raw tracepoint is,
/// from 6.2, when it interrupts itself).
fn tracing_fds(ebpf: &Ebpf, programs: &[ProgramStatus]) -> Vec<(String, aya::programs::ProgramFd)> {
    programs
        .iter()
        .filter(|p| matches!(p.kind.as_str(), "tracepoint" | "raw_tracepoint"))
        .filter_map(|p| {
            let fd = ebpf.program(&p.name)?.fd().ok()?.try_clone().ok()?;
            Some((p.name.clone(), fd))
        })
        .collect()
}

/// Compile-time check that the shared types are usable as map values.
#[allow(dead_code)]
fn assert_pod<T: Pod>() {}
const _: fn() = || {
    assert_pod::<TcpConn>();
    assert_pod::<UdpFlow>();
};
