//! Python packages the tests need that Debian does not have, each set in
//! a virtual environment of its own under `$XDG_DATA_HOME/weft` (or
//! `~/.local/share/weft`), pinned, and checked first, so a second run
//! changes nothing:
//!
//! - the OTLP receiver of the trace tests (tests/peers/otlp_receiver.py):
//!   the official OpenTelemetry protobuf definitions
//!   (`opentelemetry-proto`) and grpcio (Debian has no
//!   opentelemetry-proto, and its grpcio is too old for the protobuf that
//!   package needs);
//! - a TLS peer on OpenSSL 1.1.1 (Debian 12 ships only 3.0):
//!   psycopg2-binary 2.9.5, whose wheel bundles libpq with OpenSSL 1.1.1
//!   under an auditwheel name (`libssl-3a880ada.so.1.1`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{find_program, probe, run, say};

/// One virtual environment: its directory name, what it is for, its
/// pinned packages, and Python code that prints what [`Venv::wanted`]
/// must equal when they are importable.
pub struct Venv {
    dir: &'static str,
    what: &'static str,
    packages: &'static [&'static str],
    check: &'static str,
    wanted: &'static str,
}

pub const OTLP: Venv = Venv {
    dir: "otlp-venv",
    what: "OTLP receiver",
    packages: &["opentelemetry-proto==1.45.2", "grpcio==1.85.1"],
    check: "import grpc, importlib.metadata as m; \
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc; \
            print(m.version('opentelemetry-proto'), grpc.__version__)",
    wanted: "1.45.2 1.85.1",
};

pub const OPENSSL_1_1: Venv = Venv {
    dir: "openssl11-venv",
    what: "OpenSSL 1.1.1 peer",
    packages: &["psycopg2-binary==2.9.5"],
    check: "import psycopg2, ctypes, glob, os; \
            lib = glob.glob(os.path.join(os.path.dirname(psycopg2.__file__), \
            '..', 'psycopg2_binary.libs', 'libssl-*.so.1.1'))[0]; \
            ssl = ctypes.CDLL(lib); ssl.OpenSSL_version.restype = ctypes.c_char_p; \
            print(psycopg2.__version__.split()[0], ssl.OpenSSL_version(0).decode().split()[1][:5])",
    wanted: "2.9.5 1.1.1",
};

impl Venv {
    fn dir(&self) -> Result<PathBuf> {
        let data = match env::var_os("XDG_DATA_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => {
                Path::new(&env::var_os("HOME").context("HOME is not set")?).join(".local/share")
            }
        };
        Ok(data.join("weft").join(self.dir))
    }

    /// The environment's Python, for the tests.
    pub fn python_path(&self) -> Result<PathBuf> {
        Ok(self.dir()?.join("bin").join("python"))
    }

    fn installed(&self, python: &Path) -> Option<String> {
        probe(Command::new(python).args(["-c", self.check]))
    }

    pub fn ensure(&self) -> Result<()> {
        let python = self.python_path()?;
        let have = self.installed(&python);
        let packages = self.packages.join(", ");
        if have.as_deref() == Some(self.wanted) {
            say(format_args!(
                "{}: {packages} at {}, nothing to do",
                self.what,
                python.display()
            ));
            return Ok(());
        }
        let venv = self.dir()?;
        // Debian's python3 (python3-venv is among the packages), not
        // whatever `python3` a version manager puts first in PATH.
        let system = ["/usr/bin/python3"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| find_program("python3", None))
            .context("python3 is not installed")?;
        say(format_args!(
            "{}: {} at {}; installing {packages}",
            self.what,
            have.as_deref().unwrap_or("missing"),
            venv.display()
        ));
        run(Command::new(&system)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(self.packages))?;
        match self.installed(&python) {
            Some(v) if v == self.wanted => Ok(()),
            other => bail!(
                "the {}'s packages were installed in {} but report {other:?}",
                self.what,
                venv.display()
            ),
        }
    }
}
