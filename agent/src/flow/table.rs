//! The flow table task: the one owner of the kernel's tables and counters.
//!
//! It consumes lifecycle events from the ring reader, and on every poll
//! tick reads the kernel's TCP and UDP tables (counters), the per-CPU event
//! and drop counters, updates the metrics, writes `update`/`close` records,
//! and refreshes the status report.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weft_common::{
    SockTuple,
    conn::TcpConn,
    counters::index,
    drop::{DropKey, DropStats},
    event::TcpEvent,
    udp::UdpFlow,
};

use super::{emit::Emitter, store::FlowStore, tcp::TcpTracker, udp::UdpTracker};
use crate::{
    events::PipelineCounters,
    export::{
        metrics::{HealthMetrics, LossLabels, MapLabels, ReasonLabels, SourceLabels},
        server::Readiness,
    },
    status::{
        EventSourceStatus, FeatureStatus, LateAttachments, LossStatus, MapStatus, ProgramFailure,
        ProgramStatus, StatusReport, TableStatus,
    },
};

/// Polls a TCP drop waits at most for the lifecycle events before it
/// (`write_drop_records`).
const DROP_HOLD_POLLS: u8 = 3;

/// Kernel counters reported as event sources: (index, source name).
const SOURCES: &[(u32, &str)] = &[
    (index::TCP_STATE, "tcp_state"),
    (index::SOCK_IO, "sock_io"),
    (index::TCP_PROBE, "tcp_probe"),
    (index::TCP_RETRANSMIT, "tcp_retransmit"),
    (index::TCP_RESET, "tcp_reset"),
    (index::SKB_DROP, "skb_drop"),
    (index::SKB_NOT_DROP, "skb_not_drop"),
    // Sockets tracked from their first bytes: connected before the agent.
    (index::TCP_ADOPTED, "tcp_adopted"),
    (index::UDP_PACKET, "udp_packet"),
    // Payload records the kernel sent (what reached the agent is
    // `l7_data`; the difference is in the losses).
    (index::DATA, "l7_capture"),
    // Of those, TLS plaintext read at the library (uprobes).
    (index::TLS_DATA, "tls_plaintext"),
    // traceparent headers the kernel wrote (traces.inject_traceparent).
    (index::TRACEPARENT_INJECTED, "traceparent_injected"),
];

pub struct KernelTables {
    pub tcp_conns: HashMap<MapData, u64, TcpConn>,
    pub udp_flows: HashMap<MapData, SockTuple, UdpFlow>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drop_reasons: PerCpuArray<MapData, u64>,
    pub drop_flows: HashMap<MapData, DropKey, DropStats>,
    pub tcp_capacity: u32,
    pub udp_capacity: u32,
    /// Runs of the tracing programs the kernel skipped (events lost).
    pub recursion: crate::loader::recursion::RecursionMisses,
}

/// The static part of the status report.
pub struct StaticStatus {
    pub programs: Vec<ProgramStatus>,
    /// Attached after start; listed after `programs`.
    pub late_programs: LateAttachments,
    pub failed_programs: Vec<ProgramFailure>,
    pub features: Vec<FeatureStatus>,
    pub kernel: String,
    pub drop_reason_names: BTreeMap<u32, String>,
}

pub struct FlowTable {
    pub tables: KernelTables,
    pub tcp: TcpTracker,
    pub udp: UdpTracker,
    pub emitter: Emitter,
    pub store: Arc<FlowStore>,
    pub health: HealthMetrics,
    pub pipeline: Arc<PipelineCounters>,
    pub info: StaticStatus,
    pub poll_interval: Duration,
    pub capacity: usize,
    /// Set after the first poll: the metrics then reflect the kernel.
    pub ready: Readiness,
    /// L7: payload streams to exchanges.
    pub l7: crate::l7::L7Engine,
    pub l7_metrics: crate::export::l7_metrics::L7Metrics,
    /// Payload records whose socket could not be named.
    pub l7_unattributed: u64,
    /// Closed sockets whose L7 stream waits for late payload records, by
    /// kernel socket address (several when the address was reused).
    pub l7_closing: std::collections::HashMap<u64, Vec<super::requests::Closing>>,
    /// Dropped packets per address pair, into `drop` records.
    pub drops: super::drops::DropTracker,
    /// Traces: the server connections each thread read requests from.
    pub serving: super::serving::Serving,
    /// Traces: the processes whose threads are not tied to requests (Go).
    pub runtimes: super::runtime::Runtimes,
}

/// Running totals needed to turn absolute counters into metric increments
/// and rates.
#[derive(Default)]
struct Seen {
    sources: BTreeMap<&'static str, u64>,
    losses: BTreeMap<(String, String), u64>,
    drops: BTreeMap<u32, u64>,
    last_tick: Option<Instant>,
}

impl FlowTable {
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<TcpEvent>,
        mut data: mpsc::Receiver<crate::events::data::DataRecord>,
        status: watch::Sender<StatusReport>,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let mut seen = Seen::default();
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased, in this order: the once-a-second tick cannot be
            // starved, and lifecycle events go before payload records
            // waiting at the same time. A connection's open event precedes
            // its payload in the kernel but comes through another ring;
            // taken first, it names both ends (processes) of the
            // connection in the L7 records of its first requests.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    // The reader's mark first, then the queue: events it
                    // forwarded before its mark are then in the queue or
                    // handled.
                    let read_until = self.pipeline.events_read_until_ns.load(Ordering::SeqCst);
                    self.tcp.set_events_read(!events.is_empty(), read_until);
                    let report = self.poll(&mut seen, started);
                    status.send_replace(report);
                    self.ready.set_ready();
                }
                ev = events.recv() => match ev {
                    Some(ev) => self.handle_event(&ev),
                    None => return,
                },
                // Closed (never sent on) when L7 capture is off.
                Some(rec) = data.recv() => self.handle_data(&rec),
            }
        }
    }

    fn handle_event(&mut self, ev: &TcpEvent) {
        use weft_common::event::{EVENT_TCP_CLOSE, EVENT_TCP_FAIL, EVENT_TCP_OPEN};
        // The L7 stream needs the socket's view before the tracker forgets it.
        let closing = matches!(ev.kind, EVENT_TCP_CLOSE | EVENT_TCP_FAIL);
        let view = closing.then(|| self.tcp.socket_view(ev.sk)).flatten();
        if ev.kind == EVENT_TCP_OPEN {
            self.stream_opened(ev.sk);
        }
        let is_client = ev.conn.flags & weft_common::conn::CONN_ACTIVE != 0;
        if is_client && matches!(ev.kind, EVENT_TCP_OPEN | EVENT_TCP_FAIL) {
            let key = super::addr::key(super::record::Transport::Tcp, &ev.conn.tuple, true);
            self.emitter.services.learn(ev.sk, &key);
        }
        self.tcp.handle(ev, &mut self.emitter);
        if closing {
            let view = view.or_else(|| self.untracked_socket_view(ev));
            self.stream_closing(ev.sk, ev.ts_ns, &ev.conn.tuple, view);
        }
    }

    /// One poll: kernel tables into flows, counters into metrics, status.
    fn poll(&mut self, seen: &mut Seen, started: Instant) -> StatusReport {
        let now = super::clock::mono_now_ns();
        self.close_due_streams(now);
        let mut tcp_entries = 0u64;
        {
            let mut kernel = self
                .tables
                .tcp_conns
                .iter()
                .filter_map(Result::ok)
                .inspect(|_| tcp_entries += 1);
            self.tcp.tick(now, &mut kernel, &mut self.emitter);
        }
        let mut udp_entries = 0u64;
        let idle = {
            let mut kernel = self
                .tables
                .udp_flows
                .iter()
                .filter_map(Result::ok)
                .inspect(|_| udp_entries += 1);
            self.udp.tick(now, &mut kernel, &mut self.emitter)
        };
        for key in idle {
            // A datagram racing with this delete loses at most its own
            // count; the next datagram starts a new flow.
            let _ = self.tables.udp_flows.remove(&key);
        }
        self.export_drops(seen);
        self.write_drop_records();
        self.report(seen, started, tcp_entries, udp_entries)
    }

    fn counter(&self, idx: u32) -> u64 {
        self.tables
            .counters
            .get(&idx, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// One `drop` record per address pair whose drops grew since the last
    /// poll (the kernel program already left out what is not a drop).
    fn write_drop_records(&mut self) {
        let kernel = self.tables.drop_flows.iter().filter_map(Result::ok);
        let fresh = self.drops.poll(kernel);
        for pending in self.drops.pending(fresh) {
            let dropped = &pending.dropped;
            // Packets of the agent's own connections are not flows, as
            // its connections are not. Whether a TCP pair is one is known
            // once the lifecycle events written before the drop were
            // read: its connection opened (and often closed: before 6.12
            // a FIN reaching a TIME_WAIT socket is freed as NOT_SPECIFIED)
            // before it. A poll can come first when the agent lags (under
            // emulation a scrape of its own metrics port was reported):
            // such a drop waits for a later poll, a few at most.
            let own = if dropped.transport == super::record::Transport::Tcp {
                let known = self
                    .tcp
                    .drop_is_own(dropped.src, dropped.dst, dropped.last_ns);
                match known {
                    None if pending.polls < DROP_HOLD_POLLS => {
                        self.drops.hold(pending);
                        continue;
                    }
                    known => known == Some(true),
                }
            } else {
                self.tcp.is_own_pair(dropped.src, dropped.dst)
            };
            if own {
                continue;
            }
            let name = self.info.drop_reason_names.get(&dropped.reason);
            let reason = name.map_or_else(|| format!("reason_{}", dropped.reason), Clone::clone);
            self.emitter.emit_drop(dropped, &reason);
        }
    }

    fn export_drops(&mut self, seen: &mut Seen) {
        for (&reason, name) in &self.info.drop_reason_names {
            let total: u64 = self
                .tables
                .drop_reasons
                .get(&reason, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            let before = seen.drops.entry(reason).or_insert(0);
            if total > *before {
                self.emitter
                    .metrics()
                    .packet_drops
                    .get_or_create(&ReasonLabels {
                        reason: name.clone(),
                    })
                    .inc_by(total - *before);
                *before = total;
            }
        }
    }

    fn report(
        &mut self,
        seen: &mut Seen,
        started: Instant,
        tcp_entries: u64,
        udp_entries: u64,
    ) -> StatusReport {
        let elapsed = seen
            .last_tick
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        seen.last_tick = Some(Instant::now());

        let mut events = Vec::new();
        let mut read_total = |source: &'static str, total: u64, seen: &mut Seen| {
            let before = seen.sources.insert(source, total).unwrap_or(0);
            let delta = total.saturating_sub(before);
            if delta > 0 {
                self.health
                    .events
                    .get_or_create(&SourceLabels {
                        source: source.into(),
                    })
                    .inc_by(delta);
            }
            events.push(EventSourceStatus {
                source: source.into(),
                total,
                per_second: if elapsed > 0.0 {
                    delta as f64 / elapsed
                } else {
                    0.0
                },
            });
        };
        for &(idx, source) in SOURCES {
            let total = self.counter(idx);
            read_total(source, total, seen);
        }
        read_total(
            "ring_buffer",
            self.pipeline.read.load(Ordering::Relaxed),
            seen,
        );
        read_total(
            "l7_data",
            self.pipeline.data_read.load(Ordering::Relaxed),
            seen,
        );
        read_total("l7_exchanges", self.l7.counters.exchanges, seen);
        // A stream its parser gave up on is not a lost event: the bytes
        // were delivered, they were just not a protocol weft can follow.
        read_total("l7_parse_errors", self.l7.counters.parse_errors, seen);
        // Payload records missing inside a stream (lost in the ring or the
        // queue, counted there): the parser resynchronised after each.
        read_total("l7_stream_gaps", self.l7.counters.gaps, seen);

        // Spans that could not be queued or sent (zero while traces are
        // off, so that the series exist).
        let (spans_queue_full, spans_export_failed) = match self.emitter.traces.as_mut() {
            Some(tracer) => {
                tracer.tick();
                let l7 = &self.l7;
                self.serving
                    .prune(|(sk, tuple)| l7.awaits_answer(*sk, tuple));
                let c = tracer.counters();
                (
                    c.queue_full.load(Ordering::Relaxed),
                    c.export_failed.load(Ordering::Relaxed),
                )
            }
            None => (0, 0),
        };
        let loss_values = [
            (
                "tcp_events",
                "kernel_ring",
                self.counter(index::LOST_RING_TCP),
            ),
            (
                "tcp_events",
                "kernel_map_full",
                self.counter(index::LOST_MAP_TCP),
            ),
            (
                "udp_packet",
                "kernel_map_full",
                self.counter(index::LOST_MAP_UDP),
            ),
            (
                "skb_drop",
                "reason_unknown",
                self.counter(index::DROP_REASON_OVERFLOW),
            ),
            (
                "tcp_events",
                "userspace_queue",
                self.pipeline.queue_full.load(Ordering::Relaxed),
            ),
            (
                "tcp_events",
                "decode",
                self.pipeline.decode_errors.load(Ordering::Relaxed),
            ),
            ("tcp_events", "flow_table_full", self.tcp.rejected),
            ("tcp_events", "close_lost", self.tcp.closes_lost),
            ("udp_packet", "flow_table_full", self.udp.rejected),
            (
                "l7_data",
                "kernel_ring",
                self.counter(index::LOST_RING_DATA),
            ),
            (
                "l7_data",
                "kernel_map_full",
                self.counter(index::LOST_MAP_SYSCALL),
            ),
            (
                "tls_plaintext",
                "socket_unknown",
                self.counter(index::LOST_TLS_SOCKET),
            ),
            (
                "traceparent_injected",
                "socket_map_full",
                self.counter(index::LOST_INJECT_SOCKET),
            ),
            (
                "skb_drop",
                "kernel_map_full",
                self.counter(index::LOST_MAP_DROP),
            ),
            (
                "tcp_listeners",
                "kernel_map_full",
                self.counter(index::LOST_MAP_LISTENER),
            ),
            // A program the kernel did not run lost whatever event it
            // would have handled (a close, a payload record...).
            (
                "kernel_programs",
                "recursion",
                self.tables.recursion.total(),
            ),
            (
                "l7_data",
                "decode",
                self.pipeline.data_decode_errors.load(Ordering::Relaxed),
            ),
            (
                "kernel_programs",
                "missing_field",
                self.counter(index::SKIP_MISSING_FIELD),
            ),
            (
                "kernel_programs",
                "read_failed",
                self.counter(index::SKIP_READ_FAILED),
            ),
            (
                "l7_data",
                "userspace_queue",
                self.pipeline.data_queue_full.load(Ordering::Relaxed),
            ),
            ("l7_data", "unattributed", self.l7_unattributed),
            ("l7_streams", "evicted", self.l7.counters.streams_evicted),
            ("spans", "export_queue", spans_queue_full),
            ("spans", "export_failed", spans_export_failed),
            (
                "metric_labels",
                "cardinality_budget",
                self.emitter.labels_overflowed(),
            ),
            // Each such client is told how many it missed, too.
            ("flow_api", "follower", self.emitter.follower_lost()),
        ];
        let mut losses = Vec::new();
        for (source, stage, total) in loss_values {
            let before = seen
                .losses
                .insert((source.into(), stage.into()), total)
                .unwrap_or(0);
            // Create every series up front (at zero) so that dashboards and
            // alerts see "no loss" rather than "no data".
            let counter = self.health.events_lost.get_or_create(&LossLabels {
                source: source.into(),
                stage: stage.into(),
            });
            if total > before {
                counter.inc_by(total - before);
            }
            losses.push(LossStatus {
                source: source.into(),
                stage: stage.into(),
                total,
            });
        }
        // Steering's and policy's own tasks count theirs in the metric.
        if self.emitter.services.is_steering() {
            for &(source, stage) in crate::steer::LOSS_STAGES {
                let labels = LossLabels {
                    source: source.into(),
                    stage: stage.into(),
                };
                losses.push(LossStatus {
                    source: source.into(),
                    stage: stage.into(),
                    total: self.health.events_lost.get_or_create(&labels).get(),
                });
            }
        }

        let maps = vec![
            MapStatus {
                name: "TCP_CONNS".into(),
                entries: tcp_entries,
                capacity: self.tables.tcp_capacity.into(),
            },
            MapStatus {
                name: "UDP_FLOWS".into(),
                entries: udp_entries,
                capacity: self.tables.udp_capacity.into(),
            },
            MapStatus {
                name: "DROP_FLOWS".into(),
                entries: self.drops.entries(),
                capacity: weft_common::drop::DROP_FLOWS_CAPACITY.into(),
            },
        ];
        for m in &maps {
            let labels = MapLabels {
                map: m.name.clone(),
            };
            self.health
                .map_entries
                .get_or_create(&labels)
                .set(m.entries as i64);
            self.health
                .map_capacity
                .get_or_create(&labels)
                .set(m.capacity as i64);
        }

        // Programs attached after start (TLS libraries first mapped
        // later) show in `weft_program_state` as those attached at start.
        let late_programs = self.info.late_programs.snapshot();
        for p in &late_programs {
            let labels = crate::export::metrics::ProgramLabels {
                program: p.name.clone(),
                state: "attached".into(),
            };
            self.health.program_state.get_or_create(&labels).set(1);
        }

        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            kernel: self.info.kernel.clone(),
            uptime_seconds: started.elapsed().as_secs(),
            programs: (self.info.programs.iter().cloned())
                .chain(late_programs)
                .collect(),
            failed_programs: self.info.failed_programs.clone(),
            features: (self.info.features.iter().cloned())
                .chain(self.emitter.enricher().status())
                .collect(),
            events,
            losses,
            maps,
            flow_table: TableStatus {
                entries: (self.tcp.len() + self.udp.len()) as u64,
                capacity: self.capacity as u64,
                evicted: self.tcp.rejected + self.udp.rejected,
            },
            flow_store: self.store.stats(),
        }
    }
}
