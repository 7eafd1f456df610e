//! Leftovers of a predecessor that crashed.
//!
//! weft attaches every program through a BPF link or perf event owned by a
//! file descriptor of the agent process, and pins nothing, so the kernel
//! detaches everything when the process dies, even by SIGKILL. The only
//! state that could outlive it is a pin directory (from an older or
//! differently configured agent); it is removed at start.

use std::{io, path::Path};

/// Where weft would pin objects under bpffs.
pub const PIN_DIR: &str = "weft";

/// Removes `<bpffs>/weft` and everything pinned below it. Returns how many
/// pins were removed.
pub fn remove_stale_pins(bpffs: &Path) -> io::Result<usize> {
    let dir = bpffs.join(PIN_DIR);
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    remove_tree(&dir, &mut removed)?;
    log::warn!(
        "removed {removed} objects pinned by a previous weft agent under {}",
        dir.display()
    );
    Ok(removed)
}

fn remove_tree(dir: &Path, removed: &mut usize) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_tree(&path, removed)?;
        } else {
            // Unlinking a pin drops the reference it held.
            std::fs::remove_file(&path)?;
            *removed += 1;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_pin_tree() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(PIN_DIR).join("maps");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("EVENTS"), b"").unwrap();
        std::fs::write(root.path().join(PIN_DIR).join("prog"), b"").unwrap();
        assert_eq!(remove_stale_pins(root.path()).unwrap(), 2);
        assert!(!root.path().join(PIN_DIR).exists());
        assert_eq!(remove_stale_pins(root.path()).unwrap(), 0);
    }
}
