//! `weft flows -o compact` and `-o dict`: a flow record as one line, as
//! `hubble observe` prints it, or as a block of `KEY: value` lines.

use super::flows::{endpoint, event};
use super::table;
use crate::flow::filter::verdict_name;
use crate::flow::record::{FlowEvent, FlowRecord, FlowType};

/// `06:21:07.123: curl[1234] 10.0.0.1:40512 -> nginx[999] 10.0.0.2:8080
/// tcp close FORWARDED (976.6KiB/244.1KiB, rtt 0.04ms, 1.83ms)`.
pub fn compact(record: &FlowRecord) -> String {
    let details = details(record);
    let mut line = format!(
        "{}: {} -> {} {} {}",
        clock(record),
        endpoint(&record.source),
        endpoint(&record.destination),
        event(record),
        verdict(record).to_uppercase(),
    );
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    line
}

/// The record as aligned `KEY: value` lines (each ending in a newline).
pub fn dict(record: &FlowRecord) -> String {
    let mut fields = vec![
        ("TIMESTAMP", record.time.clone()),
        ("SOURCE", endpoint(&record.source)),
        ("DESTINATION", endpoint(&record.destination)),
        (
            "TYPE",
            match record.flow_type {
                FlowType::L4 => "l4",
                FlowType::L7 => "l7",
            }
            .to_owned(),
        ),
        ("EVENT", event(record)),
        ("VERDICT", verdict(record)),
    ];
    let details = details(record);
    if !details.is_empty() {
        fields.push(("SUMMARY", details.join(", ")));
    }
    if let Some(service) = &record.service {
        fields.push(("SERVICE", service.name.clone()));
    }
    if let Some(policy) = &record.policy {
        fields.push(("POLICY", policy.clone()));
    }
    if let Some(trace) = &record.trace {
        fields.push(("TRACE", trace.trace_id.clone()));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(key, value)| format!("{key:>width$}: {value}\n"))
        .collect()
}

/// The line `-o dict` prints between two records.
pub const DICT_SEPARATOR: &str = "------------";

/// The record's time of day on the local clock (its RFC 3339 `time` if
/// that cannot be read).
pub(super) fn clock(record: &FlowRecord) -> String {
    humantime::parse_rfc3339_weak(&record.time)
        .ok()
        .and_then(table::local_clock)
        .unwrap_or_else(|| record.time.clone())
}

/// `forwarded`, `dropped(NO_SOCKET)`, ...
pub(super) fn verdict(record: &FlowRecord) -> String {
    match &record.drop_reason {
        Some(reason) => format!("{}({reason})", verdict_name(record.verdict)),
        None => verdict_name(record.verdict).to_owned(),
    }
}

/// What the record measured, only what it has: request/response sizes and
/// latency of an L7 record; the packets of a drop; bytes, RTT and duration
/// of a connection.
fn details(record: &FlowRecord) -> Vec<String> {
    let mut details = Vec::new();
    if record.event != FlowEvent::Drop && (record.bytes_sent > 0 || record.bytes_received > 0) {
        details.push(format!(
            "{}/{}",
            table::human_bytes(record.bytes_sent),
            table::human_bytes(record.bytes_received)
        ));
    }
    if record.flow_type == FlowType::L7 {
        if let Some(us) = record
            .l7
            .as_ref()
            .and_then(|l7| l7.get("latency_us"))
            .and_then(|v| v.as_u64())
        {
            details.push(format!("latency {}", table::human_duration_us(us)));
        }
        return details;
    }
    if record.event == FlowEvent::Drop {
        if let Some(packets) = record.packets_sent {
            details.push(format!("{packets} pkt"));
        }
        return details;
    }
    if let Some(srtt) = record.srtt_us {
        details.push(format!("rtt {}", table::millis_us(srtt)));
    }
    if record.duration_us > 0 {
        details.push(table::human_duration_us(record.duration_us));
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::filter::test_support::tcp_record;
    use crate::flow::record::Verdict;

    #[test]
    fn compact_is_one_line_like_hubble() {
        let line = compact(&tcp_record());
        let (time, rest) = line.split_once(": ").unwrap();
        assert_eq!(time.len(), "HH:MM:SS.mmm".len(), "{line}");
        assert_eq!(
            rest,
            "curl[1234] 10.0.0.1:40512 -> nginx[999] 10.0.0.2:8080 tcp close FORWARDED \
             (976.6KiB/244.1KiB, rtt 0.04ms, 1.83ms)"
        );
        let mut drop = tcp_record();
        drop.event = FlowEvent::Drop;
        drop.verdict = Verdict::Dropped;
        drop.drop_reason = Some("NO_SOCKET".into());
        drop.packets_sent = Some(2);
        assert!(
            compact(&drop).ends_with("tcp drop DROPPED(NO_SOCKET) (2 pkt)"),
            "{}",
            compact(&drop)
        );
        let mut l7 = tcp_record();
        l7.flow_type = FlowType::L7;
        l7.event = FlowEvent::Request;
        l7.traffic_direction = Some("egress".into());
        l7.l7 = Some(serde_json::json!({
            "protocol": "http", "method": "GET", "path": "/x", "status": 200, "latency_us": 512
        }));
        assert!(
            compact(&l7).ends_with(
                "http GET /x 200 (at client) FORWARDED (976.6KiB/244.1KiB, latency 512µs)"
            ),
            "{}",
            compact(&l7)
        );
    }

    #[test]
    fn dict_aligns_its_keys() {
        let text = dict(&tcp_record());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "  TIMESTAMP: 2026-11-28T21:00:00.123456789Z",
                "     SOURCE: curl[1234] 10.0.0.1:40512",
                "DESTINATION: nginx[999] 10.0.0.2:8080",
                "       TYPE: l4",
                "      EVENT: tcp close",
                "    VERDICT: forwarded",
                "    SUMMARY: 976.6KiB/244.1KiB, rtt 0.04ms, 1.83ms",
            ]
        );
    }
}
