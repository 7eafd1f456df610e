//! Leftovers of a predecessor that crashed.
//!
//! weft attaches every observation program through a BPF link or perf
//! event owned by a file descriptor of the agent process, and pins none of
//! them, so the kernel detaches them when the process dies, even by
//! SIGKILL. Pins below `<bpffs>/weft` other than steering's (which are
//! meant to outlive the agent, see `steer/pins.rs`) are removed at start.

use std::{io, path::Path};

/// Where weft would pin objects under bpffs.
pub const PIN_DIR: &str = "weft";

/// Steering's pins (`<bpffs>/weft/steer`) outlive the agent on purpose:
/// the steering module adopts or removes them, never this cleanup.
const KEEP: &str = crate::steer::pins::STEER_DIR;

/// Removes everything pinned below `<bpffs>/weft` but steering's pins.
/// Returns how many pins were removed.
pub fn remove_stale_pins(bpffs: &Path) -> io::Result<usize> {
    let dir = bpffs.join(PIN_DIR);
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == KEEP {
            continue;
        }
        if path.is_dir() {
            remove_tree(&path, &mut removed)?;
        } else {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    if !dir.join(KEEP).exists() {
        std::fs::remove_dir(&dir)?;
    }
    if removed == 0 {
        return Ok(0);
    }
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

    #[test]
    fn steering_pins_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let steer = root.path().join(PIN_DIR).join(KEEP).join("v1");
        std::fs::create_dir_all(&steer).unwrap();
        std::fs::write(steer.join("link"), b"").unwrap();
        std::fs::write(root.path().join(PIN_DIR).join("prog"), b"").unwrap();
        assert_eq!(remove_stale_pins(root.path()).unwrap(), 1);
        assert!(steer.join("link").exists());
    }
}
