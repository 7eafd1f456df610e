//! Tracepoint record layouts from tracefs format files.
//!
//! The kernel programs read tracepoint fields at offsets found here rather
//! than compiled in, so one object works across kernels whose records
//! differ (fields are added over time: `kfree_skb` gained `rx_sk` in 6.10,
//! `tcp_probe` gained `skaddr` in 6.4).

use std::{collections::BTreeMap, path::Path};

use weft_common::config::{NO_FIELD, TracepointOffsets};

/// One tracepoint's fields: name -> (offset, size).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Format {
    fields: BTreeMap<String, (u16, u16)>,
    print_fmt: String,
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Self {
        let mut format = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                format.print_fmt = rest.trim().to_owned();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // "field:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;"
            let mut parts = rest.split(';').map(str::trim);
            let Some(decl) = parts.next() else { continue };
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let name = decl
                .rsplit([' ', '*'])
                .next()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("");
            if let (Some(offset), Some(size), false) = (offset, size, name.is_empty()) {
                format.fields.insert(name.to_owned(), (offset, size));
            }
        }
        format
    }

    /// The offset of `name` if it exists with the expected size.
    pub fn offset(&self, name: &str, size: u16) -> u16 {
        match self.fields.get(name) {
            Some(&(offset, s)) if s == size => offset,
            _ => NO_FIELD,
        }
    }

    /// Pairs of `__print_symbolic(REC->field, { value, "NAME" }, ...)`.
    pub fn symbols(&self) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        let Some(start) = self.print_fmt.find("__print_symbolic(") else {
            return out;
        };
        let mut rest = &self.print_fmt[start..];
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let item = &rest[open + 1..open + close];
            if let Some((value, name)) = item.split_once(',') {
                let value = value.trim();
                let parsed = value
                    .strip_prefix("0x")
                    .map(|hex| u32::from_str_radix(hex, 16))
                    .unwrap_or_else(|| value.parse());
                if let Ok(value) = parsed {
                    out.insert(value, name.trim().trim_matches('"').to_owned());
                }
            }
            rest = &rest[open + close + 1..];
        }
        out
    }
}

/// Reads `events/<category>/<name>/format` under the tracefs mount.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> std::io::Result<Format> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    Ok(Format::parse(&std::fs::read_to_string(path)?))
}

/// The formats of every tracepoint the programs use; a missing tracepoint
/// leaves its fields absent.
#[derive(Debug, Default)]
pub struct Formats {
    pub set_state: Format,
    pub send_length: Format,
    pub recv_length: Format,
    pub tcp_probe: Format,
    pub retransmit: Format,
    pub receive_reset: Format,
    pub send_reset: Format,
    pub kfree_skb: Format,
}

impl Formats {
    pub fn offsets(&self) -> TracepointOffsets {
        let s = &self.set_state;
        let l = &self.send_length;
        let p = &self.tcp_probe;
        let r = &self.receive_reset;
        let t = &self.send_reset;
        TracepointOffsets {
            state_skaddr: s.offset("skaddr", 8),
            state_oldstate: s.offset("oldstate", 4),
            state_newstate: s.offset("newstate", 4),
            state_sport: s.offset("sport", 2),
            state_dport: s.offset("dport", 2),
            state_family: s.offset("family", 2),
            state_protocol: s.offset("protocol", 2),
            state_saddr: s.offset("saddr", 4),
            state_daddr: s.offset("daddr", 4),
            state_saddr_v6: s.offset("saddr_v6", 16),
            state_daddr_v6: s.offset("daddr_v6", 16),
            len_sk: l.offset("sk", 8),
            len_protocol: l.offset("protocol", 2),
            len_ret: l.offset("ret", 4),
            len_flags: l.offset("flags", 4),
            probe_skaddr: p.offset("skaddr", 8),
            probe_srtt: p.offset("srtt", 4),
            retrans_skaddr: self.retransmit.offset("skaddr", 8),
            rrst_skaddr: r.offset("skaddr", 8),
            rrst_sport: r.offset("sport", 2),
            rrst_dport: r.offset("dport", 2),
            rrst_family: r.offset("family", 2),
            rrst_saddr: r.offset("saddr", 4),
            rrst_daddr: r.offset("daddr", 4),
            rrst_saddr_v6: r.offset("saddr_v6", 16),
            rrst_daddr_v6: r.offset("daddr_v6", 16),
            srst_skaddr: t.offset("skaddr", 8),
            srst_saddr: t.offset("saddr", 28),
            srst_daddr: t.offset("daddr", 28),
            drop_reason: self.kfree_skb.offset("reason", 4),
            drop_skbaddr: self.kfree_skb.offset("skbaddr", 8),
            drop_protocol: self.kfree_skb.offset("protocol", 2),
            drop_rx_sk: self.kfree_skb.offset("rx_sk", 8),
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_SKB: &str = "name: kfree_skb\nID: 1590\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:40;\tsize:4;\tsigned:0;\n\
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n\n\
print fmt: \"skbaddr=%p reason: %s\", REC->skbaddr, __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 3, \"NO_SOCKET\" }, { 0x10, \"HEX\" })\n";

    #[test]
    fn fields_and_offsets() {
        let f = Format::parse(KFREE_SKB);
        assert_eq!(f.offset("reason", 4), 36);
        assert_eq!(f.offset("skbaddr", 8), 8);
        assert_eq!(f.offset("rx_sk", 8), 24);
        assert_eq!(f.offset("saddr", 4), 40);
        // Wrong size or missing: absent.
        assert_eq!(f.offset("reason", 8), NO_FIELD);
        assert_eq!(f.offset("nope", 4), NO_FIELD);
    }

    #[test]
    fn symbolic_names() {
        let names = Format::parse(KFREE_SKB).symbols();
        assert_eq!(names.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
        assert_eq!(names.get(&3).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(names.get(&16).map(String::as_str), Some("HEX"));
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn garbage_is_empty() {
        let f = Format::parse("field:\nfield:x;offset:a;size:;\nprint fmt: __print_symbolic({");
        assert_eq!(f.offset("x", 0), NO_FIELD);
        assert!(f.symbols().is_empty());
    }
}
