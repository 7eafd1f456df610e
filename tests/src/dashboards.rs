//! The Grafana dashboards in `dashboards/`: their panels and every PromQL
//! expression in them (panel targets and query variables), with Grafana's
//! variables replaced so that Prometheus can run them.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The value each Grafana variable gets when the tests run a query: every
/// workload, namespace and agent; windows long enough for a test's traffic
/// at a 1 s scrape interval.
pub const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "5m"),
    ("$namespace", ".*"),
    ("$workload", ".*"),
    ("$instance", ".*"),
];

pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// One PromQL expression of a dashboard.
#[derive(Debug, Clone)]
pub struct Query {
    /// `file: panel #id "title" [refId]`, or `file: variable NAME`.
    pub place: String,
    /// As written in the dashboard.
    pub expr: String,
    /// What Prometheus runs (variables replaced; a variable's
    /// `query_result(...)`/`label_values(...)` turned into PromQL).
    pub promql: String,
}

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .join("dashboards")
}

/// Every `*.json` in `dashboards/`, sorted by name.
pub fn load() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("dashboards/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read dashboard");
            Dashboard {
                file: p.file_name().expect("name").to_string_lossy().into_owned(),
                json: serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display())),
            }
        })
        .collect()
}

/// Panels, including those nested in collapsed rows.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Grafana's variables replaced by [`SUBSTITUTIONS`] (`${name}` too).
pub fn substitute(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (var, value) in SUBSTITUTIONS {
        let braced = format!("${{{}}}", &var[1..]);
        out = out.replace(&braced, value).replace(var, value);
    }
    out
}

/// A query variable's definition as PromQL: `query_result(X)` is `X`;
/// `label_values(M, L)` is `count by (L) (M)`.
fn variable_promql(query: &str) -> Option<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(inner.to_owned());
    }
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))?;
    let (metric, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), metric.trim()))
}

/// Every expression of every dashboard: panel targets, then query
/// variables.
pub fn queries(dashboards: &[Dashboard]) -> Vec<Query> {
    let mut out = Vec::new();
    for d in dashboards {
        for p in panels(&d.json) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                out.push(Query {
                    place: format!(
                        "{}: panel #{} {:?} [{}]",
                        d.file,
                        p["id"],
                        p["title"].as_str().unwrap_or(""),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    expr: expr.to_owned(),
                    promql: substitute(expr),
                });
            }
        }
        for v in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if v["type"] != "query" {
                continue;
            }
            let definition = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or_default();
            let promql = variable_promql(definition).unwrap_or_else(|| {
                panic!(
                    "{}: variable {}: cannot read its query {definition:?}",
                    d.file, v["name"]
                )
            });
            out.push(Query {
                place: format!("{}: variable {}", d.file, v["name"]),
                expr: definition.to_owned(),
                promql: substitute(&promql),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_variables() {
        assert_eq!(
            substitute(r#"rate(x{w=~"$workload",n=~"${namespace}"}[$__rate_interval])"#),
            r#"rate(x{w=~".*",n=~".*"}[1m])"#
        );
    }

    #[test]
    fn variable_queries_become_promql() {
        assert_eq!(
            variable_promql("label_values(weft_build_info, instance)").as_deref(),
            Some("count by (instance) (weft_build_info)")
        );
        assert_eq!(
            variable_promql("query_result(count by (x) (y))").as_deref(),
            Some("count by (x) (y)")
        );
        assert_eq!(variable_promql("metrics(weft_)"), None);
    }
}
