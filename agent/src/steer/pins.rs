//! Where the steering objects are pinned, and their removal.
//!
//! `<bpffs>/weft/steer/<version>/maps/<MAP>` and `.../links/<program>`,
//! where `<version>` is a digest of the steering object: an agent adopts
//! the pins of its own version as they are, and replaces those of any
//! other version (an upgrade) once its own programs are attached, so a
//! connect to a service always finds a program and its maps.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::loader::cleanup::PIN_DIR;

/// Under `<bpffs>/weft`.
pub const STEER_DIR: &str = "steer";

/// `<bpffs>/weft/steer`.
pub fn steer_root(bpffs: &Path) -> PathBuf {
    bpffs.join(PIN_DIR).join(STEER_DIR)
}

/// The version directory name for an object: FNV-1a of its bytes.
pub fn version(object: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in object {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Version directories under the steering root other than `keep`.
pub fn other_versions(root: &Path, keep: &str) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() != keep {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Unpins everything under `dir` and removes it: links first, so that
/// programs are detached before their maps go. Returns how many pins were
/// removed. A missing directory is nothing to do.
pub fn remove(dir: &Path) -> io::Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            subdirs.push(path);
        } else {
            // Unlinking a pin drops the reference it held; a link with no
            // reference left detaches its program.
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    // "links" sorts before "maps"; version directories hold both.
    subdirs.sort();
    for sub in subdirs {
        removed += remove(&sub)?;
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_differ_by_content_and_others_are_found() {
        assert_eq!(version(b"abc"), version(b"abc"));
        assert_ne!(version(b"abc"), version(b"abd"));
        let dir = tempfile::tempdir().unwrap();
        let root = steer_root(dir.path());
        assert!(other_versions(&root, "v2").unwrap().is_empty());
        for v in ["v1", "v2"] {
            std::fs::create_dir_all(root.join(v).join("links")).unwrap();
            std::fs::create_dir_all(root.join(v).join("maps")).unwrap();
            std::fs::write(root.join(v).join("links/connect4"), b"").unwrap();
            std::fs::write(root.join(v).join("maps/SERVICES"), b"").unwrap();
        }
        let others = other_versions(&root, "v2").unwrap();
        assert_eq!(others, vec![root.join("v1")]);
        assert_eq!(remove(&others[0]).unwrap(), 2);
        assert!(!root.join("v1").exists() && root.join("v2").exists());
        assert_eq!(remove(&root).unwrap(), 2);
        assert!(!root.exists());
        assert_eq!(remove(&root).unwrap(), 0);
    }
}
