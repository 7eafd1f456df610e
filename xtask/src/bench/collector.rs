//! B2T's OTLP collector: the tests' receiver (tests/peers/otlp_receiver.py,
//! the official protobuf definitions, the virtual environment `cargo xtask
//! setup` makes), on loopback outside the lab's cgroups: a collector runs
//! elsewhere, so its CPU is not the agent's cost. Stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::proc::wait_for;

pub struct Collector {
    child: Child,
    /// Where the agent sends its spans (OTLP/gRPC).
    pub grpc: SocketAddr,
}

impl Collector {
    /// Starts the receiver, writing what it receives under `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        let python = crate::python_venvs::OTLP.python_path()?;
        anyhow::ensure!(
            python.is_file(),
            "no Python for the OTLP receiver at {}: run `cargo xtask setup`",
            python.display()
        );
        let script = crate::cmd::workspace_root().join("tests/peers/otlp_receiver.py");
        let (grpc, http) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("otlp-receiver.log"))?;
        let child = Command::new(&python)
            .arg(&script)
            .args(["127.0.0.1", &grpc.to_string(), &http.to_string()])
            .arg(dir.join("spans.jsonl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let mut collector = Collector {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
        };
        let addr = collector.grpc;
        wait_for(
            "the OTLP receiver to listen",
            Duration::from_secs(20),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        )?;
        collector.check_alive()?;
        Ok(collector)
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the OTLP receiver exited ({status})");
        }
        Ok(())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
