//! Member offsets of kernel structs from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so that programs which must read a kernel
//! struct get its layout at load time instead of compiling one kernel's in.
//!
//! Only what offsets need is parsed: the type section's records (to skip
//! them correctly), struct/union members, and names. Format:
//! include/uapi/linux/btf.h, Documentation/bpf/btf.rst.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated")]
    Truncated,
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("struct {0} not found in BTF")]
    NoStruct(String),
    #[error("member {member} not found in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits from the start of the containing struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Composite {
    members: Vec<Member>,
}

/// The structs and unions of a BTF blob, by type id.
#[derive(Debug, Default)]
pub struct Btf {
    composites: HashMap<u32, Composite>,
    by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated)
}

impl Btf {
    pub fn from_sys_fs() -> std::io::Result<Result<Self, BtfError>> {
        Ok(Self::parse(&std::fs::read("/sys/kernel/btf/vmlinux")?))
    }

    /// Parses little-endian BTF (what x86_64 and arm64 kernels expose).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if u16_at(b, 0)? != MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated)?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated)?;
        let name = |off: u32| -> String {
            let start = off as usize;
            strings
                .get(start..)
                .and_then(|s| s.split(|&c| c == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        let mut btf = Btf::default();
        let mut pos = 0;
        let mut id = 1u32;
        while pos < types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31 == 1;
            pos += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let offset = u32_at(types, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(types, m)?),
                            type_id: u32_at(types, m + 4)?,
                            // With kflag the high 8 bits are a bitfield size.
                            bit_offset: if kflag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    let n = name(name_off);
                    if kind == KIND_STRUCT && !n.is_empty() {
                        btf.by_name.entry(n.clone()).or_insert(id);
                    }
                    btf.composites.insert(id, Composite { members });
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            pos += extra;
            id += 1;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in `struct strukt`, looking through
    /// anonymous struct and union members (as C does).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(id, member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    fn find(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let c = self.composites.get(&id)?;
        for m in &c.members {
            if m.name == member {
                return Some(base_bits + m.bit_offset);
            }
        }
        for m in c.members.iter().filter(|m| m.name.is_empty()) {
            // An anonymous member is a struct or union (possibly behind
            // modifiers, which anonymous members do not use in practice).
            if let Some(bits) = self.find(m.type_id, member, base_bits + m.bit_offset, depth + 1) {
                return Some(bits);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: struct outer { int a; union { int b; struct { int c; int d; }; }; }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0".to_vec();
        let s = |name: &str| -> u32 {
            let pos = strings
                .windows(name.len() + 1)
                .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
                .unwrap();
            pos as u32
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: int (size 4) + 4 bytes of encoding.
        push(s("int"));
        push(KIND_INT << 24);
        push(4);
        push(32);
        // 2: anonymous struct { int c @0; int d @32 }.
        push(0);
        push((KIND_STRUCT << 24) | 2);
        push(8);
        push(s("c"));
        push(1);
        push(0);
        push(s("d"));
        push(1);
        push(32);
        // 3: anonymous union { int b; struct 2; }.
        push(0);
        push((KIND_UNION << 24) | 2);
        push(8);
        push(s("b"));
        push(1);
        push(0);
        push(0);
        push(2);
        push(0);
        // 4: struct outer { int a @0; union 3 @64 }.
        push(s("outer"));
        push((KIND_STRUCT << 24) | 2);
        push(16);
        push(s("a"));
        push(1);
        push(0);
        push(0);
        push(3);
        push(64);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1); // version
        b.push(0); // flags
        b.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        b.extend_from_slice(&0u32.to_le_bytes()); // type_off
        b.extend_from_slice(&(types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(types.len() as u32).to_le_bytes()); // str_off
        b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&types);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn offsets_through_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "e"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(Btf::parse(b"").unwrap_err(), BtfError::Truncated);
        assert_eq!(Btf::parse(&[0u8; 32]).unwrap_err(), BtfError::BadHeader);
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn the_running_kernel_has_sock_common() {
        let btf = match Btf::from_sys_fs() {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("no /sys/kernel/btf/vmlinux here; skipping");
                return;
            }
            Err(err) => panic!("cannot read /sys/kernel/btf/vmlinux: {err}"),
            // The kernel's BTF is there: failing to parse it is a bug.
            Ok(parsed) => parsed.expect("the running kernel's BTF parses"),
        };
        // These have been at the start of struct sock_common for years.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member_offset("sock_common", "skc_family").unwrap(), 16);
        assert!(btf.member_offset("sock_common", "skc_v6_daddr").unwrap() > 16);
        // A socket's network namespace, for listeners per namespace.
        assert!(btf.member_offset("sock_common", "skc_net").unwrap() > 16);
        btf.member_offset("net", "ns").unwrap();
        btf.member_offset("ns_common", "inum").unwrap();
    }
}
