//! The pseudo-filesystems the agent needs: tracefs (tracepoint formats and
//! attach points), bpffs (pins), and the cgroup v2 hierarchy (the UDP
//! programs attach to its root). Many hosts do not mount tracefs or bpffs
//! at boot; the agent mounts them when they are missing.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses /proc/self/mountinfo text. Field 5 is the mount point; the file
/// system type follows the " - " separator.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

fn find(mounts: &[Mount], fs_type: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point.clone())
}

/// The cgroup v2 mount (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts).
pub fn cgroup2(mounts: &[Mount]) -> Option<PathBuf> {
    find(mounts, "cgroup2")
}

/// Returns where tracefs is, mounting it at /sys/kernel/tracing when the
/// tracepoints would not be found.
///
/// aya reads a tracepoint's id under the first of /sys/kernel/tracing and
/// /sys/kernel/debug/tracing that holds anything, whatever is mounted
/// there: tracefs must be what that lookup finds. A tracefs mounted
/// elsewhere, or hidden by another file system mounted over it, does not
/// count.
pub fn ensure_tracefs(mounts: &[Mount]) -> io::Result<PathBuf> {
    let tracing_has_entries = std::fs::read_dir(TRACEFS).is_ok_and(|mut d| d.next().is_some());
    if let Some(found) = usable_tracefs(mounts, tracing_has_entries) {
        return Ok(found);
    }
    mount("tracefs", TRACEFS, "tracefs")?;
    Ok(PathBuf::from(TRACEFS))
}

/// The tracefs aya's lookup finds (see [`ensure_tracefs`]), if any:
/// /sys/kernel/tracing when tracefs is on top there, else
/// /sys/kernel/debug/tracing when tracefs is on top there and
/// /sys/kernel/tracing is empty (aya passes over an empty directory).
fn usable_tracefs(mounts: &[Mount], tracing_has_entries: bool) -> Option<PathBuf> {
    if top(mounts, TRACEFS) == Some("tracefs") {
        return Some(PathBuf::from(TRACEFS));
    }
    (!tracing_has_entries && top(mounts, DEBUGFS_TRACING) == Some("tracefs"))
        .then(|| PathBuf::from(DEBUGFS_TRACING))
}

/// The type of the file system mounted last (the one seen) at `point`.
fn top<'a>(mounts: &'a [Mount], point: &str) -> Option<&'a str> {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == Path::new(point))
        .map(|m| m.fs_type.as_str())
}

/// Mounts bpffs at /sys/fs/bpf if no bpffs is mounted there.
pub fn ensure_bpffs(mounts: &[Mount]) -> io::Result<PathBuf> {
    if mounts
        .iter()
        .any(|m| m.fs_type == "bpf" && m.mount_point == Path::new(BPFFS))
    {
        return Ok(PathBuf::from(BPFFS));
    }
    mount("bpf", BPFFS, "bpf")?;
    Ok(PathBuf::from(BPFFS))
}

/// Whether the file system holding `path` is mounted read-only.
pub fn is_read_only(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `stat` outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag & libc::ST_RDONLY != 0)
}

fn mount(source: &str, target: &str, fs_type: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (src, tgt, fst) = (c(source)?, c(target)?, c(fs_type)?);
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("mount -t {fs_type} {source} {target}: {err}"),
        ));
    }
    log::info!("mounted {fs_type} at {target}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw
40 25 0:40 / /sys/kernel/tracing rw - tracefs tracefs rw
41 25 0:41 / /mnt/with\\040space rw - bpf bpf rw
";

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(cgroup2(&m), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            usable_tracefs(&m, true),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
    }

    /// Only a tracefs where aya looks tracepoint ids up, and on top there,
    /// is used as it is.
    #[test]
    fn tracefs_is_used_only_where_aya_finds_it() {
        const DEBUG_ONLY: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
50 25 0:50 / /sys/kernel/debug rw - debugfs debugfs rw
51 50 0:51 / /sys/kernel/debug/tracing rw - tracefs tracefs rw
";
        let m = parse_mountinfo(DEBUG_ONLY);
        let debug = Some(PathBuf::from("/sys/kernel/debug/tracing"));
        assert_eq!(usable_tracefs(&m, false), debug);
        // Something at /sys/kernel/tracing hides it from aya.
        assert_eq!(usable_tracefs(&m, true), None);

        const COVERED: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 25 0:40 / /sys/kernel/tracing rw - tracefs tracefs rw
41 40 0:41 / /sys/kernel/tracing ro - tmpfs tmpfs ro
42 25 0:42 / /mnt/tracing rw - tracefs tracefs rw
";
        let m = parse_mountinfo(COVERED);
        assert_eq!(usable_tracefs(&m, true), None, "a tmpfs over it");
        let elsewhere = [m[0].clone(), m[3].clone()];
        assert_eq!(usable_tracefs(&elsewhere, false), None, "mounted elsewhere");
        assert_eq!(
            usable_tracefs(&m[..2], true),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m[4].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[4].fs_type, "bpf");
    }
}
