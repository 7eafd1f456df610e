//! The exporter task: spans from the flow table through a bounded queue,
//! in batches, to the collector over OTLP. The flow table only ever
//! `try_send`s: a full queue (a slow or absent collector) drops the span
//! and counts it; a failed export counts its spans. Nothing here can block
//! the flow table.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SpanData, trace::SpanExporter as _};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{OtlpProtocol, TraceSettings};

/// Spans waiting for export at most; more are dropped (counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request at most.
const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Resources (workloads) remembered; beyond, the cache starts over.
const RESOURCE_CACHE: usize = 4096;

/// Who produced a span: the workload of the end it was observed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub service_name: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pid: Option<u32>,
    pub executable: Option<String>,
}

pub struct Outgoing {
    pub resource: ResourceKey,
    pub span: SpanData,
}

/// Losses, shared with the flow table's status report.
#[derive(Debug, Default)]
pub struct SpanCounters {
    /// Dropped because the export queue was full.
    pub queue_full: AtomicU64,
    /// Dropped because their export failed (collector down, timeout).
    pub export_failed: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP span exporter: {0}")]
pub struct ExporterError(#[from] opentelemetry_otlp::ExporterBuildError);

pub struct ExportTask {
    rx: mpsc::Receiver<Outgoing>,
    exporter: SpanExporter,
    counters: Arc<SpanCounters>,
    exported: Counter,
    host: String,
    resources: HashMap<ResourceKey, Resource>,
    /// Whether the last export failed (logged once per change).
    failing: bool,
}

/// The OTLP exporter for `settings`. Headers and timeout come from the
/// `OTEL_EXPORTER_OTLP_{,TRACES_}{HEADERS,TIMEOUT}` variables, read by the
/// exporter; the endpoint too when the configuration names none. Must run
/// inside the runtime (the gRPC channel's worker is spawned on it).
pub fn exporter(settings: &TraceSettings) -> Result<SpanExporter, ExporterError> {
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut b = SpanExporter::builder().with_tonic();
            if let Some(e) = &settings.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(e) = &settings.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()?
        }
    };
    Ok(exporter)
}

impl ExportTask {
    pub fn new(
        rx: mpsc::Receiver<Outgoing>,
        exporter: SpanExporter,
        counters: Arc<SpanCounters>,
        exported: Counter,
        host: String,
    ) -> Self {
        Self {
            rx,
            exporter,
            counters,
            exported,
            host,
            resources: HashMap::new(),
            failing: false,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
        let mut tick = tokio::time::interval(BATCH_DELAY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                item = self.rx.recv() => match item {
                    Some(item) => {
                        batch.push(item);
                        if batch.len() >= MAX_BATCH {
                            self.flush(&mut batch).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush(&mut batch).await,
            }
        }
        // What is queued goes out once more, bounded by the exporter's own
        // timeout and the daemon's drain timeout.
        while let Ok(item) = self.rx.try_recv() {
            batch.push(item);
        }
        self.flush(&mut batch).await;
        let _ = self.exporter.shutdown();
    }

    /// Exports `batch`, one request per resource (OTLP's export call takes
    /// one resource).
    async fn flush(&mut self, batch: &mut Vec<Outgoing>) {
        if batch.is_empty() {
            return;
        }
        let mut groups: HashMap<ResourceKey, Vec<SpanData>> = HashMap::new();
        for item in batch.drain(..) {
            groups.entry(item.resource).or_default().push(item.span);
        }
        for (key, spans) in groups {
            let resource = self.resource(&key);
            self.exporter.set_resource(&resource);
            let n = spans.len() as u64;
            match self.exporter.export(spans).await {
                Ok(()) => {
                    self.exported.inc_by(n);
                    if self.failing {
                        log::info!("span export works again");
                        self.failing = false;
                    }
                }
                Err(err) => {
                    self.counters.export_failed.fetch_add(n, Ordering::Relaxed);
                    if !self.failing {
                        log::warn!("span export failed (spans dropped, counted): {err}");
                        self.failing = true;
                    }
                }
            }
        }
    }

    fn resource(&mut self, key: &ResourceKey) -> Resource {
        if let Some(r) = self.resources.get(key) {
            return r.clone();
        }
        if self.resources.len() >= RESOURCE_CACHE {
            self.resources.clear();
        }
        let mut attrs = vec![
            KeyValue::new("service.name", key.service_name.clone()),
            KeyValue::new("host.name", self.host.clone()),
        ];
        if let Some(ns) = &key.namespace {
            attrs.push(KeyValue::new("service.namespace", ns.clone()));
            attrs.push(KeyValue::new("k8s.namespace.name", ns.clone()));
        }
        if let Some(pod) = &key.pod {
            attrs.push(KeyValue::new("k8s.pod.name", pod.clone()));
        }
        if let Some(pid) = key.pid {
            attrs.push(KeyValue::new("process.pid", i64::from(pid)));
        }
        if let Some(exe) = &key.executable {
            attrs.push(KeyValue::new("process.executable.name", exe.clone()));
        }
        // Built empty of the SDK's defaults (which would name this agent's
        // own process), so only the workload's attributes are sent.
        let resource = Resource::builder_empty().with_attributes(attrs).build();
        self.resources.insert(key.clone(), resource.clone());
        resource
    }
}
