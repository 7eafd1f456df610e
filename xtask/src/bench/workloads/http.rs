//! HTTP/1.1: nginx serving a 1 KB static body over keep-alive, driven by
//! oha; in clear (`http`) or over TLS (`https`: both ends on the system's
//! OpenSSL, whose plaintext weft reads at the library).

use std::fs;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Shape, Tools, Workload};
use crate::bench::lab::Lab;
use crate::bench::load::{Latency, Load, Outcome};
use crate::bench::proc::Proc;
use crate::cmd::probe;
use crate::setup::CrateTool;

/// nginx serving a 1 KB static body over HTTP/1.1 keep-alive, driven by
/// oha, over TLS when `tls`.
pub struct Http {
    pub tls: bool,
}

const BODY_BYTES: usize = 1024;
/// oha 1.16 needs rustc 1.88. It does not build without a TLS stack; the
/// system OpenSSL (native-tls) builds much faster than rustls' aws-lc.
const OHA: CrateTool = CrateTool {
    name: "oha",
    version: "1.16.0",
    args: &["--no-default-features", "--features", "native-tls"],
    bin: "oha",
};

impl Workload for Http {
    fn name(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    fn describe(&self) -> String {
        let over = if self.tls {
            "HTTPS (TLS 1.3, ECDSA P-256; nginx and oha on the system's OpenSSL)"
        } else {
            "HTTP/1.1"
        };
        format!(
            "nginx (1 worker) serving a {BODY_BYTES}-byte body over {over} keep-alive; \
             load from oha (open loop with --latency-correction at fixed rates, closed loop for the maximum)"
        )
    }

    fn tools(&self) -> Tools {
        Tools {
            // libssl-dev and pkg-config build oha.
            packages: &[
                "nginx",
                "haproxy",
                "bpftool",
                "iproute2",
                "libssl-dev",
                "openssl",
                "pkg-config",
            ],
            crates: &[OHA],
        }
    }

    fn port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    fn proxy_mode(&self) -> &'static str {
        // A sidecar passes TLS through as bytes (it does not terminate it).
        if self.tls { "tcp" } else { "http" }
    }

    fn start_server(&self, lab: &Lab) -> Result<Vec<Proc>> {
        let dir = lab.dir.join("nginx");
        fs::create_dir_all(dir.join("html"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        fs::write(dir.join("html/index.html"), "x".repeat(BODY_BYTES))?;
        let d = dir.display();
        let port = self.port();
        let tls = if self.tls {
            certificate(&dir)?;
            format!(
                " ssl;\n\
                 \x20       ssl_certificate {d}/server.pem;\n\
                 \x20       ssl_certificate_key {d}/server.key"
            )
        } else {
            String::new()
        };
        // sendfile as nginx ships it: weft's L7 sees the bodies as lengths
        // moved without a user buffer. The report's L7 records per request
        // (2: client and server side) show whether it kept the framing.
        let config = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   sendfile on;\n\
             \x20   keepalive_timeout 300s;\n\
             \x20   keepalive_requests 100000000;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             \x20   types {{ text/html html; }}\n\
             \x20   server {{\n\
             \x20       listen {port} backlog=8192 default_server{tls};\n\
             \x20       root {d}/html;\n\
             \x20   }}\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config)?;
        let (conf, prefix, error_log) = (
            conf.display().to_string(),
            format!("{d}/"),
            format!("{d}/error.log"),
        );
        let argv = ["nginx", "-p", &prefix, "-e", &error_log, "-c", &conf];
        let mut nginx = lab.server.spawn(lab, "nginx", &argv)?;
        lab.server
            .wait_listening(port, Duration::from_secs(10))
            .or_else(|e| nginx.check_alive().and(Err(e)))?;
        Ok(vec![nginx])
    }

    fn drive(
        &self,
        lab: &Lab,
        target: SocketAddrV4,
        load: Load,
        shape: Shape,
        seconds: u64,
    ) -> Result<Option<Outcome>> {
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://{target}/index.html");
        let outcome = oha(lab, &url, load, shape, seconds)?;
        Ok(Some(outcome))
    }

    fn versions(&self, lab: &Lab) -> Vec<(&'static str, String)> {
        // `nginx -v` prints to stderr.
        let nginx = probe(Command::new("sh").args(["-c", "nginx -v 2>&1"]));
        let oha = lab.client.exec(&["oha", "--version"]).ok();
        vec![
            (
                "nginx",
                nginx.map_or("?".into(), |v| v.replace("nginx version: nginx/", "")),
            ),
            ("oha", oha.map_or("?".into(), |v| v.replace("oha ", ""))),
        ]
    }
}

/// A self-signed ECDSA P-256 certificate and its key in `dir`
/// (`server.pem`, `server.key`); oha runs with `--insecure`.
fn certificate(dir: &std::path::Path) -> Result<()> {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=weft-bench", "-keyout", "server.key"])
        .args(["-out", "server.pem"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl")?;
    if !status.success() {
        bail!("openssl could not make the bench's certificate ({status})");
    }
    Ok(())
}

/// Runs oha in the client pod and reads its JSON summary.
fn oha(lab: &Lab, url: &str, load: Load, shape: Shape, seconds: u64) -> Result<Outcome> {
    let output = lab.dir.join("oha.json");
    let _ = fs::remove_file(&output);
    let mut args: Vec<String> = vec![
        "oha".into(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-o".into(),
        output.display().to_string(),
        "-z".into(),
        format!("{seconds}s"),
        // Requests in flight at the deadline finish instead of being cut
        // off: a cut-off request is an unanswered one to weft's L7.
        "-w".into(),
        "-c".into(),
        shape.connections.to_string(),
    ];
    if let Some(rate) = load.rate() {
        args.extend(["-q".into(), rate.to_string(), "--latency-correction".into()]);
    }
    if shape.connection_per_request || load.new_connections() {
        args.push("--disable-keepalive".into());
    }
    if url.starts_with("https:") {
        // The bench's certificate is self-signed.
        args.push("--insecure".into());
    }
    args.push(url.into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.client.spawn(lab, "oha", &argv)?;
    let status = proc.wait(Duration::from_secs(seconds + 30))?;
    if !status.success() {
        bail!("oha failed ({status}): {}", proc.log_tail());
    }
    let text = fs::read_to_string(&output).context("reading oha's report")?;
    let report: Value = serde_json::from_str(&text).context("parsing oha's JSON")?;
    parse_oha(&report)
}

/// The figures of oha's `--output-format json` report: latencies are in
/// seconds; requests cut off by the end of the run (`-z`) count as neither
/// success nor error.
fn parse_oha(report: &Value) -> Result<Outcome> {
    let summary = &report["summary"];
    let seconds = summary["total"]
        .as_f64()
        .context("no summary.total in oha's report")?;
    let mut ok = 0;
    let mut errors = 0;
    for (code, count) in report["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let count = count.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            ok += count;
        } else {
            errors += count;
        }
    }
    for (error, count) in report["errorDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if !error.contains("deadline") {
            errors += count.as_u64().unwrap_or(0);
        }
    }
    let percentiles = &report["latencyPercentiles"];
    let latency = Latency::from_fn(|name| percentiles[name].as_f64().unwrap_or(f64::NAN) * 1e6);
    Ok(Outcome {
        ok,
        errors,
        seconds,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_oha;

    #[test]
    fn reads_oha_json() {
        let report = json!({
            "summary": {"successRate": 1.0, "total": 10.0, "requestsPerSec": 1000.0},
            "latencyPercentiles": {"p50": 0.0002, "p90": 0.00025, "p99": 0.0003, "p99.9": 0.001},
            "statusCodeDistribution": {"200": 9990, "503": 4},
            "errorDistribution": {"aborted due to deadline": 6, "connection refused": 2}
        });
        let outcome = parse_oha(&report).expect("parses");
        assert_eq!(outcome.ok, 9990);
        assert_eq!(outcome.errors, 6);
        assert!((outcome.latency.p99 - 300.0).abs() < 1e-6);
        assert!((outcome.latency.p999 - 1000.0).abs() < 1e-6);
        assert!((outcome.achieved_rate() - 999.0).abs() < 1e-6);
    }
}
