//! The soak's clients written here, one loop each, run on threads of the
//! lab's client namespace until the soak's deadline, at a steady rate:
//! HTTP/1.1 on new and on kept-alive connections, requests followed by a
//! reset, refused and dropped connects, DNS lookups and Redis commands.
//! Each counts what it completed in the [`Tally`].

use std::{
    io::{self, BufRead, BufReader, ErrorKind, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    http1,
    pace::Pace,
    paths::{Lane, NOT_FOUND_PREFIX, Paths},
    tally::{Kind, Tally},
};

/// Longest a connect or an answer may take before the client counts an
/// error (far above what the lab takes, even on a busy machine).
const PATIENCE: Duration = Duration::from_secs(10);

/// Requests on one kept-alive connection before the client opens another.
const KEEP_ALIVE_REQUESTS: u32 = 500;

/// What every client shares: when to stop, where to count, which paths to
/// ask for.
#[derive(Clone)]
pub struct Run {
    pub deadline: Instant,
    pub tally: Arc<Tally>,
    pub paths: Arc<Paths>,
}

impl Run {
    fn connect(&self, server: SocketAddr) -> io::Result<BufReader<TcpStream>> {
        self.tally.add(Kind::Connections);
        let conn = TcpStream::connect_timeout(&server, PATIENCE)?;
        conn.set_read_timeout(Some(PATIENCE))?;
        conn.set_write_timeout(Some(PATIENCE))?;
        Ok(BufReader::new(conn))
    }

    /// One GET of `paths`' next path on `conn`, its status checked.
    fn request(
        &self,
        conn: &mut BufReader<TcpStream>,
        paths: &mut Lane<'_>,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let path = paths.next_path();
        self.tally.add(Kind::Paths);
        let response = http1::get(conn, &path, keep_alive)?;
        let expected = if path.starts_with(NOT_FOUND_PREFIX) {
            404
        } else {
            200
        };
        if response.status != expected {
            return Err(io::Error::other(format!(
                "{path}: status {} instead of {expected}",
                response.status
            )));
        }
        Ok(response.closing)
    }
}

/// HTTP/1.1 requests, each on a connection of its own that the server
/// closes after answering.
pub fn http1_new_connections(run: &Run, server: SocketAddr, rate: f64) {
    let mut paths = run.paths.lane();
    for () in Pace::per_second(rate, run.deadline) {
        let outcome = run.connect(server).and_then(|mut conn| {
            run.request(&mut conn, &mut paths, false)?;
            http1::read_to_close(&mut conn)
        });
        match outcome {
            Ok(()) => run.tally.add(Kind::Http1New),
            Err(e) => run
                .tally
                .error(format_args!("HTTP/1.1, new connection: {e}")),
        }
    }
}

/// HTTP/1.1 requests on a kept-alive connection, replaced every
/// [`KEEP_ALIVE_REQUESTS`] requests or when the server closes it.
pub fn http1_keep_alive(run: &Run, server: SocketAddr, rate: f64) {
    let mut paths = run.paths.lane();
    let mut conn = None;
    let mut served = 0;
    for () in Pace::per_second(rate, run.deadline) {
        if conn.is_none() {
            match run.connect(server) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    run.tally
                        .error(format_args!("HTTP/1.1 keep-alive connect: {e}"));
                    continue;
                }
            }
            served = 0;
        }
        let Some(c) = conn.as_mut() else { continue };
        match run.request(c, &mut paths, true) {
            Ok(closing) => {
                run.tally.add(Kind::Http1KeepAlive);
                served += 1;
                if closing || served >= KEEP_ALIVE_REQUESTS {
                    conn = None;
                }
            }
            Err(e) => {
                run.tally.error(format_args!("HTTP/1.1 keep-alive: {e}"));
                conn = None;
            }
        }
    }
}

/// An HTTP/1.1 request on a new connection, answered, then the connection
/// reset by the client (`SO_LINGER` 0 and close: an RST instead of a FIN).
pub fn http1_then_reset(run: &Run, server: SocketAddr, rate: f64) {
    let mut paths = run.paths.lane();
    for () in Pace::per_second(rate, run.deadline) {
        let outcome = run.connect(server).and_then(|mut conn| {
            run.request(&mut conn, &mut paths, true)?;
            reset_on_close(conn.get_ref())
        });
        match outcome {
            Ok(()) => run.tally.add(Kind::Http1Reset),
            Err(e) => run.tally.error(format_args!("HTTP/1.1 then reset: {e}")),
        }
    }
}

/// Makes the socket's close send an RST.
fn reset_on_close(conn: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to a port nothing listens on: each must be refused.
pub fn refused_connects(run: &Run, server: SocketAddr, rate: f64) {
    for () in Pace::per_second(rate, run.deadline) {
        match run.connect(server) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => run.tally.add(Kind::Refused),
            Err(e) => run.tally.error(format_args!("refused connect: {e}")),
            Ok(_) => run.tally.error("a connect to a closed port succeeded"),
        }
    }
}

/// Connects to a port whose SYNs a firewall rule drops: each gives up
/// after `wait` (before the SYN's first retransmission, at 1 s).
pub fn dropped_connects(run: &Run, server: SocketAddr, rate: f64, wait: Duration) {
    for () in Pace::per_second(rate, run.deadline) {
        run.tally.add(Kind::Connections);
        match TcpStream::connect_timeout(&server, wait) {
            Err(e) if e.kind() == ErrorKind::TimedOut => run.tally.add(Kind::Dropped),
            Err(e) => run.tally.error(format_args!("dropped connect: {e}")),
            Ok(_) => run.tally.error("a connect through the drop rule succeeded"),
        }
    }
}

/// DNS lookups of distinct names (`q<n>.soak.test`, A), each from a new
/// connected UDP socket, as glibc's resolver makes them.
pub fn dns_lookups(run: &Run, server: SocketAddr, rate: f64) {
    let mut n: u16 = 0;
    for () in Pace::per_second(rate, run.deadline) {
        n = n.wrapping_add(1);
        match lookup(server, n) {
            Ok(()) => run.tally.add(Kind::Dns),
            Err(e) => run.tally.error(format_args!("DNS lookup {n}: {e}")),
        }
    }
}

fn lookup(server: SocketAddr, id: u16) -> io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(PATIENCE))?;
    sock.send(&super::dns::query(id, &format!("q{id}.soak.test")))?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    if n < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
        return Err(io::Error::other("not the answer to the query"));
    }
    Ok(())
}

/// Redis commands (SET, GET, INCR, DEL in turn) over one connection,
/// written as RESP arrays as redis-cli writes them.
pub fn redis_commands(run: &Run, server: SocketAddr, rate: f64) {
    let mut conn = match run.connect(server) {
        Ok(c) => c,
        Err(e) => return run.tally.error(format_args!("Redis connect: {e}")),
    };
    let mut n: u64 = 0;
    for () in Pace::per_second(rate, run.deadline) {
        n += 1;
        let key = format!("soak:{}", n % 1000);
        let command: Vec<&str> = match n % 4 {
            0 => vec!["SET", &key, "value"],
            1 => vec!["GET", &key],
            2 => vec!["INCR", "soak:counter"],
            _ => vec!["DEL", &key],
        };
        match redis_command(&mut conn, &command) {
            Ok(()) => run.tally.add(Kind::Redis),
            Err(e) => {
                // The connection's state is unknown after an error: stop.
                return run.tally.error(format_args!("Redis {command:?}: {e}"));
            }
        }
    }
}

fn redis_command(conn: &mut BufReader<TcpStream>, args: &[&str]) -> io::Result<()> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    match line.as_bytes().first() {
        Some(b'+' | b':') => Ok(()),
        Some(b'$') => {
            let len: i64 = line[1..].trim().parse().map_err(io::Error::other)?;
            if len >= 0 {
                // The value and its CRLF.
                let mut value = vec![0u8; len as usize + 2];
                io::Read::read_exact(conn, &mut value)?;
            }
            Ok(())
        }
        _ => Err(io::Error::other(format!("reply {line:?}"))),
    }
}
