//! The tools that check the Kubernetes manifests (deploy/kubernetes) in
//! `cargo xtask test`: kubectl, whose built-in kustomize renders them
//! offline, and kubernetes-validate from PyPI, which ships the Kubernetes
//! JSON schemas and so validates offline too. Both steps check first, so a
//! second run changes nothing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{as_root, find_program, probe, run, say};

const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Debian's kubectl, for machines whose image has none (it is old, 1.20,
/// but its kustomize renders the base).
const KUBECTL_PACKAGE: &str = "kubernetes-client";

pub fn ensure() -> Result<()> {
    kubectl()?;
    kubernetes_validate()?;
    Ok(())
}

fn kubectl() -> Result<()> {
    if let Some(path) = find_program("kubectl", None) {
        let version = probe(Command::new(&path).args(["version", "--client"]))
            .unwrap_or_else(|| "version unknown".into());
        say(format_args!(
            "kubectl: {} ({}), nothing to do",
            path.display(),
            version.lines().next().unwrap_or_default()
        ));
        return Ok(());
    }
    say(format_args!(
        "kubectl: not found; installing {KUBECTL_PACKAGE}"
    ));
    run(as_root("apt-get")?.arg("update"))?;
    run(as_root("env")?
        .args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"])
        .arg("--no-install-recommends")
        .arg(KUBECTL_PACKAGE))
}

/// Where kubernetes-validate lives: a virtual environment of its own (the
/// system Python is externally managed), under the user's data directory.
fn venv() -> Result<PathBuf> {
    let data = match env::var_os("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&env::var_os("HOME").context("HOME is not set")?).join(".local/share"),
    };
    Ok(data.join("weft").join("venv"))
}

/// The kubernetes-validate executable that [`ensure`] installs; the tests
/// get it as `WEFT_KUBERNETES_VALIDATE`.
pub fn kubernetes_validate_path() -> Result<PathBuf> {
    Ok(venv()?.join("bin").join("kubernetes-validate"))
}

fn kubernetes_validate() -> Result<()> {
    let bin = kubernetes_validate_path()?;
    let installed = probe(Command::new(&bin).arg("--version"));
    if installed.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        say(format_args!(
            "kubernetes-validate: {KUBERNETES_VALIDATE_VERSION} at {}, nothing to do",
            bin.display()
        ));
        return Ok(());
    }
    let venv = venv()?;
    // Debian's python3 (python3-venv is among the packages), not whatever
    // `python3` a version manager puts first in PATH.
    let python = ["/usr/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_program("python3", None))
        .context("python3 is not installed")?;
    say(format_args!(
        "kubernetes-validate: {} at {}; installing {KUBERNETES_VALIDATE_VERSION}",
        installed.as_deref().unwrap_or("missing"),
        venv.display()
    ));
    run(Command::new(&python)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!(
            "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
        )))?;
    match probe(Command::new(&bin).arg("--version")) {
        Some(v) if v == KUBERNETES_VALIDATE_VERSION => Ok(()),
        other => bail!(
            "kubernetes-validate was installed in {} but reports {other:?}",
            venv.display()
        ),
    }
}
