//! `traces.inject_traceparent`: the sk_msg program that writes a
//! `traceparent` into outgoing HTTP/1.x requests, and the sock_ops program
//! that hands it the sockets that connect (ebpf/probes/src/inject.rs).
//!
//! Opt-in, and it changes what applications send: when the kernel cannot
//! run it (no payload capture to report what it wrote, a verifier that
//! refuses it) nothing is injected, the feature row says why, and the
//! agent runs on without it.

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, SockHash},
};
use weft_common::config::InjectConfig;

use super::{
    LoadError,
    attach::{Attached, Need},
};
use crate::status::FeatureStatus;

const FEATURE: &str = "traceparent injection";

/// What the programs need from the configuration: on or off, and the
/// sampling of the traces they start (the agent's own bound).
pub fn probe_config(enabled: bool, sampling_ratio: f64) -> InjectConfig {
    if !enabled {
        return InjectConfig::OFF;
    }
    let below = crate::trace::sample_threshold(sampling_ratio);
    InjectConfig {
        enabled: 1,
        sample_below_high: (below >> 32) as u32,
        sample_below_low: below as u32,
    }
}

/// Loads and attaches the injection programs when `requested`; the
/// socket map they share, to keep while they run.
pub fn attach(
    ebpf: &mut Ebpf,
    attached: &mut Attached,
    cgroup: (&File, &Path),
    (requested, capture): (bool, bool),
    features: &mut Vec<FeatureStatus>,
) -> Result<Option<SockHash<MapData, u64>>, LoadError> {
    if !requested {
        return Ok(None);
    }
    let unavailable = |features: &mut Vec<FeatureStatus>, detail: String| {
        log::warn!("traces.inject_traceparent is on but nothing is injected: {detail}");
        features.push(FeatureStatus {
            name: FEATURE.into(),
            available: false,
            detail,
        });
    };
    if !capture {
        unavailable(
            features,
            "L7 payload capture is off, and it reports what was injected".into(),
        );
        return Ok(None);
    }
    let map = ebpf
        .take_map("INJECT_SOCKS")
        .ok_or(LoadError::MissingMap("INJECT_SOCKS"))
        .and_then(|m| {
            SockHash::<MapData, u64>::try_from(m).map_err(|source| LoadError::Map {
                name: "INJECT_SOCKS",
                source,
            })
        })?;
    // The sk_msg program first: a socket the sock_ops program adds is
    // then seen from its first send.
    let writes = attached.sk_msg(
        ebpf,
        Need::Optional,
        "weft_inject_msg",
        (map.fd(), "INJECT_SOCKS"),
    )?;
    if !writes {
        unavailable(
            features,
            "the kernel refused weft_inject_msg (sk_msg)".into(),
        );
        return Ok(None);
    }
    if !attached.sock_ops(ebpf, Need::Optional, "weft_inject_sockops", cgroup)? {
        unavailable(
            features,
            "the kernel refused weft_inject_sockops (sock_ops)".into(),
        );
        return Ok(None);
    }
    let detail = "a traceparent is written into outgoing HTTP/1.x requests that carry none \
                  (sockets that connect from now on)";
    let detail = match fionread_in_map(&map) {
        Ok(FionRead::Right) => detail.to_owned(),
        Ok(FionRead::Zero) => {
            log::warn!("{FIONREAD_WRONG}");
            format!("{detail}; {FIONREAD_WRONG}")
        }
        Err(e) => {
            log::warn!("FIONREAD on an injected socket not checked: {e}");
            format!("{detail}; FIONREAD on injected sockets not checked ({e})")
        }
    };
    features.push(FeatureStatus {
        name: FEATURE.into(),
        available: true,
        detail,
    });
    Ok(Some(map))
}

/// What an application is told, on this kernel, when injection is on.
const FIONREAD_WRONG: &str = "on this kernel FIONREAD (SIOCINQ) answers 0 on a socket \
     injection sees while data waits to be read: an application that sizes its reads by \
     it (Java's InputStream.available, for one) may stall; turn \
     traces.inject_traceparent off for such applications, or move to a kernel that \
     answers it (see docs/traces.md)";

/// What FIONREAD answered on a socket in the injection's map.
#[derive(Debug, PartialEq, Eq)]
enum FionRead {
    /// The bytes waiting.
    Right,
    /// 0 while a byte waited.
    Zero,
}

/// Asks FIONREAD on a loopback connection of the agent's own, made once
/// the programs are attached: a socket in a socket map has the kernel's
/// sockmap receive path, and kernels with "bpf, sockmap: Fix FIONREAD for
/// sockmap" but not its follow-up answer from the map's own queue, which
/// stays empty without a verdict program (weft has none).
fn fionread_in_map(map: &SockHash<MapData, u64>) -> std::io::Result<FionRead> {
    let other = |what: &str| std::io::Error::other(what.to_owned());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let cookie = socket_cookie(&client)?;
    // The sock_ops program adds it as the connection is established,
    // before connect returns.
    if !map.keys().any(|key| key.is_ok_and(|k| k == cookie)) {
        return Err(other("the check's own socket is not in the socket map"));
    }
    server.write_all(b"x")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    if client.peek(&mut [0u8; 1])? != 1 {
        return Err(other("the check's byte did not arrive"));
    }
    let mut waiting: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int through the pointer, which points to
    // one.
    if unsafe { libc::ioctl(client.as_raw_fd(), libc::FIONREAD, &mut waiting) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(if waiting == 0 {
        FionRead::Zero
    } else {
        FionRead::Right
    })
}

/// The kernel's cookie of `socket` (the socket map's key).
fn socket_cookie(socket: &TcpStream) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 through the pointer, `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
