//! A real Prometheus (Debian's `prometheus` package) scraping a test agent
//! every second: its own config and TSDB in a temporary directory, on a
//! free loopback port, stopped by its pid when dropped.

use std::{
    io::Write,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::wait_for;

pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `127.0.0.1:<target_port>` (job `weft`)
    /// every second, and waits until it is ready.
    pub fn start(target_port: u16) -> Self {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("prometheus is not installed (Debian package `prometheus`): run `cargo xtask setup`");
        let dir = std::env::temp_dir().join(format!("weft-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: weft\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Keeps the trace ids the L7 histograms carry.
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child: Some(child),
            port,
            dir,
        };
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            if let Some(status) = prometheus
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "prometheus exited at start ({status}):\n{}",
                    prometheus.log()
                );
            }
            prometheus
                .request("GET", "/-/ready", "")
                .filter(|(code, _)| *code == 200)
        });
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// One HTTP/1.0 request (so the answer is never chunked): (status, body).
    fn request(&self, method: &str, path: &str, form: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .ok()?;
        crate::agent::read_response(&mut s)
    }

    /// Runs an instant query now. `Err` carries Prometheus' error (a
    /// query that does not parse or cannot be evaluated).
    /// The exemplars of the series `promql` selects over the last
    /// `seconds`: Prometheus' `data` array, a series' exemplars each.
    pub fn query_exemplars(&self, promql: &str, seconds: u64) -> Result<Vec<Value>, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let form = format!(
            "query={}&start={}&end={}",
            urlencode(promql),
            now - seconds,
            now + 1
        );
        let (code, body) = self
            .request("POST", "/api/v1/query_exemplars", &form)
            .ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let form = format!("query={}", urlencode(promql));
        let (code, body) = self
            .request("POST", "/api/v1/query", &form)
            .ok_or("Prometheus did not answer")?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {code}: {}: {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or("?")
            ));
        }
        let result = &json["data"]["result"];
        Ok(match json["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => result.as_array().cloned().unwrap_or_default(),
            // A scalar or string is one value.
            _ => vec![result.clone()],
        })
    }

    /// Waits until `promql` returns at least one sample.
    pub fn wait_for_data(&self, promql: &str, timeout: Duration) -> Vec<Value> {
        wait_for(
            &format!("Prometheus to return data for {promql}"),
            timeout,
            || self.query(promql).ok().filter(|r| !r.is_empty()),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the child we started, by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The numeric values of a query's samples (vector, matrix or scalar).
pub fn values(result: &[Value]) -> Vec<f64> {
    let parse = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok());
    result
        .iter()
        .flat_map(|r| {
            let mut out = Vec::new();
            if r["value"].is_array() {
                out.extend(parse(&r["value"]));
            }
            for v in r["values"].as_array().into_iter().flatten() {
                out.extend(parse(v));
            }
            if r.is_array() {
                out.extend(parse(r));
            }
            out
        })
        .collect()
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            urlencode(r#"a{b=~"c"} + 1"#),
            "a%7Bb%3D~%22c%22%7D%20%2B%201"
        );
    }

    #[test]
    fn reads_sample_values() {
        let v: Value = serde_json::json!([
            {"metric": {}, "value": [1.0, "2.5"]},
            {"metric": {}, "value": [1.0, "NaN"]}
        ]);
        let vals = values(v.as_array().unwrap());
        assert_eq!(vals[0], 2.5);
        assert!(vals[1].is_nan());
    }
}
