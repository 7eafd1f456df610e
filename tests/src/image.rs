//! weft's container image, built and run with Podman as a node runs it.
//!
//! Everything lives in a Podman store of the test's own (`--root`,
//! `--runroot`, `--tmpdir` in a temporary directory, the `vfs` driver so
//! that nothing is mounted on the host): the machine's own images and
//! containers are neither read nor touched, and removing the directory
//! removes all of it.
//!
//! The image is `deploy/Containerfile`'s runtime stage, built from its own
//! text. Two things stand in for what CI cannot reach or afford:
//!
//! - its base, `docker.io/library/debian:12-slim`, is Debian 12 itself made
//!   by `debootstrap --variant=minbase` from Debian's mirror (cached in
//!   `target/`), imported under that name into the private store;
//! - the build stage's outputs (`/out/...`) are the release binary under
//!   test and what it prints (`weft man`, `weft completions bash`), made
//!   as the build stage makes them; building the agent again inside a
//!   container is the release build the rest of CI already runs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{agent::weft_bin, peer::TempDir};

/// The runtime stage's base image, as `deploy/Containerfile` names it.
pub const BASE_IMAGE: &str = "docker.io/library/debian:12-slim";
/// Debian 12, from which the base is made.
const SUITE: &str = "bookworm";
/// Where `debootstrap` downloads from (`WEFT_DEBIAN_MIRROR` overrides).
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A Podman store of the test's own; removed, with every container in it,
/// when dropped.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// A store in `/tmp/weft-podman-NAME-...`.
    pub fn new(name: &str) -> Self {
        Self {
            dir: TempDir::new(&format!("podman-{name}")),
        }
    }

    /// The test's own scratch space (configuration, API socket directory).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// `podman` with the global options that keep it in this store: the
    /// cgroupfs manager and a file for events (no systemd here), and runc
    /// (Debian 12's crun refuses hosts with the hybrid cgroup layout).
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path.join("storage"))
            .arg("--runroot")
            .arg(self.dir.path.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.path.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    /// The command line of [`Self::command`], to run under a wrapper.
    pub fn command_line(&self) -> Vec<String> {
        let c = self.command();
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// `podman ARGS`, which must succeed; its output.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut words = self.command_line();
        words.extend(args.iter().map(|a| (*a).to_owned()));
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        crate::run(&words)
    }

    /// Imports Debian 12 (minbase) as [`BASE_IMAGE`] into this store.
    pub fn import_base(&self) {
        let tarball = base_tarball();
        let file = std::fs::File::open(&tarball).expect("open the base tarball");
        let out = self
            .command()
            .args(["import", "-", BASE_IMAGE])
            .stdin(file)
            .output()
            .expect("run podman import");
        assert!(
            out.status.success(),
            "podman import {} failed: {}",
            tarball.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds `deploy/Containerfile`'s runtime stage as `tag`, from the
    /// binary under test, with the base already imported.
    pub fn build_runtime_image(&self, tag: &str) {
        let context = self.dir.path.join("context");
        build_stage_outputs(&context.join("out"));
        let containerfile = runtime_stage(
            &std::fs::read_to_string(repo().join("deploy/Containerfile"))
                .expect("read deploy/Containerfile"),
        );
        std::fs::write(context.join("Containerfile"), containerfile).expect("write Containerfile");
        let context = context.to_str().expect("UTF-8 path");
        self.run(&[
            "build",
            "--pull=never",
            "--tag",
            tag,
            "--file",
            &format!("{context}/Containerfile"),
            context,
        ]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (a test that failed midway leaves one running);
        // the store's files go with the directory.
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "10"])
            .stdin(Stdio::null())
            .output();
    }
}

/// The last stage of a Containerfile (from its last `FROM`), with the
/// build stage's outputs read from the build context's `out/` instead.
pub fn runtime_stage(containerfile: &str) -> String {
    let lines: Vec<&str> = containerfile.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    assert!(
        lines[from].starts_with(&format!("FROM {BASE_IMAGE}")),
        "the runtime stage is built on {BASE_IMAGE}; the test imports that base \
         (change tests/src/image.rs with it): {}",
        lines[from]
    );
    let stage: Vec<String> = lines[from..]
        .iter()
        .map(|l| l.replace("COPY --from=build /out/", "COPY out/"))
        .collect();
    assert!(
        !stage.iter().any(|l| l.contains("--from=")),
        "the runtime stage copies from a stage the test does not stand in for"
    );
    stage.join("\n") + "\n"
}

/// What the build stage puts in `/out`, made the same way from the binary
/// under test.
fn build_stage_outputs(out: &Path) {
    std::fs::create_dir_all(out.join("completions")).expect("create out/");
    let binary = out.join("weft");
    std::fs::copy(weft_bin(), &binary).expect("copy the binary");
    let binary = binary.to_str().expect("UTF-8 path");
    crate::run(&["strip", "--strip-debug", binary]);
    crate::run(&[binary, "man", out.join("man").to_str().expect("UTF-8 path")]);
    let completions = crate::run(&[binary, "completions", "bash"]).stdout;
    std::fs::write(out.join("completions/weft"), completions).expect("write completions");
}

/// A tarball of Debian 12 (minbase), made once with debootstrap and kept in
/// `target/`; the package caches are left out, as debian:12-slim has none.
fn base_tarball() -> PathBuf {
    let cache = repo().join("target/test-images");
    let tarball = cache.join(format!("debian-{SUITE}-minbase.tar"));
    if tarball.is_file() {
        return tarball;
    }
    std::fs::create_dir_all(&cache).expect("create target/test-images");
    let root = TempDir::new("debootstrap");
    let mirror = std::env::var("WEFT_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", SUITE, root.as_str(), &mirror])
        .stdin(Stdio::null())
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap {SUITE} from {mirror} failed (WEFT_DEBIAN_MIRROR sets another mirror): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Written under another name first: a run stopped midway leaves no
    // tarball that looks whole.
    let partial = tarball.with_extension("tar.partial");
    crate::run(&[
        "tar",
        "--create",
        "--file",
        partial.to_str().expect("UTF-8 path"),
        "--directory",
        root.as_str(),
        "--exclude=./var/cache/apt/archives/*.deb",
        "--exclude=./var/lib/apt/lists/*_Packages",
        ".",
    ]);
    std::fs::rename(&partial, &tarball).expect("keep the base tarball");
    tarball
}

/// Resource limits the container can be given here. Podman asks for
/// nofile 1048576 and nproc 4194304 by default, and the runtime sets them
/// on the container's first process; without CAP_SYS_RESOURCE (some
/// sandboxes and CI runners withhold it even from root) it cannot raise a
/// hard limit, so the container would not start. These are the hard limits
/// the runtime has: this process's own, and for nproc no more than the
/// kernel's pid_max.
pub fn host_ulimits() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let rc = unsafe { libc::getrlimit(resource, &mut limit) };
        assert_eq!(rc, 0, "getrlimit");
        limit.rlim_max
    };
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    let nofile = hard(libc::RLIMIT_NOFILE);
    let nproc = hard(libc::RLIMIT_NPROC).min(pid_max);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_stage_reads_the_build_outputs_from_the_context() {
        let file = "FROM docker.io/library/rust:1.95 AS build\nRUN make\n\
                    FROM docker.io/library/debian:12-slim\n\
                    COPY --from=build /out/weft /usr/bin/weft\nENTRYPOINT [\"/usr/bin/weft\"]\n";
        assert_eq!(
            runtime_stage(file),
            "FROM docker.io/library/debian:12-slim\nCOPY out/weft /usr/bin/weft\n\
             ENTRYPOINT [\"/usr/bin/weft\"]\n"
        );
    }

    #[test]
    fn the_repositorys_containerfile_has_a_runtime_stage_the_test_can_build() {
        let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).expect("read");
        let stage = runtime_stage(&text);
        assert!(stage.contains("COPY out/weft /usr/bin/weft"), "{stage}");
    }
}
