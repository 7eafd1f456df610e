//! The Prometheus text format (0.0.4) from prometheus-client's OpenMetrics
//! output.
//!
//! OpenMetrics names a counter family without its `_total` suffix in
//! `# HELP`/`# TYPE` and adds `# UNIT` and `# EOF`; the classic text format
//! (what `promtool check metrics`, older scrapers and curl users expect)
//! names the family exactly as its samples, and has no exemplars (the
//! trace ids on L7 histogram buckets). Prometheus negotiates OpenMetrics
//! itself, so both are served.

/// Rewrites OpenMetrics exposition text as Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(without_exemplar(line)),
        }
        out.push('\n');
    }
    out
}

/// A sample line without its exemplar (` # {trace_id="..."} value`): the
/// only exemplars weft writes carry a trace id, which tells them from a
/// label value that happens to hold ` # {`.
fn without_exemplar(line: &str) -> &str {
    if line.starts_with('#') {
        return line;
    }
    match line.rfind(" # {trace_id=\"") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_suffix_back() {
        let om = "# HELP weft_x Things.\n# TYPE weft_x counter\nweft_x_total{a=\"1\"} 2\n\
                  # HELP weft_rtt_seconds RTT.\n# TYPE weft_rtt_seconds histogram\n# UNIT weft_rtt_seconds seconds\n\
                  weft_rtt_seconds_count 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP weft_x_total Things.\n# TYPE weft_x_total counter\nweft_x_total{a=\"1\"} 2\n\
             # HELP weft_rtt_seconds RTT.\n# TYPE weft_rtt_seconds histogram\nweft_rtt_seconds_count 1\n"
        );
    }

    #[test]
    fn exemplars_are_left_out() {
        let om = "# TYPE d_seconds histogram\n\
                  d_seconds_bucket{route=\"/a # {b}\",le=\"0.1\"} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.05 1733300000.1\n\
                  d_seconds_bucket{route=\"/a # {b}\",le=\"+Inf\"} 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# TYPE d_seconds histogram\n\
             d_seconds_bucket{route=\"/a # {b}\",le=\"0.1\"} 2\n\
             d_seconds_bucket{route=\"/a # {b}\",le=\"+Inf\"} 2\n"
        );
    }
}
