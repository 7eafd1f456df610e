//! Which processes run Go, whose goroutines move between threads: a thread
//! that read a request is not the one that goes on serving it, so traces
//! never tie what a Go process's thread sends to what it read
//! (trace/nesting.rs). Known by the `.go.buildinfo` section that every Go
//! binary (1.13 and later) carries, read from `/proc/PID/exe` (which also
//! reaches a container's binary).

use std::{collections::HashMap, fs::File, io, os::unix::fs::FileExt, path::Path};

/// How long an answer is kept: a pid may be reused by another program.
const KEEP_NS: u64 = 60_000_000_000;
/// Processes remembered at most (beyond, all are forgotten at once).
const PROCESSES: usize = 4096;

#[derive(Default)]
pub struct Runtimes {
    go: HashMap<u32, (bool, u64)>,
}

impl Runtimes {
    /// Whether process `pid` runs a Go binary; a process that cannot be
    /// read (gone already) counts as Go, so nothing is tied for it.
    pub fn is_go(&mut self, pid: u32, now_ns: u64) -> bool {
        if let Some((go, at)) = self.go.get(&pid)
            && now_ns.saturating_sub(*at) <= KEEP_NS
        {
            return *go;
        }
        if self.go.len() >= PROCESSES {
            self.go.clear();
        }
        let exe = format!("/proc/{pid}/exe");
        let go = has_go_buildinfo(Path::new(&exe)).unwrap_or(true);
        self.go.insert(pid, (go, now_ns));
        go
    }
}

/// Whether the ELF file at `path` has a `.go.buildinfo` section.
pub fn has_go_buildinfo(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)?;
    // 64-bit little-endian ELF only (the targets weft runs on).
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(false);
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u64;
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&header, 0x28),
        u16_at(&header, 0x3a),
        u16_at(&header, 0x3c),
        u16_at(&header, 0x3e),
    );
    if shentsize < 64 || shstrndx >= shnum {
        return Ok(false);
    }
    let mut sections = vec![0u8; (shentsize * shnum) as usize];
    file.read_exact_at(&mut sections, shoff)?;
    let section = |i: u64| &sections[(i * shentsize) as usize..][..64];
    let names = section(shstrndx);
    let (names_at, names_len) = (u64_at(names, 0x18), u64_at(names, 0x20).min(1 << 20));
    let mut strings = vec![0u8; names_len as usize];
    file.read_exact_at(&mut strings, names_at)?;
    let wanted = b".go.buildinfo\0";
    Ok((0..shnum).any(|i| {
        let name = u32::from_le_bytes(section(i)[..4].try_into().expect("4 bytes")) as usize;
        strings.get(name..name + wanted.len()) == Some(wanted)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file whose sections are named `names`.
    fn elf(names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut offsets = Vec::new();
        for n in names.iter().chain([&".shstrtab"]) {
            offsets.push(strings.len() as u32);
            strings.extend(n.as_bytes());
            strings.push(0);
        }
        let shnum = offsets.len() as u16;
        let strings_at = 64u64;
        let shoff = strings_at + strings.len() as u64;
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&(shnum - 1).to_le_bytes());
        f.extend(&strings);
        for name in offsets {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&strings_at.to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(strings.len() as u64).to_le_bytes());
            f.extend(sh);
        }
        f
    }

    fn check(bytes: &[u8]) -> bool {
        let dir = std::env::temp_dir().join(format!("weft-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("elf-{}", bytes.len()));
        std::fs::write(&path, bytes).expect("write");
        let go = has_go_buildinfo(&path).expect("read");
        std::fs::remove_file(&path).expect("remove");
        // The directory is this test process's own; nothing left in /tmp.
        let _ = std::fs::remove_dir(&dir);
        go
    }

    #[test]
    fn a_go_binary_is_told_by_its_buildinfo_section() {
        assert!(check(&elf(&[".text", ".go.buildinfo", ".data"])));
        assert!(!check(&elf(&[".text", ".go.buildinfo.x", ".data"])));
        assert!(!check(&elf(&[".text", ".data"])));
        assert!(!check(
            b"#!/bin/sh\n# not an ELF file at all, and longer than an ELF header is\nexit 0\n"
        ));
        // This test's own binary is Rust, not Go.
        assert!(!has_go_buildinfo(Path::new("/proc/self/exe")).expect("read self"));
    }

    #[test]
    fn a_process_that_cannot_be_read_counts_as_go() {
        let mut r = Runtimes::default();
        assert!(r.is_go(u32::MAX - 1, 0));
        assert!(!r.is_go(std::process::id(), 0));
    }
}
