//! The node the agent starts on, at fault, with the real agent on the real
//! kernel. Each agent runs in a private mount namespace of its own
//! (`node::private_mounts`), which starts as a fresh node (no tracefs, no
//! bpffs) and holds whatever the test or the agent mounts, so nothing
//! reaches the host or another test.
//!
//! - bpffs not mounted, read-only, or a read-only tmpfs over
//!   /sys/fs/bpf: the agent mounts it, or runs as it is (observation pins
//!   nothing), and records 5 loopback connections exactly (one `open`,
//!   one `close` each, with their bytes). Services on a read-only bpffs
//!   (their programs are pinned there): exit status 2, naming /sys/fs/bpf
//!   and how to make it writable, nothing left loaded.
//! - tracefs not mounted, read-only, an empty read-only tmpfs over
//!   /sys/kernel/tracing (alone, or hiding a tracefs), or tracefs only
//!   under debugfs with a stray read-only tmpfs at /sys/kernel/tracing
//!   (where the tracepoint ids are looked up first): the agent mounts
//!   tracefs where it is needed or uses it as it is, attaches every
//!   program, and records the connections exactly. Not mountable (no CAP_SYS_ADMIN): exit status 2, naming
//!   tracefs and what to do.
//! - The API socket path: a stale socket file is replaced; another agent
//!   serving there makes a second agent exit with status 2 at once,
//!   before it loads anything, while the first keeps serving; a regular
//!   file or a directory there is refused with status 2 and kept.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft, weft_bin},
    node::private_mounts,
    output_within,
    programs::assert_none_leaked,
    require_root, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(15);
/// Loopback connections per check.
const CONNS: usize = 5;
/// Bytes each client sends, and each server answers.
const SEND: usize = 1000;
const REPLY: usize = 300;
/// How long an agent that must refuse to start may take to say so.
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

// --- Helpers ---

/// `CONNS` loopback connections to a listener on `port`, each sending
/// `SEND` bytes and reading `REPLY`; checks that `agent` records each
/// exactly once (one `open`, one `close`) with its bytes.
fn assert_observes_loopback(agent: &Agent, port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the loopback server");
    let server = std::thread::spawn(move || {
        for _ in 0..CONNS {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; SEND];
            conn.read_exact(&mut buf).expect("server read");
            conn.write_all(&[b'r'; REPLY]).expect("server write");
        }
    });
    let clients: Vec<u16> = (0..CONNS)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let client = c.local_addr().expect("client address").port();
            c.write_all(&[b's'; SEND]).expect("client write");
            let mut got = vec![0u8; REPLY];
            c.read_exact(&mut got).expect("client read");
            client
        })
        .collect();
    server.join().expect("the loopback server");
    let port_s = port.to_string();
    let records = wait_for(&format!("{CONNS} close records"), WAIT, || {
        let records: Vec<Value> = agent
            .flows(&["--port", &port_s, "--type", "l4", "--all"])
            .into_iter()
            .filter(|r| r["destination"]["port"] == port)
            // Before 5.17 a socket's queue purged at teardown is a `drop`
            // record too (docs/kernels.md): opens and closes are the point.
            .filter(|r| r["event"] != "drop")
            .collect();
        let closes = records.iter().filter(|r| r["event"] == "close").count();
        (closes >= CONNS).then_some(records)
    });
    for client in clients {
        let of = |event: &str| -> Vec<&Value> {
            records
                .iter()
                .filter(|r| r["event"] == event && r["source"]["port"] == client)
                .collect()
        };
        let (opens, closes) = (of("open"), of("close"));
        assert_eq!(
            opens.len(),
            1,
            "opens of client port {client}: {records:#?}"
        );
        assert_eq!(
            closes.len(),
            1,
            "closes of client port {client}: {records:#?}"
        );
        assert_eq!(closes[0]["bytes_sent"], SEND as u64, "{:#}", closes[0]);
        assert_eq!(closes[0]["bytes_received"], REPLY as u64, "{:#}", closes[0]);
    }
    assert_eq!(records.len(), 2 * CONNS, "nothing else: {records:#?}");
}

/// An agent started under `wrapper` (strings) with `extra` flags.
fn agent_under(wrapper: &[String], extra: &[&str]) -> Agent {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Agent::start_under(&wrapper, extra)
}

/// The mounts process `pid` sees at `point`, bottom first: (type, options).
fn mounts_at(pid: u32, point: &str) -> Vec<(String, String)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            (fields.get(4) == Some(&point)).then(|| {
                let fs_type = right.split(' ').next().unwrap_or("").to_owned();
                (fs_type, fields.get(5).copied().unwrap_or("").to_owned())
            })
        })
        .collect()
}

/// The file system types mounted at `point` for process `pid`, bottom first.
fn types_at(pid: u32, point: &str) -> Vec<String> {
    mounts_at(pid, point).into_iter().map(|(t, _)| t).collect()
}

/// Asserts that `agent` attached every program this kernel allows and
/// reads every tracepoint it has (the features' rows): what the node's
/// setup could have cost is there. A kernel's own lacks are allowed: a
/// tracepoint it is too old for (its row says `kernel before ...`), a
/// program it refuses whose fallback (`NAME_anon`) runs instead.
fn assert_every_program_attached(agent: &Agent) {
    let status = agent.status_json().expect("weft status -o json");
    let attached = status["programs"].as_array().expect("programs");
    let has_fallback = |failed: &Value| {
        let fallback = format!("{}_anon", failed["name"].as_str().unwrap_or_default());
        attached.iter().any(|p| p["name"] == fallback.as_str())
    };
    let failed = status["failed_programs"]
        .as_array()
        .expect("failed programs");
    assert!(failed.iter().all(has_fallback), "{status:#}");
    let tracepoints: Vec<&Value> = status["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("tracepoint "))
        })
        .collect();
    assert!(!tracepoints.is_empty(), "{status:#}");
    for row in tracepoints {
        let too_old = row["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("kernel before") || d.starts_with("kernel older"));
        assert!(row["available"] == true || too_old, "{row:#}");
    }
    assert!(
        attached.iter().any(|p| p["kind"] == "tracepoint"),
        "tracepoint programs attached: {attached:#?}"
    );
}

/// Runs `WRAPPER... weft agent ARGS` that must refuse to start: its output,
/// once it exited (within [`REFUSE_WITHIN`]), and how long it took.
fn refused(wrapper: &[String], socket: &Path, extra: &[&str]) -> (Output, Duration) {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(weft_bin());
            c
        }
        None => Command::new(weft_bin()),
    };
    cmd.args(["agent", "--metrics-addr", "127.0.0.1:0", "--api-socket"])
        .arg(socket)
        .args(extra)
        .env("RUST_LOG", "info");
    let started = Instant::now();
    let out = output_within(&mut cmd, REFUSE_WITHIN).unwrap_or_else(|| {
        panic!("the agent neither ran nor exited within {REFUSE_WITHIN:?}: {cmd:?}")
    });
    (out, started.elapsed())
}

/// Asserts exit status 2 and that stderr says each of `says`.
fn assert_exit_2_saying(out: &Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for s in says {
        assert!(stderr.contains(s), "the error says {s:?}:\n{stderr}");
    }
}

/// Asserts that an agent that refused to start mounted and loaded nothing:
/// its log tells of no mount and no attached program (it logs each), and
/// no weft program is left that no process holds.
fn assert_loaded_nothing(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("] mounted "), "{stderr}");
    assert!(!stderr.contains("] attached "), "{stderr}");
    assert_none_leaked("a refused start");
}

/// A path of this test's own, removed (file or directory) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("weft-env-{}-{name}", std::process::id()));
        let scratch = Scratch(path);
        scratch.remove();
        scratch
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

// --- bpffs ---

#[test]
fn a_fresh_node_gets_tracefs_and_bpffs_mounted_and_is_observed() {
    if !require_root("a_fresh_node_gets_tracefs_and_bpffs_mounted_and_is_observed") {
        return;
    }
    let agent = agent_under(&private_mounts(""), &[]);
    assert_eq!(types_at(agent.pid(), "/sys/fs/bpf"), ["bpf"]);
    assert_eq!(types_at(agent.pid(), "/sys/kernel/tracing"), ["tracefs"]);
    assert_every_program_attached(&agent);
    assert_observes_loopback(&agent, unique_port(60));
}

#[test]
fn a_read_only_bpffs_is_used_as_it_is() {
    if !require_root("a_read_only_bpffs_is_used_as_it_is") {
        return;
    }
    let agent = agent_under(&private_mounts("mount -t bpf -o ro bpf /sys/fs/bpf"), &[]);
    let mounts = mounts_at(agent.pid(), "/sys/fs/bpf");
    assert_eq!(mounts.len(), 1, "nothing stacked on it: {mounts:?}");
    assert_eq!(mounts[0].0, "bpf");
    assert!(mounts[0].1.split(',').any(|o| o == "ro"), "{mounts:?}");
    assert_observes_loopback(&agent, unique_port(61));
}

#[test]
fn a_read_only_tmpfs_over_sys_fs_bpf_gets_bpffs_mounted_over_it() {
    if !require_root("a_read_only_tmpfs_over_sys_fs_bpf_gets_bpffs_mounted_over_it") {
        return;
    }
    let setup = "mount -t tmpfs -o ro,size=64k tmpfs /sys/fs/bpf";
    let agent = agent_under(&private_mounts(setup), &[]);
    assert_eq!(types_at(agent.pid(), "/sys/fs/bpf"), ["tmpfs", "bpf"]);
    assert_observes_loopback(&agent, unique_port(62));
}

#[test]
fn services_on_a_read_only_bpffs_exit_2_saying_so() {
    if !require_root("services_on_a_read_only_bpffs_exit_2_saying_so") {
        return;
    }
    let config = Scratch::new("services.yaml");
    // Services pin their programs and maps under bpffs: they cannot start
    // on a read-only one.
    std::fs::write(
        &config.0,
        "services:\n  - name: web\n    address: 10.96.231.10\n    port: 80\n    \
         backends:\n      - {address: 127.0.0.1, port: 8080}\n",
    )
    .expect("write config");
    let socket = Scratch::new("services.sock");
    let wrapper = private_mounts("mount -t bpf -o ro bpf /sys/fs/bpf");
    let (out, _) = refused(
        &wrapper,
        &socket.0,
        &["--config", config.0.to_str().expect("path")],
    );
    assert_exit_2_saying(
        &out,
        &[
            "/sys/fs/bpf",
            "read-only",
            "mount -o remount,rw /sys/fs/bpf",
        ],
    );
    assert_none_leaked("a refused start");
    assert!(
        std::fs::symlink_metadata(&socket.0).is_err(),
        "no API socket from an agent that did not start"
    );
}

// --- tracefs ---

#[test]
fn a_read_only_tracefs_is_used_as_it_is() {
    if !require_root("a_read_only_tracefs_is_used_as_it_is") {
        return;
    }
    let setup = "mount -t tracefs -o ro tracefs /sys/kernel/tracing";
    let agent = agent_under(&private_mounts(setup), &[]);
    let mounts = mounts_at(agent.pid(), "/sys/kernel/tracing");
    assert_eq!(mounts.len(), 1, "nothing stacked on it: {mounts:?}");
    assert!(mounts[0].1.split(',').any(|o| o == "ro"), "{mounts:?}");
    assert_every_program_attached(&agent);
    assert_observes_loopback(&agent, unique_port(63));
}

#[test]
fn an_empty_read_only_tmpfs_over_tracefs_gets_tracefs_mounted_over_it() {
    if !require_root("an_empty_read_only_tmpfs_over_tracefs_gets_tracefs_mounted_over_it") {
        return;
    }
    let setup = "mount -t tmpfs -o ro,size=64k tmpfs /sys/kernel/tracing";
    let agent = agent_under(&private_mounts(setup), &[]);
    assert_eq!(
        types_at(agent.pid(), "/sys/kernel/tracing"),
        ["tmpfs", "tracefs"]
    );
    assert_every_program_attached(&agent);
    assert_observes_loopback(&agent, unique_port(64));
}

#[test]
fn a_tmpfs_hiding_tracefs_gets_tracefs_mounted_over_it() {
    if !require_root("a_tmpfs_hiding_tracefs_gets_tracefs_mounted_over_it") {
        return;
    }
    // tracefs is mounted, but a read-only tmpfs over it hides its files.
    let setup = "mount -t tracefs tracefs /sys/kernel/tracing\n\
                 mount -t tmpfs -o ro,size=64k tmpfs /sys/kernel/tracing";
    let agent = agent_under(&private_mounts(setup), &[]);
    assert_eq!(
        types_at(agent.pid(), "/sys/kernel/tracing"),
        ["tracefs", "tmpfs", "tracefs"]
    );
    assert_every_program_attached(&agent);
    assert_observes_loopback(&agent, unique_port(67));
}

#[test]
fn tracefs_under_debugfs_and_a_stray_tmpfs_at_sys_kernel_tracing() {
    if !require_root("tracefs_under_debugfs_and_a_stray_tmpfs_at_sys_kernel_tracing") {
        return;
    }
    // tracefs only where debugfs mounts it (old hosts), and a read-only
    // tmpfs holding a file at /sys/kernel/tracing: the tracepoint ids are
    // looked up there first, and are not there.
    let setup = "mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug\n\
                 test -d /sys/kernel/debug/tracing/events\n\
                 mount -t tmpfs -o size=64k tmpfs /sys/kernel/tracing\n\
                 touch /sys/kernel/tracing/stray\n\
                 mount -o remount,ro /sys/kernel/tracing";
    let agent = agent_under(&private_mounts(setup), &[]);
    assert_eq!(
        types_at(agent.pid(), "/sys/kernel/debug/tracing"),
        ["tracefs"]
    );
    assert_eq!(
        types_at(agent.pid(), "/sys/kernel/tracing"),
        ["tmpfs", "tracefs"]
    );
    assert_every_program_attached(&agent);
    assert_observes_loopback(&agent, unique_port(65));
}

#[test]
fn tracefs_that_cannot_be_mounted_exits_2_saying_what_to_do() {
    if !require_root("tracefs_that_cannot_be_mounted_exits_2_saying_what_to_do") {
        return;
    }
    // An empty read-only tmpfs over /sys/kernel/tracing, and an agent
    // without CAP_SYS_ADMIN, which cannot mount tracefs over it.
    let mut wrapper = private_mounts("mount -t tmpfs -o ro,size=64k tmpfs /sys/kernel/tracing");
    wrapper.extend(
        ["setpriv", "--bounding-set", "-sys_admin", "--"]
            .into_iter()
            .map(str::to_owned),
    );
    let socket = Scratch::new("no-tracefs.sock");
    let (out, _) = refused(&wrapper, &socket.0, &[]);
    assert_exit_2_saying(
        &out,
        &[
            "tracefs is not mounted and mounting it failed",
            "/sys/kernel/tracing",
            "Operation not permitted",
            "mount it by hand",
            "CAP_SYS_ADMIN",
        ],
    );
    assert_loaded_nothing(&out);
    assert!(std::fs::symlink_metadata(&socket.0).is_err());
}

// --- The API socket path ---

/// A wrapper for [`Agent::start_under`] that makes the agent serve on
/// `path` instead of the socket the harness picked for it, and links the
/// harness's path to `path`, so that the harness's readiness wait and
/// clients reach it. The harness's command line is `weft agent
/// --metrics-addr ADDR --api-socket PATH ...`.
fn serving_on(path: &Path) -> Vec<String> {
    let script = r#"same=$1; shift
bin=$1; cmd=$2; mflag=$3; maddr=$4; sflag=$5; sock=$6; shift 6
ln -sfn "$same" "$sock" || exit 1
exec "$bin" "$cmd" "$mflag" "$maddr" "$sflag" "$same" "$@""#;
    ["sh", "-c", script, "weft-on-socket"]
        .into_iter()
        .map(str::to_owned)
        .chain([path.to_string_lossy().into_owned()])
        .collect()
}

#[test]
fn a_stale_socket_file_is_replaced() {
    if !require_root("a_stale_socket_file_is_replaced") {
        return;
    }
    let socket = Scratch::new("stale.sock");
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket.0).expect("bind a socket"));
    let stale = std::fs::symlink_metadata(&socket.0).expect("the stale socket");
    assert!(stale.file_type().is_socket());
    let mut wrapper = private_mounts("");
    wrapper.extend(serving_on(&socket.0));
    let agent = agent_under(&wrapper, &[]);
    let meta = std::fs::symlink_metadata(&socket.0).expect("the agent's socket");
    assert!(meta.file_type().is_socket());
    assert!(
        (meta.ctime(), meta.ctime_nsec()) > (stale.ctime(), stale.ctime_nsec()),
        "the stale socket file was replaced"
    );
    let path = socket.0.to_string_lossy().into_owned();
    let out = weft(&["status", "-o", "json", "--api-socket", &path]);
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["pid"], agent.pid());
    drop(agent);
    assert!(
        std::fs::symlink_metadata(&socket.0).is_err(),
        "the agent removes its socket when it stops"
    );
}

#[test]
fn a_second_agent_on_a_served_socket_exits_2_and_the_first_serves_on() {
    if !require_root("a_second_agent_on_a_served_socket_exits_2_and_the_first_serves_on") {
        return;
    }
    let first = agent_under(&private_mounts(""), &[]);
    let served = std::fs::symlink_metadata(&first.socket).expect("the first agent's socket");
    let (out, took) = refused(&private_mounts(""), &first.socket, &[]);
    let path = first.socket.to_string_lossy().into_owned();
    assert_exit_2_saying(
        &out,
        &[
            &format!("another weft agent is already serving on {path}"),
            "stop it, or give this one another --api-socket",
        ],
    );
    assert_loaded_nothing(&out);
    eprintln!("the second agent refused in {took:?}");
    // The first agent's socket is untouched, and it answers on.
    let now = std::fs::symlink_metadata(&first.socket).expect("the first agent's socket");
    assert_eq!(
        (now.ino(), now.ctime(), now.ctime_nsec()),
        (served.ino(), served.ctime(), served.ctime_nsec())
    );
    let status = first.status_json().expect("the first agent answers");
    assert_eq!(status["pid"], first.pid());
    assert_observes_loopback(&first, unique_port(69));
}

#[test]
fn a_file_or_directory_at_the_socket_path_is_refused_with_2_and_kept() {
    if !require_root("a_file_or_directory_at_the_socket_path_is_refused_with_2_and_kept") {
        return;
    }
    let file = Scratch::new("file.sock");
    std::fs::write(&file.0, "not a socket\n").expect("write a file");
    let dir = Scratch::new("dir.sock");
    std::fs::create_dir(&dir.0).expect("make a directory");
    std::fs::write(dir.0.join("inside"), "kept\n").expect("write in the directory");
    for path in [&file.0, &dir.0] {
        let (out, _) = refused(&private_mounts(""), path, &[]);
        assert_exit_2_saying(
            &out,
            &[
                &format!("{} exists and is not a socket", path.display()),
                "remove it, or choose another --api-socket",
            ],
        );
        assert_loaded_nothing(&out);
    }
    assert_eq!(
        std::fs::read_to_string(&file.0).expect("the file is kept"),
        "not a socket\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("inside")).expect("the directory is kept"),
        "kept\n"
    );
}
