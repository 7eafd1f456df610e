//! The bodies of the agent's cargo-fuzz targets (`agent/fuzz`): what a user
//! or a client hands the agent, parsed as the agent parses it. Kept here so
//! that `cargo test` replays every input a fuzzer once crashed on
//! (`agent/fuzz/regressions/<target>/`). The parsers' targets are in
//! `weft_l7::fuzzing`.
//!
//! Compiled for tests and with the `fuzzing` feature, which only the fuzz
//! crate enables.

use std::time::{Duration, Instant};

use prost::Message;

use crate::api::proto;
use crate::config::Config;
use crate::flow::filter::FlowFilter;
use crate::flow::filter::test_support::tcp_record;
use crate::flow::store::{FlowStore, Range};
use crate::flow::top::{self, GroupBy};

/// A fuzz target: its name (the fuzz crate's binary) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[("config", config), ("flow_api_request", flow_api_request)];

/// A configuration file: parsed and checked as `weft agent --config` does
/// before anything is attached. Any text must give a configuration or an
/// error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_yaml(text) {
        let _ = config.validate();
    }
}

/// A flow API request as the agent receives it: the first byte picks the
/// message (`GetFlows` or `GetTop`), the rest is its protobuf encoding.
/// A decoded filter is checked, must survive the round trip the CLI makes
/// (filter to message to filter), and then selects from a small store.
pub fn flow_api_request(data: &[u8]) {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    let (filter, by) = if kind & 1 == 0 {
        let Ok(request) = proto::GetFlowsRequest::decode(message) else {
            return;
        };
        (request.filter, None)
    } else {
        let Ok(request) = proto::GetTopRequest::decode(message) else {
            return;
        };
        (request.filter, Some(request.by))
    };
    let filter = match filter.as_ref().map(FlowFilter::try_from) {
        None => FlowFilter::default(),
        Some(Ok(filter)) => filter,
        Some(Err(_)) => return,
    };
    let again = FlowFilter::try_from(&proto::FlowFilter::from(&filter))
        .expect("a checked filter's message is accepted again");
    assert_eq!(again, filter, "the filter changed on its round trip");
    select(&filter, by.as_deref());
}

/// Runs `filter` over a store holding a few records, as `weft flows` and
/// (with `by`) `weft top` ask it.
fn select(filter: &FlowFilter, by: Option<&str>) {
    let store = FlowStore::new(4);
    for _ in 0..3 {
        store.push(tcp_record());
    }
    let _ = store.query(filter, Range::default());
    let Some(Ok(by)) = by.map(GroupBy::parse) else {
        return;
    };
    let now = Instant::now();
    let found = store.window(filter, store.before_first(), store.before_first());
    let covered = now.saturating_duration_since(found.covered_from);
    let window = Duration::from_secs(10).as_secs_f64();
    let snapshot = top::snapshot(
        &found.observed,
        by,
        window,
        covered.as_secs_f64(),
        found.complete,
    );
    serde_json::to_string(&snapshot).expect("a top snapshot encodes");
}

/// Seeds for `flow_api_request`: requests the CLI sends, by seed file name
/// (kept in `fuzz/seeds/flow_api_request/`, checked by a test).
pub fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut filter = FlowFilter::default();
    filter.add_protocol("http").expect("protocol");
    filter.add_http_status("5xx").expect("status");
    let message = proto::FlowFilter::from(&filter);
    let flows = proto::GetFlowsRequest {
        filter: Some(message.clone()),
        follow: true,
        last: 20,
        ..Default::default()
    };
    let top = proto::GetTopRequest {
        filter: Some(message),
        window_ms: 10_000,
        by: "route".into(),
    };
    vec![
        ("flows", [&[0u8][..], &flows.encode_to_vec()].concat()),
        ("top", [&[1u8][..], &top.encode_to_vec()].concat()),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Every input a fuzzer crashed on, kept in `fuzz/regressions/<target>/`,
    /// runs through its target again.
    #[test]
    fn fuzz_regressions_stay_fixed() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            let (_, body) = TARGETS
                .iter()
                .find(|(target, _)| *target == name)
                .unwrap_or_else(|| panic!("{}: no fuzz target of that name", path.display()));
            for input in std::fs::read_dir(&path).unwrap() {
                body(&std::fs::read(input.unwrap().path()).unwrap());
            }
        }
    }

    /// The request seeds are what the code encodes today (`WEFT_BLESS=1`
    /// rewrites them), and the configuration seed is a valid file.
    #[test]
    fn seeds_are_current_and_pass_their_targets() {
        let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let dir = seeds.join("flow_api_request");
        for (name, seed) in request_seeds() {
            if std::env::var_os("WEFT_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(name), &seed).unwrap();
            }
            let kept = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(
                kept == seed,
                "seed {name} is stale: rerun with WEFT_BLESS=1"
            );
            flow_api_request(&seed);
        }
        let example = std::fs::read_to_string(seeds.join("config/full.yaml")).unwrap();
        Config::from_yaml(&example).unwrap().validate().unwrap();
        config(example.as_bytes());
    }
}
