//! Processes the bench starts, and Ctrl-C.
//!
//! Every process is started inside a cgroup of the lab (a shell writes its
//! own pid into `cgroup.procs`, then `exec`s the program), so that its CPU
//! time is counted per pod and so that cleanup can find it even after a
//! crash. It is ended by its pid only: SIGTERM, a bounded wait, then SIGKILL.

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::display;

/// Set by SIGINT, SIGTERM or SIGHUP; every wait of the bench checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C (and SIGTERM, SIGHUP) into an error at the next check, so
/// that the guards' `Drop` cleans up instead of the process dying mid-run.
pub fn catch_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        if unsafe { libc::signal(signal, handler) } == libc::SIG_ERR {
            bail!(
                "installing a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Fails when the run was interrupted.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration` in short steps, failing early when interrupted.
pub fn pause(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check_interrupted()?;
        sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Polls `ready` every 50 ms until it returns true, for at most `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        check_interrupted()?;
        if Instant::now() > end {
            bail!("{what}: not ready after {timeout:?}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// A process this run started; stopped (by pid) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: std::path::PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `argv` in the cgroup whose `cgroup.procs` is `procs`, with
    /// stdout and stderr into `log` and `path` as PATH.
    pub fn spawn(
        name: &str,
        procs: &Path,
        argv: &[String],
        log: &Path,
        path: &OsStr,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        // `$0` is the cgroup file, `$@` the program: the shell's pid becomes
        // the program's pid, already in the cgroup when it starts.
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(procs)
            .args(argv)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", display(&cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits for the process to exit by itself, at most `timeout`; kills it
    /// then, and also when the run is interrupted.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                return Ok(status);
            }
            if let Err(e) = check_interrupted() {
                self.stop();
                return Err(e);
            }
            if Instant::now() > end {
                self.stop();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to 10 s for a clean exit (weft detaches its programs),
    /// then SIGKILL. The `Child` is only reaped here, so its pid cannot have
    /// been reused by another process when the signal is sent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we own and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process's whole output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the process's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
