//! Running commands: echoed when they change something, quiet when they only
//! probe the machine.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs};

use anyhow::{Context, Result, bail};

/// Prints a progress line.
pub fn say(message: impl std::fmt::Display) {
    eprintln!("[xtask] {message}");
}

/// Echoes `cmd`, runs it with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    say(format_args!("$ {line}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`: is it installed?"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its trimmed stdout; its stderr goes into
/// the error.
pub fn read(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`: is it installed?"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{line}` failed ({}): {}", output.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A check of the machine: `cmd`'s stdout, or `None` when it failed or does
/// not exist.
pub fn probe(cmd: &mut Command) -> Option<String> {
    read(cmd).ok()
}

/// cargo (the one running xtask), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root: xtask's own manifest directory is one level below.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a directory of the workspace")
}

/// The command line as a shell would read it, with the variables we set.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    // `$CARGO` is a long toolchain path; "cargo" says the same.
    let program = cmd.get_program();
    if env::var_os("CARGO").as_deref() == Some(program) {
        words.push("cargo".to_owned());
    } else {
        words.push(quote(program));
    }
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether we run as root. The kernel makes `/proc/self` belong to the
/// process's effective uid, which saves spawning `id -u`.
pub fn is_root() -> Result<bool> {
    let uid = fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    Ok(uid == 0)
}

/// `program` as found in `path` (the inherited PATH when `None`).
pub fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let inherited = env::var_os("PATH").unwrap_or_default();
    env::split_paths(path.unwrap_or(&inherited))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A command for a step that needs root: plain when we are root, under sudo
/// otherwise.
pub fn as_root(program: &str) -> Result<Command> {
    if is_root()? {
        return Ok(Command::new(program));
    }
    let Some(sudo) = find_program("sudo", None) else {
        bail!("`{program}` needs root and sudo is not installed: run as root");
    };
    let mut cmd = Command::new(sudo);
    cmd.arg(program);
    Ok(cmd)
}
