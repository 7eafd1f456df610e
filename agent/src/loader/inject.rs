//! `traces.inject_traceparent`: the sk_msg program that writes a
//! `traceparent` into outgoing HTTP/1.x requests, and the sock_ops program
//! that hands it the sockets that connect (ebpf/probes/src/inject.rs).
//!
//! Opt-in, and it changes what applications send: when the kernel cannot
//! run it (no payload capture to report what it wrote, a verifier that
//! refuses it) nothing is injected, the feature row says why, and the
//! agent runs on without it.

use std::{fs::File, path::Path};

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
    features.push(FeatureStatus {
        name: FEATURE.into(),
        available: true,
        detail: "a traceparent is written into outgoing HTTP/1.x requests that carry none \
                 (sockets that connect from now on)"
            .into(),
    });
    Ok(Some(map))
}
