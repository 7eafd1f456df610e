//! The maps the agent reads, taken out of the loaded object.

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray, RingBuf},
};
use weft_common::{
    SockTuple,
    conn::TcpConn,
    drop::{DropKey, DropStats},
    udp::UdpFlow,
};

use super::LoadError;

/// The maps the agent reads, taken out of the object so that each can be
/// handed to the one task that owns it.
pub struct ProbeMaps {
    pub events: RingBuf<MapData>,
    pub tcp_conns: HashMap<MapData, u64, TcpConn>,
    pub udp_flows: HashMap<MapData, SockTuple, UdpFlow>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drop_reasons: PerCpuArray<MapData, u64>,
    /// Dropped packets by address pair and reason.
    pub drop_flows: HashMap<MapData, DropKey, DropStats>,
    /// Payload snippets, when L7 capture is on.
    pub data: Option<RingBuf<MapData>>,
    /// Runs of the tracing programs the kernel skipped.
    pub recursion: super::recursion::RecursionMisses,
}

/// Takes the maps out of the object, each for the one task that owns it.
pub fn take(
    ebpf: &mut Ebpf,
    capture: bool,
    recursion: super::recursion::RecursionMisses,
) -> Result<ProbeMaps, LoadError> {
    Ok(ProbeMaps {
        recursion,
        events: convert(ebpf, "EVENTS", RingBuf::try_from)?,
        tcp_conns: convert(ebpf, "TCP_CONNS", HashMap::try_from)?,
        udp_flows: convert(ebpf, "UDP_FLOWS", HashMap::try_from)?,
        counters: convert(ebpf, "COUNTERS", PerCpuArray::try_from)?,
        drop_reasons: convert(ebpf, "DROP_REASONS", PerCpuArray::try_from)?,
        drop_flows: convert(ebpf, "DROP_FLOWS", HashMap::try_from)?,
        data: if capture {
            Some(convert(ebpf, "DATA", RingBuf::try_from)?)
        } else {
            None
        },
    })
}

fn convert<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    into: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    into(map).map_err(|source| LoadError::Map { name, source })
}
