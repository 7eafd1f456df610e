//! HTTP/1.1 against a real nginx that sends its files with sendfile (as
//! nginx ships): the bodies never pass through a user buffer, and weft's
//! HTTP framing must still hold across keep-alive requests. curl is the
//! client (egress records), nginx the server (ingress records).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    agent::Agent, lab::Lab, peer::TempDir, require_root, servers, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);
/// The file's size: large enough that sendfile carries it in several
/// pieces, none of which weft sees.
const FILE_BYTES: usize = 100_000;

fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .filter(|r| r["source"]["process"] == "curl")
        .cloned()
        .collect()
}

#[test]
fn http1_through_nginx_sendfile() {
    if !require_root("http1_through_nginx_sendfile") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(41);
    let port_s = port.to_string();
    let dir = TempDir::new("nginx-sendfile");
    let root = dir.join("html");
    std::fs::create_dir_all(&root).expect("html dir");
    std::fs::write(dir.join("html/file.bin"), vec![b'x'; FILE_BYTES]).expect("file");
    let addr = &lab.server_v4;
    let http = format!(
        "    sendfile on;
    server {{
        listen {addr}:{port};
        root {root};
    }}"
    );
    let mut nginx = servers::nginx(&lab, port, dir, &http);

    // Three requests on one keep-alive connection: two files, one 404.
    let base = format!("http://{}:{port}", lab.server_v4);
    let (file, missing) = (format!("{base}/file.bin"), format!("{base}/missing"));
    let out = lab
        .curl(
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_request} %{size_header} %{size_download}\\n",
                &file,
                "-o",
                "/dev/null",
                &file,
                "-o",
                "/dev/null",
                &missing,
            ],
            Duration::from_secs(60),
        )
        .expect("curl finished");
    assert!(out.status.success(), "curl failed");
    // Per request, as curl counted it: status, request bytes, response
    // head bytes, response body bytes.
    let sizes: Vec<[u64; 4]> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let n: Vec<u64> = l.split(' ').map(|v| v.parse().expect("a number")).collect();
            [n[0], n[1], n[2], n[3]]
        })
        .collect();
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert_eq!(sizes[0][3], FILE_BYTES as u64, "{sizes:?}");

    let records = wait_for("three HTTP records from each side", WAIT, || {
        let records = agent.flows(&["--port", &port_s, "--protocol", "http", "--all"]);
        (l7(&records, "egress").len() >= 3 && l7(&records, "ingress").len() >= 3).then_some(records)
    });
    nginx.stop();
    for direction in ["egress", "ingress"] {
        let side = l7(&records, direction);
        assert_eq!(side.len(), 3, "{direction}: {side:#?}");
        let statuses: Vec<u64> = side
            .iter()
            .map(|r| r["l7"]["status"].as_u64().expect("status"))
            .collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 200).count(),
            2,
            "{side:#?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&s| s == 404).count(),
            1,
            "{side:#?}"
        );
        for (r, [status, request, head, body]) in side.iter().zip(&sizes) {
            assert_eq!(r["l7"]["method"], "GET");
            assert_eq!(r["destination"]["port"], port);
            // The sizes on the wire, the bodies nginx sent with sendfile
            // (never seen, only counted) included.
            assert_eq!(r["l7"]["status"], *status, "{r:#}");
            assert_eq!(r["bytes_sent"], *request, "{r:#}");
            assert_eq!(r["bytes_received"], head + body, "{r:#}");
        }
    }
    let port_label = format!("server_port=\"{port}\"");
    assert_eq!(
        agent.metric_sum("http_server_request_duration_seconds_count", &[&port_label]),
        3.0
    );
    assert_eq!(
        agent.metric_sum("http_client_request_duration_seconds_count", &[&port_label]),
        3.0
    );
}
