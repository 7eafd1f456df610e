//! Builds the kernel programs (`ebpf/probes`, binary `weft-probes`) for the
//! BPF target and the flow API's protobuf code, both into OUT_DIR.
//!
//! The kernel crate needs `-Z build-std=core`, so it is built by a separate
//! rustup toolchain that ships the standard library's source (see
//! README "Building"): `WEFT_BPF_TOOLCHAIN` names it, else `bpf` (Debian's
//! rustc-web linked with `rustup toolchain link bpf /usr`, as `cargo xtask
//! setup` does), else `nightly` with the rust-src component.

use std::{env, path::PathBuf, process::Command};

use aya_build::{Package, Toolchain};

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    compile_proto()?;
    build_probes()
}

fn compile_proto() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["weft/v1/flows.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

fn build_probes() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=WEFT_BPF_TOOLCHAIN");
    let toolchain = choose_toolchain()?;
    // The kernel crate is built with unstable `-Z build-std=core`; Debian's
    // compiler is a stable release, so unlock unstable flags for that child
    // build only (this process's environment is inherited by it).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let probes_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent/ has no parent directory"))?
        .join("ebpf/probes");
    // aya-build watches the kernel crate's directory; the ABI crate it
    // depends on must trigger a rebuild too.
    let common_dir = probes_dir.with_file_name("common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let probes_dir = probes_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", probes_dir.display()))?
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "weft-ebpf",
            root_dir: &probes_dir,
            ..Package::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

/// The rustup toolchain that builds the kernel programs.
fn choose_toolchain() -> anyhow::Result<String> {
    if let Ok(name) = env::var("WEFT_BPF_TOOLCHAIN")
        && !name.is_empty()
    {
        return Ok(name);
    }
    if rustup_ok(&["run", "bpf", "rustc", "--version"]) {
        return Ok("bpf".into());
    }
    let nightly_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if nightly_src {
        return Ok("nightly".into());
    }
    anyhow::bail!(
        "no toolchain can build weft's eBPF programs: they need a rustc that ships the \
         standard library's source, plus bpf-linker.\n  On Debian 12 run `cargo xtask setup` \
         (installs rustc-web, rust-web-src and LLVM 22, links them as the rustup toolchain \
         `bpf`, and installs bpf-linker 0.13.0).\n  Elsewhere: `rustup toolchain install \
         nightly --component rust-src && cargo install bpf-linker`.\n  Or set \
         WEFT_BPF_TOOLCHAIN to a toolchain that has rust-src."
    )
}

fn rustup_ok(args: &[&str]) -> bool {
    Command::new("rustup")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
