//! Real protocol servers started in a lab's server namespace, shared by the
//! L7 tests and the dashboard test: each listens on the lab's server
//! address and a port of the test's, keeps its state in a temporary
//! directory of its own, and is stopped (by its pid) and cleaned up when
//! the returned [`Server`] is dropped.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use crate::{
    lab::Lab,
    peer::{Peer, TempDir, require_program},
    run,
};

/// Database servers take a few seconds to start on a busy machine.
const START: Duration = Duration::from_secs(30);

/// A running server. Fields drop in order: the process stops before its
/// directory is removed.
pub struct Server {
    pub peer: Peer,
    /// Where clients in the lab's client namespace reach it.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Server {
    /// Starts `args` in the server namespace and waits until a client in
    /// the client namespace can connect to `port`.
    fn start(lab: &Lab, name: &str, port: u16, dir: TempDir, args: &[&str]) -> Self {
        Self::started(lab, Peer::start(name, &lab.server_ns, args), port, dir)
    }

    /// Waits for the started `peer` as [`Server::start`] does.
    fn started(lab: &Lab, mut peer: Peer, port: u16, dir: TempDir) -> Self {
        let addr = SocketAddr::new(lab.server_v4.parse().expect("lab address"), port);
        peer.wait_tcp(&lab.client_ns, addr, START);
        Self {
            peer,
            addr,
            _dir: dir,
        }
    }

    /// Stops the server now (to flush its connections' close records).
    pub fn stop(&mut self) {
        self.peer.stop();
    }
}

/// redis-server without persistence.
pub fn redis(lab: &Lab, port: u16) -> Server {
    require_program("redis-server");
    require_program("redis-cli");
    let dir = TempDir::new("redis");
    let port_s = port.to_string();
    let dir_s = dir.as_str().to_owned();
    let args = [
        "redis-server",
        "--bind",
        &lab.server_v4,
        "--port",
        &port_s,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir_s,
    ];
    Server::start(lab, "redis-server", port, dir, &args)
}

const PG_BIN: &str = "/usr/lib/postgresql";

/// The newest installed PostgreSQL major version's bin directory.
fn pg_bin() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir(PG_BIN)
        .unwrap_or_else(|e| {
            panic!("{PG_BIN}: {e}: PostgreSQL is not installed (`cargo xtask setup` installs it)")
        })
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v| Path::new(&format!("{PG_BIN}/{v}/bin/postgres")).exists())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL server under {PG_BIN}"));
    format!("{PG_BIN}/{v}/bin")
}

/// A PostgreSQL cluster of the test's own, owned by the `postgres` user
/// (the server refuses to run as root), trusting local connections and
/// the lab's client; its superuser and database are both `postgres`.
pub fn postgres(lab: &Lab, port: u16) -> Server {
    postgres_in(lab, port, TempDir::new("postgres"), &[])
}

/// [`postgres`] with SSL on (`ssl=on`), serving the certificate and key
/// files given (copied: the server wants its key its own, mode 0600).
pub fn postgres_ssl(lab: &Lab, port: u16, cert: &str, key: &str) -> Server {
    let dir = TempDir::new("postgres-ssl");
    std::fs::copy(cert, dir.join("server.pem")).expect("copy the certificate");
    std::fs::copy(key, dir.join("server.key")).expect("copy the key");
    let settings = [
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", dir.join("server.pem")),
        format!("ssl_key_file={}", dir.join("server.key")),
    ];
    postgres_in(lab, port, dir, &settings)
}

/// A PostgreSQL cluster in `dir` with the `-c` settings given.
fn postgres_in(lab: &Lab, port: u16, dir: TempDir, settings: &[String]) -> Server {
    require_program("psql");
    require_program("setpriv");
    let bin = pg_bin();
    let data = dir.join("data");
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets).expect("socket directory");
    run(&["chown", "-R", "postgres:postgres", dir.as_str()]);
    let key = dir.join("server.key");
    if Path::new(&key).exists() {
        run(&["chmod", "0600", &key]);
    }
    let as_postgres = [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
    ];
    let initdb = format!("{bin}/initdb");
    let mut args = as_postgres.to_vec();
    args.extend([
        initdb.as_str(),
        "--pgdata",
        &data,
        "--auth=trust",
        "--username=postgres",
        "--no-sync",
        "--no-instructions",
    ]);
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir.as_str())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        format!("{data}/pg_hba.conf"),
        format!(
            "local all all trust\nhost all all {}/32 trust\n",
            lab.client_v4
        ),
    )
    .expect("pg_hba.conf");

    let postgres = format!("{bin}/postgres");
    let port_s = port.to_string();
    let listen = format!("listen_addresses={}", lab.server_v4);
    let socket_dir = format!("unix_socket_directories={sockets}");
    let mut args = as_postgres.to_vec();
    args.extend([
        postgres.as_str(),
        "-D",
        &data,
        "-p",
        &port_s,
        "-c",
        &listen,
        "-c",
        &socket_dir,
        "-c",
        "fsync=off",
        "-c",
        "logging_collector=off",
    ]);
    for setting in settings {
        args.extend(["-c", setting.as_str()]);
    }
    Server::start(lab, "postgres", port, dir, &args)
}

/// psql in the client namespace running `statements` (one `-c` each) on
/// `server`; returns (stdout, stderr).
pub fn psql(lab: &Lab, server: &Server, statements: &[&str]) -> (String, String) {
    psql_with(lab, server, statements, &[])
}

/// [`psql`] with the libpq environment given (`PGSSLMODE`...).
pub fn psql_with(
    lab: &Lab,
    server: &Server,
    statements: &[&str],
    env: &[(&str, &str)],
) -> (String, String) {
    let ip = server.addr.ip().to_string();
    let port = server.addr.port().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.client_ns])
        .args(["psql", "--no-psqlrc", "--quiet", "-h", &ip, "-p", &port])
        .args(["-U", "postgres", "-d", "postgres"])
        .envs(env.iter().copied());
    for sql in statements {
        cmd.args(["-c", sql]);
    }
    let out = cmd.output().expect("run psql");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A MariaDB server of the test's own, without grant tables (any client
/// is root) and without a binary log.
pub fn mariadb(lab: &Lab, port: u16) -> Server {
    mariadb_with(lab, port, None)
}

/// The MariaDB server of [`mariadb`]; with `tls` (certificate and key
/// files), it also offers TLS.
pub fn mariadb_with(lab: &Lab, port: u16, tls: Option<(&str, &str)>) -> Server {
    require_program("mariadb-install-db");
    require_program("mariadbd");
    require_program("mariadb");
    let dir = TempDir::new("mariadb");
    let datadir = format!("--datadir={}", dir.join("data"));
    let out = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            &datadir,
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .output()
        .expect("run mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bind = format!("--bind-address={}", lab.server_v4);
    let port_arg = format!("--port={port}");
    let socket = format!("--socket={}", dir.join("mysqld.sock"));
    let pid_file = format!("--pid-file={}", dir.join("mysqld.pid"));
    let mut args = vec![
        "mariadbd".to_owned(),
        "--no-defaults".into(),
        datadir,
        bind,
        port_arg,
        socket,
        pid_file,
        "--user=root".into(),
        "--skip-grant-tables".into(),
        "--skip-name-resolve".into(),
        "--skip-log-bin".into(),
        "--innodb-buffer-pool-size=16M".into(),
    ];
    if let Some((cert, key)) = tls {
        args.extend([format!("--ssl-cert={cert}"), format!("--ssl-key={key}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(lab, "mariadbd", port, dir, &args)
}

/// The mariadb client in the client namespace reading `statements` from
/// stdin (one COM_QUERY each; `--force` goes on after an error, where `-e`
/// would stop); returns (stdout, stderr).
pub fn mariadb_client(lab: &Lab, server: &Server, statements: &[&str]) -> (String, String) {
    mariadb_client_with(lab, server, statements, false)
}

/// [`mariadb_client`]; with `tls`, over TLS (`--ssl`, the server's
/// certificate not verified).
pub fn mariadb_client_with(
    lab: &Lab,
    server: &Server,
    statements: &[&str],
    tls: bool,
) -> (String, String) {
    let ip = server.addr.ip().to_string();
    let port = server.addr.port().to_string();
    let script: String = statements.iter().map(|s| format!("{s};\n")).collect();
    let mut client = vec![
        "mariadb",
        "--no-defaults",
        "--batch",
        "--force",
        "-h",
        &ip,
        "-P",
        &port,
        "-u",
        "root",
    ];
    if tls {
        client.push("--ssl");
    }
    let (_, stdout, stderr) = crate::peer::exec_with_input(&lab.client_ns, &client, &script);
    (stdout, stderr)
}

/// A Python with grpcio: Debian's (python3-grpcio), else the first
/// `python3` on PATH.
pub fn grpc_python() -> String {
    require_program("python3");
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.to_owned();
        }
    }
    panic!(
        "no python3 with grpcio: the gRPC tests need a real gRPC peer \
         (`cargo xtask setup` installs python3-grpcio)"
    );
}

/// The script behind the gRPC server and client (tests/peers).
const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/grpc_peer.py");

/// The grpcio server of tests/peers/grpc_peer.py (service
/// `weft.test.Greeter`).
pub fn grpc(lab: &Lab, port: u16) -> Server {
    let python = grpc_python();
    let port_s = port.to_string();
    let args = [python.as_str(), GRPC_PEER, "serve", &lab.server_v4, &port_s];
    Server::start(lab, "grpc server", port, TempDir::new("grpc"), &args)
}

/// The peer's client in the client namespace: four unary calls on one
/// channel (OK, OK, NOT_FOUND, and one that takes 100 ms). Returns what it
/// printed, one `METHOD STATUS` line per call.
pub fn grpc_calls(lab: &Lab, server: &Server) -> String {
    grpc_calls_with(lab, server, None)
}

/// [`grpc_calls`], each call carrying `trace` (`traceparent`,
/// `tracestate`) as metadata.
pub fn grpc_calls_with(lab: &Lab, server: &Server, trace: Option<(&str, &str)>) -> String {
    let python = grpc_python();
    let mut command = Command::new("ip");
    if let Some((traceparent, tracestate)) = trace {
        command.env("WEFT_TEST_TRACEPARENT", traceparent);
        command.env("WEFT_TEST_TRACESTATE", tracestate);
    }
    let out = command
        .args(["netns", "exec", &lab.client_ns, &python, GRPC_PEER, "call"])
        .args([server.addr.ip().to_string(), server.addr.port().to_string()])
        .output()
        .expect("run the gRPC client");
    assert!(
        out.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nginx (one worker, in the foreground) in the server namespace: `http`
/// is the body of its `http` block (server blocks and their settings); its
/// pid file and temporary paths are in `dir`, which it keeps. Returns once
/// a client can connect to `port` on the lab's server address.
pub fn nginx(lab: &Lab, port: u16, dir: TempDir, http: &str) -> Server {
    require_program("nginx");
    let d = dir.as_str();
    let conf = format!(
        "daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let prefix = d.to_owned();
    let args = ["nginx", "-p", &prefix, "-c", &conf_path];
    Server::start(lab, "nginx", port, dir, &args)
}

/// nginx serving h2c (HTTP/2 without TLS) on the lab's server address:
/// `/hello` answers 200, anything else 404.
pub fn nginx_h2c(lab: &Lab, port: u16) -> Server {
    let addr = &lab.server_v4;
    let http = format!(
        "    server {{
        listen {addr}:{port} http2;
        location = /hello {{ return 200 \"hello\\n\"; }}
        location / {{ return 404; }}
    }}"
    );
    nginx(lab, port, TempDir::new("nginx-h2c"), &http)
}

/// The Python HTTP/1.1 server of tests/peers/http_server.py (keep-alive;
/// `/slow` takes 100 ms, `/status/N` answers N, anything else 200).
pub fn python_http(lab: &Lab, port: u16) -> Server {
    python_http_in(lab, port, None)
}

/// [`python_http`], as a process of the cgroup directory `cgroup` when
/// given (a container's cgroup, named as container runtimes name it).
pub fn python_http_in(lab: &Lab, port: u16, cgroup: Option<&Path>) -> Server {
    require_program("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http_server.py");
    let port_s = port.to_string();
    let args = ["python3", script, &lab.server_v4, &port_s];
    let name = "python http server";
    let peer = match cgroup {
        Some(cgroup) => Peer::start_in_cgroup(name, &lab.server_ns, cgroup, &args),
        None => Peer::start(name, &lab.server_ns, &args),
    };
    Server::started(lab, peer, port, TempDir::new("http"))
}

/// [`python_http`] over TLS (Python's ssl) with the certificate and key
/// files given.
pub fn python_https(lab: &Lab, port: u16, cert: &str, key: &str) -> Server {
    python_https_env(lab, port, cert, key, &[])
}

/// [`python_https`] with `NAME=VALUE` settings in its environment (the
/// dynamic linker's, for one).
pub fn python_https_env(lab: &Lab, port: u16, cert: &str, key: &str, env: &[&str]) -> Server {
    require_program("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http_server.py");
    let port_s = port.to_string();
    let mut args = Vec::new();
    if !env.is_empty() {
        args.push("env");
        args.extend(env);
    }
    args.extend([
        "python3",
        script,
        &lab.server_v4,
        &port_s,
        "--tls",
        cert,
        key,
    ]);
    Server::start(
        lab,
        "python https server",
        port,
        TempDir::new("https"),
        &args,
    )
}

/// nginx serving HTTPS with HTTP/1.1 and HTTP/2 (ALPN) on the lab's server
/// address, with the certificate and key files given: `/ok` answers 200,
/// anything else 404.
pub fn nginx_https(lab: &Lab, port: u16, cert: &str, key: &str) -> Server {
    let addr = &lab.server_v4;
    let http = format!(
        "    server {{
        listen {addr}:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /ok {{ return 200 \"ok\\n\"; }}
        location / {{ return 404; }}
    }}"
    );
    nginx(lab, port, TempDir::new("nginx-https"), &http)
}

/// The TLS server of tests/peers/tls_peer.py (TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1), with the certificate and key files given.
pub fn python_tls(lab: &Lab, port: u16, cert: &str, key: &str) -> Server {
    python_tls_with(lab, port, cert, key, None)
}

/// The TLS server of tests/peers/tls_peer.py; with `client_ca`, mutual
/// TLS (clients must present a certificate that CA signed).
pub fn python_tls_with(
    lab: &Lab,
    port: u16,
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Server {
    require_program("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/tls_peer.py");
    let port_s = port.to_string();
    let mut args = vec![
        "python3",
        script,
        "server",
        &lab.server_v4,
        &port_s,
        cert,
        key,
    ];
    args.extend(client_ca);
    Server::start(lab, "python tls server", port, TempDir::new("tls"), &args)
}

/// The thread-per-request frontend of tests/peers/frontend.py: each GET
/// calls `backend` (HTTP/1.1, a new connection per request) and `redis`
/// (its handler thread's own connection) before it answers.
pub fn python_frontend(lab: &Lab, port: u16, backend: &Server, redis: &Server) -> Server {
    require_program("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/frontend.py");
    let port_s = port.to_string();
    let (backend_s, redis_s) = (backend.addr.to_string(), redis.addr.to_string());
    let args = [
        "python3",
        script,
        &lab.server_v4,
        &port_s,
        &backend_s,
        &redis_s,
    ];
    let peer = Peer::start("python frontend", &lab.server_ns, &args);
    Server::started(lab, peer, port, TempDir::new("frontend"))
}

/// The Go HTTPS peer (tests/peers/go_https: server and client in one
/// binary, on Go's own crypto/tls), built with the system's Go, without
/// its symbol table when `stripped` (`-ldflags=-s -w`: a binary the agent
/// cannot attach to); its path.
///
/// Built once per source and kept next to the test binaries
/// (`target/release/peers/HASH/`), where the matrix's guests find it: their
/// file system is read-only, and their emulated CPU takes minutes to build
/// it. Where that folder cannot be written, it is built into `dir`.
pub fn go_https_binary(dir: &TempDir, stripped: bool) -> String {
    require_program("go");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/go_https/main.go");
    let text = std::fs::read(source).expect("the Go peer's source");
    let name = if stripped {
        "go_https_stripped"
    } else {
        "go_https"
    };
    if let Some(folder) = peers_folder(&text) {
        let cached = folder.join(name);
        if cached.exists() {
            return cached.to_string_lossy().into_owned();
        }
        // Built under a name of its own, then renamed: a binary half
        // written is never run.
        let partial = folder.join(format!("{name}.{}.partial", std::process::id()));
        if std::fs::create_dir_all(&folder).is_ok()
            && go_build(source, &partial.to_string_lossy(), stripped, dir).is_ok()
            && std::fs::rename(&partial, &cached).is_ok()
        {
            return cached.to_string_lossy().into_owned();
        }
        let _ = std::fs::remove_file(&partial);
    }
    let binary = dir.join(name);
    if let Err(e) = go_build(source, &binary, stripped, dir) {
        panic!("go build failed: {e}");
    }
    binary
}

/// `target/release/peers/HASH` for a peer whose source is `text`: the
/// folder of the running test binary's profile (`target/release`), and a
/// hash of the source, so an edited peer is built again.
fn peers_folder(text: &[u8]) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    // FNV-1a: the same on every run (std's hasher is not).
    let hash = (text.iter()).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    Some(deps.parent()?.join("peers").join(format!("{hash:016x}")))
}

/// `go build` of `source` into `binary`, with its build cache and GOPATH
/// in `dir` (nothing is left behind, and a missing HOME, CI's, does not
/// matter); the compiler's errors when it fails.
fn go_build(source: &str, binary: &str, stripped: bool, dir: &TempDir) -> Result<(), String> {
    let ldflags = if stripped { "-s -w" } else { "" };
    let out = Command::new("go")
        .args(["build", "-ldflags", ldflags, "-o", binary, source])
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GO111MODULE", "off")
        .output()
        .map_err(|e| format!("could not run go: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The Go HTTPS peer's server (`binary` from [`go_https_binary`]), HTTP/1.1
/// only: `/status/N` answers N, anything else 200.
pub fn go_https(lab: &Lab, port: u16, binary: &str, cert: &str, key: &str) -> Server {
    let port_s = port.to_string();
    let args = [binary, "server", &lab.server_v4, &port_s, cert, key];
    Server::start(
        lab,
        "go https server",
        port,
        TempDir::new("go-https"),
        &args,
    )
}
