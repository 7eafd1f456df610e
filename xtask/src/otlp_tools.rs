//! The Python behind the trace tests' OTLP receiver (tests/peers/
//! otlp_receiver.py): the official OpenTelemetry protobuf definitions
//! (`opentelemetry-proto`) and grpcio from PyPI, in a virtual environment
//! of their own (Debian has no opentelemetry-proto, and its grpcio is too
//! old for the protobuf that package needs). Checked first, so a second
//! run changes nothing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{find_program, probe, run, say};

const OTLP_PROTO_VERSION: &str = "1.45.2";
const GRPCIO_VERSION: &str = "1.85.1";

fn venv() -> Result<PathBuf> {
    let data = match env::var_os("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&env::var_os("HOME").context("HOME is not set")?).join(".local/share"),
    };
    Ok(data.join("weft").join("otlp-venv"))
}

/// The Python that runs the receiver; the tests get it as
/// `WEFT_OTLP_PYTHON`.
pub fn python_path() -> Result<PathBuf> {
    Ok(venv()?.join("bin").join("python"))
}

/// What the venv's Python reports when both packages are importable.
fn installed(python: &Path) -> Option<String> {
    probe(Command::new(python).args([
        "-c",
        "import grpc, importlib.metadata as m; \
         from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc; \
         print(m.version('opentelemetry-proto'), grpc.__version__)",
    ]))
}

pub fn ensure() -> Result<()> {
    let python = python_path()?;
    let wanted = format!("{OTLP_PROTO_VERSION} {GRPCIO_VERSION}");
    let have = installed(&python);
    if have.as_deref() == Some(wanted.as_str()) {
        say(format_args!(
            "OTLP receiver: opentelemetry-proto {OTLP_PROTO_VERSION}, grpcio {GRPCIO_VERSION} at {}, nothing to do",
            python.display()
        ));
        return Ok(());
    }
    let venv = venv()?;
    // Debian's python3 (python3-venv is among the packages), not whatever
    // `python3` a version manager puts first in PATH.
    let system = ["/usr/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_program("python3", None))
        .context("python3 is not installed")?;
    say(format_args!(
        "OTLP receiver: {} at {}; installing opentelemetry-proto {OTLP_PROTO_VERSION}, grpcio {GRPCIO_VERSION}",
        have.as_deref().unwrap_or("missing"),
        venv.display()
    ));
    run(Command::new(&system)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("opentelemetry-proto=={OTLP_PROTO_VERSION}"))
        .arg(format!("grpcio=={GRPCIO_VERSION}")))?;
    match installed(&python) {
        Some(v) if v == wanted => Ok(()),
        other => bail!(
            "the OTLP receiver's packages were installed in {} but report {other:?}",
            venv.display()
        ),
    }
}
