//! What the agent keeps to itself, against the real agent:
//!
//! - The flow API socket is `root:<api_socket_group>`, 0660: a member of
//!   the group (a throwaway system group and users made for the test) gets
//!   `weft status`, another user is refused with exit status 1 and a
//!   message naming the socket and what to do; without the option the
//!   socket is `root:root` and every non-root user is refused. A group the
//!   node does not know is refused at start (exit status 2, naming the
//!   field and the value) before anything is loaded.
//! - `/metrics` listens on 127.0.0.1:9464 only, unless `--metrics-addr`
//!   says otherwise, and then exactly there.
//! - Secrets never leave the agent: HTTP/1.1 and HTTP/2 requests with
//!   `Authorization`, `Cookie`, a query token, a form body and userinfo, a
//!   response's `Set-Cookie`; PostgreSQL start-up with a cleartext
//!   password, literals and an error quoting one; MariaDB login with the
//!   password sent in clear, literals and an error carrying one; Redis
//!   `CONFIG SET requirepass`, `AUTH`, `HELLO ... AUTH`, `ACL SETUSER` and
//!   values. Each secret is a unique marker; none appears in any record
//!   (`weft flows --all`), the metrics, `weft top`, `weft status`, or the
//!   agent's debug log, and the corpus's exchanges are all there, counted
//!   exactly, so the parsers did read them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, DEFAULT_METRICS_PORT, weft_bin},
    follow::Follower,
    lab::Lab,
    output_within,
    peer::{TempDir, exec_with_input, require_program},
    require_root, servers, try_wait_for, unique_port,
};

/// How long a one-shot command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A throwaway system group and two users, one in it and one not; all
/// three are removed when dropped (also when the test fails).
struct Accounts {
    group: String,
    gid: u32,
    member: String,
    outsider: String,
}

impl Accounts {
    fn create() -> Self {
        require_program("useradd");
        require_program("setpriv");
        let pid = std::process::id();
        let mut accounts = Accounts {
            group: format!("weftsec-g{pid}"),
            gid: 0,
            member: format!("weftsec-in{pid}"),
            outsider: format!("weftsec-out{pid}"),
        };
        // A leftover of a killed run with the same names goes first.
        accounts.remove();
        weft_tests::run(&["groupadd", "--system", &accounts.group]);
        for (user, groups) in [
            (&accounts.member, accounts.group.as_str()),
            (&accounts.outsider, ""),
        ] {
            let mut args = vec!["useradd", "--system", "--no-create-home"];
            args.extend([
                "--no-user-group",
                "--gid",
                "nogroup",
                "--shell",
                "/bin/false",
            ]);
            if !groups.is_empty() {
                args.extend(["--groups", groups]);
            }
            args.push(user);
            weft_tests::run(&args);
        }
        let entry = weft_tests::run(&["getent", "group", &accounts.group]);
        accounts.gid = String::from_utf8_lossy(&entry.stdout)
            .split(':')
            .nth(2)
            .and_then(|gid| gid.trim().parse().ok())
            .expect("the new group's gid");
        accounts
    }

    /// `weft ARGS` as `user` (its own groups, no capability).
    fn weft_as(&self, user: &str, args: &[&str]) -> Output {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", user, "--regid", "nogroup", "--init-groups"])
            .arg(weft_bin())
            .args(args);
        output_within(&mut command, COMMAND_LIMIT).expect("weft answered in time")
    }

    fn remove(&self) {
        for user in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The socket is a socket, mode 0660, owned by root and `gid`.
fn assert_socket(socket: &Path, gid: u32) {
    let meta = std::fs::symlink_metadata(socket).expect("the API socket");
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, gid));
}

/// `weft status` as `user` is refused: exit status 1, the socket and
/// what to do named.
fn assert_refused(accounts: &Accounts, user: &str, agent: &Agent) {
    let socket = agent.socket.to_str().expect("utf-8 path");
    let out = accounts.weft_as(user, &["status", "--api-socket", socket]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{user}: {stderr}");
    assert!(out.stdout.is_empty(), "{user}");
    let expected = format!(
        "error: cannot reach the weft agent at {socket}: Permission denied (os error 13); \
         run as root, or as a member of the socket's group (the agent's api_socket_group, \
         `ls -l {socket}` shows it)\n"
    );
    assert_eq!(stderr, expected, "{user}");
}

#[test]
fn api_socket_is_for_root_and_its_group_only() {
    if !require_root("api_socket_is_for_root_and_its_group_only") {
        return;
    }
    let accounts = Accounts::create();
    {
        let agent = Agent::start(&["--api-socket-group", &accounts.group]);
        assert_socket(&agent.socket, accounts.gid);
        let socket = agent.socket.to_str().expect("utf-8 path");
        let out = accounts.weft_as(
            &accounts.member,
            &["status", "-o", "json", "--api-socket", socket],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(status["pid"], agent.pid());
        assert_refused(&accounts, &accounts.outsider, &agent);
    }
    // Without the option: root's group, so root only.
    let agent = Agent::start(&[]);
    assert_socket(&agent.socket, 0);
    assert!(agent.status_json().is_some(), "root is served");
    assert_refused(&accounts, &accounts.member, &agent);
    assert_refused(&accounts, &accounts.outsider, &agent);
}

#[test]
fn an_unknown_api_socket_group_is_refused_before_loading() {
    if !require_root("an_unknown_api_socket_group_is_refused_before_loading") {
        return;
    }
    let dir = TempDir::new("security");
    let socket = dir.join("weft.sock");
    let group = format!("weftsec-none{}", std::process::id());
    let mut command = Command::new(weft_bin());
    command.args([
        "agent",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-socket",
        &socket,
    ]);
    command.args(["--api-socket-group", &group]);
    let out = output_within(&mut command, COMMAND_LIMIT).expect("the agent exits at once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: invalid api_socket_group {group:?}: no group of that name on this node; \
             create it (`groupadd --system {group}`) or give an existing group's name or a \
             numeric gid\n"
        )
    );
    assert!(!Path::new(&socket).exists(), "no socket was made");

    // A gid needs no group: printed as the number it is.
    let mut command = Command::new(weft_bin());
    command.args(["agent", "--print-config", "--api-socket-group", "4242"]);
    let out = output_within(&mut command, COMMAND_LIMIT).expect("print-config exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("\napi_socket_group: 4242\n"), "{printed}");
}

/// The TCP addresses process `pid` listens on (IPv4 and IPv6 sockets of
/// its network namespace, matched to its file descriptors by inode).
fn tcp_listeners(pid: u32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fds")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut listeners = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).expect("tcp table");
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && inodes.iter().any(|i| i == inode) {
                listeners.push(kernel_address(local));
            }
        }
    }
    listeners.sort();
    listeners
}

/// `/proc/net/tcp`'s `0100007F:24F8`: the address as the kernel's 32-bit
/// words in host order, the port in hex.
fn kernel_address(text: &str) -> SocketAddr {
    let (addr, port) = text.split_once(':').expect("addr:port");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    let bytes: Vec<u8> = (0..addr.len() / 8)
        .flat_map(|i| {
            let word = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).expect("hex word");
            word.to_ne_bytes()
        })
        .collect();
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
    };
    SocketAddr::new(ip, port)
}

#[test]
fn metrics_stay_on_loopback_unless_configured() {
    if !require_root("metrics_stay_on_loopback_unless_configured") {
        return;
    }
    {
        let agent = Agent::start_default_metrics(&[]);
        let expected: SocketAddr = ([127, 0, 0, 1], DEFAULT_METRICS_PORT).into();
        assert_eq!(tcp_listeners(agent.pid()), vec![expected]);
    }
    // Another loopback address than the default's: bound exactly there.
    let agent = Agent::start_metrics_on("127.0.0.2", &[]);
    let expected: SocketAddr = ([127, 0, 0, 2], agent.metrics_port).into();
    assert_eq!(tcp_listeners(agent.pid()), vec![expected]);
}

/// A marker for one kind of secret: unique to this run, and greppable.
fn secret(kind: &str) -> String {
    format!("s3cr3t-{kind}-{}", std::process::id())
}

/// Every kind of secret the corpus sends.
const SECRETS: [&str; 21] = [
    "bearer",
    "cookie",
    "setcookie",
    "query",
    "form",
    "userinfo",
    "h2bearer",
    "h2cookie",
    "h2query",
    "pgrole",
    "pgpass",
    "pgliteral",
    "pgerror",
    "myuser",
    "myliteral",
    "myerror",
    "mynew",
    "redisconfig",
    "redisvalue",
    "redisacl",
    "redisecho",
];

/// Runs `args` in the lab's client namespace; returns (stdout, stderr),
/// panicking if it does not finish in time.
fn in_client(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &lab.client_ns]).args(args);
    command.envs(env.iter().copied());
    let out = output_within(&mut command, COMMAND_LIMIT)
        .unwrap_or_else(|| panic!("{args:?} did not finish"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends one raw request and reads until the server closes.
const RAW_CLIENT: &str = "import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(sys.argv[3].encode())
while s.recv(65536):
    pass
";

/// HTTP/1.1 and h2c requests carrying secrets, to nginx answering with a
/// secret cookie. Returns the exchanges made per protocol.
fn http_corpus(lab: &Lab) -> [(&'static str, usize); 2] {
    let (h1, h2) = (unique_port(70), unique_port(71));
    let addr = &lab.server_v4;
    let set_cookie = secret("setcookie");
    let http = format!(
        "    server {{
        listen {addr}:{h1};
        location / {{ add_header Set-Cookie \"session={set_cookie}; HttpOnly\" always; return 200 \"ok\\n\"; }}
    }}
    server {{
        listen {addr}:{h2} http2;
        location / {{ add_header Set-Cookie \"session={set_cookie}\" always; return 200 \"ok\\n\"; }}
    }}"
    );
    let mut server = servers::nginx(lab, h1, TempDir::new("nginx-secrets"), &http);
    let bearer = format!("Authorization: Bearer {}", secret("bearer"));
    let cookie = format!("Cookie: session={}", secret("cookie"));
    let url = format!("http://{addr}:{h1}/login?token={}&next=x", secret("query"));
    let out = lab
        .curl(
            &["-sS", "-D", "-", "-H", &bearer, "-H", &cookie, &url],
            COMMAND_LIMIT,
        )
        .expect("curl finished");
    let headers = String::from_utf8_lossy(&out.stdout);
    assert!(
        headers.contains(&set_cookie),
        "the response carries the cookie: {headers}"
    );
    let form = format!("password={}", secret("form"));
    let post = format!("http://{addr}:{h1}/submit");
    let out = lab
        .curl(&["-sS", "-d", &form, &post], COMMAND_LIMIT)
        .expect("curl finished");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    // Absolute form, as to a proxy, with userinfo in the target.
    let raw = format!(
        "GET http://weft:{}@{addr}:{h1}/proxied HTTP/1.1\r\nHost: {addr}:{h1}\r\nConnection: close\r\n\r\n",
        secret("userinfo")
    );
    let port_s = h1.to_string();
    in_client(
        lab,
        &["python3", "-c", RAW_CLIENT, addr, &port_s, &raw],
        &[],
    );
    let h2_bearer = format!("Authorization: Bearer {}", secret("h2bearer"));
    let h2_cookie = format!("Cookie: session={}", secret("h2cookie"));
    let h2_url = format!("http://{addr}:{h2}/h2?token={}", secret("h2query"));
    let out = lab
        .curl(
            &[
                "-sS",
                "--http2-prior-knowledge",
                "-H",
                &h2_bearer,
                "-H",
                &h2_cookie,
                &h2_url,
            ],
            COMMAND_LIMIT,
        )
        .expect("curl finished");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    server.stop();
    [("http", 3), ("http2", 1)]
}

/// Waits until PostgreSQL asks `weft_sec` for a password (the reloaded
/// pg_hba.conf is in force), probing from the server's namespace.
fn wait_for_password_auth(lab: &Lab, server: &servers::Server) {
    let port = server.addr.port().to_string();
    let probe = [
        "psql",
        "--no-psqlrc",
        "-w",
        "-h",
        &lab.server_v4,
        "-p",
        &port,
        "-U",
        "weft_sec",
        "-d",
        "postgres",
        "-c",
        "SELECT 1",
    ];
    let mut last = String::new();
    let asked = try_wait_for(Duration::from_secs(20), || {
        let (_, _, stderr) = exec_with_input(&lab.server_ns, &probe, "");
        last = stderr;
        last.contains("no password supplied").then_some(())
    });
    assert!(asked.is_some(), "pg_hba.conf was not reloaded: {last}");
}

/// A role with a password, logged in with it in clear (`password` auth),
/// literals and an error quoting one.
fn postgres_corpus(lab: &Lab) -> (&'static str, usize) {
    let mut server = servers::postgres(lab, unique_port(72));
    let create = format!("CREATE ROLE weft_sec LOGIN PASSWORD '{}'", secret("pgrole"));
    let (stdout, stderr) = servers::psql(lab, &server, &[&create, "SHOW hba_file"]);
    let hba = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with("pg_hba.conf"))
        .unwrap_or_else(|| panic!("no hba_file in {stdout}{stderr}"))
        .to_owned();
    let client = &lab.client_v4;
    let server_ip = &lab.server_v4;
    std::fs::write(
        &hba,
        format!(
            "local all all trust\nhost all postgres {client}/32 trust\n\
             host all weft_sec {client}/32 password\nhost all weft_sec {server_ip}/32 password\n"
        ),
    )
    .expect("rewrite pg_hba.conf");
    let (stdout, stderr) = servers::psql(lab, &server, &["SELECT pg_reload_conf()"]);
    assert!(stdout.contains(" t"), "reload: {stdout}{stderr}");
    wait_for_password_auth(lab, &server);

    let port = server.addr.port().to_string();
    let (literal, error) = (
        format!("SELECT '{}'", secret("pgliteral")),
        format!("SELECT '{}'::int", secret("pgerror")),
    );
    let change = format!("ALTER ROLE weft_sec PASSWORD '{}'", secret("pgpass"));
    let mut args = vec!["psql", "--no-psqlrc", "-w", "-h", server_ip, "-p", &port];
    args.extend(["-U", "weft_sec", "-d", "postgres"]);
    args.extend(["-c", &literal, "-c", &error, "-c", &change]);
    let pgpass = secret("pgrole");
    let (stdout, stderr) = in_client(lab, &args, &[("PGPASSWORD", &pgpass)]);
    assert!(stdout.contains(&secret("pgliteral")), "{stdout}{stderr}");
    assert!(
        stderr.contains("invalid input syntax for type integer"),
        "{stderr}"
    );
    assert!(stdout.contains("ALTER ROLE"), "{stdout}{stderr}");
    server.stop();
    ("postgres", 6)
}

/// A MariaDB user with a password, logged in with the password sent in
/// clear first (`mysql_clear_password`, switched to the user's plugin by
/// the server), literals and an error carrying one.
fn mysql_corpus(lab: &Lab) -> (&'static str, usize) {
    let mut server = servers::mariadb(lab, unique_port(73));
    let create = format!(
        "CREATE USER 'weft_sec'@'%' IDENTIFIED BY '{}'",
        secret("myuser")
    );
    // Grant tables on: from now on passwords are checked.
    let (_, stderr) = servers::mariadb_client(lab, &server, &["FLUSH PRIVILEGES", &create]);
    assert!(stderr.is_empty(), "{stderr}");
    let port = server.addr.port().to_string();
    let password = format!("--password={}", secret("myuser"));
    let client = [
        "mariadb",
        "--no-defaults",
        "--batch",
        "--force",
        "--default-auth=mysql_clear_password",
        "-h",
        &lab.server_v4,
        "-P",
        &port,
        "-u",
        "weft_sec",
        &password,
    ];
    let script = format!(
        "SELECT '{}';\nSIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{}';\nSET PASSWORD = PASSWORD('{}');\n",
        secret("myliteral"),
        secret("myerror"),
        secret("mynew")
    );
    let (_, stdout, stderr) = exec_with_input(&lab.client_ns, &client, &script);
    assert!(stdout.contains(&secret("myliteral")), "{stdout}{stderr}");
    assert!(stderr.contains(&secret("myerror")), "{stdout}{stderr}");
    server.stop();
    ("mysql", 5)
}

/// Redis given a password at run time, then used with it.
fn redis_corpus(lab: &Lab) -> (&'static str, usize) {
    let mut server = servers::redis(lab, unique_port(74));
    let port = server.addr.port().to_string();
    let password = secret("redisconfig");
    let cli = ["redis-cli", "-h", &lab.server_v4, "-p", &port];
    let mut config = cli.to_vec();
    config.extend(["CONFIG", "SET", "requirepass", &password]);
    let (ok, stdout, stderr) = exec_with_input(&lab.client_ns, &config, "");
    assert!(ok && stdout.trim() == "OK", "{stdout}{stderr}");
    let mut authed = cli.to_vec();
    authed.extend(["-a", &password, "--no-auth-warning"]);
    let script = format!(
        "SET weft:sec {value}\nGET weft:sec\nHELLO 2 AUTH default {password}\n\
         ACL SETUSER weft_sec on >{acl} ~weft:* +get\nECHO {echo}\nCONFIG GET requirepass\n",
        value = secret("redisvalue"),
        acl = secret("redisacl"),
        echo = secret("redisecho"),
    );
    let (ok, stdout, stderr) = exec_with_input(&lab.client_ns, &authed, &script);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&secret("redisvalue")), "{stdout}{stderr}");
    assert!(!stdout.contains("NOAUTH"), "{stdout}{stderr}");
    server.stop();
    ("redis", 9)
}

/// Which secrets `text` carries.
fn leaked(text: &str) -> Vec<String> {
    SECRETS
        .iter()
        .map(|kind| secret(kind))
        .filter(|s| text.contains(s.as_str()))
        .collect()
}

/// The L7 records from the lab's client, both sides, counted per
/// protocol.
fn l7_counts(records: &[Value], client: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] == "l7") {
        if r["source"]["ip"] == client {
            let protocol = r["l7"]["protocol"].as_str().unwrap_or("?").to_owned();
            *counts.entry(protocol).or_default() += 1;
        }
    }
    counts
}

/// Connections the lab's client made: closed ones count.
fn client_closes(records: &[Value], client: &str) -> usize {
    records
        .iter()
        .filter(|r| r["type"] == "l4" && r["event"] == "close" && r["source"]["ip"] == client)
        .count()
}

/// Runs the whole corpus through `agent` (its privacy settings on or off:
/// `private`) and returns the L7 and L4
/// records of the lab's client, once every exchange and connection is
/// there; their numbers are exact, or the corpus proves nothing.
fn run_corpus(agent: &Agent, private: bool) -> Vec<Value> {
    let lab = Lab::new();
    let follower = Follower::start(agent, &["--ip", &lab.server_v4]);
    let [http, http2] = http_corpus(&lab);
    let made = [
        http,
        http2,
        postgres_corpus(&lab),
        mysql_corpus(&lab),
        redis_corpus(&lab),
    ];
    // Each exchange is seen from both sockets.
    let expected: BTreeMap<String, usize> = made
        .iter()
        .map(|(protocol, n)| ((*protocol).to_owned(), 2 * n))
        .collect();
    // curl ×3, python, psql ×3, mariadb ×2, redis-cli ×2, and the
    // harness's check that each of the 4 servers accepts connections.
    let connections = 11 + 4;
    let client = lab.client_v4.clone();
    let records = follower.wait(Duration::from_secs(60), |r| {
        client_closes(r, &client) >= connections && l7_counts(r, &client) == expected
    });
    assert_eq!(client_closes(&records, &client), connections);
    assert_eq!(l7_counts(&records, &client), expected, "{records:#?}");
    assert!(follower.notices().is_empty(), "{:?}", follower.notices());
    check_statements(&records, &client, private, &lab.server_v4);
    records
}

#[test]
fn secrets_never_leave_the_agent() {
    if !require_root("secrets_never_leave_the_agent") {
        return;
    }
    let agent = Agent::start_logging("debug", &[]);
    let records = run_corpus(&agent, true);

    let everything = agent.client(&["flows", "--all", "-o", "json"]);
    assert!(everything.status.success());
    let top = agent.client(&[
        "top", "--once", "-o", "json", "--by", "route", "--window", "5m",
    ]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let status = agent.client(&["status", "-o", "json"]);
    let sources = [
        (
            "weft flows --all",
            String::from_utf8_lossy(&everything.stdout).into_owned(),
        ),
        ("weft flows -f", format!("{records:?}")),
        (
            "weft top",
            String::from_utf8_lossy(&top.stdout).into_owned(),
        ),
        (
            "weft status",
            String::from_utf8_lossy(&status.stdout).into_owned(),
        ),
        ("/metrics", agent.metrics()),
        ("/metrics (OpenMetrics)", agent.openmetrics()),
        ("the agent's log", agent.log()),
    ];
    for (name, text) in &sources {
        assert!(!text.is_empty(), "{name} is empty");
        assert_eq!(leaked(text), Vec::<String>::new(), "{name} leaks");
    }
}

/// The same corpus with every privacy setting off: the values those
/// settings hide now show (so the secrets did reach the parsers, and the
/// search would find them), and what is never reported (headers, bodies,
/// credentials of the start-ups, userinfo, credential-like query
/// parameters) still never is.
#[test]
fn with_privacy_off_only_values_show() {
    if !require_root("with_privacy_off_only_values_show") {
        return;
    }
    let dir = TempDir::new("security");
    let config = dir.join("weft.yaml");
    std::fs::write(
        &config,
        "l7_redact_query_values: false\nl7_obfuscate_sql: false\nl7_obfuscate_redis_values: false\n",
    )
    .expect("write the configuration");
    let agent = Agent::start_logging("debug", &["--config", &config]);
    let records = run_corpus(&agent, false);
    let everything = agent.client(&["flows", "--all", "-o", "json"]);
    assert!(everything.status.success());
    let shown: Vec<String> = [
        "pgliteral",
        "pgerror",
        "myliteral",
        "myerror",
        "redisvalue",
        "redisecho",
    ]
    .map(secret)
    .into();
    assert_eq!(leaked(&format!("{records:?}")), shown);
    assert_eq!(leaked(&String::from_utf8_lossy(&everything.stdout)), shown);
    assert_eq!(leaked(&agent.log()), Vec::<String>::new(), "the log leaks");
}

/// What the client's records say, request by request, in the order the
/// corpus sent them: with privacy on (`private`), placeholders where the
/// secrets were; off, the values, but never the credentials of headers,
/// start-ups, userinfo or credential-like query parameters, nor passwords
/// set by SQL statements or given to Redis commands.
fn expected_statements(private: bool, server: &str) -> Vec<String> {
    let value = |kind: &str, quoted: bool| match (private, quoted) {
        (true, _) => "?".to_owned(),
        (false, true) => format!("'{}'", secret(kind)),
        (false, false) => secret(kind),
    };
    let h1 = unique_port(70);
    let next = if private { "REDACTED" } else { "x" };
    let mut statements = vec![
        format!("/login?token=REDACTED&next={next}"),
        "/submit".to_owned(),
        format!("http://{server}:{h1}/proxied"),
        "/h2?token=REDACTED".to_owned(),
        "CREATE ROLE weft_sec LOGIN PASSWORD ?".to_owned(),
        "SHOW hba_file".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
        format!("SELECT {}", value("pgliteral", true)),
        format!("SELECT {}::int", value("pgerror", true)),
        "ALTER ROLE weft_sec PASSWORD ?".to_owned(),
        "FLUSH PRIVILEGES".to_owned(),
    ];
    statements.push("CREATE USER ?@? IDENTIFIED BY ?".to_owned());
    let signal = match private {
        true => "SIGNAL SQLSTATE ? SET MESSAGE_TEXT = ?".to_owned(),
        false => format!(
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {}",
            value("myerror", true)
        ),
    };
    statements.extend([
        format!("SELECT {}", value("myliteral", true)),
        signal,
        "SET PASSWORD = PASSWORD(?)".to_owned(),
    ]);
    statements.extend(redis_statements(private));
    statements
}

/// The Redis part of [`expected_statements`]: redis-cli authenticates
/// first and, reading commands from stdin, asks for `COMMAND DOCS`.
fn redis_statements(private: bool) -> Vec<String> {
    if private {
        let fixed = [
            "CONFIG SET ?",
            "AUTH ?",
            "COMMAND DOCS",
            "SET weft:sec ?",
            "GET weft:sec",
            "HELLO ?",
            "ACL SETUSER ?",
            "ECHO ?",
            "CONFIG GET ?",
        ];
        return fixed.map(str::to_owned).into();
    }
    vec![
        "CONFIG SET requirepass ?".to_owned(),
        "AUTH ?".to_owned(),
        "COMMAND DOCS".to_owned(),
        format!("SET weft:sec {}", secret("redisvalue")),
        "GET weft:sec".to_owned(),
        "HELLO 2 AUTH ? ?".to_owned(),
        "ACL SETUSER weft_sec on ? ~weft:* +get".to_owned(),
        format!("ECHO {}", secret("redisecho")),
        "CONFIG GET requirepass".to_owned(),
    ]
}

/// The client's side of every exchange says exactly what
/// [`expected_statements`] says, in order.
fn check_statements(records: &[Value], client: &str, private: bool, server: &str) {
    let mut egress: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "l7" && r["source"]["ip"] == client)
        .filter(|r| r["traffic_direction"] == "egress")
        .collect();
    egress.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_owned());
    let statements: Vec<&str> = egress
        .iter()
        .filter_map(|r| r["l7"]["statement"].as_str().or(r["l7"]["path"].as_str()))
        .collect();
    assert_eq!(statements, expected_statements(private, server));
}
