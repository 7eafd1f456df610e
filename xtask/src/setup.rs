//! `cargo xtask setup`: installs what weft needs on Debian 12 with rustup
//! (the recipe of docs/toolchain.md). Every step checks first, so a second run
//! changes nothing. Nothing is exported or mounted globally: later cargo runs
//! get their settings from [`Env::cargo`], and the agent mounts bpffs/tracefs.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, as_root, find_program, probe, run, say};

/// Debian packages, installed together when any is missing.
const PACKAGES: &[&str] = &[
    // The BPF toolchain: Debian's rustc 1.96 with its library source (for
    // `-Z build-std=core`) and LLVM 22 to build bpf-linker on. cargo-web is
    // only a Recommends of rustc-web, which --no-install-recommends skips,
    // yet `rustup run bpf cargo` needs /usr/bin/cargo.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    // Inspecting and shaping the kernel side: bpftool, ip/tc, nft.
    "bpftool",
    "iproute2",
    "nftables",
    // Traffic and peers for the integration tests.
    "iperf3",
    "curl",
    "python3",
    "netcat-openbsd",
    // Real protocol peers for the L7 tests (tests/tests/l7_*.rs). Each test
    // runs its own server on a lab address, a port of its own and a
    // temporary data directory, so a service the package starts on its
    // default port (redis 6379, PostgreSQL 5432, MariaDB 3306, nginx 80)
    // does not get in the way.
    "redis-server",
    "redis-tools",
    "postgresql",
    "mariadb-server",
    "mariadb-client",
    // Prepared statements from a real benchmark client (oltp_read_only).
    "sysbench",
    "dnsmasq-base",
    "dnsutils",
    "nginx",
    "nghttp2-client",
    // Go's crypto/tls peers (tests/peers/go_https), built by the tests.
    "golang-go",
    // gRPC client and server (tests/peers/grpc_peer.py) for Debian's python3.
    "python3-grpcio",
    // promtool checks the metrics output; jq reads the JSON APIs in scripts.
    "prometheus",
    "jq",
    // The soak's plot of its samples (tests/src/soak/plot.rs).
    "gnuplot-nox",
    // A virtual environment for kubernetes-validate (deploy_tools.rs), and
    // setpriv to run the agent with the DaemonSet's capabilities only.
    "python3-venv",
    "util-linux",
    // The container image test (tests/tests/deploy.rs): Podman with runc
    // (Debian 12's crun refuses hosts with the hybrid cgroup layout), and
    // debootstrap to make the image's Debian 12 base without a registry.
    "podman",
    "runc",
    "debootstrap",
    // The shells whose completion scripts `weft completions` prints load
    // them in tests/tests/cli.rs (bash is always there).
    "zsh",
    "fish",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where llvm-22-dev lives; bpf-linker must link the LLVM of the BPF rustc.
const DEBIAN_LLVM: &str = "/usr/lib/llvm-22";
/// The Debian toolchain's library source, from rust-web-src.
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust";

/// What the later cargo runs need to know after setup.
pub struct Env {
    /// The rustup toolchain the agent's build.rs builds the kernel crate with.
    pub bpf_toolchain: String,
    /// PATH with cargo's bin directory in front, when it was missing (sudo
    /// drops it): aya-build needs `rustup` and `bpf-linker` from there.
    path: Option<OsString>,
}

impl Env {
    /// PATH for the programs xtask starts, with cargo's bin directory.
    pub fn path(&self) -> OsString {
        self.path
            .clone()
            .unwrap_or_else(|| env::var_os("PATH").unwrap_or_default())
    }

    /// cargo in the workspace root with WEFT_BPF_TOOLCHAIN (read by
    /// agent/build.rs) set.
    pub fn cargo(&self) -> Command {
        let mut cmd = cmd::cargo();
        cmd.env("WEFT_BPF_TOOLCHAIN", &self.bpf_toolchain);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        cmd
    }
}

pub fn setup() -> Result<Env> {
    say("setup: checking what weft needs");
    let cargo_bin = cargo_home()?.join("bin");
    let path = path_with(&cargo_bin)?;
    let Some(rustup) = find_program("rustup", path.as_deref()) else {
        bail!("rustup is not installed: install it from https://rustup.rs, then rerun");
    };
    packages()?;
    let env = Env {
        bpf_toolchain: bpf_toolchain(&rustup)?,
        path,
    };
    lint_tools(&env, &rustup)?;
    bpf_linker(&env, &cargo_bin)?;
    crate::deploy_tools::ensure()?;
    crate::python_venvs::OTLP.ensure()?;
    crate::python_venvs::OPENSSL_1_1.ensure()?;
    say(format_args!(
        "setup done; cargo runs by xtask get WEFT_BPF_TOOLCHAIN={}",
        env.bpf_toolchain
    ));
    Ok(env)
}

fn packages() -> Result<()> {
    install_packages("packages", PACKAGES)
}

/// Installs those of `packages` that are missing, in one apt-get run.
pub fn install_packages(what: &str, packages: &[&str]) -> Result<()> {
    if find_program("dpkg-query", None).is_none() {
        say(format_args!(
            "{what}: not a Debian system; install the equivalents of these yourself: {}",
            packages.join(" ")
        ));
        return Ok(());
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        say(format_args!(
            "{what}: all {} installed, nothing to do",
            packages.len()
        ));
        return Ok(());
    }
    say(format_args!("{what}: installing {}", missing.join(" ")));
    run(as_root("apt-get")?.arg("update"))?;
    // `env` carries the variable through sudo, which resets the environment.
    run(as_root("env")?
        .args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"])
        .arg("--no-install-recommends")
        .args(&missing))
}

fn is_installed(package: &str) -> bool {
    let status = probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
    status.as_deref() == Some("install ok installed")
}

/// The rustup toolchain that builds the kernel programs. It must ship the
/// library source (for `-Z build-std=core`) and match bpf-linker's LLVM:
/// 1. `$WEFT_BPF_TOOLCHAIN` when set: an explicit choice wins;
/// 2. `bpf` when it runs: this project's Debian recipe, linked before;
/// 3. `nightly` when it has the rust-src component: a developer laptop;
/// 4. otherwise none yet (`None`): link Debian's rustc 1.96 (see
///    [`PACKAGES`]) as `bpf`.
///
/// Returns the name, why it was chosen, and its `rustc --version` (`None`
/// when it does not run).
fn choose_bpf_toolchain(rustup: &Path) -> Option<(String, &'static str, Option<String>)> {
    if let Ok(name) = env::var("WEFT_BPF_TOOLCHAIN") {
        let version = rustc_version(rustup, &name);
        return Some((name, "set by WEFT_BPF_TOOLCHAIN, nothing to do", version));
    }
    if let Some(version) = rustc_version(rustup, "bpf") {
        return Some(("bpf".into(), "linked before, nothing to do", Some(version)));
    }
    let nightly_components = probe(Command::new(rustup).args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if nightly_components.is_some_and(|list| list.lines().any(|c| c.starts_with("rust-src"))) {
        let version = rustc_version(rustup, "nightly");
        return Some((
            "nightly".into(),
            "nightly has rust-src, nothing to do",
            version,
        ));
    }
    None
}

fn bpf_toolchain(rustup: &Path) -> Result<String> {
    let (name, why, version) = match choose_bpf_toolchain(rustup) {
        Some(choice) => choice,
        None => {
            if !Path::new(DEBIAN_RUST_SRC).is_dir() {
                bail!(
                    "no BPF toolchain: {DEBIAN_RUST_SRC} (package rust-web-src) is missing; \
                     install the packages above or a nightly with rust-src, see docs/toolchain.md"
                );
            }
            // No sudo even when not root: rustup toolchains belong to the
            // user who builds.
            run(Command::new(rustup).args(["toolchain", "link", "bpf", "/usr"]))?;
            (
                "bpf".to_owned(),
                "Debian's rustc at /usr, linked now",
                rustc_version(rustup, "bpf"),
            )
        }
    };
    let Some(version) = version else {
        bail!(
            "`rustup run {name} rustc --version` fails: fix or unset WEFT_BPF_TOOLCHAIN, \
             or follow docs/toolchain.md"
        );
    };
    say(format_args!("bpf toolchain: `{name}` is {version} ({why})"));
    Ok(name)
}

fn rustc_version(rustup: &Path, toolchain: &str) -> Option<String> {
    probe(Command::new(rustup).args(["run", toolchain, "rustc", "--version"]))
}

/// rustfmt and clippy for the lint stage of `cargo xtask test`: in rustup's
/// default profile, but not in the minimal one that CI images often use.
fn lint_tools(env: &Env, rustup: &Path) -> Result<()> {
    let present = |tool| probe(env.cargo().args([tool, "--version"])).is_some();
    if present("fmt") && present("clippy") {
        say("rustfmt and clippy: installed, nothing to do");
        return Ok(());
    }
    run(Command::new(rustup).args(["component", "add", "rustfmt", "clippy"]))
}

/// bpf-linker as the BPF build will find it: first in the PATH that
/// [`Env::cargo`] gives.
fn bpf_linker(env: &Env, cargo_bin: &Path) -> Result<()> {
    let version = || {
        let path = find_program("bpf-linker", env.path.as_deref())?;
        let version = probe(Command::new(&path).arg("--version"))?;
        Some((path, version))
    };
    let wanted = |version: &str| version.split_whitespace().any(|w| w == BPF_LINKER_VERSION);
    match version() {
        Some((path, found)) if wanted(&found) => {
            say(format_args!(
                "bpf-linker: {found} at {}, nothing to do",
                path.display()
            ));
            return Ok(());
        }
        Some((path, found)) => say(format_args!(
            "bpf-linker: {} is {found}; installing {BPF_LINKER_VERSION}",
            path.display()
        )),
        None => say(format_args!(
            "bpf-linker: not found; installing {BPF_LINKER_VERSION}"
        )),
    }
    let mut install = cmd::cargo();
    // --locked: the versions bpf-linker was released with, as the
    // Containerfile installs it (a newer llvm-sys also builds, but the
    // build should not change under us).
    install.args([
        "install",
        "--locked",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
    ]);
    // On Debian, build it on the same LLVM 22 as the BPF rustc (rustc-web);
    // elsewhere (nightly) its default features fit.
    if Path::new(DEBIAN_LLVM).is_dir() {
        install
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", DEBIAN_LLVM)
            .env("LLVM_SYS_221_PREFIX", DEBIAN_LLVM);
    }
    run(&mut install)?;
    match version() {
        Some((_, found)) if wanted(&found) => Ok(()),
        Some((path, found)) => bail!(
            "{} ({found}) comes first in PATH and shadows the new bpf-linker in {}: remove it",
            path.display(),
            cargo_bin.display()
        ),
        None => bail!("bpf-linker was installed but does not run"),
    }
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// PATH with `dir` in front, or `None` when PATH already has it.
fn path_with(dir: &Path) -> Result<Option<OsString>> {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|entry| entry == dir) {
        return Ok(None);
    }
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path));
    Ok(Some(env::join_paths(dirs).context("joining PATH")?))
}

/// A tool installed with `cargo install --locked`.
pub struct CrateTool {
    pub name: &'static str,
    pub version: &'static str,
    /// More arguments for `cargo install` (features).
    pub args: &'static [&'static str],
    /// The binary it provides.
    pub bin: &'static str,
}

/// What `cargo xtask bench` needs besides [`setup`]: servers, proxies and
/// load generators, as Debian packages and crates. Only the bench calls
/// this, so that `cargo xtask test` (CI) never installs them.
pub fn bench_tools(env: &Env, packages: &[&str], crates: &[CrateTool]) -> Result<()> {
    install_packages("bench packages", packages)?;
    let path = env.path();
    for tool in crates {
        let found = find_program(tool.bin, Some(&path))
            .and_then(|bin| probe(Command::new(&bin).arg("--version")));
        if let Some(version) = found.filter(|v| v.split_whitespace().any(|w| w == tool.version)) {
            say(format_args!("{}: {version}, nothing to do", tool.bin));
            continue;
        }
        say(format_args!(
            "{}: installing {} {}",
            tool.bin, tool.name, tool.version
        ));
        run(cmd::cargo()
            .args(["install", "--locked", tool.name, "--version", tool.version])
            .args(tool.args))?;
    }
    Ok(())
}
