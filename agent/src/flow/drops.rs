//! `drop` records. The kernel counts dropped packets per address pair and
//! reason (`DROP_FLOWS`); each poll writes one record per pair whose count
//! grew, with the packets dropped since the previous poll. A flood of one
//! pair is one record per poll, not one per packet.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use weft_common::{
    AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
    config::DropFilter,
    drop::{DropKey, DropStats},
};

use super::record::Transport;

/// `enum skb_drop_reason` names under which `kfree_skb` frees packets that
/// were not lost, so neither a `drop` record nor `weft_packet_drops_total`
/// counts them (the kernel program leaves them out, docs/kernels.md#what-counts-as-a-drop):
/// - `NOT_DROPPED_YET`, `CONSUMED`: the "no drop" values of the enum;
/// - `QUEUE_PURGE`: a socket's queues emptied when the socket is destroyed
///   after its application closed it (net/core/stream.c,
///   `sk_stream_kill_queues` -> `__skb_queue_purge`, from
///   `inet_csk_destroy_sock`). Every TCP connection whose closing side
///   receives the peer's FIN after close() frees that FIN so.
/// - `TCP_RFC7323_PAWS_ACK` (6.15 and later): a pure ACK older than one
///   already processed, overtaken on the way (two CPUs' queues, as veth
///   and XPS have): the later one carried what it said, so nothing was
///   lost (net/ipv4/tcp_input.c `tcp_validate_incoming`; the kernel no
///   longer counts these as PAWS rejections). Rapid connections between
///   two namespaces make them.
pub const NOT_DROP_REASONS: &[&str] = &[
    "NOT_DROPPED_YET",
    "CONSUMED",
    "QUEUE_PURGE",
    "TCP_RFC7323_PAWS_ACK",
];

/// The reason of every drop on kernels whose `kfree_skb` reports none
/// (before 5.17). The kernel program records them under 0, the value
/// this name gets there.
pub const NOT_REPORTED: &str = "NOT_REPORTED_BY_KERNEL";

/// The running kernel's reason names from the `kfree_skb` format's
/// symbols; when the record has no reason field, 0 is
/// [`NOT_REPORTED`].
pub fn reason_names(symbols: BTreeMap<u32, String>, has_reason: bool) -> BTreeMap<u32, String> {
    if has_reason {
        return symbols;
    }
    BTreeMap::from([(0, NOT_REPORTED.to_owned())])
}

/// The kernel program's filter for the running kernel's reason values.
/// An unreported reason is taken as `NOT_SPECIFIED` is: a multicast
/// packet freed for no stated reason was not for this host.
pub fn drop_filter(names: &BTreeMap<u32, String>) -> DropFilter {
    let mut filter = DropFilter::NONE;
    for (&value, name) in names {
        if NOT_DROP_REASONS.contains(&name.as_str()) {
            filter.set_not_drop(value);
        }
        if name == "NOT_SPECIFIED" || name == NOT_REPORTED {
            filter.not_specified = value;
        }
    }
    filter
}

/// Packets of one address pair dropped for one reason since the last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub transport: Transport,
    /// The packet's sender and receiver.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `enum skb_drop_reason` value.
    pub reason: u32,
    pub packets: u64,
    /// When the last of them was dropped (CLOCK_MONOTONIC ns).
    pub last_ns: u64,
}

/// A drop not written yet, and how many polls it has waited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub dropped: Dropped,
    pub polls: u8,
}

/// What the previous poll saw of each pair, and the drops held back.
#[derive(Debug, Default)]
pub struct DropTracker {
    seen: HashMap<DropKey, u64>,
    held: Vec<Pending>,
}

impl DropTracker {
    /// The pairs whose count grew since the last poll. Pairs of other
    /// protocols than TCP and UDP are left to the per-reason metric.
    pub fn poll(&mut self, kernel: impl Iterator<Item = (DropKey, DropStats)>) -> Vec<Dropped> {
        let mut out = Vec::new();
        let mut now_seen = HashMap::with_capacity(self.seen.len());
        for (key, stats) in kernel {
            // An entry the LRU evicted and made again starts from zero.
            let before = self.seen.get(&key).copied().unwrap_or(0);
            let before = if stats.packets < before { 0 } else { before };
            now_seen.insert(key, stats.packets);
            if stats.packets == before {
                continue;
            }
            let transport = match key.protocol {
                IPPROTO_TCP => Transport::Tcp,
                IPPROTO_UDP => Transport::Udp,
                _ => continue,
            };
            out.push(Dropped {
                transport,
                src: SocketAddr::new(ip(&key, &key.src_addr), key.src_port),
                dst: SocketAddr::new(ip(&key, &key.dst_addr), key.dst_port),
                reason: key.reason,
                packets: stats.packets - before,
                last_ns: stats.last_ns,
            });
        }
        // Pairs the kernel evicted are forgotten here too.
        self.seen = now_seen;
        out
    }

    /// The drops held back at earlier polls (one poll older now), then
    /// those of this poll (`poll`).
    pub fn pending(&mut self, fresh: Vec<Dropped>) -> Vec<Pending> {
        let held = std::mem::take(&mut self.held).into_iter().map(|p| Pending {
            polls: p.polls.saturating_add(1),
            ..p
        });
        held.chain(
            fresh
                .into_iter()
                .map(|dropped| Pending { dropped, polls: 0 }),
        )
        .collect()
    }

    /// Keeps `pending` for the next poll.
    pub fn hold(&mut self, pending: Pending) {
        self.held.push(pending);
    }

    /// Entries the kernel map held at the last poll.
    pub fn entries(&self) -> u64 {
        self.seen.len() as u64
    }
}

fn ip(key: &DropKey, addr: &[u8; 16]) -> IpAddr {
    if key.family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

#[cfg(test)]
mod tests {
    use weft_common::AF_INET;

    use super::*;

    #[test]
    fn kernels_without_a_reason_name_every_drop_not_reported() {
        let symbols = BTreeMap::from([(2, "NOT_SPECIFIED".to_owned())]);
        assert_eq!(reason_names(symbols.clone(), true), symbols);
        let names = reason_names(BTreeMap::new(), false);
        assert_eq!(names, BTreeMap::from([(0, NOT_REPORTED.to_owned())]));
        let filter = drop_filter(&names);
        assert_eq!(filter.not_specified, 0);
        assert!(!filter.is_not_drop(0));
    }

    fn syn(reason: u32) -> DropKey {
        DropKey {
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40000,
            dst_port: 443,
            family: AF_INET,
            protocol: IPPROTO_TCP,
            _pad: 0,
            reason,
        }
    }

    fn stats(packets: u64) -> DropStats {
        DropStats {
            packets,
            last_ns: packets * 10,
        }
    }

    #[test]
    fn the_filter_marks_bookkeeping_reasons_of_this_kernel() {
        // Values as 6.18 numbers them; another kernel numbers them otherwise.
        let names: BTreeMap<u32, String> = [
            (1, "CONSUMED"),
            (2, "NOT_SPECIFIED"),
            (3, "NO_SOCKET"),
            (12, "NETFILTER_DROP"),
            (104, "QUEUE_PURGE"),
            (130, "TCP_RFC7323_PAWS"),
            (131, "TCP_RFC7323_PAWS_ACK"),
        ]
        .into_iter()
        .map(|(v, n)| (v, n.to_owned()))
        .collect();
        let filter = drop_filter(&names);
        assert!(filter.is_not_drop(1));
        assert!(filter.is_not_drop(104));
        assert!(filter.is_not_drop(131));
        for real in [2, 3, 12, 105, 130, 511, 512, u32::MAX] {
            assert!(!filter.is_not_drop(real), "{real}");
        }
        assert_eq!(filter.not_specified, 2);
        assert_eq!(drop_filter(&BTreeMap::new()), DropFilter::NONE);
    }

    #[test]
    fn each_poll_reports_the_growth_per_pair() {
        let mut t = DropTracker::default();
        let first = t.poll([(syn(12), stats(2))].into_iter());
        assert_eq!(
            first,
            [Dropped {
                transport: Transport::Tcp,
                src: "10.0.0.1:40000".parse().unwrap(),
                dst: "10.0.0.2:443".parse().unwrap(),
                reason: 12,
                packets: 2,
                last_ns: 20,
            }]
        );
        // Nothing new: nothing to report.
        assert!(t.poll([(syn(12), stats(2))].into_iter()).is_empty());
        // Three more, and a second reason for the same pair.
        let next = t.poll([(syn(12), stats(5)), (syn(3), stats(1))].into_iter());
        let packets: Vec<(u32, u64)> = next.iter().map(|d| (d.reason, d.packets)).collect();
        assert_eq!(packets.len(), 2);
        assert!(packets.contains(&(12, 3)) && packets.contains(&(3, 1)));
    }

    #[test]
    fn an_evicted_pair_made_again_starts_from_zero() {
        let mut t = DropTracker::default();
        t.poll([(syn(12), stats(7))].into_iter());
        assert!(t.poll(std::iter::empty()).is_empty());
        let again = t.poll([(syn(12), stats(1))].into_iter());
        assert_eq!(again[0].packets, 1);
    }

    #[test]
    fn other_protocols_get_no_record() {
        let mut t = DropTracker::default();
        let mut icmp = syn(12);
        icmp.protocol = 1;
        assert!(t.poll([(icmp, stats(1))].into_iter()).is_empty());
    }

    #[test]
    fn a_held_drop_comes_back_a_poll_older_before_the_new_ones() {
        let mut t = DropTracker::default();
        let first = t.poll([(syn(12), stats(1))].into_iter());
        let pending = t.pending(first);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].polls, 0);
        t.hold(pending[0].clone());
        let second = t.poll([(syn(12), stats(1)), (syn(3), stats(2))].into_iter());
        let pending = t.pending(second);
        let order: Vec<(u32, u8)> = pending
            .iter()
            .map(|p| (p.dropped.reason, p.polls))
            .collect();
        assert_eq!(order, [(12, 1), (3, 0)]);
        // Not held again: gone.
        assert!(t.pending(Vec::new()).is_empty());
    }
}
