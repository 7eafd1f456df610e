//! The TLS plaintext programs (ebpf/probes/src/tls.rs) on OpenSSL's
//! `libssl.so*` files.
//!
//! A uprobe is attached to a file (its inode), not to a process: one
//! attachment covers every process that maps the file, those started
//! later included. So the agent attaches once per library file it finds:
//!
//! - at start, in the host's library directories (through `/proc/1/root`,
//!   the host's root even from a container with the host's pid namespace),
//!   so that a client started later is seen from its first request;
//! - at start and every [`RESCAN`] after, in the memory maps of the
//!   processes it has not looked at yet, through `/proc/PID/root` (a
//!   container's own libssl is another file), and again later, for a
//!   library loaded late (`dlopen`, Python's `import ssl`): [`LATE_LOAD`]
//!   after it first saw a process, then at intervals that double up to
//!   [`LATE_LOAD_MAX`]. A single late look missed every library loaded
//!   after it (a Python started on a loaded machine imports `ssl` seconds
//!   after it starts); a fixed short interval would read every process's
//!   maps every few seconds. A process that has exec'd another program
//!   since it was looked at (its `/proc/PID/exe` is another file) is
//!   looked at as a new one.
//!
//! Files are told apart by device and inode: the same file reached by
//! two paths (a symlink, two containers on one image layer) is attached
//! once.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};
use tokio_util::sync::CancellationToken;

use super::go_tls;
use crate::status::{LateAttachments, ProgramStatus};

/// (library function, entry program); the return program is [`RETURN`].
const ENTRIES: &[(&str, &str)] = &[
    ("SSL_write", "weft_ssl_write"),
    ("SSL_read", "weft_ssl_read"),
    ("SSL_write_ex", "weft_ssl_write_ex"),
    ("SSL_read_ex", "weft_ssl_read_ex"),
];
const RETURN: &str = "weft_ssl_return";

/// How often the processes started since the last look are looked at.
pub const RESCAN: Duration = Duration::from_secs(2);
/// When a process is looked at again, for a library it loaded late; the
/// interval to the next look doubles each time, up to [`LATE_LOAD_MAX`].
const LATE_LOAD: Duration = Duration::from_secs(5);
/// The longest interval between two looks at a running process: a
/// library it loads after its first minutes is attached within this long
/// (one read of its `/proc/PID/maps` per interval).
const LATE_LOAD_MAX: Duration = Duration::from_secs(300);

/// Where a host keeps its shared libraries (relative to its root), and
/// their multiarch subdirectories (`x86_64-linux-gnu`...).
const LIBRARY_DIRS: &[&str] = &["lib", "lib64", "usr/lib", "usr/lib64", "usr/local/lib"];

/// The library files the programs are attached to, and the processes
/// looked at so far.
pub struct TlsLibraries {
    ebpf: Arc<Mutex<Ebpf>>,
    /// (device, inode) of every file attached, or refused.
    files: HashSet<(u64, u64)>,
    /// Processes looked at: pid -> the program it ran then, and when to
    /// look at it again ([`Seen`]).
    processes: HashMap<u32, Seen>,
    /// The attachments made by [`TlsLibraries::start`], for `weft status`
    /// and the start-up log.
    pub attached: Vec<ProgramStatus>,
    /// Those made after, for `weft status`.
    pub late: LateAttachments,
    /// Whether [`TlsLibraries::start`] is done: later attachments are late.
    started: bool,
    /// Whether Go binaries are attached (go_tls.rs): their programs name
    /// a connection's socket by its fd, through offsets from BTF.
    go: bool,
}

/// A process looked at: the program it ran then (device and inode of
/// `/proc/PID/exe`), so that an `exec` (`ip netns exec`, a shell's `exec`)
/// makes it a new process to look at, and when to look at it again.
struct Seen {
    exe: Option<(u64, u64)>,
    next_look: Instant,
    interval: Duration,
}

impl Seen {
    fn new(exe: Option<(u64, u64)>, now: Instant) -> Self {
        Self {
            exe,
            next_look: now + LATE_LOAD,
            interval: LATE_LOAD,
        }
    }

    /// Whether the process is due for another look at `now`; if so, the
    /// next one is scheduled.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next_look {
            return false;
        }
        self.interval = (self.interval * 2).min(LATE_LOAD_MAX);
        self.next_look = now + self.interval;
        true
    }
}

/// The device and inode of the program process `pid` runs.
fn exe_of(pid: u32) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Program `name`, loaded on its first use: only the programs a library
/// needs are loaded (a kernel that refuses one says so when the first
/// library is attached, and no other part of the agent is affected).
pub(super) fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProgramError> {
    let program: &mut UProbe = super::attach::program_mut(ebpf, name)?;
    if program.fd().is_err() {
        program.load()?;
    }
    Ok(program)
}

impl TlsLibraries {
    /// Attaches to the libraries of the host and of the running
    /// processes.
    pub fn start(ebpf: Arc<Mutex<Ebpf>>, go: bool) -> Self {
        let mut libraries = Self {
            ebpf,
            files: HashSet::new(),
            processes: HashMap::new(),
            attached: Vec::new(),
            late: LateAttachments::default(),
            started: false,
            go,
        };
        let host = host_root();
        for path in host_libraries(&host) {
            libraries.attach(&path);
        }
        libraries.rescan(Instant::now());
        libraries.started = true;
        libraries
    }

    /// Looks at new processes every [`RESCAN`] until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RESCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                // A look reads and decodes executables and attaches
                // uprobes (seconds on a slow machine): off the runtime's
                // workers, so the flow API and the metrics still answer.
                _ = tick.tick() => tokio::task::block_in_place(|| self.rescan(Instant::now())),
            }
        }
    }

    /// Looks at the processes not seen yet, and again at those due for a
    /// late look ([`Seen::due`]); forgets those gone.
    fn rescan(&mut self, now: Instant) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let pids: HashSet<u32> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        self.processes.retain(|pid, _| pids.contains(pid));
        let own = std::process::id();
        for pid in pids {
            if pid == own {
                continue;
            }
            let exe = exe_of(pid);
            let look = match self.processes.get_mut(&pid) {
                Some(seen) if seen.exe == exe => seen.due(now),
                // New, or it has exec'd another program since.
                _ => {
                    self.processes.insert(pid, Seen::new(exe, now));
                    if let (true, Some(exe)) = (self.go, exe) {
                        self.attach_go(pid, exe);
                    }
                    true
                }
            };
            if look {
                for path in mapped_libraries(pid) {
                    self.attach(&path);
                }
            }
        }
    }

    /// Attaches the programs to one library file, unless done already.
    fn attach(&mut self, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !self.files.insert((meta.dev(), meta.ino())) {
            return;
        }
        let mut ebpf = match self.ebpf.lock() {
            Ok(ebpf) => ebpf,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = attach_file(&mut ebpf, path);
        drop(ebpf);
        self.record(path, result);
    }

    /// Attaches the Go programs to the executable of process `pid`, if it
    /// is a Go binary with `crypto/tls` not attached yet (`file`: the
    /// executable's device and inode).
    fn attach_go(&mut self, pid: u32, file: (u64, u64)) {
        if !self.files.insert(file) {
            return;
        }
        // The link opens the process's own file, in a container too.
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let shown = std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone());
        let go = match go_tls::inspect(&exe) {
            go_tls::Inspected::NotGoTls => return,
            go_tls::Inspected::Refused(why) => {
                log::warn!(
                    "TLS plaintext: not attached to the Go binary {}: {why}; its TLS is seen as \
                     handshakes only",
                    shown.display()
                );
                return;
            }
            go_tls::Inspected::Attachable(go) => go,
        };
        let mut ebpf = match self.ebpf.lock() {
            Ok(ebpf) => ebpf,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = go_tls::attach(&mut ebpf, &exe, &shown, &go);
        drop(ebpf);
        self.record(&shown, result);
    }

    /// Logs an attachment's outcome and keeps its programs for status.
    fn record(&mut self, path: &Path, result: Result<Vec<ProgramStatus>, String>) {
        match result {
            Ok(attached) => {
                let functions: Vec<&str> =
                    attached.iter().map(|a| a.attach_point.as_str()).collect();
                log::info!("TLS plaintext: attached to {}", functions.join(", "));
                if self.started {
                    self.late.extend(attached);
                } else {
                    self.attached.extend(attached);
                }
            }
            Err(e) => log::warn!(
                "TLS plaintext: not attached to {}: {e}; its processes' TLS is seen as handshakes only",
                path.display()
            ),
        }
    }
}

/// One attachment, for `weft status`: `program` at `function` of `path`.
fn status(program: &str, path: &Path, function: &str, ret: bool) -> ProgramStatus {
    let at = if ret { "return" } else { "entry" };
    ProgramStatus {
        name: program.into(),
        kind: "uprobe".into(),
        attach_point: format!("{}:{function} ({at})", path.display()),
    }
}

/// Attaches the programs to the file: where its read and write functions
/// delegate when that can be found ([`delegates`]), else to each of the
/// four it exports. Each attachment, for `weft status`.
fn attach_file(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<ProgramStatus>, String> {
    let Some((read, write)) = delegates(path) else {
        return attach_exported(ebpf, path);
    };
    let mut done = Vec::new();
    for (offset, program, function) in [
        (read, "weft_ssl_read_ex", "ssl_read_internal"),
        (write, "weft_ssl_write_ex", "ssl_write_internal"),
    ] {
        for (name, ret) in [(program, false), (RETURN, true)] {
            uprobe(ebpf, name)
                .and_then(|p| p.attach(offset, path, UProbeScope::AllProcesses))
                .map_err(|e| format!("{name} at {function} ({offset:#x}): {e}"))?;
            done.push(status(name, path, function, ret));
        }
    }
    Ok(done)
}

/// Attaches every entry program whose function the file exports, and the
/// return program to each. `SSL_read` and `SSL_write` must be there
/// (OpenSSL 1.1.1 and 3 have all four).
fn attach_exported(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<ProgramStatus>, String> {
    let mut done = Vec::new();
    for (symbol, program) in ENTRIES {
        let entry =
            uprobe(ebpf, program).and_then(|p| p.attach(*symbol, path, UProbeScope::AllProcesses));
        match entry {
            Ok(_) => {}
            Err(e) if matches!(*symbol, "SSL_read" | "SSL_write") => {
                return Err(format!("{symbol}: {e}"));
            }
            // An older library without the `_ex` forms.
            Err(_) => continue,
        }
        done.push(status(program, path, symbol, false));
        uprobe(ebpf, RETURN)
            .and_then(|p| p.attach(*symbol, path, UProbeScope::AllProcesses))
            .map_err(|e| format!("{symbol} (return): {e}"))?;
        done.push(status(RETURN, path, symbol, true));
    }
    Ok(done)
}

/// The file offsets of OpenSSL's internal read and write functions
/// (`ssl_read_internal`, `ssl_write_internal`: `(SSL *, void *buf, size_t
/// num, size_t *count)`, as the `_ex` forms), to which `SSL_read`,
/// `SSL_read_ex`, `SSL_write` and `SSL_write_ex` all hand their call.
///
/// Why not the exported functions: a uprobe traps at its instruction, and
/// the kernel then either emulates that instruction or single-steps a copy
/// of it (a second trap). The exported functions begin with `sub $N,%rsp`,
/// which is single-stepped; the internal ones with `push %reg`, which
/// recent kernels emulate (measured on 6.18; an older one may single-step
/// it too, and cost what the exported functions cost). On a virtual
/// machine a single-step trap is expensive: measured with the bench's
/// HTTPS workload, it made each probed call cost tens of microseconds. One
/// probe pair on the internal functions also covers both forms of each
/// call.
///
/// Found from `SSL_read_ex`/`SSL_write_ex`, which are `sub $8,%rsp; call
/// INTERNAL` in OpenSSL 1.1.1 and 3 builds, and checked: `SSL_read` and
/// `SSL_write` must call the same function, and it must begin with a
/// push. Any other layout: `None`, and the exported functions are probed.
fn delegates(path: &Path) -> Option<(u64, u64)> {
    let data = std::fs::read(path).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let read = delegate(&elf, &data, "SSL_read_ex", "SSL_read")?;
    let write = delegate(&elf, &data, "SSL_write_ex", "SSL_write")?;
    Some((read, write))
}

/// The file offset of the function `ex` delegates to, if `plain` calls it
/// too and it begins with a push.
fn delegate(elf: &object::File, data: &[u8], ex: &str, plain: &str) -> Option<u64> {
    use object::{Object, ObjectSymbol};
    let address = |name: &str| {
        elf.dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let (ex_at, plain_at) = (address(ex)?, address(plain)?);
    let code = data.get(file_offset(elf, ex_at)?..)?;
    // `sub $8,%rsp` (48 83 ec 08), then `call rel32` (e8).
    if code.get(..5)? != [0x48, 0x83, 0xec, 0x08, 0xe8] {
        return None;
    }
    let target = call_target(ex_at + 4, code.get(4..9)?)?;
    // The plain form calls it within its first 64 bytes.
    let plain_code = data.get(file_offset(elf, plain_at)?..)?.get(..64)?;
    let called = (0..plain_code.len().saturating_sub(4)).any(|i| {
        plain_code[i] == 0xe8
            && call_target(plain_at + i as u64, &plain_code[i..i + 5]) == Some(target)
    });
    let offset = file_offset(elf, target)?;
    let first = data.get(offset..offset + 2)?;
    let push = |b: u8| (0x50..=0x57).contains(&b);
    let pushes = push(first[0]) || (first[0] == 0x41 && push(first[1]));
    (called && pushes).then_some(offset as u64)
}

/// The target of the `call rel32` (`e8` and 4 bytes) at address `at`.
fn call_target(at: u64, call: &[u8]) -> Option<u64> {
    let rel = i32::from_le_bytes(call.get(1..5)?.try_into().ok()?);
    (at + 5).checked_add_signed(i64::from(rel))
}

/// The file offset of virtual address `address`, from the segment that
/// holds it.
fn file_offset(elf: &object::File, address: u64) -> Option<usize> {
    use object::{Object, ObjectSegment};
    elf.segments().find_map(|segment| {
        let start = segment.address();
        let (file_start, file_size) = segment.file_range();
        (address >= start && address - start < file_size)
            .then(|| usize::try_from(address - start + file_start).ok())
            .flatten()
    })
}

/// The host's root: `/proc/1/root` where readable (the agent may run in a
/// container with the host's pid namespace), else `/`.
fn host_root() -> PathBuf {
    let host = PathBuf::from("/proc/1/root");
    if std::fs::read_dir(host.join("usr")).is_ok() {
        host
    } else {
        PathBuf::from("/")
    }
}

/// OpenSSL's libssl files in the library directories under `root`.
fn host_libraries(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for dir in LIBRARY_DIRS.iter().map(|d| root.join(d)) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && p.to_string_lossy().contains("-linux-")),
            );
        }
        dirs.push(dir);
    }
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        found.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(is_libssl))
                .map(|e| e.path()),
        );
    }
    found.sort();
    found
}

/// Whether a file name is OpenSSL's libssl (`libssl.so`, `libssl.so.3`,
/// `libssl.so.1.1`, or a copy that auditwheel bundled into a Python
/// wheel under a hashed name, `libssl-3a880ada.so.1.1`), not NSS's
/// `libssl3.so`.
fn is_libssl(name: &str) -> bool {
    if name == "libssl.so" || name.starts_with("libssl.so.") {
        return true;
    }
    name.strip_prefix("libssl-")
        .and_then(|rest| rest.split_once(".so"))
        .is_some_and(|(hash, _)| !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The libssl files process `pid` maps, as paths through its root.
fn mapped_libraries(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    libssl_paths(&maps)
        .into_iter()
        .map(|p| root.join(p.trim_start_matches('/')))
        .collect()
}

/// The distinct libssl paths in a `/proc/PID/maps` text.
fn libssl_paths(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = maps
        .lines()
        // address perms offset dev inode path
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .filter(|path| path.rsplit('/').next().is_some_and(is_libssl))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_looked_at_again_at_doubling_intervals() {
        let start = Instant::now();
        let mut seen = Seen::new(Some((1, 2)), start);
        let secs = |s: u64| start + Duration::from_secs(s);
        // Due at 5 s after its first look, then 10, 20, 40... s after the
        // previous one, every 300 s at most.
        let due: Vec<u64> = (0..3000).filter(|&s| seen.due(secs(s))).collect();
        assert_eq!(due[..7], [5, 15, 35, 75, 155, 315, 615]);
        assert!(due[7..].windows(2).all(|w| w[1] - w[0] == 300), "{due:?}");
        assert_eq!(due.len(), 14, "{due:?}");
    }

    #[test]
    fn openssl_library_names() {
        assert!(is_libssl("libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(is_libssl("libssl.so"));
        assert!(!is_libssl("libssl3.so"), "NSS");
        assert!(is_libssl("libssl-3a880ada.so.1.1"), "auditwheel's copy");
        assert!(!is_libssl("libssl-dev.txt"));
        assert!(!is_libssl("libssl-.so.1.1"));
        assert!(!is_libssl("libcrypto.so.3"));
        assert!(!is_libssl("libssl.a"));
    }

    #[test]
    fn the_libraries_a_process_maps() {
        let maps = "\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fd:01 1054 /usr/bin/curl
7f4a01ae8000-7f4a01b06000 r--p 00000000 fd:01 2093 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f4a01b06000-7f4a01b61000 r-xp 0001e000 fd:01 2093 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f4a01c00000-7f4a01c10000 r--p 00000000 fd:01 2094 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f4a01d00000-7f4a01d10000 rw-p 00000000 00:00 0 
7f4a01e00000-7f4a01e10000 r-xp 00000000 fd:01 77 /opt/app/lib/libssl.so.1.1 (deleted)
7ffd0c000000-7ffd0c021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            libssl_paths(maps),
            [
                "/opt/app/lib/libssl.so.1.1",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3"
            ]
        );
    }

    /// Debian 12's OpenSSL 3.0: both pairs delegate to internal functions
    /// that begin with a push.
    #[test]
    fn this_hosts_libssl_delegates_to_internal_functions() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let (read, write) = delegates(lib).expect("the delegates are found");
        assert_ne!(read, write);
        let data = std::fs::read(lib).unwrap();
        for at in [read, write] {
            let first = &data[at as usize..at as usize + 2];
            assert!(
                first[0] == 0x41 || (0x50..=0x57).contains(&first[0]),
                "{first:x?}"
            );
        }
    }

    #[test]
    fn a_call_target_is_relative_to_the_next_instruction() {
        assert_eq!(
            call_target(0x354c4, &[0xe8, 0xc7, 0xfd, 0xff, 0xff]),
            Some(0x35290)
        );
        assert_eq!(call_target(0x10, &[0xe8, 0x10, 0, 0, 0]), Some(0x25));
    }

    #[test]
    fn this_hosts_libssl_is_found() {
        // Debian's libssl3 is a dependency of the test peers (curl).
        let found = host_libraries(Path::new("/"));
        assert!(
            found.iter().any(|p| p.ends_with("libssl.so.3")),
            "{found:?}"
        );
    }
}
