//! Plain TCP traffic between a lab's namespaces, from threads whose names
//! (`lab-server`, `lab-client`) are the process names weft reports.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use crate::lab::{Lab, spawn_in};

const WAIT: Duration = Duration::from_secs(60);

/// A server that reads `send` bytes, answers `reply` bytes and closes; a
/// client that sends `send` bytes and reads until EOF. Returns what the
/// client received.
pub fn exchange(lab: &Lab, server: SocketAddr, send: usize, reply: usize) -> usize {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let srv = spawn_in(&lab.server_ns, "lab-server", move || {
        let listener = TcpListener::bind(server).expect("bind server");
        ready_tx.send(()).expect("signal ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < send {
            let n = conn.read(&mut buf).expect("server read");
            assert!(n > 0, "client closed early after {got} bytes");
            got += n;
        }
        conn.write_all(&vec![b'r'; reply]).expect("server write");
        got
    });
    ready_rx.recv_timeout(WAIT).expect("server listening");
    let cli = spawn_in(&lab.client_ns, "lab-client", move || {
        let mut conn = TcpStream::connect_timeout(&server, WAIT).expect("connect");
        conn.write_all(&vec![b's'; send]).expect("client write");
        let mut received = Vec::new();
        conn.read_to_end(&mut received).expect("client read");
        received.len()
    });
    assert_eq!(srv.join().expect("server thread"), send);
    cli.join().expect("client thread")
}

/// A connection from the client namespace that must fail within
/// `timeout` (refused, or its SYNs dropped).
pub fn connect_fails(lab: &Lab, server: SocketAddr, timeout: Duration) {
    spawn_in(&lab.client_ns, "lab-client", move || {
        TcpStream::connect_timeout(&server, timeout).expect_err("the connection must fail")
    })
    .join()
    .expect("client");
}
