//! TCP connections: merging the kernel's per-socket events into one flow
//! per connection.
//!
//! When client and server both run on this node the kernel reports two
//! sockets for one connection; both map to the same [`FlowKey`] and become
//! the flow's `client` and `server` ends. A record takes each figure from
//! the end that sees it best: bytes from the client's socket when it is
//! here (what it wrote is what was sent), RTT from the client's view.
//!
//! Records: `open` once both ends are established, or [`OPEN_WAIT_NS`]
//! after the first when the other is not on this node; `update` every
//! update interval; `close` when every known end has closed. An end closing
//! while the other end has not been seen yet waits `close_grace` for it, so
//! that a short connection between two local processes is still one record.

use std::collections::{HashMap, HashSet, VecDeque};

use weft_common::{
    conn::{CONN_ACTIVE, CONN_AGENT, CONN_PASSIVE, TcpConn},
    event::{
        EVENT_TCP_CLOSE, EVENT_TCP_FAIL, EVENT_TCP_OPEN, EVENT_TCP_RESET_RECEIVED,
        EVENT_TCP_RESET_SENT, TcpEvent,
    },
};

use super::{
    addr::{FlowKey, key},
    emit::{Emitter, Exported, Figures, Observation},
    record::{Failure, FlowEvent, Transport},
};
use crate::export::labels::ResetLabels;

/// How long (kernel time) a connection's `open` waits for its other end.
/// When both run on this node, the server's socket is established within
/// microseconds of the client's on an idle machine, but the ACK that
/// establishes it may wait for a busy CPU's softirq: under emulation (the
/// kernel matrix) the gap exceeded 10 ms. Waiting names both processes in
/// the record and in the labels of `weft_tcp_connections_opened_total`,
/// the same as the connection's later records and metrics.
const OPEN_WAIT_NS: u64 = 100_000_000;

/// How far past a kernel time the events must have been read for every
/// event written before it to have been (`events_read_past`): events of
/// different CPUs reach the ring slightly out of time order, and a close
/// event is written just after its socket leaves the table.
const EVENT_ORDER_MARGIN_NS: u64 = 100_000_000;

/// How many finished connections are remembered, so that a close event
/// arriving after its connection was finished is recognised. A late close
/// comes at most a few polls (or `close_grace`) after; this covers
/// thousands of connections closing per second, and stays below the
/// ~28,000 ephemeral ports after which a client reuses an address pair.
const FINISHED_MEMORY: usize = 16_384;

/// How many of the agent's own connections are remembered after they
/// ended (a scrape is one connection per poll of Prometheus: a handful
/// per second at most).
const OWN_ENDED_MEMORY: usize = 64;

/// One socket of a connection.
#[derive(Debug, Clone, Copy)]
struct End {
    sk: u64,
    conn: TcpConn,
    closed: bool,
}

#[derive(Debug)]
struct Connection {
    client: Option<End>,
    server: Option<End>,
    start_ns: u64,
    last_record_ns: u64,
    /// Set when every known end has closed: when to write the record.
    close_at_ns: Option<u64>,
    /// Set while the `open` record waits for the other end: when it was
    /// established (the record's time).
    open_pending_ns: Option<u64>,
    closed_ns: u64,
    exported: Exported,
}

impl Connection {
    fn ends(&self) -> impl Iterator<Item = &End> {
        self.client.iter().chain(self.server.iter())
    }

    fn figures(&self) -> Figures {
        let c = self.client.map(|e| e.conn);
        let s = self.server.map(|e| e.conn);
        let sum = |f: fn(&TcpConn) -> u32| c.iter().chain(s.iter()).map(|x| f(x) as u64).sum();
        let srtt = c
            .map(|c| c.srtt_us)
            .filter(|&v| v > 0)
            .or(s.map(|s| s.srtt_us).filter(|&v| v > 0));
        Figures {
            bytes_sent: c
                .map(|c| c.bytes_sent)
                .or(s.map(|s| s.bytes_received))
                .unwrap_or(0),
            bytes_received: c
                .map(|c| c.bytes_received)
                .or(s.map(|s| s.bytes_sent))
                .unwrap_or(0),
            packets_sent: None,
            packets_received: None,
            retransmits: sum(|x| x.retransmits),
            srtt_us: srtt.map(u64::from),
            resets_sent: sum(|x| x.resets_sent),
            resets_received: sum(|x| x.resets_received),
        }
    }
}

/// An open socket as the L7 engine needs it.
#[derive(Debug, Clone, Copy)]
pub struct SocketView {
    pub key: FlowKey,
    pub is_client: bool,
    pub client: Option<weft_common::Owner>,
    pub server: Option<weft_common::Owner>,
}

impl SocketView {
    /// A socket known from one end only (its payload or its close, not
    /// its establishment): `owner` is that end's.
    pub fn one_end(key: FlowKey, is_client: bool, owner: weft_common::Owner) -> Self {
        Self {
            key,
            is_client,
            client: is_client.then_some(owner),
            server: (!is_client).then_some(owner),
        }
    }
}

/// What the TCP tracker needs to decide.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    pub update_interval_ns: u64,
    pub close_grace_ns: u64,
    pub capacity: usize,
}

pub struct TcpTracker {
    settings: TcpSettings,
    conns: HashMap<FlowKey, Connection>,
    /// Socket address -> its connection, for open sockets.
    sockets: HashMap<u64, FlowKey>,
    /// Connections not tracked because the table was full.
    pub rejected: u64,
    /// Sockets closed here because their close event was lost: gone from
    /// the kernel's table, or their address taken by a new socket.
    pub closes_lost: u64,
    /// Connections recently finished (their `close` written): a close
    /// event of one that comes after (a close the poll gave up waiting
    /// for, or the other end's after `close_grace`) is late, not a second
    /// close. The one place that knows a connection has been closed.
    finished: HashSet<FlowKey>,
    /// The same, oldest first, to forget the oldest when full.
    finished_order: VecDeque<FlowKey>,
    /// Open sockets missing from the kernel's table, and when (kernel
    /// time) a poll first missed each.
    missing: HashMap<u64, u64>,
    /// The kernel time of the newest event handled.
    handled_ns: u64,
    /// Kernel time before which every lifecycle event has been handled, as
    /// the poll's start found it (`set_events_read`); 0 while events wait.
    read_until_ns: u64,
    /// Connections with an end that is the agent's own socket (a scrape of
    /// its metrics endpoint, its API clients), and how many of their ends
    /// are open: not reported. The kernel marks the agent's sockets; the
    /// other end of such a connection is known by its address pair.
    own: HashMap<FlowKey, u8>,
    /// The agent's connections that ended lately, oldest first: their
    /// packets' drops and last payload records are read after their close.
    own_ended: VecDeque<FlowKey>,
    /// Connections whose `open` waits, oldest first.
    pending_opens: VecDeque<FlowKey>,
}

impl TcpTracker {
    pub fn new(settings: TcpSettings) -> Self {
        Self {
            settings,
            conns: HashMap::new(),
            sockets: HashMap::new(),
            rejected: 0,
            closes_lost: 0,
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            missing: HashMap::new(),
            handled_ns: 0,
            read_until_ns: 0,
            own: HashMap::new(),
            own_ended: VecDeque::new(),
            pending_opens: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection of an open socket, whether the socket is its client,
    /// and the owners of both ends as known now.
    pub fn socket_view(&self, sk: u64) -> Option<SocketView> {
        let key = self.sockets.get(&sk)?;
        let conn = self.conns.get(key)?;
        let is_client = conn.client.is_some_and(|e| e.sk == sk);
        Some(SocketView {
            key: *key,
            is_client,
            client: conn.client.map(|e| e.conn.owner),
            server: conn.server.map(|e| e.conn.owner),
        })
    }

    /// The owners of connection `key`'s ends that the tracker knows
    /// (client, server); `None` for a connection it does not track.
    pub fn owners(
        &self,
        key: &FlowKey,
    ) -> Option<(Option<weft_common::Owner>, Option<weft_common::Owner>)> {
        let conn = self.conns.get(key)?;
        Some((
            conn.client.map(|e| e.conn.owner),
            conn.server.map(|e| e.conn.owner),
        ))
    }

    /// The kernel address of connection `key`'s client socket, when the
    /// tracker knows that end.
    pub fn client_sk(&self, key: &FlowKey) -> Option<u64> {
        self.conns.get(key)?.client.as_ref().map(|end| end.sk)
    }

    /// Whether the connection has an end that is the agent's own socket
    /// (open, or closed lately).
    pub fn is_own(&self, key: &FlowKey) -> bool {
        self.own.contains_key(key) || self.own_ended.contains(key)
    }

    /// Whether the open socket `sk` is an end of one of the agent's own
    /// connections.
    pub fn is_own_socket(&self, sk: u64) -> bool {
        self.sockets.get(&sk).is_some_and(|key| self.is_own(key))
    }

    /// Whether a packet between `a` and `b` belongs to one of the agent's
    /// own connections.
    pub fn is_own_pair(&self, a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
        let k = |client, server| FlowKey {
            transport: Transport::Tcp,
            client,
            server,
        };
        self.is_own(&k(a, b)) || self.is_own(&k(b, a))
    }

    /// Whether a packet between `a` and `b` dropped at `ts_ns` belongs to
    /// one of the agent's own connections; `None` while that cannot be
    /// told, the lifecycle events before it not all read yet.
    pub fn drop_is_own(
        &self,
        a: std::net::SocketAddr,
        b: std::net::SocketAddr,
        ts_ns: u64,
    ) -> Option<bool> {
        if self.is_own_pair(a, b) {
            return Some(true);
        }
        self.events_read_past(ts_ns).then_some(false)
    }

    /// Whether the lifecycle events the kernel wrote before `ts_ns` have
    /// all been handled, with `EVENT_ORDER_MARGIN_NS` to spare (events come
    /// in about kernel time order): an event written that much later was
    /// handled, or the reader had read that far with nothing left
    /// waiting when the poll began.
    pub fn events_read_past(&self, ts_ns: u64) -> bool {
        self.events_read_ns() >= ts_ns.saturating_add(EVENT_ORDER_MARGIN_NS)
    }

    /// How far the lifecycle events are known to have been read: the
    /// newest handled, or the reader's mark when nothing waited.
    fn events_read_ns(&self) -> u64 {
        self.handled_ns.max(self.read_until_ns)
    }

    /// Tells the poll how far the lifecycle events have been read: the
    /// reader had read every event written before `reader_until_ns`
    /// (`PipelineCounters::events_read_until_ns`), and whether some wait
    /// in the queue still (then only the events handled count).
    pub fn set_events_read(&mut self, waiting: bool, reader_until_ns: u64) {
        self.read_until_ns = if waiting { 0 } else { reader_until_ns };
    }

    pub fn handle(&mut self, ev: &TcpEvent, out: &mut Emitter) {
        self.handled_ns = self.handled_ns.max(ev.ts_ns);
        let is_client = ev.conn.flags & CONN_ACTIVE != 0;
        let key = key(Transport::Tcp, &ev.conn.tuple, is_client);
        if self.own_traffic(key, ev, out) {
            return;
        }
        // Events come in about kernel time order: one this late means the
        // other ends of the connections opened before it have been read.
        self.write_due_opens(ev.ts_ns, out);
        match ev.kind {
            EVENT_TCP_OPEN => self.opened(key, ev, is_client, out),
            EVENT_TCP_CLOSE => self.closed(key, ev, is_client, out),
            EVENT_TCP_FAIL => failed(key, ev, is_client, out),
            EVENT_TCP_RESET_SENT | EVENT_TCP_RESET_RECEIVED => {
                let key = self.reset_key(ev, key);
                let direction = if ev.kind == EVENT_TCP_RESET_SENT {
                    "sent"
                } else {
                    "received"
                };
                let owner = (ev.sk != 0).then_some(ev.conn.owner);
                let obs = Observation {
                    key: &key,
                    event: FlowEvent::Update,
                    ts_ns: ev.ts_ns,
                    start_ns: ev.ts_ns,
                    client: if is_client { owner } else { None },
                    server: if is_client { None } else { owner },
                    figures: Figures::default(),
                    failure: None,
                };
                let l4 = out.labels(&obs);
                out.metrics()
                    .tcp_resets
                    .get_or_create(&ResetLabels { direction, l4 })
                    .inc();
            }
            _ => {}
        }
    }

    /// The connection a reset event is of. A reset answering a packet with
    /// no socket (sk == 0) was sent by the server side of this node to a
    /// client. A socket closed with `SO_LINGER` 0 sends its reset after
    /// its close removed its state from the kernel's table: its event
    /// tells neither end, and its connection is the one known here (open,
    /// or just finished) with its addresses either way round. Taken for
    /// the server's, a client's ephemeral port would become a
    /// `destination_port` label: a new series for every such reset.
    fn reset_key(&self, ev: &TcpEvent, key: FlowKey) -> FlowKey {
        if ev.sk == 0 {
            return super::addr::key(Transport::Tcp, &ev.conn.tuple, false);
        }
        if ev.conn.flags & (CONN_ACTIVE | CONN_PASSIVE) != 0 {
            return key;
        }
        let as_client = super::addr::key(Transport::Tcp, &ev.conn.tuple, true);
        if self.conns.contains_key(&as_client) || self.finished.contains(&as_client) {
            as_client
        } else {
            key
        }
    }

    /// Follows the agent's own connections, and tells whether `ev` is of
    /// one (then it is not reported). An end of the agent opening takes
    /// over a connection whose other end opened just before: its `open`
    /// record is still waiting for that end (`OPEN_WAIT_NS`).
    fn own_traffic(&mut self, key: FlowKey, ev: &TcpEvent, out: &mut Emitter) -> bool {
        let agent = ev.conn.flags & CONN_AGENT != 0;
        if !agent && !self.own.contains_key(&key) {
            if !self.own_ended.contains(&key) {
                return false;
            }
            if ev.kind == EVENT_TCP_OPEN {
                // A new connection between the same addresses.
                self.own_ended.retain(|k| *k != key);
                return false;
            }
            // A late event of an ended own connection.
            return true;
        }
        match ev.kind {
            EVENT_TCP_OPEN => {
                if self.sockets.get(&ev.sk).is_some_and(|old| *old != key) {
                    // As in `opened`: the address of a socket whose close
                    // was lost. Taken over without ending that connection,
                    // it would stay open for good (its socket no longer
                    // known, so never found missing).
                    self.end_lost(ev.sk, ev.ts_ns, out);
                }
                let mut open = 1;
                if agent && let Some(conn) = self.conns.remove(&key) {
                    open += conn.ends().filter(|e| !e.closed).count() as u8;
                }
                *self.own.entry(key).or_insert(0) += open;
                self.sockets.insert(ev.sk, key);
            }
            EVENT_TCP_CLOSE | EVENT_TCP_FAIL => self.own_end_closed(ev.sk),
            _ => {}
        }
        true
    }

    /// An end of one of the agent's own connections closed (or vanished).
    fn own_end_closed(&mut self, sk: u64) {
        let Some(key) = self.sockets.remove(&sk) else {
            return;
        };
        if let Some(open) = self.own.get_mut(&key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.own.remove(&key);
                if self.own_ended.len() >= OWN_ENDED_MEMORY {
                    self.own_ended.pop_front();
                }
                self.own_ended.push_back(key);
            }
        }
    }

    fn opened(&mut self, key: FlowKey, ev: &TcpEvent, is_client: bool, out: &mut Emitter) {
        if self.sockets.get(&ev.sk).is_some_and(|old| *old != key) {
            // The kernel reuses a socket's memory once it is freed: a new
            // socket at this address means the old one closed, and its
            // close event was lost.
            self.end_lost(ev.sk, ev.ts_ns, out);
        }
        // A new socket at this address: never missed yet.
        self.missing.remove(&ev.sk);
        let end = End {
            sk: ev.sk,
            conn: ev.conn,
            closed: false,
        };
        let new = !self.conns.contains_key(&key);
        if new && self.conns.len() >= self.settings.capacity {
            self.rejected += 1;
            return;
        }
        let conn = self.conns.entry(key).or_insert_with(|| Connection {
            client: None,
            server: None,
            start_ns: ev.conn.start_ns,
            last_record_ns: ev.ts_ns,
            close_at_ns: None,
            open_pending_ns: Some(ev.ts_ns),
            closed_ns: 0,
            exported: Exported::default(),
        });
        conn.start_ns = conn.start_ns.min(ev.conn.start_ns);
        if is_client {
            conn.client = Some(end);
        } else {
            conn.server = Some(end);
        }
        // A late end reopens a connection waiting for it.
        conn.close_at_ns = None;
        self.sockets.insert(ev.sk, key);
        if new {
            self.pending_opens.push_back(key);
        } else if conn.client.is_some() && conn.server.is_some() {
            write_open(&key, conn, out);
        }
    }

    /// Writes the `open` records that waited long enough for their other
    /// end: established before `now_ns - OPEN_WAIT_NS` (kernel time).
    fn write_due_opens(&mut self, now_ns: u64, out: &mut Emitter) {
        while let Some(key) = self.pending_opens.front() {
            // A connection no longer in the table was closed, and its open
            // written then.
            if let Some(conn) = self.conns.get_mut(key) {
                match conn.open_pending_ns {
                    Some(at) if at.saturating_add(OPEN_WAIT_NS) > now_ns => return,
                    Some(_) => write_open(key, conn, out),
                    None => {}
                }
            }
            self.pending_opens.pop_front();
        }
    }

    fn closed(&mut self, key: FlowKey, ev: &TcpEvent, is_client: bool, out: &mut Emitter) {
        match self.sockets.get(&ev.sk) {
            Some(k) if *k == key => {
                self.sockets.remove(&ev.sk);
            }
            // Another connection's socket at this address: that one
            // closed and its close was lost (its memory is this socket's).
            Some(_) => self.end_lost(ev.sk, ev.ts_ns, out),
            None => {}
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if self.finished.contains(&key) {
                // Already closed (with this end's last figures polled).
                return;
            }
            // Its open was not seen (lost, or the table was full): write
            // what the close tells.
            let end = End {
                sk: ev.sk,
                conn: ev.conn,
                closed: true,
            };
            let mut conn = Connection {
                client: is_client.then_some(end),
                server: (!is_client).then_some(end),
                start_ns: ev.conn.start_ns,
                last_record_ns: ev.ts_ns,
                close_at_ns: None,
                open_pending_ns: None,
                closed_ns: ev.ts_ns,
                exported: Exported::default(),
            };
            emit(&key, &mut conn, FlowEvent::Close, ev.ts_ns, out);
            // Its other end's close, if it comes, is the same connection's.
            self.remember_finished(key);
            return;
        };
        let end = End {
            sk: ev.sk,
            conn: ev.conn,
            closed: true,
        };
        if is_client {
            conn.client = Some(end);
        } else {
            conn.server = Some(end);
        }
        conn.closed_ns = conn.closed_ns.max(ev.ts_ns);
        if conn.ends().all(|e| e.closed) {
            let both = conn.client.is_some() && conn.server.is_some();
            if both || self.settings.close_grace_ns == 0 {
                self.finish(&key, out);
            } else {
                conn.close_at_ns = Some(ev.ts_ns + self.settings.close_grace_ns);
            }
        }
    }

    /// The kernel removes a socket from its table when it closes, and
    /// tells us through the ring. A socket missing from the table whose
    /// close never came had its close event lost (the ring was full): it is
    /// closed here with its last figures and counted, so that the table
    /// never keeps dead connections. But the close may only be late: when
    /// the agent falls behind (a loaded or emulated machine), a poll sees
    /// the table of now while the events of the last seconds wait to be
    /// read. So a miss counts once the events the kernel wrote before it
    /// have been read (`events_read_past` the first miss).
    fn close_vanished(
        &mut self,
        present: &std::collections::HashSet<u64>,
        now_ns: u64,
        out: &mut Emitter,
    ) {
        // A socket whose close was read after a poll missed it is not
        // tracked any more: its miss must not count against the next
        // socket at its address (it would be taken for lost at once).
        let sockets = &self.sockets;
        self.missing.retain(|sk, _| sockets.contains_key(sk));
        let mut gone = Vec::new();
        for &sk in self.sockets.keys() {
            if present.contains(&sk) {
                self.missing.remove(&sk);
                continue;
            }
            let first_miss = *self.missing.entry(sk).or_insert(now_ns);
            if self.events_read_past(first_miss) {
                gone.push(sk);
            }
        }
        for sk in gone {
            self.end_lost(sk, now_ns, out);
        }
    }

    /// The open socket `sk` closed without a close event (lost): its end
    /// is closed with its last figures, and the connection finished when
    /// that was its last open end. Counted.
    fn end_lost(&mut self, sk: u64, now_ns: u64, out: &mut Emitter) {
        self.missing.remove(&sk);
        self.closes_lost += 1;
        if self.is_own_socket(sk) {
            self.own_end_closed(sk);
            return;
        }
        let Some(key) = self.sockets.remove(&sk) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        for end in [&mut conn.client, &mut conn.server].into_iter().flatten() {
            if end.sk == sk {
                end.closed = true;
            }
        }
        conn.closed_ns = conn.closed_ns.max(now_ns);
        if conn.ends().all(|e| e.closed) {
            self.finish(&key, out);
        }
    }

    /// Remembers that `key` was finished, forgetting the oldest when the
    /// memory is full.
    fn remember_finished(&mut self, key: FlowKey) {
        if !self.finished.insert(key) {
            return;
        }
        if self.finished_order.len() >= FINISHED_MEMORY
            && let Some(oldest) = self.finished_order.pop_front()
        {
            self.finished.remove(&oldest);
        }
        self.finished_order.push_back(key);
    }

    fn finish(&mut self, key: &FlowKey, out: &mut Emitter) {
        if let Some(mut conn) = self.conns.remove(key) {
            self.remember_finished(*key);
            // An `open` still waiting goes first.
            write_open(key, &mut conn, out);
            let ts = conn.closed_ns;
            emit(key, &mut conn, FlowEvent::Close, ts, out);
        }
    }

    /// Periodic work: fresh counters from the kernel's table, metrics
    /// growth, `update` records, and closes whose grace has passed.
    pub fn tick(
        &mut self,
        now_ns: u64,
        kernel: &mut dyn Iterator<Item = (u64, TcpConn)>,
        out: &mut Emitter,
    ) {
        let mut present = std::collections::HashSet::with_capacity(self.sockets.len());
        for (sk, state) in kernel {
            let Some(key) = self.sockets.get(&sk) else {
                continue;
            };
            // Another socket at a freed socket's address (its open event
            // lost, or not established yet): the one tracked is gone.
            let is_client = state.flags & CONN_ACTIVE != 0;
            if super::addr::key(Transport::Tcp, &state.tuple, is_client) != *key {
                continue;
            }
            present.insert(sk);
            if let Some(conn) = self.conns.get_mut(key) {
                for end in [&mut conn.client, &mut conn.server].into_iter().flatten() {
                    if end.sk == sk && !end.closed {
                        end.conn = state;
                    }
                }
            }
        }
        self.close_vanished(&present, now_ns, out);
        // An open whose other end's event is not read yet must wait: the
        // poll's clock runs ahead of the events (batched, or an agent
        // lagging under emulation), and such an open written alone is a
        // connection whose other end (the agent's own socket, say) is
        // never known.
        let read_ns = self.events_read_ns().saturating_sub(EVENT_ORDER_MARGIN_NS);
        self.write_due_opens(now_ns.min(read_ns), out);
        let mut due = Vec::new();
        for (key, conn) in &mut self.conns {
            if conn.open_pending_ns.is_some() {
                // Opened less than OPEN_WAIT_NS ago: nothing to add yet.
                continue;
            }
            if let Some(at) = conn.close_at_ns {
                if now_ns >= at {
                    due.push(*key);
                }
                continue;
            }
            if now_ns.saturating_sub(conn.last_record_ns) >= self.settings.update_interval_ns {
                emit(key, conn, FlowEvent::Update, now_ns, out);
            } else {
                let obs = observation(key, conn, FlowEvent::Update, now_ns, conn.figures());
                out.export_growth(&obs, &mut conn.exported);
            }
        }
        for key in due {
            self.finish(&key, out);
        }
    }
}

fn observation<'a>(
    key: &'a FlowKey,
    conn: &Connection,
    event: FlowEvent,
    ts_ns: u64,
    figures: Figures,
) -> Observation<'a> {
    Observation {
        key,
        event,
        ts_ns,
        start_ns: conn.start_ns,
        client: conn.client.map(|e| e.conn.owner),
        server: conn.server.map(|e| e.conn.owner),
        figures,
        failure: None,
    }
}

/// The connection's `open` record, if it has not been written yet, at the
/// time the first end was established.
fn write_open(key: &FlowKey, conn: &mut Connection, out: &mut Emitter) {
    if let Some(at) = conn.open_pending_ns.take() {
        emit(key, conn, FlowEvent::Open, at, out);
    }
}

fn emit(key: &FlowKey, conn: &mut Connection, event: FlowEvent, ts_ns: u64, out: &mut Emitter) {
    let obs = observation(key, conn, event, ts_ns, conn.figures());
    out.emit(&obs, &mut conn.exported);
    conn.last_record_ns = ts_ns;
}

/// A socket that closed without being established: one `fail` record.
fn failed(key: FlowKey, ev: &TcpEvent, is_client: bool, out: &mut Emitter) {
    let c = &ev.conn;
    let failure = if c.resets_received > 0 {
        if is_client {
            Failure::Refused
        } else {
            Failure::Reset
        }
    } else {
        Failure::Timeout
    };
    let figures = Figures {
        bytes_sent: 0,
        bytes_received: 0,
        packets_sent: None,
        packets_received: None,
        retransmits: c.retransmits as u64,
        srtt_us: None,
        resets_sent: c.resets_sent as u64,
        resets_received: c.resets_received as u64,
    };
    let owner = Some(ev.conn.owner);
    let obs = Observation {
        key: &key,
        event: FlowEvent::Fail,
        ts_ns: ev.ts_ns,
        start_ns: c.start_ns,
        client: if is_client { owner } else { None },
        server: if is_client { None } else { owner },
        figures,
        failure: Some(failure),
    };
    out.emit(&obs, &mut Exported::default());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weft_common::{AF_INET, SockTuple, conn::CONN_ESTABLISHED};

    use super::*;
    use crate::{
        enrich::Enricher,
        export::{labels::LabelBudget, metrics::Metrics},
        flow::{filter::FlowFilter, store::FlowStore},
    };

    fn emitter(store: &Arc<FlowStore>) -> Emitter {
        let (_, l4, _, _) = Metrics::new();
        Emitter::new(store.clone(), l4, LabelBudget::new(10), Enricher::new(None))
    }

    fn open_event(sk: u64) -> TcpEvent {
        let tuple = SockTuple {
            local_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_port: 40000,
            remote_port: 80,
            family: AF_INET,
            _pad: 0,
        };
        TcpEvent {
            kind: EVENT_TCP_OPEN,
            sk,
            ts_ns: 1_000,
            conn: TcpConn {
                tuple,
                flags: CONN_ACTIVE | CONN_ESTABLISHED,
                bytes_sent: 10,
                ..TcpConn::default()
            },
            ..TcpEvent::default()
        }
    }

    #[test]
    fn a_socket_whose_close_was_lost_is_closed_after_two_polls() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let ev = open_event(7);
        t.handle(&ev, &mut out);
        assert_eq!(t.len(), 1);
        // Present in the kernel's table: nothing happens.
        poll(&mut t, SECOND, &mut std::iter::once((7, ev.conn)), &mut out);
        // Missing once: could be a close still in the ring.
        poll(&mut t, 2 * SECOND, &mut std::iter::empty(), &mut out);
        assert_eq!(t.len(), 1);
        // Missing twice, the events until then read: closed, and counted.
        poll(&mut t, 3 * SECOND, &mut std::iter::empty(), &mut out);
        assert_eq!(t.len(), 0);
        assert_eq!(t.closes_lost, 1);
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        let events: Vec<_> = records.iter().map(|r| r.event).collect();
        assert_eq!(events, [FlowEvent::Open, FlowEvent::Close]);
        assert_eq!(records[1].bytes_sent, 10);
    }

    /// A client closing with `SO_LINGER` 0 sends its reset after its close
    /// removed its state: the reset is still its connection's, client to
    /// server, not one with the client's ephemeral port as the server's.
    #[test]
    fn a_reset_sent_after_its_sockets_close_is_of_its_connection() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let open = open_event(7);
        let connection = key(Transport::Tcp, &open.conn.tuple, true);
        t.handle(&open, &mut out);
        t.handle(&close_of(&open, 1_000), &mut out);
        let reset = TcpEvent {
            kind: EVENT_TCP_RESET_SENT,
            sk: 7,
            ts_ns: open.ts_ns + 2_000,
            conn: TcpConn {
                tuple: open.conn.tuple,
                ..TcpConn::default()
            },
            ..TcpEvent::default()
        };
        let stateless = key(Transport::Tcp, &reset.conn.tuple, false);
        assert_eq!(t.reset_key(&reset, stateless), connection);
        // A reset of a socket known to nobody keeps the event's own view.
        let mut unknown = reset;
        unknown.conn.tuple.local_port = 40999;
        let its = key(Transport::Tcp, &unknown.conn.tuple, false);
        assert_eq!(t.reset_key(&unknown, its), its);
    }

    /// A poll misses a socket whose close is still in the ring; the close
    /// is read, and a new socket takes the freed address. When a later
    /// poll misses the new socket (its close not read yet either), the
    /// old socket's miss does not count: it is not taken for lost at once.
    #[test]
    fn a_miss_of_a_closed_socket_does_not_count_against_the_next_at_its_address() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let first = open_event(7);
        t.handle(&first, &mut out);
        poll(&mut t, 1_000_000_000, &mut std::iter::empty(), &mut out);
        t.handle(&close_of(&first, 1_000), &mut out);
        let mut second = open_event(7);
        second.conn.tuple.local_port = 40001;
        second.ts_ns = 1_500_000_000;
        t.handle(&second, &mut out);
        // Seen by none of the polls in between: missed first here.
        poll(&mut t, 3_000_000_000, &mut std::iter::empty(), &mut out);
        assert_eq!(t.closes_lost, 0, "missed once only");
        assert!(t.sockets.contains_key(&7));
        t.handle(&close_of(&second, 1_000), &mut out);
        assert_eq!(t.closes_lost, 0);
        assert!(t.is_empty());
    }

    /// An agent behind the kernel: polls miss a socket whose close is still
    /// waiting to be read. It is not taken for lost while events wait,
    /// and its close, read later, closes it with the close's own figures.
    #[test]
    fn a_socket_missed_while_events_wait_is_not_taken_for_lost() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let ev = open_event(7);
        t.handle(&ev, &mut out);
        for now in [2_000, 1_000_000_000, 2_000_000_000] {
            poll_waiting(&mut t, now, &mut std::iter::empty(), &mut out);
        }
        assert_eq!(t.len(), 1, "events wait: the close may be among them");
        // Another connection's event, from before the first miss: the
        // close may still come after it.
        let mut other = open_event(8);
        other.conn.tuple.local_port = 40001;
        other.ts_ns = 1_500;
        t.handle(&other, &mut out);
        poll_waiting(
            &mut t,
            3_000_000_000,
            &mut std::iter::once((8, other.conn)),
            &mut out,
        );
        assert!(t.sockets.contains_key(&7));
        let mut close = close_of(&ev, 1_000);
        close.conn.bytes_sent = 11;
        t.handle(&close, &mut out);
        assert_eq!(t.closes_lost, 0);
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        let closed: Vec<_> = records
            .iter()
            .filter(|r| r.event == FlowEvent::Close)
            .map(|r| r.bytes_sent)
            .collect();
        assert_eq!(closed, [11]);
        // A close that never comes: `other` leaves the table, and once an
        // event from well after that poll has been read, it is lost, even
        // with events still waiting.
        poll_waiting(&mut t, 5_000_000_000, &mut std::iter::empty(), &mut out);
        let mut third = open_event(9);
        third.conn.tuple.local_port = 40002;
        third.ts_ns = 5_000_000_000 + EVENT_ORDER_MARGIN_NS;
        t.handle(&third, &mut out);
        poll_waiting(
            &mut t,
            6_000_000_000,
            &mut std::iter::once((9, third.conn)),
            &mut out,
        );
        assert_eq!(t.closes_lost, 1);
        assert!(!t.sockets.contains_key(&8) && t.sockets.contains_key(&9));
    }

    /// The server's socket of `open_event`'s connection, on this node.
    fn server_open_event(sk: u64, ts_ns: u64) -> TcpEvent {
        let client = open_event(0);
        let c = client.conn.tuple;
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        TcpEvent {
            kind: EVENT_TCP_OPEN,
            sk,
            ts_ns,
            conn: TcpConn {
                tuple: SockTuple {
                    local_addr: c.remote_addr,
                    remote_addr: c.local_addr,
                    local_port: c.remote_port,
                    remote_port: c.local_port,
                    ..c
                },
                flags: CONN_ESTABLISHED,
                owner: weft_common::Owner {
                    pid: 42,
                    tid: 42,
                    cgroup_id: 0,
                    comm,
                },
                ..TcpConn::default()
            },
            ..TcpEvent::default()
        }
    }

    const SECOND: u64 = 1_000_000_000;

    /// A poll at `now_ns`: while events wait in the queue (`waiting`), or
    /// with every event written before it read and handled (the reader
    /// caught up, the queue empty).
    fn poll_at(
        t: &mut TcpTracker,
        now_ns: u64,
        waiting: bool,
        kernel: &mut dyn Iterator<Item = (u64, TcpConn)>,
        out: &mut Emitter,
    ) {
        t.set_events_read(waiting, now_ns);
        t.tick(now_ns, kernel, out);
    }

    fn poll(
        t: &mut TcpTracker,
        now_ns: u64,
        kernel: &mut dyn Iterator<Item = (u64, TcpConn)>,
        out: &mut Emitter,
    ) {
        poll_at(t, now_ns, false, kernel, out);
    }

    fn poll_waiting(
        t: &mut TcpTracker,
        now_ns: u64,
        kernel: &mut dyn Iterator<Item = (u64, TcpConn)>,
        out: &mut Emitter,
    ) {
        poll_at(t, now_ns, true, kernel, out);
    }

    fn tracker() -> TcpTracker {
        let settings = TcpSettings {
            update_interval_ns: u64::MAX,
            close_grace_ns: 0,
            capacity: 10,
        };
        TcpTracker::new(settings)
    }

    #[test]
    fn the_open_record_waits_for_the_server_end_on_this_node() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        t.handle(&open_event(7), &mut out);
        assert!(
            store
                .query(&FlowFilter::default(), crate::flow::store::Range::default())
                .is_empty()
        );
        t.handle(&server_open_event(8, 1_050), &mut out);
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event, FlowEvent::Open);
        assert_eq!(records[0].destination.pid, Some(42));
        assert_eq!(records[0].destination.process.as_deref(), Some("python3"));
        assert_eq!(records[0].mono_ns, 1_000, "the first end's time");
    }

    #[test]
    fn an_open_without_a_local_server_is_written_after_the_wait() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let ev = open_event(7);
        t.handle(&ev, &mut out);
        let count = |store: &FlowStore| {
            store
                .query(&FlowFilter::default(), crate::flow::store::Range::default())
                .len()
        };
        // A poll before the wait is over writes nothing...
        poll(
            &mut t,
            1_000 + OPEN_WAIT_NS - 1,
            &mut std::iter::once((7, ev.conn)),
            &mut out,
        );
        assert_eq!(count(&store), 0);
        // ... an event of another connection after it does.
        let mut later = open_event(9);
        later.ts_ns = 1_000 + OPEN_WAIT_NS;
        later.conn.tuple.local_port = 40001;
        t.handle(&later, &mut out);
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event, FlowEvent::Open);
        assert_eq!(records[0].destination.pid, None);
        // A poll once its wait is over writes nothing while the reader
        // has not read past it...
        poll_waiting(
            &mut t,
            1_000 + 3 * OPEN_WAIT_NS,
            &mut [(7, ev.conn), (9, later.conn)].into_iter(),
            &mut out,
        );
        assert_eq!(count(&store), 1);
        // ... and writes the second once it has.
        poll(
            &mut t,
            1_000 + 2 * OPEN_WAIT_NS + EVENT_ORDER_MARGIN_NS,
            &mut [(7, ev.conn), (9, later.conn)].into_iter(),
            &mut out,
        );
        assert_eq!(count(&store), 2);
    }

    fn close_of(open: &TcpEvent, ts_ns: u64) -> TcpEvent {
        TcpEvent {
            kind: EVENT_TCP_CLOSE,
            ts_ns,
            ..*open
        }
    }

    fn events(store: &FlowStore) -> Vec<FlowEvent> {
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        records.iter().map(|r| r.event).collect()
    }

    #[test]
    fn a_close_after_the_poll_closed_the_socket_is_not_a_second_close() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let ev = open_event(7);
        t.handle(&ev, &mut out);
        // Gone from the kernel's table on two polls: closed here.
        poll(&mut t, SECOND, &mut std::iter::empty(), &mut out);
        poll(&mut t, 2 * SECOND, &mut std::iter::empty(), &mut out);
        assert_eq!(events(&store), [FlowEvent::Open, FlowEvent::Close]);
        // Its close event comes after all.
        t.handle(&close_of(&ev, 3 * SECOND), &mut out);
        assert_eq!(events(&store), [FlowEvent::Open, FlowEvent::Close]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_new_socket_at_the_address_of_one_whose_close_was_lost_closes_it() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let old = open_event(7);
        t.handle(&old, &mut out);
        // The old socket's close is lost; the kernel hands its memory to a
        // new connection's socket.
        let mut new = open_event(7);
        new.ts_ns = 1_000 + 2 * OPEN_WAIT_NS;
        new.conn.tuple.local_port = 40001;
        t.handle(&new, &mut out);
        assert_eq!(t.closes_lost, 1);
        assert_eq!(events(&store), [FlowEvent::Open, FlowEvent::Close]);
        assert_eq!(t.len(), 1, "only the new connection is open");
        // The new one is followed, and closes once.
        t.handle(&close_of(&new, new.ts_ns + 1), &mut out);
        assert_eq!(t.len(), 0);
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        let closes: Vec<_> = records
            .iter()
            .filter(|r| r.event == FlowEvent::Close)
            .map(|r| r.source.port)
            .collect();
        assert_eq!(closes, [40000, 40001]);
    }

    #[test]
    fn a_connection_to_the_agents_own_socket_is_not_reported() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let client = open_event(7);
        let mut agent = server_open_event(8, 1_050);
        agent.conn.flags |= CONN_AGENT;
        t.handle(&client, &mut out);
        t.handle(&agent, &mut out);
        assert_eq!(t.len(), 0);
        poll(
            &mut t,
            1_000 + 2 * OPEN_WAIT_NS,
            &mut [(7, client.conn), (8, agent.conn)].into_iter(),
            &mut out,
        );
        t.handle(&close_of(&client, 2_000 + 2 * OPEN_WAIT_NS), &mut out);
        t.handle(&close_of(&agent, 2_001 + 2 * OPEN_WAIT_NS), &mut out);
        assert!(events(&store).is_empty());
        assert!(t.own.is_empty() && t.sockets.is_empty());
        // The same server address afterwards, not the agent's: reported.
        t.handle(&open_event(9), &mut out);
        t.handle(&server_open_event(10, 1_050), &mut out);
        assert_eq!(events(&store), [FlowEvent::Open]);
    }

    #[test]
    fn an_own_socket_at_the_address_of_one_whose_close_was_lost_ends_it() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let lost = open_event(7);
        t.handle(&lost, &mut out);
        poll(
            &mut t,
            1_000 + 2 * OPEN_WAIT_NS,
            &mut std::iter::empty(),
            &mut out,
        );
        assert_eq!(t.len(), 1);
        // Its close was lost; the kernel gives its memory to a socket of
        // the agent's own (a scrape), whose connection is not reported.
        let mut scrape = server_open_event(7, 2_000 + 2 * OPEN_WAIT_NS);
        scrape.conn.tuple.local_port = 9464;
        scrape.conn.tuple.remote_port = 50000;
        scrape.conn.flags |= CONN_AGENT;
        t.handle(&scrape, &mut out);
        assert_eq!(t.len(), 0, "the lost connection is closed");
        assert_eq!(t.closes_lost, 1);
        assert_eq!(events(&store), [FlowEvent::Open, FlowEvent::Close]);
        t.handle(&close_of(&scrape, 3_000 + 2 * OPEN_WAIT_NS), &mut out);
        assert!(t.sockets.is_empty());
    }

    /// A packet of the agent's own connection dropped (before 6.12, a FIN
    /// freed by a TIME_WAIT socket) and polled before the connection's
    /// events were read: unknown then, the agent's once they are.
    #[test]
    fn a_drop_is_told_own_only_once_the_events_before_it_were_read() {
        let store = Arc::new(FlowStore::new(100));
        let mut out = emitter(&store);
        let mut t = tracker();
        let client = open_event(7);
        let mut agent = server_open_event(8, 1_050);
        agent.conn.flags |= CONN_AGENT;
        let pair = key(Transport::Tcp, &client.conn.tuple, true);
        let (c, s) = (pair.client, pair.server);
        let drop_ns = 5_000;
        assert_eq!(t.drop_is_own(c, s, drop_ns), None);
        // The reader has read past the drop, but events wait in the queue.
        t.set_events_read(true, SECOND);
        assert_eq!(t.drop_is_own(c, s, drop_ns), None, "events wait");
        for ev in [
            client,
            agent,
            close_of(&client, 2_000),
            close_of(&agent, 2_001),
        ] {
            t.handle(&ev, &mut out);
        }
        assert_eq!(t.drop_is_own(s, c, drop_ns), Some(true));
        assert!(events(&store).is_empty());
        // Another pair is not the agent's once the reader has read well
        // past the drop with nothing waiting, or an event from well after
        // it was handled.
        let other: std::net::SocketAddr = "10.0.0.9:5000".parse().unwrap();
        assert_eq!(t.drop_is_own(other, s, drop_ns), None);
        t.set_events_read(false, drop_ns + EVENT_ORDER_MARGIN_NS - 1);
        assert_eq!(t.drop_is_own(other, s, drop_ns), None, "not far enough");
        t.set_events_read(false, drop_ns + EVENT_ORDER_MARGIN_NS);
        assert_eq!(t.drop_is_own(other, s, drop_ns), Some(false));
        t.set_events_read(true, 0);
        let mut later = open_event(9);
        later.conn.tuple.local_port = 40001;
        later.ts_ns = drop_ns + EVENT_ORDER_MARGIN_NS;
        t.handle(&later, &mut out);
        assert_eq!(t.drop_is_own(other, s, drop_ns), Some(false));
    }
}
