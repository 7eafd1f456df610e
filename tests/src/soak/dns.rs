//! DNS for the soak: queries as a resolver sends them, and a responder in
//! the lab's server namespace that answers every A query with one record
//! until it is dropped.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::{Lab, spawn_in};

/// A recursive query for `name` (A, IN) with id `id`.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    // RD; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The answer to `query`: the question, then one A record (10.0.0.1, TTL 60).
pub fn answer(query: &[u8]) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] = 0x81; // QR, RD
    answer[3] = 0x80; // RA, NOERROR
    answer[7] = 1; // one answer
    answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    answer
}

/// The responder thread; stopped and joined on drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Answers on `addr` (in the lab's server namespace) from now on.
    pub fn start(lab: &Lab, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = spawn_in(&lab.server_ns, "soak-dns", move || {
            let sock = UdpSocket::bind(addr).expect("bind the DNS responder");
            // Wakes up now and then to see whether it should stop.
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
            ready_tx.send(()).expect("responder ready");
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n > 12 {
                    let _ = sock.send_to(&answer(&buf[..n]), peer);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the DNS responder is bound");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
