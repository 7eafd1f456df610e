//! Which programs run on raw tracepoints, and attaching them with their
//! tracepoint fallback.
//!
//! The kernel skips a tracepoint's BPF program when another BPF program
//! is already running on the CPU: a softirq (a segment received, a timer
//! retransmitting, a packet freed) that interrupts a syscall's capture
//! program loses its event (counted from 6.7 as `recursion_misses`). A
//! raw tracepoint's program is not skipped for another program (from 6.2
//! only for a run inside its own). So every program that runs in softirq
//! sits on the raw tracepoint where the kernel's BTF gives the layouts it
//! reads, and on the tracepoint's record otherwise (see
//! ebpf/probes/src/tcp_state.rs, tcp_probe.rs, resets.rs, drops.rs).

use weft_common::config::{NO_FIELD, SkbOffsets, SockOffsets, TracepointOffsets};

use super::{
    LoadError,
    attach::{Attached, Need},
};
use aya::Ebpf;

/// Set (to anything), every program with a tracepoint fallback reads the
/// tracepoint's record, as on a kernel without BTF.
pub const FORCE_TRACEPOINTS: &str = "WEFT_FORCE_TRACEPOINTS";

/// The raw programs this kernel can run, from the layouts BTF gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawChoice {
    /// `weft_tcp_state`: the socket's family and protocol.
    pub lifecycle: bool,
    /// `weft_tcp_probe`: `tcp_sock.srtt_us`.
    pub rtt: bool,
    /// `weft_tcp_retrans`: reads nothing but its argument.
    pub retransmits: bool,
    /// `weft_rst_send`, `weft_rst_recv`: the socket's addresses, and the
    /// headers of the packet a reset answers.
    pub resets: bool,
    /// The `kfree_skb` program for this kernel's arguments: the packet's
    /// EtherType and headers.
    pub drops: Option<&'static str>,
}

impl RawChoice {
    /// What `sock` and `skb` allow, with the `kfree_skb` program chosen by
    /// the arguments its record shows (`reason` from 5.17, `rx_sk` from
    /// 6.12: the record and `TP_PROTO` gained them together).
    pub fn new(sock: &SockOffsets, skb: &SkbOffsets, record: &TracepointOffsets) -> Self {
        if std::env::var_os(FORCE_TRACEPOINTS).is_some() {
            log::warn!("{FORCE_TRACEPOINTS} is set: no program runs on a raw tracepoint");
            return Self::default();
        }
        // The reset and drop programs read the packet's IP header; the drop
        // programs its EtherType too.
        let ip_header = skb.head != NO_FIELD && skb.network_header != NO_FIELD;
        let packet = ip_header && skb.protocol != NO_FIELD;
        let drops = match (packet, record.drop_reason, record.drop_rx_sk) {
            (false, _, _) => None,
            (true, NO_FIELD, _) => Some("weft_skb_drop2"),
            (true, _, NO_FIELD) => Some("weft_skb_drop3"),
            (true, _, _) => Some("weft_skb_drop"),
        };
        let socket = sock.family != NO_FIELD && sock.protocol != NO_FIELD;
        Self {
            lifecycle: socket,
            resets: socket && sock.state != NO_FIELD && ip_header,
            rtt: sock.tcp_srtt_us != NO_FIELD,
            retransmits: true,
            drops,
        }
    }
}

/// Attaches `raw` to the raw tracepoint `point` when given, else (or when
/// the kernel refuses it) `fallback`, when given, to the tracepoint
/// `category:point`. Whether either was attached.
pub fn attach_either(
    ebpf: &mut Ebpf,
    attached: &mut Attached,
    need: Need,
    (raw, fallback): (Option<&'static str>, Option<&'static str>),
    (category, point): (&str, &str),
) -> Result<bool, LoadError> {
    if let Some(raw) = raw
        && attached.raw_tracepoint(ebpf, Need::Optional, raw, point)?
    {
        return Ok(true);
    }
    match fallback {
        Some(fallback) => attached.tracepoint(ebpf, need, fallback, category, point),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skb() -> SkbOffsets {
        SkbOffsets {
            head: 200,
            network_header: 190,
            protocol: 180,
            _pad: 0,
        }
    }

    #[test]
    fn the_drop_program_follows_the_records_arguments() {
        let mut record = TracepointOffsets::ABSENT;
        let sock = SockOffsets::ABSENT;
        assert_eq!(
            RawChoice::new(&sock, &skb(), &record).drops,
            Some("weft_skb_drop2")
        );
        record.drop_reason = 36;
        assert_eq!(
            RawChoice::new(&sock, &skb(), &record).drops,
            Some("weft_skb_drop3")
        );
        record.drop_rx_sk = 40;
        assert_eq!(
            RawChoice::new(&sock, &skb(), &record).drops,
            Some("weft_skb_drop")
        );
        let no_protocol = SkbOffsets {
            protocol: NO_FIELD,
            ..skb()
        };
        assert_eq!(RawChoice::new(&sock, &no_protocol, &record).drops, None);
    }

    #[test]
    fn without_btf_only_the_retransmits_are_raw() {
        let choice = RawChoice::new(
            &SockOffsets::ABSENT,
            &SkbOffsets::ABSENT,
            &TracepointOffsets::ABSENT,
        );
        assert_eq!(
            choice,
            RawChoice {
                retransmits: true,
                ..RawChoice::default()
            }
        );
    }
}
