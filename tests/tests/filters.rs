//! The Hubble-class filters and formats of `weft flows` on the records of
//! a real connection whose two ends are both on this node (curl in one
//! namespace, a Python HTTP server in another): the direction-aware
//! `--from-*`/`--to-*` flags, `--type`, `--traffic-direction`,
//! `--http-method`, `--not`, `--first`, `--until`, `-o compact` and
//! `-o dict`, each with records that must match and records that must not.

use std::time::Duration;

use serde_json::Value;
use weft_tests::{agent::Agent, lab::Lab, require_root, servers, unique_port, wait_for};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn hubble_filters_on_a_local_connection() {
    if !require_root("hubble_filters_on_a_local_connection") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(14);
    let port_s = port.to_string();
    let server = servers::python_http(&lab, port);
    let base = format!("http://{}:{port}", lab.server_v4);
    // One GET and one POST, each on a connection of its own.
    for extra in [&[][..], &["-X", "POST", "-d", "x=1"]] {
        let mut args = vec!["-s", "-o", "/dev/null"];
        args.extend_from_slice(extra);
        let url = format!("{base}/users/7");
        args.push(&url);
        let out = lab
            .curl(&args, Duration::from_secs(30))
            .expect("curl finished");
        assert!(out.status.success(), "curl failed");
    }
    drop(server);
    let l7 = |records: &[Value], direction: &str| {
        records
            .iter()
            .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
            .filter(|r| r["l7"]["path"] == "/users/7")
            .count()
    };
    // Both requests seen at both ends, the two connections closed, and
    // nothing more coming (two reads a second apart agree).
    let mut previous = Vec::new();
    let all = wait_for("the requests at both ends and both closes", WAIT, || {
        std::thread::sleep(Duration::from_millis(900));
        let records = agent.flows(&["--port", &port_s, "--all"]);
        let closes = records
            .iter()
            .filter(|r| r["event"] == "close" && r["source"]["process"] == "curl")
            .count();
        let done = l7(&records, "egress") == 2 && l7(&records, "ingress") == 2 && closes == 2;
        let settled = done && records == previous;
        previous = records.clone();
        settled.then_some(records)
    });
    // The harness's readiness probe (`weft-probe`, from the client's
    // namespace) made connections of its own before curl's.
    let by_curl = all
        .iter()
        .filter(|r| r["source"]["process"] == "curl")
        .count();
    let flows = |args: &[&str]| {
        let mut all = vec!["--port", &port_s, "--all"];
        all.extend_from_slice(args);
        agent.flows(&all)
    };
    let client = lab.client_v4.as_str();
    let server_ip = lab.server_v4.as_str();

    // Direction-aware endpoint filters: the client is every record's
    // source, the server its destination, whichever end saw it.
    let from_client = flows(&["--from-ip", client, "--to-port", &port_s]);
    assert_eq!(from_client.len(), all.len(), "{from_client:#?}");
    assert!(flows(&["--from-ip", server_ip]).is_empty());
    assert!(flows(&["--to-ip", client]).is_empty());
    assert!(flows(&["--from-port", &port_s]).is_empty());
    let curl_sourced = flows(&["--from-process", "curl", "--to-process", "python3"]);
    assert_eq!(curl_sourced.len(), by_curl, "{curl_sourced:#?}");
    assert!(flows(&["--to-process", "curl"]).is_empty());
    assert!(flows(&["--from-process", "python3"]).is_empty());

    // Kinds of record and the side an L7 record was seen at.
    let l4 = flows(&["--type", "l4"]);
    assert!(
        !l4.is_empty() && l4.iter().all(|r| r["type"] == "l4"),
        "{l4:#?}"
    );
    assert_eq!(flows(&["--type", "l7"]).len(), 4);
    assert_eq!(flows(&["--type", "l4,l7"]).len(), all.len());
    let egress = flows(&["--traffic-direction", "egress"]);
    assert_eq!(egress.len(), 2);
    assert!(egress.iter().all(|r| r["traffic_direction"] == "egress"));
    assert_eq!(flows(&["--traffic-direction", "ingress"]).len(), 2);
    let posts = flows(&["--http-method", "post"]);
    assert_eq!(
        posts.len(),
        2,
        "at the client and at the server: {posts:#?}"
    );
    assert!(posts.iter().all(|r| r["l7"]["method"] == "POST"));
    assert!(flows(&["--http-method", "DELETE"]).is_empty());

    // --not negates the one flag after it.
    let gets = flows(&["--type", "l7", "--not", "--http-method", "POST"]);
    assert_eq!(gets.len(), 2);
    assert!(gets.iter().all(|r| r["l7"]["method"] == "GET"), "{gets:#?}");
    let not_l7 = flows(&["--not", "--type", "l7"]);
    assert_eq!(not_l7.len(), l4.len());
    let not_curl = flows(&["--not", "--from-process", "curl"]);
    assert_eq!(not_curl.len(), all.len() - by_curl);
    assert!(not_curl.iter().all(|r| r["source"]["process"] != "curl"));
    assert_eq!(flows(&["--not", "--to-process", "curl"]).len(), all.len());

    // --first keeps the oldest; --until bounds by time.
    let first = agent.flows(&["--port", &port_s, "--first", "1"]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0], all[0], "the oldest record");
    assert!(flows(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(flows(&["--until", "0s"]).len(), all.len());

    // Both ends saw the same request and response: the same sizes.
    let sizes = |direction: &str| {
        let mut sizes: Vec<(u64, u64)> = all
            .iter()
            .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
            .map(|r| {
                let n = |f: &str| r[f].as_u64().expect("a size");
                (n("bytes_sent"), n("bytes_received"))
            })
            .collect();
        sizes.sort_unstable();
        sizes
    };
    let at_client = sizes("egress");
    assert_eq!(at_client.len(), 2);
    assert!(
        at_client
            .iter()
            .all(|&(sent, received)| sent > 0 && received > 0)
    );
    assert_eq!(at_client, sizes("ingress"));

    // One line per record, and a block per record.
    let text = |args: &[&str]| {
        let mut all = vec!["flows", "--port", &port_s, "--all"];
        all.extend_from_slice(args);
        let out = agent.client(&all);
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let compact = text(&["-o", "compact", "--traffic-direction", "egress"]);
    let lines: Vec<&str> = compact.lines().collect();
    assert_eq!(lines.len(), 2, "{compact}");
    for line in lines {
        assert!(line.contains(&format!("{client}:")), "{line}");
        assert!(line.contains(" -> "), "{line}");
        assert!(line.contains(&format!("{server_ip}:{port} ")), "{line}");
        // GET answers 200, POST 201.
        assert!(line.contains(" /users/7 20"), "{line}");
        // The request's and response's sizes, then the latency.
        let details = line
            .split_once(" (at client) FORWARDED (")
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("{line}"));
        let (sizes, rest) = details.split_once(", ").unwrap_or_else(|| panic!("{line}"));
        let (sent, received) = sizes.split_once('/').unwrap_or_else(|| panic!("{line}"));
        assert!(sent.ends_with('B') && received.ends_with('B'), "{line}");
        assert!(rest.starts_with("latency "), "{line}");
    }
    let dict = text(&["-o", "dict"]);
    assert_eq!(dict.matches("  TIMESTAMP: ").count(), all.len(), "{dict}");
    assert_eq!(dict.matches("------------\n").count(), all.len() - 1);

    // Bad usage: exit status 2 and a message that says what to do.
    for (args, says) in [
        (
            &["flows", "--not"][..],
            "--not must be followed by a filter flag",
        ),
        (
            &["flows", "--type", "trace"],
            "expected one of l4, l7, drop",
        ),
        (&["flows", "--from-port", "http"], "invalid --from-port"),
        (&["flows", "--traffic-direction", "up"], "expected ingress"),
        (
            &["flows", "--first", "2", "--last", "2"],
            "cannot be used with",
        ),
    ] {
        let out = agent.client(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
