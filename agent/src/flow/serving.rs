//! Which server connections each thread has read requests from, so that a
//! request the thread sends while one of them is unanswered can be traced
//! as that request's child (trace/nesting.rs). Kept only while traces are
//! on.

use std::collections::HashMap;

use weft_common::SockTuple;

use super::tcp::SocketView;

/// Server sockets remembered per thread: a thread-per-request server has
/// one; a few more cover a thread that moved on to another connection.
const SOCKETS_PER_THREAD: usize = 4;
/// Threads remembered at most; beyond, the ones whose requests are all
/// answered are forgotten (`prune`).
const THREADS: usize = 16_384;

/// A server socket (kernel address and its addresses, as the payload
/// records name them).
pub type ServerSocket = (u64, SockTuple);

/// A server socket a thread read from, with the view its last read was
/// named by: the connection's open may not have been handled yet when the
/// thread sends (`FlowTable::serving_view`).
pub type Served = (ServerSocket, SocketView);

#[derive(Default)]
pub struct Serving {
    by_thread: HashMap<u32, Vec<Served>>,
}

impl Serving {
    /// Thread `tid` read from server socket `socket`, named by `view`.
    pub fn read(&mut self, tid: u32, socket: ServerSocket, view: SocketView) {
        if self.by_thread.len() >= THREADS && !self.by_thread.contains_key(&tid) {
            return;
        }
        let sockets = self.by_thread.entry(tid).or_default();
        if let Some(i) = sockets.iter().position(|(s, _)| *s == socket) {
            // The most recent last.
            sockets.remove(i);
        } else if sockets.len() >= SOCKETS_PER_THREAD {
            sockets.remove(0);
        }
        sockets.push((socket, view));
    }

    /// The server sockets thread `tid` read from.
    pub fn of(&self, tid: u32) -> &[Served] {
        self.by_thread.get(&tid).map_or(&[], Vec::as_slice)
    }

    /// Forgets the sockets with no unanswered request (`waiting` says),
    /// and the threads left with none.
    pub fn prune(&mut self, mut waiting: impl FnMut(&ServerSocket) -> bool) {
        self.by_thread.retain(|_, sockets| {
            sockets.retain(|(socket, _)| waiting(socket));
            !sockets.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_thread.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(sk: u64) -> ServerSocket {
        (sk, SockTuple::default())
    }

    fn view() -> SocketView {
        let key = crate::flow::addr::FlowKey {
            transport: crate::flow::record::Transport::Tcp,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        };
        SocketView::one_end(key, false, weft_common::Owner::default())
    }

    #[test]
    fn a_thread_keeps_its_latest_sockets_most_recent_last() {
        let mut s = Serving::default();
        for sk in [1, 2, 3, 4, 5, 3] {
            s.read(7, socket(sk), view());
        }
        let sks: Vec<u64> = s.of(7).iter().map(|((sk, _), _)| *sk).collect();
        assert_eq!(sks, [2, 4, 5, 3]);
        assert!(s.of(8).is_empty());
    }

    #[test]
    fn prune_forgets_answered_sockets_and_empty_threads() {
        let mut s = Serving::default();
        s.read(7, socket(1), view());
        s.read(7, socket(2), view());
        s.read(8, socket(3), view());
        s.prune(|(sk, _)| *sk == 2);
        let left: Vec<ServerSocket> = s.of(7).iter().map(|(socket, _)| *socket).collect();
        assert_eq!(left, [socket(2)]);
        assert_eq!(s.len(), 1);
    }
}
