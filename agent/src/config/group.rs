//! `api_socket_group`: the group that may read the flow API besides root,
//! written as a name or a numeric gid and resolved against the node's
//! group database (`getgrnam_r`, so groups from NSS sources count too).

use std::ffi::CString;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A group as the configuration names it: YAML gives a number or a name,
/// the flag gives text (all digits is a gid: group names never are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupName {
    Gid(u32),
    Name(String),
}

impl GroupName {
    /// The flag's text: digits are a gid, anything else a name.
    pub fn parse(text: &str) -> Self {
        match text.parse() {
            Ok(gid) => Self::Gid(gid),
            Err(_) => Self::Name(text.to_owned()),
        }
    }

    /// The gid: a numeric one as it is (the socket may be given a gid no
    /// group names yet, as `chgrp` allows), a name looked up. The error
    /// says why the name does not resolve and what to do.
    pub fn resolve(&self) -> Result<u32, String> {
        let name = match self {
            Self::Gid(gid) => return Ok(*gid),
            Self::Name(name) => name,
        };
        if let Ok(gid) = name.parse() {
            return Ok(gid);
        }
        if name.is_empty() {
            return Err("is empty; give a group name or a numeric gid".into());
        }
        match gid_of(name) {
            Ok(Some(gid)) => Ok(gid),
            Ok(None) => Err(format!(
                "no group of that name on this node; create it (`groupadd --system {name}`) \
                 or give an existing group's name or a numeric gid"
            )),
            Err(error) => Err(format!(
                "cannot look the group up ({error}); check /etc/group and /etc/nsswitch.conf, \
                 or give a numeric gid"
            )),
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gid(gid) => write!(f, "{gid}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// The largest buffer `getgrnam_r` gets: a group with thousands of
/// members needs tens of KiB; more is a broken database, not a group.
const MAX_BUFFER: usize = 1 << 20;

/// `getgrnam_r`: `Ok(None)` when no group has that name.
fn gid_of(name: &str) -> std::io::Result<Option<u32>> {
    let name =
        CString::new(name).map_err(|_| std::io::Error::other("the name contains a NUL byte"))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: a zeroed `group` is a valid out-parameter (plain pointers
        // and integers); getgrnam_r only writes into it and into `buffer`,
        // whose length it is given.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            libc::ERANGE if buffer.len() < MAX_BUFFER => buffer.resize(buffer.len() * 2, 0),
            // Some C libraries say "not found" with one of these.
            0 | libc::ENOENT | libc::ESRCH if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            rc => return Err(std::io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_gids_resolve() {
        assert_eq!(GroupName::parse("root").resolve(), Ok(0));
        assert_eq!(GroupName::Name("root".into()).resolve(), Ok(0));
        assert_eq!(GroupName::parse("4242"), GroupName::Gid(4242));
        assert_eq!(GroupName::Gid(4242).resolve(), Ok(4242));
        // YAML's quoted digits are a gid too.
        assert_eq!(GroupName::Name("4243".into()).resolve(), Ok(4243));
    }

    #[test]
    fn a_name_in_etc_group_resolves_to_its_gid() {
        // Whatever the node has: every group of /etc/group resolves to the
        // gid written there.
        let groups = std::fs::read_to_string("/etc/group").unwrap();
        let mut checked = 0;
        for line in groups.lines().filter(|l| !l.starts_with(['#', '+', '-'])) {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(gid)) = (fields.first(), fields.get(2)) else {
                continue;
            };
            let gid: u32 = gid.parse().unwrap();
            let resolved = GroupName::parse(name).resolve().unwrap();
            // Two names may share a gid; the name's own entry decides.
            assert_eq!(resolved, gid, "{line}");
            checked += 1;
        }
        assert!(checked > 0, "no group in /etc/group");
    }

    #[test]
    fn unknown_names_say_what_to_do() {
        let err = GroupName::parse("weft-no-such-group-7f3a")
            .resolve()
            .unwrap_err();
        assert!(
            err.starts_with("no group of that name on this node"),
            "{err}"
        );
        assert!(
            err.contains("groupadd --system weft-no-such-group-7f3a"),
            "{err}"
        );
        let err = GroupName::parse("").resolve().unwrap_err();
        assert!(err.contains("give a group name or a numeric gid"), "{err}");
        let err = GroupName::parse("a\0b").resolve().unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn a_gid_beyond_32_bits_is_a_name_that_does_not_resolve() {
        let err = GroupName::parse("4294967296").resolve().unwrap_err();
        assert!(err.starts_with("no group of that name"), "{err}");
    }
}
