//! The Grafana dashboards' structure: panel ids unique, panels inside the
//! 24-column grid and not overlapping, the Prometheus datasource a template
//! variable used by every panel, query and query variable, the namespace and
//! workload variables where workloads are shown, and a provisioning file
//! that points at them. (Their queries run against a real Prometheus in
//! tests/tests/prometheus.rs.)

use std::collections::HashSet;

use serde_json::Value;
use weft_tests::dashboards::{self, panels};

fn uses_datasource_variable(v: &Value) -> bool {
    v["uid"] == "${datasource}" && v["type"] == "prometheus"
}

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards::load();
    let names: Vec<&str> = all.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        names,
        [
            "weft-health.json",
            "weft-network.json",
            "weft-service-map.json",
            "weft-services.json"
        ]
    );
    let mut uids = HashSet::new();
    for d in &all {
        let f = &d.file;
        let j = &d.json;
        assert!(uids.insert(j["uid"].as_str().expect("uid")), "{f}: uid");
        assert!(
            j["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("weft / "))
        );
        let vars: Vec<&Value> = j["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .collect();
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{f}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{f}");
        assert_eq!(ds["query"], "prometheus", "{f}");
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert!(
                uses_datasource_variable(&v["datasource"]),
                "{f}: variable {}",
                v["name"]
            );
        }
        let var_names: HashSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();

        let mut ids = HashSet::new();
        let mut cells: Vec<(i64, i64, i64, i64, String)> = Vec::new();
        let mut shows_workloads = false;
        for p in panels(j) {
            let id = p["id"].as_i64().expect("panel id");
            let title = p["title"].as_str().unwrap_or("").to_owned();
            assert!(ids.insert(id), "{f}: panel id {id} used twice");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().expect("x"),
                g["y"].as_i64().expect("y"),
                g["w"].as_i64().expect("w"),
                g["h"].as_i64().expect("h"),
            );
            assert!(
                x >= 0 && y >= 0 && w >= 1 && h >= 1 && x + w <= 24,
                "{f}: panel #{id} {title:?} is outside the grid: {g}"
            );
            for (ox, oy, ow, oh, other) in &cells {
                let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
                assert!(!overlap, "{f}: panel {title:?} overlaps {other:?}");
            }
            cells.push((x, y, w, h, title.clone()));
            if p["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{f}: panel #{id} has no title");
            assert!(
                uses_datasource_variable(&p["datasource"]),
                "{f}: panel {title:?} does not use the datasource variable: {}",
                p["datasource"]
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{f}: panel {title:?} has no query");
            let mut refs = HashSet::new();
            for t in targets {
                assert!(
                    uses_datasource_variable(&t["datasource"]),
                    "{f}: a query of {title:?} does not use the datasource variable"
                );
                assert!(
                    refs.insert(t["refId"].as_str().expect("refId")),
                    "{f}: {title:?} refId"
                );
                let expr = t["expr"].as_str().expect("expr");
                // Every variable a query uses is defined (or Grafana's own).
                for word in expr.split('$').skip(1) {
                    let name: String = word
                        .trim_start_matches('{')
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // `$1` is label_replace's capture group, which Grafana
                    // leaves alone.
                    let capture = name.starts_with(|c: char| c.is_ascii_digit());
                    assert!(
                        capture || name.starts_with("__") || var_names.contains(name.as_str()),
                        "{f}: {title:?} uses undefined variable ${name}"
                    );
                }
                shows_workloads |= expr.contains("$workload");
            }
        }
        if shows_workloads {
            for v in ["namespace", "workload"] {
                assert!(var_names.contains(v), "{f}: no {v} variable");
            }
        }
    }
    // The service map is a node graph with a nodes and an edges query.
    let map = all
        .iter()
        .find(|d| d.file == "weft-service-map.json")
        .expect("map");
    let graph = panels(&map.json)
        .into_iter()
        .find(|p| p["type"] == "nodeGraph")
        .expect("a nodeGraph panel");
    let refs: Vec<&str> = graph["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["refId"].as_str())
        .collect();
    assert_eq!(refs, ["nodes", "edges"]);
}

#[test]
fn the_provisioning_file_points_at_the_dashboards() {
    let text = std::fs::read_to_string(dashboards::dir().join("provisioning/weft.yaml"))
        .expect("dashboards/provisioning/weft.yaml");
    let v: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(v["apiVersion"], 1);
    let provider = &v["providers"][0];
    assert_eq!(provider["type"], "file");
    assert!(
        provider["options"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/'))
    );
}

#[test]
fn every_panel_query_has_its_variables_replaced() {
    let queries = dashboards::queries(&dashboards::load());
    assert!(queries.len() > 40, "{} queries", queries.len());
    for q in &queries {
        let unreplaced = q
            .promql
            .split('$')
            .skip(1)
            .any(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()));
        assert!(
            !unreplaced,
            "{}: unreplaced variable in {}",
            q.place, q.promql
        );
    }
}
