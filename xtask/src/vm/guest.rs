//! One kernel of the matrix: a guest booted with virtme-ng on the
//! machine's own root filesystem (read-only), running the agent and the
//! root tests, and the verdict read back from files.
//!
//! virtme-ng does not pass the guest's exit status back (it would need
//! udev), so the guest writes `status` lines into a folder shared
//! read-write with the host, and the host judges from them: a guest that
//! hung, crashed or was killed leaves no `done` line and fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{display, say};

/// What runs inside a guest.
pub struct Plan<'a> {
    pub agent: &'a Path,
    /// (test binary name, executable).
    pub tests: &'a [(String, PathBuf)],
    /// Arguments for every test binary (name filters, `--nocapture`).
    pub harness: &'a [String],
    /// How long one test binary may run before it is stopped.
    pub test_limit: Duration,
}

/// How one kernel did.
pub struct Verdict {
    pub kernel: String,
    /// (test binary, exit status).
    pub tests: Vec<(String, i32)>,
    /// (test binary, tests passed, tests failed), from libtest's summary.
    pub counts: Vec<(String, u32, u32)>,
    pub agent_started: bool,
    pub finished: bool,
}

impl Verdict {
    pub fn passed(&self, expected_tests: usize) -> bool {
        self.finished
            && self.agent_started
            && self.tests.len() == expected_tests
            && self.tests.iter().all(|(_, rc)| *rc == 0)
    }
}

/// The guest's script: start the agent alone, with the programs' rare-path
/// logs on (`--bpf-log`), and keep its status and log (the proof that every
/// program loads, the kernel table's source, and what the kernel did
/// differently), then
/// each test binary, one status line each.
pub fn script(out: &Path, plan: &Plan<'_>) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let out_q = q(out);
    let agent = q(plan.agent);
    let mut s = format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask vm-test`; runs as root inside the guest.\n\
         OUT={out_q}\n\
         exec >\"$OUT/guest.log\" 2>&1\n\
         export RUST_BACKTRACE=1 WEFT_BIN={agent} WEFT_REQUIRE_ROOT_TESTS=1\n\
         # Emulation is several times slower than the machine.\n\
         export WEFT_TEST_TIMEOUT_SCALE=8\n\
         # Unix sockets cannot be created on the shared folders: the\n\
         # agent's socket lives on the guest's own /run.\n\
         export WEFT_TEST_SOCKET_DIR=/run/weft-test\n\
         # Every test's agent runs with --bpf-log and keeps its log here.\n\
         export WEFT_TEST_AGENT_LOG_DIR=\"$OUT/agents\"\n\
         mkdir -p /run/weft-test \"$OUT/agents\" \"$OUT/tests\"\n\
         echo \"kernel $(uname -r)\" >\"$OUT/status\"\n\
         {agent} agent --bpf-log --api-socket /run/weft-test/matrix.sock \
         --metrics-addr 127.0.0.1:9464 2>\"$OUT/agent.log\" &\n\
         AGENT=$!\n\
         i=0\n\
         while [ $i -lt 120 ]; do\n\
         \x20 {agent} status -o json --api-socket /run/weft-test/matrix.sock \
         >\"$OUT/agent-status.json\" 2>/dev/null && break\n\
         \x20 kill -0 $AGENT 2>/dev/null || break\n\
         \x20 i=$((i + 1)); sleep 1\n\
         done\n\
         if [ -s \"$OUT/agent-status.json\" ]; then\n\
         \x20 {agent} status --api-socket /run/weft-test/matrix.sock >\"$OUT/agent-status.txt\"\n\
         \x20 echo \"agent started\" >>\"$OUT/status\"\n\
         fi\n\
         kill -INT $AGENT 2>/dev/null; wait $AGENT\n\
         echo \"agent exit $?\" >>\"$OUT/status\"\n"
    );
    let harness: Vec<String> = plan.harness.iter().map(|a| shell_quote(a)).collect();
    let limit = plan.test_limit.as_secs();
    for (name, exe) in plan.tests {
        // Each binary in a session of its own, watched: one still running
        // after `limit` has its processes and their threads' states
        // written to its log, and is killed with all it started, so the
        // next binary runs and the log says where it hung.
        // The status line: `test NAME EXIT PASSED FAILED` (the counts
        // from libtest's summary line, for the kernel table).
        let log = format!("\"$OUT/tests/{name}.log\"");
        s.push_str(&format!(
            "echo \"== {name}\"\n\
             setsid {} --test-threads=1 {} >{log} 2>&1 &\n\
             pid=$!\n\
             ( sleep {limit}\n\
             \x20 kill -0 $pid 2>/dev/null || exit 0\n\
             \x20 {{ echo \"== still running after {limit}s: its processes, then each one's threads\"\n\
             \x20   ps -eo pid,ppid,pgid,stat,pcpu,etimes,wchan:32,args\n\
             \x20   for p in $(pgrep -s $pid); do echo \"-- $p\"; cat /proc/$p/task/*/stat; done\n\
             \x20 }} >>{log} 2>&1\n\
             \x20 kill -9 -$pid ) &\n\
             watchdog=$!\n\
             wait $pid\n\
             rc=$?\n\
             kill $watchdog 2>/dev/null\n\
             cat {log}\n\
             counts=$(sed -n 's/^test result: [A-Za-z]*\\. \\([0-9]*\\) passed; \\([0-9]*\\) failed.*/\\1 \\2/p' \
             {log} | tail -n 1)\n\
             echo \"test {name} $rc ${{counts:-0 0}}\" >>\"$OUT/status\"\n",
            q(exe),
            harness.join(" ")
        ));
    }
    s.push_str("echo done >>\"$OUT/status\"\n");
    s
}

/// Boots `image` with virtme-ng and waits (at most `timeout`) for the
/// guest to finish `script` in `out`.
pub fn boot(vng: &Path, image: &Path, out: &Path, script: &Path, timeout: Duration) -> Result<()> {
    let bin_dir = vng.parent().context("virtme-ng has no directory")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let console = fs::File::create(out.join("console.log"))?;
    let mut cmd = Command::new(vng);
    cmd.env("PATH", std::env::join_paths(paths)?)
        .arg("--run")
        .arg(image)
        // KVM guests of these kernels hang or abort on the machines the
        // matrix runs on: emulation is slower but works everywhere.
        .args(["--disable-kvm", "--memory", "4G", "--cpus", "2"])
        // One host thread runs both vCPUs in turn. With a thread per vCPU
        // (qemu's default), a 6.1 guest locked up for good while the
        // agent attached syscall tracepoints: both vCPUs spun on the
        // static branch of syscall_trace_enter being patched (soft lockup,
        // RCU stall). The guest stays SMP; it runs on one host core.
        .args(["--qemu-opt=-accel", "--qemu-opt=tcg,thread=single"])
        // The guest kernel's messages in console.log: a guest that hangs
        // shows there whether its kernel did (soft lockups, RCU stalls).
        .arg("--verbose")
        .arg("--rwdir")
        .arg(out)
        .arg("--exec")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    say(format_args!("$ {}", display(&cmd)));
    let mut child = cmd.spawn().context("could not start virtme-ng")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            say(format_args!(
                "guest finished in {}s ({status})",
                started.elapsed().as_secs()
            ));
            return Ok(());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Reads what the guest wrote to `out/status`.
pub fn verdict(out: &Path) -> Verdict {
    let text = fs::read_to_string(out.join("status")).unwrap_or_default();
    let mut v = Verdict {
        kernel: String::new(),
        tests: Vec::new(),
        counts: Vec::new(),
        agent_started: false,
        finished: false,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", release] => v.kernel = (*release).to_owned(),
            ["agent", "started"] => v.agent_started = true,
            ["test", name, rc, rest @ ..] => {
                v.tests.push(((*name).to_owned(), rc.parse().unwrap_or(-1)));
                if let [passed, failed] = rest {
                    v.counts.push((
                        (*name).to_owned(),
                        passed.parse().unwrap_or(0),
                        failed.parse().unwrap_or(0),
                    ));
                }
            }
            ["done"] => v.finished = true,
            _ => {}
        }
    }
    v
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_every_test_and_the_end() {
        let dir = std::env::temp_dir().join(format!("weft-vm-verdict-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("status"),
            "kernel 6.1.0-57-amd64\nagent started\nagent exit 0\ntest tcp 0\ntest udp 101\n",
        )
        .unwrap();
        let v = verdict(&dir);
        assert_eq!(v.kernel, "6.1.0-57-amd64");
        assert!(v.agent_started && !v.finished);
        assert!(!v.passed(2));
        fs::write(
            dir.join("status"),
            "kernel 6.1.0-57-amd64\nagent started\ntest tcp 0\ntest udp 0\ndone\n",
        )
        .unwrap();
        let v = verdict(&dir);
        assert!(v.passed(2));
        assert!(!v.passed(3), "a test binary that never reported fails");
        assert!(v.counts.is_empty(), "no counts on these lines");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn script_quotes_paths() {
        let tests = [("tcp".to_owned(), PathBuf::from("/t/tcp-1"))];
        let s = script(
            Path::new("/r/6.1"),
            &Plan {
                agent: Path::new("/b/weft"),
                tests: &tests,
                harness: &["exact bytes".to_owned()],
                test_limit: Duration::from_secs(60),
            },
        );
        assert!(
            s.contains("setsid '/t/tcp-1' --test-threads=1 'exact bytes' >"),
            "{s}"
        );
        assert!(s.contains("OUT='/r/6.1'\n"), "{s}");
    }

    /// A test binary that hangs is stopped at the limit, with its
    /// processes in its log, and the next one still runs.
    #[test]
    fn script_stops_a_hung_binary() {
        let dir = std::env::temp_dir().join(format!("weft-vm-hang-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let hang = dir.join("hang");
        // It starts a child of its own, which must be stopped too.
        fs::write(&hang, "#!/bin/sh\nsleep 300 &\necho started\nwait\n").unwrap();
        crate::vm::make_executable(&hang).unwrap();
        let quick = dir.join("quick");
        fs::write(
            &quick,
            "#!/bin/sh\necho 'test result: ok. 1 passed; 0 failed; 0 ignored'\n",
        )
        .unwrap();
        crate::vm::make_executable(&quick).unwrap();
        let tests = [("hang".to_owned(), hang), ("quick".to_owned(), quick)];
        let text = script(
            &dir,
            &Plan {
                agent: Path::new("/bin/true"),
                tests: &tests,
                harness: &[],
                test_limit: Duration::from_secs(2),
            },
        );
        let text = text.replace("/run/weft-test", &dir.join("run").to_string_lossy());
        let started = Instant::now();
        let run = Command::new("sh").arg("-c").arg(&text).status().unwrap();
        assert!(run.success());
        assert!(started.elapsed() < Duration::from_secs(60));
        let v = verdict(&dir);
        assert_eq!(
            v.tests,
            vec![("hang".to_owned(), 137), ("quick".to_owned(), 0)]
        );
        assert!(v.finished);
        let log = fs::read_to_string(dir.join("tests/hang.log")).unwrap();
        assert!(log.contains("== still running after 2s"), "{log}");
        assert!(log.contains("sleep 300"), "the processes are listed: {log}");
        // Its child was stopped with it: no `sleep 300` of this test is left.
        std::thread::sleep(Duration::from_millis(200));
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let left = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.trim() == "sleep 300")
            .count();
        assert_eq!(left, 0, "the hung binary's child is still running");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The script itself, run by `sh` with stand-ins for the agent and a
    /// test binary: the status lines carry the exit status and libtest's
    /// counts.
    #[test]
    fn script_reports_each_binarys_counts() {
        let dir = std::env::temp_dir().join(format!("weft-vm-script-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-test");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'test a ... ok'\n\
             echo 'test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured'\nexit 101\n",
        )
        .unwrap();
        crate::vm::make_executable(&fake).unwrap();
        let tests = [("tcp".to_owned(), fake)];
        let text = script(
            &dir,
            &Plan {
                agent: Path::new("/bin/true"),
                tests: &tests,
                harness: &[],
                test_limit: Duration::from_secs(60),
            },
        );
        // The guest's own /run is this test's folder here.
        let text = text.replace("/run/weft-test", &dir.join("run").to_string_lossy());
        let run = Command::new("sh").arg("-c").arg(&text).status().unwrap();
        assert!(run.success());
        let v = verdict(&dir);
        assert_eq!(v.tests, vec![("tcp".to_owned(), 101)]);
        assert_eq!(v.counts, vec![("tcp".to_owned(), 5, 1)]);
        assert!(v.finished && !v.agent_started);
        fs::remove_dir_all(&dir).unwrap();
    }
}
