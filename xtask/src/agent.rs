//! `cargo xtask build` and `cargo xtask run`: the release agent binary.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{display, find_program, is_root, read, run as run_cmd, say};
use crate::setup::Env;

const NEEDS_ROOT: &str = "weft agent needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, \
     and CAP_SYS_ADMIN if tracefs or bpffs must be mounted)";

/// Builds the release agent (its build.rs builds the kernel programs) and
/// returns the binary's absolute path.
pub fn build(env: &Env) -> Result<PathBuf> {
    run_cmd(env.cargo().args(["build", "--release", "-p", "weft"]))?;
    let bin = target_dir(env)?.join("release").join("weft");
    if !bin.is_file() {
        bail!("cargo built weft but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Builds, then replaces this process with `weft agent ARGS...`, so that
/// Ctrl-C, stdio and the exit code go straight between the caller and the
/// agent.
pub fn run(env: &Env, args: &[String]) -> Result<()> {
    let bin = build(env)?;
    let mut agent = if is_root()? {
        Command::new(&bin)
    } else {
        let Some(sudo) = find_program("sudo", None) else {
            bail!("{NEEDS_ROOT}, and sudo is not installed: run as root");
        };
        say(format_args!("{NEEDS_ROOT}; re-running it with sudo"));
        let mut sudo = Command::new(sudo);
        sudo.arg("--preserve-env=RUST_LOG").arg(&bin);
        sudo
    };
    agent.arg("agent").args(args);
    say(format_args!("$ {}", display(&agent)));
    let error = agent.exec();
    Err(error).with_context(|| format!("could not start {}", bin.display()))
}

/// The target directory as cargo resolves it (CARGO_TARGET_DIR, config).
pub fn target_dir(env: &Env) -> Result<PathBuf> {
    let json = read(
        env.cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"]),
    )?;
    json_string(&json, "target_directory")
        .map(PathBuf::from)
        .context("no plain target_directory in `cargo metadata` output")
}

/// The value of the first `"key":"value"` in `json`, if it has no escapes:
/// enough for cargo's compact output and a Linux path, without serde_json.
fn json_string<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let value = &json[start..][..json[start..].find('"')?];
    (!value.contains('\\')).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn finds_the_target_directory() {
        let json = r#"{"packages":[],"target_directory":"/w/target","version":1}"#;
        assert_eq!(json_string(json, "target_directory"), Some("/w/target"));
        assert_eq!(
            json_string(r#"{"target_directory":"a\"b"}"#, "target_directory"),
            None
        );
        assert_eq!(json_string("{}", "target_directory"), None);
    }
}
