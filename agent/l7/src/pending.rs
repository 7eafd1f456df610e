//! Request/response pairing shared by the database parsers.
//!
//! Redis, Postgres and MySQL answer requests in order, so a FIFO pairs them
//! even when the client pipelines. The queue is bounded: once it is full,
//! further requests are only counted, and the responses that belong to them
//! are recognised by the count and dropped, so a client that pipelines more
//! than `max_pending` requests never shifts the pairing of later ones.
//!
//! When bytes are lost ([`Lost`]), the parser cannot know which response
//! ends where. Pending requests are then reported as answered but
//! `truncated`, with the time of the last server bytes seen before the
//! client speaks again: for request/response protocols that is where the
//! lost responses ended.

use std::collections::VecDeque;

use crate::{Chunk, Direction, ErrorKind, Exchange};

pub(crate) struct Fifo<T> {
    queue: VecDeque<T>,
    /// Requests beyond the bound, in order after everything in `queue`.
    untracked: usize,
    max: usize,
}

impl<T> Fifo<T> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            untracked: 0,
            max: max.max(1),
        }
    }

    /// Queues a request, or only counts it when the queue is full (or
    /// already overflowed: order must be kept).
    pub(crate) fn push(&mut self, request: T) {
        if self.untracked == 0 && self.queue.len() < self.max {
            self.queue.push_back(request);
        } else {
            self.untracked = self.untracked.saturating_add(1);
        }
    }

    /// The request the next response answers.
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.queue.front_mut()
    }

    /// The newest request, while it is tracked (for bytes of a request
    /// sent after the message that queued it).
    pub(crate) fn back_mut(&mut self) -> Option<&mut T> {
        if self.untracked > 0 {
            return None;
        }
        self.queue.back_mut()
    }

    /// Removes the oldest request: `Some(Some(_))` a tracked one,
    /// `Some(None)` an untracked one, `None` when nothing was pending (an
    /// unsolicited response).
    pub(crate) fn pop(&mut self) -> Option<Option<T>> {
        if let Some(request) = self.queue.pop_front() {
            return Some(Some(request));
        }
        if self.untracked > 0 {
            self.untracked -= 1;
            return Some(None);
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.untracked == 0
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Empties the queue (tracked requests only; the untracked are gone).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.untracked = 0;
        self.queue.drain(..)
    }
}

/// Exchanges whose responses were lost, waiting for the client to speak
/// again (see the module comment).
#[derive(Default)]
pub(crate) struct Lost {
    exchanges: Vec<Exchange>,
    /// Server bytes are being discarded until the next client chunk.
    active: bool,
    /// The client's parser restarts at its next chunk: what it holds of a
    /// partial request may belong to the lost bytes.
    client_resync: bool,
}

impl Lost {
    /// Starts discarding server bytes (and restarting the client's parser
    /// at its next chunk); `pending` become truncated answers.
    pub(crate) fn begin(&mut self, pending: impl Iterator<Item = Exchange>, ts_ns: u64) {
        self.active = true;
        self.client_resync = true;
        for mut exchange in pending {
            exchange.answered = true;
            exchange.response_ns = ts_ns.max(exchange.request_ns);
            exchange
                .fields
                .insert("truncated".into(), serde_json::Value::Bool(true));
            self.exchanges.push(exchange);
        }
    }

    /// Discarded server bytes at `ts_ns` extend the lost responses.
    pub(crate) fn server_bytes(&mut self, ts_ns: u64) {
        for exchange in &mut self.exchanges {
            exchange.response_ns = exchange.response_ns.max(ts_ns);
        }
    }

    /// The client spoke again (or the connection closed): report them.
    pub(crate) fn finish(&mut self, out: &mut Vec<Exchange>) {
        self.active = false;
        out.append(&mut self.exchanges);
    }
}

/// A request/response session that survives lost bytes as the module
/// comment says, instead of giving up on the connection.
pub(crate) trait Resync {
    /// Bytes were lost: drops the server's partial response and returns
    /// the pending requests as exchanges. Fails when the session cannot
    /// resynchronise (e.g. during a handshake, whose state is unknown).
    fn abandon(&mut self) -> Result<Vec<Exchange>, ErrorKind>;

    /// Drops the client's partial request.
    fn restart_client(&mut self);

    /// The session's loss state.
    fn lost(&mut self) -> &mut Lost;

    /// Bytes were lost: pending requests become truncated answers.
    fn lose(&mut self, ts_ns: u64) -> Result<(), ErrorKind> {
        let pending = self.abandon()?;
        self.lost().begin(pending.into_iter(), ts_ns);
        Ok(())
    }

    /// The loss and resync handling before a chunk is parsed. Returns
    /// whether to parse it: while responses are lost, server bytes are
    /// only timed, since nothing tells where the lost ones end.
    fn admit(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<bool, ErrorKind> {
        if chunk.gap_before > 0 {
            self.lose(chunk.ts_ns)?;
        }
        let lost = self.lost();
        if chunk.direction == Direction::ToClient {
            if lost.active {
                lost.server_bytes(chunk.ts_ns);
            }
            return Ok(!lost.active);
        }
        // The client speaks again: the lost exchanges are reported.
        if lost.active {
            lost.finish(out);
        }
        if std::mem::take(&mut lost.client_resync) {
            self.restart_client();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowed_requests_keep_pairing_in_order() {
        let mut fifo = Fifo::new(2);
        for i in 0..4 {
            fifo.push(i);
        }
        assert_eq!(fifo.pop(), Some(Some(0)));
        // Room again, but 2 and 3 are untracked and ahead of 4.
        fifo.push(4);
        assert_eq!(fifo.pop(), Some(Some(1)));
        assert_eq!(fifo.pop(), Some(None));
        assert_eq!(fifo.pop(), Some(None));
        assert_eq!(fifo.pop(), Some(None));
        assert_eq!(fifo.pop(), None);
        assert!(fifo.is_empty());
    }
}
