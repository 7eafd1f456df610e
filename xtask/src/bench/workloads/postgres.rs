//! PostgreSQL: a server of its own in the server pod, driven by pgbench
//! (select-only, prepared statements). pgbench's `--rate` is open loop: with
//! it, the latency pgbench logs per transaction counts from the scheduled
//! start, which is the coordinated-omission correction. Percentiles come
//! from its per-transaction log.

use std::fs;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Shape, Tools, Workload, percentiles};
use crate::bench::lab::Lab;
use crate::bench::load::{Load, Outcome};
use crate::bench::proc::Proc;
use crate::cmd::{probe, read};

pub struct Postgres;

const PORT: u16 = 5432;
/// pgbench's scale: 10 is 1,000,000 rows in pgbench_accounts, a few MB.
const SCALE: &str = "10";

/// The newest server binaries Debian installed.
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (/usr/lib/postgresql)")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions
        .last()
        .context("no version in /usr/lib/postgresql")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")))
}

/// `argv` as the `postgres` user (the server refuses to run as root);
/// setpriv execs, so the pid stays the program's.
fn as_postgres(program: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([program.to_owned()])
    .collect()
}

impl Workload for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        format!(
            "PostgreSQL serving pgbench's select-only transactions (scale {SCALE}, prepared statements); \
             load from pgbench (open loop with --rate at fixed rates, closed loop for the maximum)"
        )
    }

    fn tools(&self) -> Tools {
        Tools {
            packages: &["postgresql", "haproxy", "bpftool", "iproute2", "util-linux"],
            crates: &[],
        }
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn proxy_mode(&self) -> &'static str {
        "tcp"
    }

    fn start_server(&self, lab: &Lab) -> Result<Vec<Proc>> {
        let bin = bin_dir()?;
        let data = lab.dir.join("postgres");
        fs::create_dir_all(&data)?;
        read(Command::new("chown").arg("postgres:postgres").arg(&data))?;
        let initdb = as_postgres(&bin.join("initdb").display().to_string());
        read(
            Command::new(&initdb[0])
                .args(&initdb[1..])
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        )?;
        let client_net = format!("{}/24", lab.client.ip);
        let hba = data.join("pg_hba.conf");
        let mut rules = fs::read_to_string(&hba)?;
        rules.push_str(&format!("host all all {client_net} trust\n"));
        fs::write(&hba, rules)?;
        let mut argv = as_postgres(&bin.join("postgres").display().to_string());
        let d = data.display().to_string();
        argv.extend(["-D".into(), d.clone()]);
        for setting in [
            "listen_addresses=*".to_owned(),
            format!("port={PORT}"),
            format!("unix_socket_directories={d}"),
            "max_connections=300".into(),
            "shared_buffers=128MB".into(),
            // A benchmark of the network path, not of the disk.
            "fsync=off".into(),
            "synchronous_commit=off".into(),
        ] {
            argv.extend(["-c".into(), setting]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut server = lab.server.spawn(lab, "postgres", &argv)?;
        lab.server
            .wait_listening(PORT, Duration::from_secs(30))
            .or_else(|e| server.check_alive().and(Err(e)))?;
        let pgbench = bin.join("pgbench").display().to_string();
        lab.server.exec(&[
            &pgbench,
            "-i",
            "-q",
            "-s",
            SCALE,
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "postgres",
        ])?;
        Ok(vec![server])
    }

    fn drive(
        &self,
        lab: &Lab,
        target: SocketAddrV4,
        load: Load,
        shape: Shape,
        seconds: u64,
    ) -> Result<Option<Outcome>> {
        let logs = lab.dir.join("pgbench-logs");
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(&logs)?;
        let pgbench = bin_dir()?.join("pgbench").display().to_string();
        let mut args: Vec<String> = [
            pgbench.as_str(),
            "-n",
            "-S",
            "-M",
            "prepared",
            "-j",
            "2",
            "-U",
            "postgres",
            "-l",
        ]
        .map(str::to_owned)
        .into();
        args.extend([
            format!("--log-prefix={}/tx", logs.display()),
            format!("-h{}", target.ip()),
            format!("-p{}", target.port()),
            format!("-c{}", shape.connections),
            format!("-T{seconds}"),
        ]);
        if let Some(rate) = load.rate() {
            args.push(format!("-R{rate}"));
        }
        if shape.connection_per_request || load.new_connections() {
            args.push("-C".into());
        }
        args.push("postgres".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = lab.client.spawn(lab, "pgbench", &argv)?;
        let status = proc.wait(Duration::from_secs(seconds + 30))?;
        if !status.success() {
            bail!("pgbench failed ({status}): {}", proc.log_tail());
        }
        let mut text = String::new();
        for entry in fs::read_dir(&logs)? {
            text.push_str(&fs::read_to_string(entry?.path())?);
        }
        Ok(Some(parse_log(&text, seconds as f64)))
    }

    fn versions(&self, _lab: &Lab) -> Vec<(&'static str, String)> {
        let version = |program: &str| {
            let bin = bin_dir().ok()?.join(program);
            // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
            let out = probe(Command::new(bin).arg("--version"))?;
            Some(
                out.split(") ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        };
        vec![
            (
                "postgres",
                version("postgres").unwrap_or_else(|| "?".into()),
            ),
            ("pgbench", version("pgbench").unwrap_or_else(|| "?".into())),
        ]
    }
}

/// pgbench's per-transaction log: `client_id transaction_no time script_no
/// time_epoch time_us [schedule_lag]`, where `time` is the latency in µs
/// (from the scheduled start under `--rate`), or `skipped`/`failed`, and
/// `time_epoch time_us` when the transaction ended. The run's length is the
/// span of those ends (pgbench connects before its `-T` clock starts), or
/// `seconds` when there are too few.
fn parse_log(text: &str, seconds: f64) -> Outcome {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.get(2).map(|t| t.parse::<f64>()) {
            Some(Ok(us)) => latencies.push(us),
            Some(Err(_)) => errors += 1,
            None => continue,
        }
        let end = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(s), Some(us)) = (end(4), end(5)) {
            let t = s + us / 1e6;
            first = first.min(t);
            last = last.max(t);
        }
    }
    let ends = latencies.len() + errors as usize;
    let span = if ends > 1 && last > first {
        // n ends span n - 1 intervals.
        (last - first) * ends as f64 / (ends - 1) as f64
    } else {
        seconds
    };
    Outcome {
        ok: latencies.len() as u64,
        errors,
        seconds: span,
        latency: percentiles(latencies),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_log;

    #[test]
    fn reads_the_transaction_log() {
        let log = "0 1 250 0 1700000000 0 12\n\
                   1 1 350 0 1700000000 500000 30\n\
                   1 2 skipped 0 1700000001 0 900\n";
        let outcome = parse_log(log, 4.0);
        assert_eq!((outcome.ok, outcome.errors), (2, 1));
        assert_eq!(outcome.latency.p50, 250.0);
        assert_eq!(outcome.latency.p99, 350.0);
        // Three ends 0.5 s apart: three transactions in 1.5 s.
        assert_eq!(outcome.seconds, 1.5);
        assert_eq!(parse_log("0 1 250 0 1700000000 0\n", 4.0).seconds, 4.0);
    }
}
