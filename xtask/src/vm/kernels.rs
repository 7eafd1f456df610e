//! Debian's kernel packages for the matrix, fetched with `apt-get download`
//! and unpacked (no installation: nothing in /boot or /lib/modules changes).
//!
//! 6.1 and 6.12 come from the machine's own (bookworm) sources. 5.10 is a
//! bullseye kernel: it comes through a private apt configuration under the
//! target directory whose sources are the machine's own URIs with the
//! bullseye suites, so no mirror's name is written anywhere and a machine
//! behind a proxy or a local mirror uses that.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{read, run, say};

/// Where a kernel series comes from.
pub enum Source {
    /// The machine's configured apt sources.
    Machine,
    /// Another Debian release through a private apt configuration.
    Release(&'static str),
    /// The kernel the machine itself runs: tested on the host, no VM.
    Host,
}

pub struct Series {
    /// `5.10`, `6.1`, ...
    pub name: &'static str,
    pub source: Source,
    /// Package names of this series (extended regular expression).
    pub pattern: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        source: Source::Release("bullseye"),
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$",
    },
    Series {
        name: "6.1",
        source: Source::Machine,
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    Series {
        name: "6.12",
        source: Source::Machine,
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
    },
    // No Debian release ships 6.18: it is the kernel of the machines the
    // project develops on, tested directly there.
    Series {
        name: "6.18",
        source: Source::Host,
        pattern: "",
    },
];

/// An unpacked kernel package.
pub struct Kernel {
    /// The package name, e.g. `linux-image-6.1.0-57-amd64-unsigned`.
    pub package: String,
    /// `boot/vmlinuz-*` inside the unpacked tree (whose `lib/modules`
    /// virtme-ng finds next to it).
    pub image: PathBuf,
}

/// Downloads (once) and unpacks the newest package of `series`.
pub fn fetch(series: &Series, dir: &Path) -> Result<Kernel> {
    let apt = match series.source {
        Source::Machine => Vec::new(),
        Source::Release(release) => private_apt(release, &dir.join("apt").join(release))?,
        Source::Host => bail!("kernel {} is tested on the host, not fetched", series.name),
    };
    let names = read(Command::new("apt-cache").args(&apt).args([
        "search",
        "--names-only",
        series.pattern,
    ]))?;
    let package = newest(&names).with_context(|| {
        format!(
            "no package matches {} in the apt sources for {}",
            series.pattern, series.name
        )
    })?;
    let tree = dir.join("kernels").join(&package);
    if !tree.join("boot").is_dir() {
        let debs = dir.join("debs");
        fs::create_dir_all(&debs)?;
        say(format_args!(
            "kernel {}: downloading {package}",
            series.name
        ));
        run(Command::new("apt-get")
            .current_dir(&debs)
            .args(&apt)
            // The download directory belongs to root, not to apt's
            // sandbox user.
            .args(["-o", "APT::Sandbox::User=root", "download", &package]))?;
        let deb = find_deb(&debs, &package)?;
        // Package names have dots: no with_extension here.
        let partial = dir.join("kernels").join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &tree)?;
    }
    let image = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    Ok(Kernel { package, image })
}

/// The highest version among `apt-cache search` lines (`name - summary`).
fn newest(search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .map(str::to_owned)
}

/// Numbers in a package name, compared as numbers (`6.1.0-57` > `6.1.0-9`).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn find_deb(debs: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// apt options for a private configuration of `release` under `dir`,
/// updated once: the machine's own URIs with that release's suites.
fn private_apt(release: &str, dir: &Path) -> Result<Vec<String>> {
    let parts = dir.join("sources.list.d");
    let lists = dir.join("lists");
    let options = vec![
        "-o".into(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".into(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".into(),
        format!("Dir::Cache={}", dir.join("cache").display()),
    ];
    if lists.join("lock").exists() {
        return Ok(options);
    }
    let uris = machine_uris()?;
    if uris.is_empty() {
        bail!("no Debian URIs in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources");
    }
    fs::create_dir_all(&parts)?;
    fs::create_dir_all(lists.join("partial"))?;
    fs::create_dir_all(dir.join("cache"))?;
    fs::write(
        parts.join(format!("{release}.sources")),
        sources(release, &uris),
    )?;
    say(format_args!("apt: reading the {release} package lists"));
    run(Command::new("apt-get")
        .args(&options)
        .args(["-o", "APT::Sandbox::User=root", "update"]))?;
    Ok(options)
}

/// A deb822 sources file of `release` for each of `uris`.
fn sources(release: &str, uris: &[String]) -> String {
    let mut out = String::new();
    for uri in uris {
        let suite = if uri.contains("security") {
            format!("{release}-security")
        } else {
            release.to_owned()
        };
        out.push_str(&format!(
            "Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        ));
    }
    out
}

/// The Debian archive URIs the machine's apt is configured with.
fn machine_uris() -> Result<Vec<String>> {
    let mut uris = Vec::new();
    let mut add = |uri: &str| {
        let uri = uri.trim_end_matches('/').to_owned();
        if !uris.contains(&uri) {
            uris.push(uri);
        }
    };
    if let Ok(list) = fs::read_to_string("/etc/apt/sources.list") {
        for line in list.lines().map(str::trim) {
            // deb [options] URI suite components
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() == Some("deb")
                && let Some(uri) = words.find(|w| w.contains("://"))
            {
                add(uri);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_none_or(|e| e != "sources") {
                continue;
            }
            let text = fs::read_to_string(&path)?;
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("URIs:") {
                    value.split_whitespace().for_each(&mut add);
                }
            }
        }
    }
    // Only Debian's own archives carry Debian's kernels.
    uris.retain(|u| u.contains("debian"));
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_compares_numbers() {
        let search = "linux-image-6.1.0-9-amd64-unsigned - Linux\n\
                      linux-image-6.1.0-57-amd64-unsigned - Linux\n\
                      linux-image-6.1.0-47-amd64-unsigned - Linux\n";
        assert_eq!(
            newest(search).as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        assert_eq!(newest(""), None);
    }

    #[test]
    fn private_sources_reuse_the_machines_uris() {
        let text = sources(
            "bullseye",
            &["http://m/debian".into(), "http://m/debian-security".into()],
        );
        assert!(
            text.contains("URIs: http://m/debian\nSuites: bullseye\n"),
            "{text}"
        );
        assert!(
            text.contains("URIs: http://m/debian-security\nSuites: bullseye-security\n"),
            "{text}"
        );
    }
}
