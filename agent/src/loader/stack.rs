//! The verifier's stack limit, checked on the built object before any
//! kernel sees it.
//!
//! Every kernel before 6.17 (and every kernel for programs without a
//! private stack) refuses a program whose stack, added up along its
//! deepest chain of BPF-to-BPF calls, exceeds 512 bytes, each frame
//! rounded up to 32 bytes ("combined stack size of 2 calls is 672. Too
//! large"). Newer kernels give tracing programs a private stack and load
//! them anyway, so a regression would go unnoticed on a development
//! machine: this module computes each program's combined stack from the
//! object's instructions the way the verifier does, and the test below
//! holds every program to the limit.
//!
//! A function's stack depth is the lowest frame-pointer offset its code
//! reaches: directly (`*(u64 *)(r10 - 8)`) or through a register derived
//! from r10 (`r1 = r10; r1 += -40`, then passed to a helper or used for a
//! load or store). The scan follows registers in program order, without
//! following jumps; LLVM derives stack pointers next to their use, so this
//! matches the verifier's figures (checked against its "stack depth"
//! line on 6.1 and 6.12).

use std::collections::BTreeMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolKind};

/// The verifier's limit on a program's combined stack (MAX_BPF_STACK).
pub const MAX_STACK: u32 = 512;

/// One program's stack: the frames of its deepest call chain.
#[derive(Debug)]
pub struct ProgramStack {
    pub name: String,
    /// (function, its own stack depth in bytes), outermost first.
    pub chain: Vec<(String, u32)>,
    /// Sum of the frames, each rounded up to 32 bytes as the verifier does.
    pub combined: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot parse the eBPF object: {0}")]
    Parse(#[from] object::Error),
    #[error("call at {section}+{offset:#x} goes to no known function")]
    UnknownCallee { section: String, offset: u64 },
    #[error("the call graph of {0} is recursive (the verifier refuses it)")]
    Recursive(String),
}

/// A function of the object: where its code is, and whom it calls.
struct Function {
    name: String,
    depth: u32,
    /// (section index, offset) of each callee.
    callees: Vec<(usize, u64)>,
}

const BPF_JMP_CALL: u8 = 0x85;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_LD_IMM64: u8 = 0x18;
const FP: usize = 10;

/// Combined stacks of every program (function outside `.text`).
pub fn program_stacks(object_bytes: &[u8]) -> Result<Vec<ProgramStack>, StackError> {
    let file = object::File::parse(object_bytes)?;
    let mut functions: BTreeMap<(usize, u64), Function> = BTreeMap::new();
    for sym in file.symbols() {
        let (Some(section), SymbolKind::Text) = (sym.section_index(), sym.kind()) else {
            continue;
        };
        if sym.size() == 0 {
            continue;
        }
        let sec = file.section_by_index(section)?;
        let code = sec.data()?;
        let start = sym.address() - sec.address();
        let end = (start + sym.size()).min(code.len() as u64);
        let body = &code[start as usize..end as usize];
        let relocs: BTreeMap<u64, RelocationTarget> = sec
            .relocations()
            .map(|(off, r)| (off, r.target()))
            .collect();
        let callees = calls(
            &file,
            section,
            start,
            body,
            &relocs,
            sec.name().unwrap_or("?"),
        )?;
        functions.insert(
            (section.0, start),
            Function {
                name: sym.name()?.to_owned(),
                depth: frame_depth(body),
                callees,
            },
        );
    }
    let mut out = Vec::new();
    for ((section, _), f) in &functions {
        if file.section_by_index(SectionIndex(*section))?.name()? == ".text" {
            continue;
        }
        let mut chain = Vec::new();
        let combined = deepest(&functions, f, &mut Vec::new(), &mut chain)?;
        chain.reverse();
        out.push(ProgramStack {
            name: f.name.clone(),
            chain,
            combined,
        });
    }
    Ok(out)
}

/// The verifier's rounding of one frame.
fn rounded(depth: u32) -> u32 {
    depth.max(1).div_ceil(32) * 32
}

/// The deepest chain below `f` (inclusive); `chain` receives its frames
/// innermost first.
fn deepest(
    functions: &BTreeMap<(usize, u64), Function>,
    f: &Function,
    path: &mut Vec<String>,
    chain: &mut Vec<(String, u32)>,
) -> Result<u32, StackError> {
    if path.contains(&f.name) {
        return Err(StackError::Recursive(f.name.clone()));
    }
    path.push(f.name.clone());
    let mut best = (0, Vec::new());
    for key in &f.callees {
        let callee = &functions[key];
        let mut sub = Vec::new();
        let total = deepest(functions, callee, path, &mut sub)?;
        if total > best.0 {
            best = (total, sub);
        }
    }
    path.pop();
    chain.extend(best.1);
    chain.push((f.name.clone(), f.depth));
    Ok(best.0 + rounded(f.depth))
}

/// The functions `body` (at `start` in `section`) calls.
fn calls(
    file: &object::File<'_>,
    section: SectionIndex,
    start: u64,
    body: &[u8],
    relocs: &BTreeMap<u64, RelocationTarget>,
    section_name: &str,
) -> Result<Vec<(usize, u64)>, StackError> {
    let mut out = Vec::new();
    for (at, insn) in instructions(body) {
        if insn[0] != BPF_JMP_CALL || insn[1] >> 4 != BPF_PSEUDO_CALL {
            continue;
        }
        let offset = start + at;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) as i64;
        let unknown = || StackError::UnknownCallee {
            section: section_name.to_owned(),
            offset,
        };
        let target = match relocs.get(&offset) {
            Some(RelocationTarget::Symbol(index)) => {
                let sym = file.symbol_by_index(*index)?;
                let sec_index = sym.section_index().ok_or_else(unknown)?;
                let sec_addr = file.section_by_index(sec_index)?.address();
                let base = sym.address() - sec_addr;
                // A call through the section symbol carries the function's
                // place in the immediate, as in a call within one section.
                let addr = if sym.kind() == SymbolKind::Section {
                    (base as i64 + (imm + 1) * 8) as u64
                } else {
                    base
                };
                (sec_index.0, addr)
            }
            Some(_) => return Err(unknown()),
            None => (section.0, (offset as i64 + 8 + imm * 8) as u64),
        };
        out.push(target);
    }
    Ok(out)
}

/// The function's own stack depth (see the module docs).
fn frame_depth(body: &[u8]) -> u32 {
    // Offset from r10 each register holds, when it holds one.
    let mut fp: [Option<i64>; 11] = [None; 11];
    fp[FP] = Some(0);
    let mut lowest = 0i64;
    for (_, insn) in instructions(body) {
        let code = insn[0];
        let dst = (insn[1] & 0xf) as usize;
        let src = (insn[1] >> 4) as usize;
        let off = i16::from_le_bytes([insn[2], insn[3]]) as i64;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) as i64;
        if dst > FP || src > FP {
            continue;
        }
        let mut reach = |o: i64| lowest = lowest.min(o);
        match code & 0x07 {
            // LDX: a load through a stack pointer.
            0x01 => {
                if let Some(o) = fp[src] {
                    reach(o + off);
                }
                fp[dst] = None;
            }
            // ST, STX: a store through a stack pointer.
            0x02 | 0x03 => {
                if let Some(o) = fp[dst] {
                    reach(o + off);
                }
            }
            // ALU64: follow moves and constant adds of stack pointers.
            0x07 => {
                let from_reg = code & 0x08 != 0;
                fp[dst] = match (code & 0xf0, from_reg) {
                    (0xb0, true) => fp[src],
                    (0x00, false) => fp[dst].map(|o| o + imm),
                    (0x10, false) => fp[dst].map(|o| o - imm),
                    _ => None,
                };
                if dst != FP
                    && let Some(o) = fp[dst]
                {
                    reach(o);
                }
            }
            // JMP: a call clobbers r0-r5.
            0x05 if code == BPF_JMP_CALL => {
                for r in fp.iter_mut().take(6) {
                    *r = None;
                }
            }
            0x05 | 0x06 => {}
            // LD (imm64) and 32-bit ALU leave no stack pointer behind.
            _ => fp[dst] = None,
        }
    }
    (-lowest) as u32
}

/// (byte offset, instruction) pairs; a 16-byte `lddw` counts once.
fn instructions(body: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let insn = body.get(at..at + 8)?;
        let here = at as u64;
        at += if insn[0] == BPF_LD_IMM64 { 16 } else { 8 };
        Some((here, insn))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_fits_the_verifiers_stack() {
        let stacks = program_stacks(super::super::PROBES_OBJECT).expect("parse the object");
        assert!(
            stacks.iter().any(|p| p.name == "weft_tcp_state"),
            "programs found: {stacks:?}"
        );
        let mut over = Vec::new();
        for p in &stacks {
            println!("{:<24} {:>4}  {:?}", p.name, p.combined, p.chain);
            if p.combined > MAX_STACK {
                over.push(format!("{} ({} bytes: {:?})", p.name, p.combined, p.chain));
            }
        }
        assert!(over.is_empty(), "over the 512-byte stack: {over:#?}");
    }

    #[test]
    fn frames_are_rounded_like_the_verifier() {
        // 6.1's verifier: "stack depth 408+232" -> "combined ... is 672".
        assert_eq!(rounded(408) + rounded(232), 672);
        assert_eq!(rounded(0), 32);
    }

    #[test]
    fn depth_follows_derived_stack_pointers() {
        let insn = |code: u8, regs: u8, off: i16, imm: i32| {
            let mut v = vec![code, regs];
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&imm.to_le_bytes());
            v
        };
        let mut body = Vec::new();
        // *(u64 *)(r10 - 16) = r1
        body.extend(insn(0x7b, 0x1a, -16, 0));
        // r2 = r10; r2 += -200
        body.extend(insn(0xbf, 0xa2, 0, 0));
        body.extend(insn(0x07, 0x02, 0, -200));
        assert_eq!(frame_depth(&body), 200);
    }
}
