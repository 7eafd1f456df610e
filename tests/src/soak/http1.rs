//! A minimal HTTP/1.1 client over a `TcpStream`: one GET, its response
//! read by `Content-Length`, so that a connection can be kept alive, closed
//! or reset after exactly one answered request.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpStream,
};

/// What the client needs of a response.
pub struct Response {
    pub status: u16,
    /// The server said `Connection: close`: no request may follow.
    pub closing: bool,
}

/// Sends `GET path` (with `Connection: close` unless `keep_alive`) and
/// reads the whole response.
pub fn get(conn: &mut BufReader<TcpStream>, path: &str, keep_alive: bool) -> io::Result<Response> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: soak.test\r\nUser-Agent: weft-soak\r\nConnection: {connection}\r\n\r\n"
    )?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("status line {line:?}")))?;
    let mut length = 0usize;
    let mut closing = false;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(invalid("the headers end early".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| invalid(format!("Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("connection") {
            closing = value.eq_ignore_ascii_case("close");
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)?;
    Ok(Response { status, closing })
}

/// Reads until the server closes (so that it closes first, as after a
/// `Connection: close` answer).
pub fn read_to_close(conn: &mut BufReader<TcpStream>) -> io::Result<()> {
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    Ok(())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
