//! Go's `crypto/tls` programs (ebpf/probes/src/go_tls.rs) on Go binaries.
//!
//! Go links its TLS into each binary: there is no shared library to
//! attach once, so each Go executable is attached on its own, when the
//! TLS watcher (tls.rs) first sees a process running it. A binary is
//! inspected once (by device and inode), reading only its headers, build
//! information, symbol table and the two functions' code:
//!
//! - its Go version, from the `.go.buildinfo` section: Go 1.18 or later
//!   (the register ABI the programs read came in 1.17; 1.18 is the first
//!   whose build information names its version inline);
//! - `crypto/tls.(*Conn).Read` and `Write` in the ELF symbol table: a
//!   binary stripped of it (`-ldflags=-s`) is refused, with the reason;
//! - where each function's body starts, past Go's stack check (an
//!   entry probe on the first instruction runs again after the stack
//!   grows);
//! - every `RET` instruction of `Read`, found by decoding its code from
//!   the start (an x86 decoder, not a byte scan: a probe
//!   on a byte inside another instruction would corrupt the program),
//!   where the return program goes (ebpf/probes/src/go_tls.rs says why
//!   not a uretprobe).
//!
//! x86-64 only: the registers the programs read are amd64's.

use std::{fs::File, path::Path};

use aya::{Ebpf, programs::uprobe::UProbeScope};
use object::{Object, ObjectSection, ObjectSymbol, read::ReadCache};

use crate::status::ProgramStatus;

/// The functions probed, their entry programs, and whether their returns
/// are (a write is recorded whole at its entry: ebpf/probes/src/go_tls.rs
/// says why).
const FUNCTIONS: [(&str, &str, bool); 2] = [
    ("crypto/tls.(*Conn).Read", "weft_go_tls_read", true),
    ("crypto/tls.(*Conn).Write", "weft_go_tls_write", false),
];
/// The program on each `RET` of `Read`.
const RETURN: &str = "weft_go_tls_return";
/// The oldest Go release covered: (major, minor).
const OLDEST: (u32, u32) = (1, 18);

/// Where to attach in one Go binary: per function, the file offset of its
/// entry and of each of its `RET`s.
#[derive(Debug, PartialEq, Eq)]
pub struct GoTls {
    pub version: String,
    pub functions: Vec<GoFunction>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct GoFunction {
    pub name: &'static str,
    pub program: &'static str,
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// What a binary is, for the TLS programs.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspected {
    /// Not a Go binary, or one without `crypto/tls`: nothing to do.
    NotGoTls,
    /// A Go binary with `crypto/tls` that cannot be attached, and why.
    Refused(String),
    Attachable(GoTls),
}

/// Inspects the executable at `path`.
pub fn inspect(path: &Path) -> Inspected {
    let Ok(file) = File::open(path) else {
        return Inspected::NotGoTls;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Inspected::NotGoTls;
    };
    let Some(version) = go_version(&elf) else {
        return Inspected::NotGoTls;
    };
    match attachable(&elf, &version) {
        Ok(Some(functions)) => Inspected::Attachable(GoTls { version, functions }),
        Ok(None) => Inspected::NotGoTls,
        Err(why) => Inspected::Refused(format!("{version}: {why}")),
    }
}

/// The functions to probe, `None` when the binary has no `crypto/tls`.
fn attachable<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    version: &str,
) -> Result<Option<Vec<GoFunction>>, String> {
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "{:?}: only x86-64 binaries are read",
            elf.architecture()
        ));
    }
    if elf.symbols().next().is_none() {
        return Err("no symbol table (stripped with -ldflags=-s)".into());
    }
    let mut found = Vec::new();
    for (name, program, probe_returns) in FUNCTIONS {
        let Some(symbol) = elf.symbols().find(|s| s.name() == Ok(name)) else {
            // A Go program that does not use crypto/tls has neither.
            return Ok(None);
        };
        found.push((
            name,
            program,
            probe_returns,
            symbol.address(),
            symbol.size(),
        ));
    }
    if !at_least(version, OLDEST) {
        return Err(format!(
            "Go before {}.{} is not read (its calling convention or build information differs)",
            OLDEST.0, OLDEST.1
        ));
    }
    let mut functions = Vec::new();
    for (name, program, probe_returns, address, size) in found {
        let (start, code) =
            function_code(elf, address, size).ok_or_else(|| format!("{name}: code not found"))?;
        let entry = start + (past_stack_check(&code, address) - address);
        let mut returns = Vec::new();
        if probe_returns {
            returns = self::returns(&code, address)
                .map_err(|at| format!("{name}: an instruction at {at:#x} does not decode"))?;
            if returns.is_empty() {
                return Err(format!("{name}: no RET instruction"));
            }
        }
        let returns = returns.iter().map(|r| start + (r - address)).collect();
        functions.push(GoFunction {
            name,
            program,
            entry,
            returns,
        });
    }
    Ok(Some(functions))
}

/// The Go version in the binary's build information (`go1.19.8`), or
/// `None` when there is none (not a Go binary, or one before Go 1.18,
/// whose build information holds pointers instead of the text).
fn go_version<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<String> {
    let section = elf.section_by_name(".go.buildinfo")?;
    let data = section.data().ok()?;
    build_info_version(data)
}

/// The version in a `.go.buildinfo` section: a 14-byte magic, the pointer
/// size, flags (bit 1: strings inline), 16 bytes of padding, then the
/// version as a varint length and its bytes.
fn build_info_version(data: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if data.get(..MAGIC.len())? != MAGIC || data.get(15)? & 2 == 0 {
        return Some("go1.17 or older".into()).filter(|_| data.starts_with(MAGIC));
    }
    let rest = data.get(32..)?;
    let (len, used) = uvarint(rest)?;
    let text = rest.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
    String::from_utf8(text.to_vec()).ok()
}

/// A Go `uvarint`: its value and how many bytes it took.
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Whether a version text (`go1.19.8`, `go1.22rc1`) is at least `oldest`.
fn at_least(version: &str, oldest: (u32, u32)) -> bool {
    let Some(numbers) = version.strip_prefix("go") else {
        return false;
    };
    let mut parts = numbers.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(a), Some(b)) if (a, b) >= oldest)
}

/// The file offset of a function at `address` and its `size` bytes.
fn function_code<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
    size: u64,
) -> Option<(u64, Vec<u8>)> {
    let section = elf.sections().find(|s| {
        let start = s.address();
        address >= start && address + size <= start + s.size()
    })?;
    let (file_start, _) = section.file_range()?;
    let entry = file_start + (address - section.address());
    let code = section.data_range(address, size).ok()??;
    Some((entry, code.to_vec()))
}

/// Where a Go function's body starts: after its stack check (`CMPQ
/// 0x10(R14), SP` or `LEAQ -N(SP), R12; CMPQ 0x10(R14), R12`, then `JBE`
/// to a call of `runtime.morestack` at the function's end, which jumps
/// back to the function's first instruction once the stack has grown).
/// An entry probe there runs once per call; one on the first instruction
/// would run again after each stack growth (and `Write`'s records its
/// buffer there). The function's start when it has no such check.
fn past_stack_check(code: &[u8], address: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let end = address + code.len() as u64;
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for _ in 0..3 {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        let target = instruction.near_branch_target();
        if instruction.mnemonic() == Mnemonic::Jbe && target > instruction.ip() && target < end {
            return instruction.next_ip();
        }
    }
    address
}

/// The addresses of the `RET` instructions in `code`, which starts at
/// `address`; the address of an instruction that does not decode is an
/// error (its boundaries, and so every later one, would be guesses).
fn returns(code: &[u8], address: u64) -> Result<Vec<u64>, u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut found = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(instruction.ip());
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            found.push(instruction.ip());
        }
    }
    Ok(found)
}

/// Attaches the programs to a Go binary (reached at `path`, shown as
/// `shown`): each function's entry program, and the return program on
/// each `RET` of those whose returns are probed. Each attachment, for `weft status`.
pub fn attach(
    ebpf: &mut Ebpf,
    path: &Path,
    shown: &Path,
    go: &GoTls,
) -> Result<Vec<ProgramStatus>, String> {
    let mut done = Vec::new();
    for function in &go.functions {
        super::tls::uprobe(ebpf, function.program)
            .and_then(|p| p.attach(function.entry, path, UProbeScope::AllProcesses))
            .map_err(|e| format!("{} at {}: {e}", function.program, function.name))?;
        done.push(status(function.program, shown, function.name, "entry"));
        for &at in &function.returns {
            super::tls::uprobe(ebpf, RETURN)
                .and_then(|p| p.attach(at, path, UProbeScope::AllProcesses))
                .map_err(|e| format!("{RETURN} at {} ({at:#x}): {e}", function.name))?;
        }
        if !function.returns.is_empty() {
            let returns = format!("{} returns", function.returns.len());
            done.push(status(RETURN, shown, function.name, &returns));
        }
    }
    Ok(done)
}

fn status(program: &str, path: &Path, function: &str, at: &str) -> ProgramStatus {
    ProgramStatus {
        name: program.into(),
        kind: "uprobe".into(),
        attach_point: format!("{}:{function} ({at})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_information_versions() {
        let mut data = b"\xff Go buildinf:\x08\x02".to_vec();
        data.resize(32, 0);
        data.push(8);
        data.extend(b"go1.19.8");
        data.push(0);
        assert_eq!(build_info_version(&data).as_deref(), Some("go1.19.8"));
        let mut old = b"\xff Go buildinf:\x08\x00".to_vec();
        old.resize(32, 0);
        assert_eq!(build_info_version(&old).as_deref(), Some("go1.17 or older"));
        assert_eq!(build_info_version(b"\x7fELF"), None);
    }

    #[test]
    fn versions_compared() {
        assert!(at_least("go1.18", (1, 18)));
        assert!(at_least("go1.19.8", (1, 18)));
        assert!(at_least("go1.22rc1", (1, 18)));
        assert!(at_least("go2.0", (1, 18)));
        assert!(!at_least("go1.17.13", (1, 18)));
        assert!(!at_least("go1.17 or older", (1, 18)));
        assert!(!at_least("devel", (1, 18)));
    }

    #[test]
    fn returns_are_decoded_not_scanned() {
        // mov $0xc3, %eax (b8 c3 00 00 00): a c3 byte that is no RET;
        // then ret (c3), int3 (cc), ret.
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0xcc, 0xc3];
        assert_eq!(returns(&code, 0x1000), Ok(vec![0x1005, 0x1007]));
        // A truncated instruction does not decode.
        assert_eq!(returns(&[0xc3, 0x48], 0x10), Err(0x11));
    }

    #[test]
    fn the_body_starts_past_the_stack_check() {
        // crypto/tls.(*Conn).Write in Go 1.19: leaq -0x68(%rsp),%r12;
        // cmp 0x10(%r14),%r12; jbe (to the function's end); sub $0xe8,%rsp.
        let mut code = vec![
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0, 0, 0, 0x48,
            0x81, 0xec, 0xe8, 0, 0, 0,
        ];
        code.resize(0x30, 0xcc);
        assert_eq!(past_stack_check(&code, 0x1000), 0x100f);
        // Read's: cmp 0x10(%r14),%rsp; jbe; sub $0x68,%rsp.
        let mut code = vec![0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0x48, 0x83, 0xec, 0x68];
        code.resize(0x20, 0xcc);
        assert_eq!(past_stack_check(&code, 0x1000), 0x1006);
        // No check (a NOSPLIT function): its start.
        assert_eq!(
            past_stack_check(&[0x48, 0x83, 0xec, 0x68, 0xc3], 0x1000),
            0x1000
        );
    }

    #[test]
    fn a_binary_without_go_is_not_go_tls() {
        assert_eq!(inspect(Path::new("/bin/sh")), Inspected::NotGoTls);
        assert_eq!(
            inspect(Path::new("/nonexistent/binary")),
            Inspected::NotGoTls
        );
    }
}
