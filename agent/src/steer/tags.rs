//! The `service` of flow records: which connections went through a
//! service. The connect4 program remembers, per `struct sock` address
//! (the key the TCP events carry), what the socket dialed; the flow table
//! reads that once per client socket (its open or fail event) and the
//! emitter tags every record of the connection with it.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use weft_common::steer::Origin;
use weft_l7::MetricAttributes;

use super::{
    health::{ConnectOutcome, Outcome},
    plan::ip_of,
};
use crate::flow::{
    addr::FlowKey,
    record::{FlowEvent, FlowRecord, ServiceRef},
};

/// Where the outcomes of steered connects go (passive health), and the
/// count of those that found the channel full.
pub struct OutcomeFeed {
    pub tx: mpsc::Sender<ConnectOutcome>,
    pub dropped: Counter,
}

impl OutcomeFeed {
    /// Never waits: a full channel counts the outcome as lost.
    fn send(&self, service: &str, backend: SocketAddr, outcome: Outcome) {
        let sent = self.tx.try_send(ConnectOutcome {
            service: service.to_owned(),
            backend,
            outcome,
        });
        if sent.is_err() {
            self.dropped.inc();
        }
    }
}

/// Connections through each service open now, per backend: the flow
/// table counts them (a tag learned, a tag's connection ended) and
/// `weft services` reads them (`active_connections`). Connections made
/// while no agent ran are not known, so not counted.
#[derive(Clone, Default)]
pub struct ActiveConnections(Arc<Mutex<HashMap<(String, SocketAddr), u64>>>);

impl ActiveConnections {
    fn change(&self, service: &str, backend: SocketAddr, opened: bool) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.to_owned(), backend);
        let n = counts.entry(key.clone()).or_insert(0);
        if opened {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Open connections of `service` to `backend`.
    pub fn get(&self, service: &str, backend: SocketAddr) -> u64 {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .get(&(service.to_owned(), backend))
            .copied()
            .unwrap_or(0)
    }
}

/// How long a connection's tag outlives its last record: its L7 exchanges
/// can be read after it (the payload ring lags the events under load, and
/// a closed socket's stream waits up to 10 s for its last records).
const ENDED_KEEP_NS: u64 = 15_000_000_000;
/// At most this many ended connections keep their tags.
const ENDED_CAPACITY: usize = 65_536;

/// gRPC's status code `UNAVAILABLE`.
const GRPC_UNAVAILABLE: u32 = 14;

/// Tags are kept per connection until its last record is written, so they
/// are bounded by the flow table.
pub struct ServiceTags {
    steered: Option<BpfHashMap<MapData, u64, Origin>>,
    /// Service id -> name.
    names: BTreeMap<u32, String>,
    /// Every backend: only a connection to one of them can have been
    /// steered, so only those cost a map lookup.
    backends: HashSet<SocketAddr>,
    by_flow: HashMap<FlowKey, ServiceRef>,
    /// Tags of connections whose last record was written, with when
    /// (`ENDED_KEEP_NS`), oldest first in `ended_order`.
    ended: HashMap<FlowKey, (ServiceRef, u64)>,
    ended_order: VecDeque<(FlowKey, u64)>,
    /// Services whose health counts error responses (`eject_on_l7_errors`):
    /// only their exchanges are passed on, not every request of the node.
    l7_health: HashSet<String>,
    /// Steered sockets whose entry named another backend than the socket's
    /// peer (a stale entry of a reused socket address): ignored.
    pub mismatched: u64,
    /// Passive health's input.
    pub outcomes: Option<OutcomeFeed>,
    /// The tagged connections still open, per service and backend.
    pub active: ActiveConnections,
    /// The steering task's plan whenever it changes (Kubernetes services
    /// come and go): the names, backends and L7 health follow it.
    pub plans: Option<tokio::sync::watch::Receiver<super::plan::Plan>>,
}

impl ServiceTags {
    /// No steering: no record names a service.
    pub fn none() -> Self {
        Self {
            steered: None,
            names: BTreeMap::new(),
            backends: HashSet::new(),
            by_flow: HashMap::new(),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            l7_health: HashSet::new(),
            mismatched: 0,
            outcomes: None,
            active: ActiveConnections::default(),
            plans: None,
        }
    }

    pub fn new(steered: BpfHashMap<MapData, u64, Origin>, plan: &super::plan::Plan) -> Self {
        let mut tags = Self {
            steered: Some(steered),
            ..Self::none()
        };
        tags.follow(plan);
        tags
    }

    /// Whether steering runs (its losses are listed in `weft status`).
    pub fn is_steering(&self) -> bool {
        self.steered.is_some()
    }

    /// Takes the services of `plan`.
    fn follow(&mut self, plan: &super::plan::Plan) {
        let names = plan
            .services
            .iter()
            .map(|(id, s)| (*id, s.name.clone()))
            .collect();
        let backends = plan
            .services
            .values()
            .flat_map(|s| s.backends.iter())
            .map(|(_, b, _)| SocketAddr::new(ip_of(&b.addr, b.family), b.port))
            .collect();
        let l7_health = plan
            .services
            .values()
            .filter(|s| s.health.eject_on_l7_errors)
            .map(|s| s.name.clone())
            .collect();
        self.names = names;
        self.backends = backends;
        self.l7_health = l7_health;
    }

    /// A client socket `sk` of connection `key` was established or failed:
    /// takes what the kernel remembered of its connect.
    pub fn learn(&mut self, sk: u64, key: &FlowKey) {
        // An atomic load while nothing changed.
        if let Some(plans) = self.plans.as_mut()
            && plans.has_changed().unwrap_or(false)
        {
            let plan = plans.borrow_and_update().clone();
            self.follow(&plan);
        }
        let Some(map) = self.steered.as_mut() else {
            return;
        };
        if !self.backends.contains(&key.server) {
            return;
        }
        // A new connection between the same addresses is not the ended one.
        self.ended.remove(key);
        let Ok(origin) = map.get(&sk, 0) else {
            return;
        };
        // The entry has served its purpose; removing it keeps a reused
        // socket address from inheriting it.
        let _ = map.remove(&sk);
        let b = &origin.backend;
        let backend = SocketAddr::new(ip_of(&b.addr, b.family), b.port);
        if backend != key.server {
            self.mismatched += 1;
            return;
        }
        let s = &origin.service;
        let name = self
            .names
            .get(&origin.service_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", origin.service_id));
        let tag = ServiceRef {
            name,
            address: ip_of(&s.addr, s.family),
            port: s.port,
        };
        self.active.change(&tag.name, key.server, true);
        if let Some(old) = self.by_flow.insert(*key, tag) {
            // Learned twice: the connection is counted once.
            self.active.change(&old.name, key.server, false);
        }
    }

    /// Passes the outcome of a steered connect (its `open` or `fail`
    /// record) to passive health. Never waits: a full channel counts the
    /// outcome as lost.
    pub fn report_outcome(&self, record: &FlowRecord) {
        let (Some(feed), Some(service)) = (&self.outcomes, &record.service) else {
            return;
        };
        let outcome = match (record.event, record.failure) {
            (FlowEvent::Open, _) => Outcome::Connected,
            (FlowEvent::Fail, Some(failure)) => Outcome::Failed(failure),
            _ => return,
        };
        let backend = SocketAddr::new(record.destination.ip, record.destination.port);
        feed.send(&service.name, backend, outcome);
    }

    /// Passes a response seen at the client end of connection `key` to
    /// passive health, when it went through a service that counts error
    /// responses: an HTTP 5xx and a gRPC `UNAVAILABLE` are errors, any
    /// other answer is not; other protocols and unanswered requests are
    /// not counted.
    pub fn report_response(&self, key: &FlowKey, metric: &MetricAttributes) {
        let Some(feed) = &self.outcomes else {
            return;
        };
        if self.l7_health.is_empty() {
            return;
        }
        let Some(service) = self.tag(key) else {
            return;
        };
        if !self.l7_health.contains(&service.name) {
            return;
        }
        let error = match metric {
            MetricAttributes::Http {
                status_code: Some(code),
                ..
            } => *code >= 500,
            MetricAttributes::Rpc {
                status_code: Some(code),
                ..
            } => *code == GRPC_UNAVAILABLE,
            _ => return,
        };
        feed.send(&service.name, key.server, Outcome::Answered { error });
    }

    pub fn get(&self, key: &FlowKey) -> Option<ServiceRef> {
        self.tag(key).cloned()
    }

    /// The connection's tag, also for a while after its last record.
    fn tag(&self, key: &FlowKey) -> Option<&ServiceRef> {
        if self.by_flow.is_empty() && self.ended.is_empty() {
            return None;
        }
        (self.by_flow.get(key)).or_else(|| self.ended.get(key).map(|(s, _)| s))
    }

    /// The connection's last record was written: its tag is kept for the
    /// L7 exchanges read after it, for `ENDED_KEEP_NS`.
    pub fn forget(&mut self, key: &FlowKey) {
        let now = crate::flow::clock::mono_now_ns();
        if let Some(service) = self.by_flow.remove(key) {
            self.active.change(&service.name, key.server, false);
            self.ended.insert(*key, (service, now));
            self.ended_order.push_back((*key, now));
        }
        while let Some(&(old, at)) = self.ended_order.front() {
            if at + ENDED_KEEP_NS > now && self.ended_order.len() <= ENDED_CAPACITY {
                break;
            }
            self.ended_order.pop_front();
            // Only the entry this one put there (the same connection
            // may have ended again since).
            if self.ended.get(&old).is_some_and(|(_, t)| *t == at) {
                self.ended.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_flow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_flow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Transport;

    fn key(client_port: u16) -> FlowKey {
        FlowKey {
            transport: Transport::Tcp,
            client: SocketAddr::from(([10, 0, 0, 1], client_port)),
            server: "10.0.1.2:8080".parse().unwrap(),
        }
    }

    fn web() -> ServiceRef {
        ServiceRef {
            name: "web".into(),
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
        }
    }

    #[test]
    fn a_tag_outlives_its_connections_last_record_for_late_exchanges() {
        let mut tags = ServiceTags::none();
        tags.by_flow.insert(key(1), web());
        tags.forget(&key(1));
        assert!(tags.is_empty());
        // An exchange read after the close record still names the service.
        assert_eq!(tags.get(&key(1)).map(|s| s.name), Some("web".into()));
        assert_eq!(tags.get(&key(2)), None);
    }

    #[test]
    fn active_connections_count_tags_until_their_last_record() {
        let mut tags = ServiceTags::none();
        let backend = key(1).server;
        for port in 1..=3 {
            tags.active.change("web", backend, true);
            tags.by_flow.insert(key(port), web());
        }
        assert_eq!(tags.active.get("web", backend), 3);
        tags.forget(&key(1));
        tags.forget(&key(1));
        assert_eq!(tags.active.get("web", backend), 2);
        tags.forget(&key(2));
        tags.forget(&key(3));
        assert_eq!(tags.active.get("web", backend), 0);
        assert!(tags.active.0.lock().unwrap().is_empty());
    }

    #[test]
    fn ended_tags_are_bounded() {
        let mut tags = ServiceTags::none();
        for port in 0..(ENDED_CAPACITY as u32 + 10) {
            let k = key((port % 60_000) as u16 + 1);
            tags.by_flow.insert(k, web());
            tags.forget(&k);
        }
        assert!(tags.ended_order.len() <= ENDED_CAPACITY);
        assert!(tags.ended.len() <= ENDED_CAPACITY);
    }
}
