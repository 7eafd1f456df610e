//! Real protocol peers (database servers, DNS servers, ...) run inside a
//! lab namespace for the L7 tests, ended by their pid when the test ends,
//! also when it fails, and their temporary directories removed.

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{lab::spawn_in, wait_for};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A directory under /tmp, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/weft-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    /// `path/name` as a string (for command lines).
    pub fn join(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server process started with `ip netns exec NS ARGS...` (which execs
/// the command, so the child's pid is the server's). Its stdout and stderr
/// go to a log file, printed when the test fails.
pub struct Peer {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Peer {
    /// Starts `args` in namespace `ns`. `name` is for messages.
    pub fn start(name: &str, ns: &str, args: &[&str]) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(args);
        Self::spawn(name, command, args)
    }

    /// Starts `args` in the test's own network namespace (where the agent
    /// runs: its collector, for instance).
    pub fn start_here(name: &str, args: &[&str]) -> Self {
        let mut command = Command::new(args[0]);
        command.args(&args[1..]);
        Self::spawn(name, command, args)
    }

    /// Starts `args` in namespace `ns` as a process of the cgroup v2
    /// directory `cgroup` from its first instruction (as a container
    /// runtime starts a container's process), so that every socket it
    /// opens is its container's.
    pub fn start_in_cgroup(name: &str, ns: &str, cgroup: &Path, args: &[&str]) -> Self {
        let procs = cgroup.join("cgroup.procs");
        let mut command = Command::new("sh");
        // `ip netns exec` remounts /sys, so the cgroup is joined before it.
        command
            .args(["-c", "echo $$ > \"$0\" && exec ip netns exec \"$@\""])
            .arg(&procs)
            .arg(ns)
            .args(args);
        Self::spawn(name, command, args)
    }

    fn spawn(name: &str, mut command: Command, args: &[&str]) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let log_path = PathBuf::from(format!(
            "/tmp/weft-peer-{name}-{}-{n}.log",
            std::process::id()
        ));
        let log = File::create(&log_path).expect("peer log file");
        let err = log.try_clone().expect("peer log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {name} ({args:?}): {e}; is it installed? \
                     (`cargo xtask setup` installs the test peers)"
                )
            });
        Self {
            name: name.to_owned(),
            child: Some(child),
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics with the server's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = self.log();
            self.child = None;
            panic!("{} exited ({status}):\n{log}", self.name);
        }
    }

    /// Waits until a TCP connection from namespace `ns` to `addr` is
    /// accepted (no byte is sent, so no L7 record is made), or panics.
    pub fn wait_tcp(&mut self, ns: &str, addr: SocketAddr, timeout: Duration) {
        let what = format!("{} to accept connections on {addr}", self.name);
        wait_for(&what, timeout, || {
            self.assert_running();
            let ok = spawn_in(ns, "weft-probe", move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            })
            .join()
            .unwrap_or(false);
            ok.then_some(())
        });
    }

    /// Ends the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("{} ignored SIGTERM for 10 s: killing it", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Starts `ip netns exec NS ARGS...` with its stdin, stdout and stderr
/// piped to this process.
pub fn spawn_piped_in(ns: &str, args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"))
}

/// Runs `ip netns exec NS ARGS...` with `stdin` as its input; returns
/// (exit success, stdout, stderr).
pub fn exec_with_input(ns: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = spawn_piped_in(ns, args);
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `program` is on PATH, for a clear message when a peer is
/// missing.
pub fn require_program(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new(program).is_file();
    assert!(
        found,
        "{program} is not installed: the L7 tests need real peers \
         (`cargo xtask setup` installs them)"
    );
}
