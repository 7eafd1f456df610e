//! Addresses from the kernel's tuples, and the key that names a flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use weft_common::{AF_INET6, SockTuple};

use super::record::Transport;

/// A flow, named by its client and server. Both ends of a connection on
/// this node map to the same key, which is how they are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// The address of one side of a tuple. IPv4-mapped IPv6 addresses (dual
/// stack sockets) become IPv4 so that both ends of a connection agree.
pub fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*bytes);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// (local, remote) socket addresses of a tuple.
pub fn endpoints(t: &SockTuple) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip(t.family, &t.local_addr), t.local_port),
        SocketAddr::new(ip(t.family, &t.remote_addr), t.remote_port),
    )
}

/// The flow key of a socket's tuple, given whether the socket is the
/// client (it connected, or sent the first datagram).
pub fn key(transport: Transport, t: &SockTuple, local_is_client: bool) -> FlowKey {
    let (local, remote) = endpoints(t);
    let (client, server) = if local_is_client {
        (local, remote)
    } else {
        (remote, local)
    };
    FlowKey {
        transport,
        client,
        server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::AF_INET;

    #[test]
    fn both_ends_share_a_key() {
        let client = SockTuple {
            local_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_port: 40000,
            remote_port: 80,
            family: AF_INET,
            _pad: 0,
        };
        let server = SockTuple {
            local_addr: client.remote_addr,
            remote_addr: client.local_addr,
            local_port: 80,
            remote_port: 40000,
            ..client
        };
        let a = key(Transport::Tcp, &client, true);
        assert_eq!(a, key(Transport::Tcp, &server, false));
        assert_eq!(a.server, "10.0.0.2:80".parse().unwrap());
    }

    #[test]
    fn mapped_v6_is_v4() {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(ip(AF_INET6, &b), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            ip(AF_INET6, &Ipv6Addr::LOCALHOST.octets()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }
}
