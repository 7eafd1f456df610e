//! `weft agent`: start-up wiring, run, and shutdown.
//!
//! Start-up order: configuration (already validated by the caller), the
//! metrics listener (a taken port fails before anything is loaded), the
//! kernel programs, then the tasks:
//!
//! ring reader --(bounded queues)--> flow table --> flow store --> flow API
//!                                       \--> metrics registry --> /metrics
//!
//! On SIGINT/SIGTERM every task is cancelled, and dropping the loaded
//! programs detaches them all.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    config::Config,
    enrich::{Enricher, kubernetes},
    events::{
        PipelineCounters,
        reader::{self, ObservationRings},
    },
    export::{
        labels::LabelBudget,
        metrics::{LossLabels, Metrics},
        server as metrics_server,
    },
    flow::{
        emit::Emitter,
        store::FlowStore,
        table::{FlowTable, KernelTables, StaticStatus},
        tcp::{TcpSettings, TcpTracker},
        udp::{UdpSettings, UdpTracker},
    },
    l7::L7Engine,
    loader::{Probes, maps::ProbeMaps, mounts},
    status::StatusReport,
    steer::{
        policy::{PolicyMetrics, PolicyRecorder},
        report::{Reporter, SteerMetrics},
        tags::{OutcomeFeed, ServiceTags},
    },
};

/// `weft_program_state{program, state}`: 1 for each program, attached or
/// failed, so that a refused optional program shows on dashboards.
fn program_states(health: &crate::export::metrics::HealthMetrics, probes: &Probes) {
    use crate::export::metrics::ProgramLabels;
    let attached = probes.programs.iter().map(|p| (&p.name, "attached"));
    let failed = probes.failed.iter().map(|p| (&p.name, "failed"));
    for (name, state) in attached.chain(failed) {
        let labels = ProgramLabels {
            program: name.clone(),
            state: state.into(),
        };
        health.program_state.get_or_create(&labels).set(1);
    }
}

/// Outcomes of steered connects waiting for passive health; more are
/// counted as lost (`steer/health_outcome_dropped`).
const OUTCOME_QUEUE: usize = 4096;

/// How long tasks get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the steering task needs to follow services that change at run
/// time (the cluster's), and the channel that hands its plans to the
/// flow table.
fn follow_services(
    config: &Config,
    kubernetes: Option<kubernetes::KubernetesNames>,
    tags: &mut crate::steer::tags::ServiceTags,
) -> crate::steer::replan::Sources {
    let mut sources = crate::steer::replan::Sources {
        config: config.services.clone(),
        health: config.health.clone(),
        keep_unplanned: kubernetes.is_some(),
        kubernetes,
        ..Default::default()
    };
    if sources.kubernetes.is_some() {
        let (tx, rx) = watch::channel(Default::default());
        tags.plans = Some(rx);
        sources.plans = Some(tx);
    }
    sources
}

/// The Kubernetes watcher, set up for what the configuration needs, and
/// who reads what it publishes.
struct KubeReaders {
    watcher: Option<kubernetes::Watcher>,
    /// Workload names of flows.
    names: Option<kubernetes::KubernetesNames>,
    /// The cluster's services (`kubernetes_services`).
    services: Option<kubernetes::KubernetesNames>,
    /// The pods policy rules select (`from.namespace`, `from.pod_labels`).
    pods: Option<kubernetes::KubernetesNames>,
}

impl KubeReaders {
    fn new(
        config: &Config,
        kubernetes: Option<(kubernetes::KubernetesNames, kubernetes::Watcher)>,
    ) -> Self {
        let Some((names, mut watcher)) = kubernetes else {
            return Self {
                watcher: None,
                names: None,
                services: None,
                pods: None,
            };
        };
        watcher.steer_services = config.kubernetes_services;
        watcher.policy_pods = config.policies.iter().any(|p| p.from.pod_key().is_some());
        Self {
            services: watcher.steer_services.then(|| names.clone()),
            pods: watcher.policy_pods.then(|| names.clone()),
            names: Some(names),
            watcher: Some(watcher),
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // A path the flow API cannot be served on (another agent's socket, or
    // not a socket) is refused before anything is mounted or loaded.
    api::clear_stale(&config.api_socket).await?;
    let kubernetes = kubernetes_for(&config)?;
    let Kernel {
        mut probes,
        maps,
        steering,
        metrics_listener,
    } = Kernel::start(&config)?;
    let handles = Handles::register(&probes);
    let store = Arc::new(FlowStore::new(config.flow_store_capacity));
    let kube = KubeReaders::new(&config, kubernetes);
    let (tracer, span_export) = start_traces(&config, handles.spans_exported.clone())?;
    let mut emitter = emitter(&config, &store, &handles, &kube, tracer);

    let mut tasks = Tasks::default();
    let (services_tx, services_rx) = watch::channel(Vec::new());
    let (policies_tx, policies_rx) = watch::channel(Vec::new());
    if let Some(steering) = steering {
        let steering = SteeringParts {
            steering,
            kube_services: kube.services.clone(),
            kube_pods: kube.pods.clone(),
            services_tx,
            policies_tx,
        };
        spawn_steering(
            &mut tasks,
            &config,
            steering,
            &handles,
            &mut emitter,
            &store,
        );
    }
    let readiness = metrics_server::Readiness::default();
    let pipeline = Arc::new(PipelineCounters::default());
    let table = FlowTable::new(
        &config,
        &probes,
        maps.tables,
        emitter,
        &handles,
        (store.clone(), pipeline.clone(), readiness.clone()),
    );
    let status_rx = spawn_observation(&mut tasks, &config, maps.rings, table, pipeline);
    let metrics = handles.metrics.clone();
    let path = config.metrics_path.clone();
    tasks.spawn(|shutdown| async move {
        metrics_server::serve(metrics_listener, path, metrics, readiness, shutdown)
            .await
            .context("metrics endpoint failed")
    });
    if let Some(tls) = probes.tls.take() {
        tasks.spawn_infallible(|shutdown| tls.run(shutdown));
    }
    if let Some(task) = span_export {
        tasks.spawn_infallible(|shutdown| task.run(shutdown));
    }
    if let Some(watcher) = kube.watcher {
        tasks.spawn_infallible(|shutdown| watcher.run(shutdown));
    }
    let socket = config.api_socket.clone();
    // Resolved when the configuration was validated, before anything was
    // loaded; again here, for the gid itself.
    let socket_group = config.api_socket_gid()?;
    tasks.spawn(|shutdown| async move {
        api::serve(
            &socket,
            socket_group,
            store,
            status_rx,
            services_rx,
            policies_rx,
            shutdown,
        )
        .await
        .map_err(anyhow::Error::from)
    });
    log::info!(
        "weft agent {} running: metrics on http://{}{}, flow API on {}",
        env!("CARGO_PKG_VERSION"),
        config.metrics_addr,
        config.metrics_path,
        config.api_socket.display()
    );
    let outcome = tasks.until_shutdown().await;
    // Detaches every observation program; steering stays pinned.
    drop(probes);
    log::info!("detached all observation programs");
    outcome
}

/// Kubernetes identity never delays start-up: flows are named as soon as
/// (and whenever) the watcher has published names. Steering that needs the
/// cluster (its services, pods that rules select) is refused before
/// anything is loaded when there is no cluster to ask.
fn kubernetes_for(
    config: &Config,
) -> anyhow::Result<Option<(kubernetes::KubernetesNames, kubernetes::Watcher)>> {
    let kubernetes = kubernetes::setup(&config.kubernetes, &kubernetes::Environment::current());
    if let Some(error) = crate::steer::needs_kubernetes(config)
        && kubernetes.is_none()
    {
        return Err(error).context("cannot set up steering");
    }
    Ok(kubernetes)
}

/// What is loaded into the kernel, and the metrics listener (bound first:
/// a taken port fails before anything is loaded).
struct Kernel {
    probes: Probes,
    maps: SplitMaps,
    steering: Option<crate::steer::Steering>,
    metrics_listener: tokio::net::TcpListener,
}

impl Kernel {
    fn start(config: &Config) -> anyhow::Result<Self> {
        let metrics_socket = metrics_server::bind(config.metrics_addr)?;
        let mut probes = Probes::load(config, metrics_socket.addr)?;
        let metrics_listener = metrics_socket.listen()?;
        if let Some(kernel_log) = probes.kernel_log.take() {
            tokio::spawn(crate::loader::kernel_log::forward(kernel_log));
        }
        let maps = probes
            .maps
            .take()
            .context("kernel maps were already taken")?;
        // Steering after observation: a node that cannot run the agent at
        // all says so first.
        let steering = crate::steer::Steering::start(config).context("cannot set up steering")?;
        if let Some(s) = &steering {
            probes.programs.extend(s.programs.iter().cloned());
            probes.features.extend(s.features.iter().cloned());
            if s.adopted > 0 {
                log::info!("adopted {} pinned steering programs", s.adopted);
            }
        }
        for p in &probes.programs {
            log::info!("attached {} ({}) to {}", p.name, p.kind, p.attach_point);
        }
        for f in probes.features.iter().filter(|f| !f.available) {
            log::warn!("{} is not available: {}", f.name, f.detail);
        }
        Ok(Self {
            probes,
            maps: SplitMaps::from(maps, config),
            steering,
            metrics_listener,
        })
    }
}

/// The observation maps, split between the flow table (the tables it
/// polls) and the ring reader.
struct SplitMaps {
    tables: KernelTables,
    rings: (RingBuf<MapData>, Option<RingBuf<MapData>>),
}

impl SplitMaps {
    fn from(maps: ProbeMaps, config: &Config) -> Self {
        Self {
            tables: KernelTables {
                tcp_conns: maps.tcp_conns,
                udp_flows: maps.udp_flows,
                counters: maps.counters,
                drop_reasons: maps.drop_reasons,
                drop_flows: maps.drop_flows,
                tcp_capacity: config.tcp_socket_capacity,
                udp_capacity: config.udp_flow_capacity,
                recursion: maps.recursion,
            },
            rings: (maps.events, maps.data),
        }
    }
}

/// The metrics registry and the handles of its families, shared by the
/// tasks that update them.
struct Handles {
    metrics: Arc<Metrics>,
    l4: crate::export::metrics::L4Metrics,
    health: crate::export::metrics::HealthMetrics,
    l7: crate::export::l7_metrics::L7Metrics,
    steer: SteerMetrics,
    policy: PolicyMetrics,
    spans_exported: prometheus_client::metrics::counter::Counter,
    kernel: String,
}

impl Handles {
    fn register(probes: &Probes) -> Self {
        let (mut metrics, l4, health, l7) = Metrics::new();
        let steer = SteerMetrics::register(&mut metrics.registry);
        let policy = PolicyMetrics::register(&mut metrics.registry);
        let spans_exported = prometheus_client::metrics::counter::Counter::default();
        metrics.registry.register(
            "weft_spans_exported",
            "Spans accepted by the OTLP collector",
            spans_exported.clone(),
        );
        let kernel = kernel_release();
        health
            .build_info
            .get_or_create(&crate::export::metrics::BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                kernel: kernel.clone(),
            })
            .set(1);
        program_states(&health, probes);
        Self {
            metrics: Arc::new(metrics),
            l4,
            health,
            l7,
            steer,
            policy,
            spans_exported,
            kernel,
        }
    }

    /// A loss counter of `weft_events_lost_total`.
    fn lost(&self, source: &str, stage: &str) -> prometheus_client::metrics::counter::Counter {
        self.health
            .events_lost
            .get_or_create(&LossLabels {
                source: source.into(),
                stage: stage.into(),
            })
            .clone()
    }
}

/// What turns observations into records, metrics and spans: flows named
/// by their processes' cgroups and, with Kubernetes, their workloads.
fn emitter(
    config: &Config,
    store: &Arc<FlowStore>,
    handles: &Handles,
    kube: &KubeReaders,
    tracer: Option<crate::trace::Tracer>,
) -> Emitter {
    let cgroup2 = mounts::mounts().ok().and_then(|m| mounts::cgroup2(&m));
    let mut enricher = Enricher::new(cgroup2);
    if let Some(names) = kube.names.clone() {
        enricher = enricher.with_kubernetes(names);
    }
    let mut emitter = Emitter::new(
        store.clone(),
        handles.l4.clone(),
        LabelBudget::new(config.metric_label_budget),
        enricher,
    );
    emitter.traces = tracer;
    emitter
}

/// Traces: the exporter is built here, inside the runtime (its gRPC
/// channel's worker runs on it); nothing is built while they are off.
fn start_traces(
    config: &Config,
    spans_exported: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<(
    Option<crate::trace::Tracer>,
    Option<crate::trace::ExportTask>,
)> {
    let Some(settings) = config
        .traces
        .resolve(&|name| std::env::var(name).ok())
        .context("invalid traces configuration")?
    else {
        return Ok((None, None));
    };
    let (tracer, task) = crate::trace::Tracer::start(&settings, spans_exported)?;
    log::info!(
        "traces on: {:?} to {}",
        settings.protocol,
        settings
            .endpoint
            .as_deref()
            .unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint")
    );
    Ok((Some(tracer), Some(task)))
}

/// Steering as loaded, and where its tasks publish.
struct SteeringParts {
    steering: crate::steer::Steering,
    kube_services: Option<kubernetes::KubernetesNames>,
    kube_pods: Option<kubernetes::KubernetesNames>,
    services_tx: watch::Sender<Vec<crate::steer::report::ServiceReport>>,
    policies_tx: watch::Sender<Vec<crate::steer::policy::PolicyReport>>,
}

/// The steering tasks: the reporter (counters, passive health, services
/// that change at run time), the policy task and the policy event
/// recorder. The flow table's emitter learns the steered sockets.
fn spawn_steering(
    tasks: &mut Tasks,
    config: &Config,
    parts: SteeringParts,
    handles: &Handles,
    emitter: &mut Emitter,
    store: &Arc<FlowStore>,
) {
    let s = parts.steering;
    let (outcomes_tx, outcomes_rx) = mpsc::channel(OUTCOME_QUEUE);
    emitter.services = ServiceTags::new(s.steered, &s.plan);
    emitter.services.outcomes = Some(OutcomeFeed {
        tx: outcomes_tx,
        dropped: handles.lost("steer", "health_outcome_dropped"),
    });
    let mut reporter = Reporter::new(s.maps, s.plan, handles.steer.clone(), config.poll_interval)
        .with_losses(s.counters, handles.health.events_lost.clone());
    reporter.store = Some(store.clone());
    reporter.active = emitter.services.active.clone();
    reporter.sources = follow_services(config, parts.kube_services, &mut emitter.services);
    let services_tx = parts.services_tx;
    tasks.spawn_infallible(|shutdown| reporter.run(outcomes_rx, services_tx, shutdown));

    let mut policy = s.policy;
    policy.metrics = handles.policy.clone();
    policy.lost = handles.health.events_lost.clone();
    policy.kubernetes = parts.kube_pods;
    let recorder = PolicyRecorder {
        rules: policy.plan.rules.iter().map(|r| r.name.clone()).collect(),
        namespaces: policy.namespaces.clone(),
        store: store.clone(),
        decode_errors: handles.lost("policy", "decode_error"),
    };
    let interval = config.poll_interval;
    let policies_tx = parts.policies_tx;
    tasks.spawn_infallible(
        |shutdown| async move { policy.run(interval, policies_tx, shutdown).await },
    );
    let events = s.policy_events;
    tasks.spawn_infallible(|shutdown| async move { recorder.run(events, shutdown).await });
}

impl FlowTable {
    fn new(
        config: &Config,
        probes: &Probes,
        tables: KernelTables,
        emitter: Emitter,
        handles: &Handles,
        (store, pipeline, ready): (
            Arc<FlowStore>,
            Arc<PipelineCounters>,
            metrics_server::Readiness,
        ),
    ) -> Self {
        let secs = |d: Duration| d.as_nanos() as u64;
        FlowTable {
            tables,
            tcp: TcpTracker::new(TcpSettings {
                update_interval_ns: secs(config.update_interval),
                close_grace_ns: secs(config.close_grace),
                capacity: config.flow_table_capacity,
            }),
            udp: UdpTracker::new(UdpSettings {
                update_interval_ns: secs(config.update_interval),
                idle_timeout_ns: secs(config.udp_idle_timeout),
                capacity: config.flow_table_capacity,
            }),
            emitter,
            store,
            health: handles.health.clone(),
            pipeline,
            info: StaticStatus {
                programs: probes.programs.clone(),
                late_programs: probes.late_programs.clone(),
                failed_programs: probes.failed.clone(),
                features: probes.features.clone(),
                kernel: handles.kernel.clone(),
                drop_reason_names: probes.drop_reason_names.clone(),
            },
            poll_interval: config.poll_interval,
            capacity: config.flow_table_capacity,
            ready,
            l7: L7Engine::new(
                config.l7_stream_capacity,
                weft_l7::Limits::default(),
                config.l7_privacy(),
            ),
            l7_metrics: handles.l7.clone(),
            l7_unattributed: 0,
            l7_closing: Default::default(),
            drops: Default::default(),
            serving: Default::default(),
            runtimes: Default::default(),
        }
    }
}

/// The ring reader and the flow table it feeds; returns the table's
/// status reports.
fn spawn_observation(
    tasks: &mut Tasks,
    config: &Config,
    (events, data): (RingBuf<MapData>, Option<RingBuf<MapData>>),
    table: FlowTable,
    pipeline: Arc<PipelineCounters>,
) -> watch::Receiver<StatusReport> {
    let (events_tx, events_rx) = mpsc::channel(config.event_queue_capacity);
    // The payload queue's sender is dropped when L7 capture is off, which
    // closes the flow table's data branch.
    let (data_tx, data_rx) = mpsc::channel(config.event_queue_capacity);
    let rings = ObservationRings {
        events,
        events_tx,
        data: data.map(|ring| (ring, data_tx)),
    };
    tasks.spawn(|shutdown| async move {
        reader::read_rings(rings, pipeline, shutdown)
            .await
            .context("ring buffer reader failed")
    });
    let (status_tx, status_rx) = watch::channel(StatusReport::default());
    tasks.spawn_infallible(|shutdown| table.run(events_rx, data_rx, status_tx, shutdown));
    status_rx
}

/// The agent's tasks, which run until shutdown.
#[derive(Default)]
struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
}

impl Tasks {
    fn spawn<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(task(self.shutdown.clone()));
    }

    /// [`Tasks::spawn`] for a task that cannot fail.
    fn spawn_infallible<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = task(self.shutdown.clone());
        self.set.spawn(async move {
            task.await;
            Ok(())
        });
    }

    /// Runs until SIGTERM, SIGINT or a task ending (a failure: they run
    /// until shutdown), then cancels them all and gives them
    /// `DRAIN_TIMEOUT` to finish.
    async fn until_shutdown(mut self) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let outcome = tokio::select! {
            _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); Ok(()) }
            _ = sigint.recv() => { log::info!("SIGINT: shutting down"); Ok(()) }
            Some(done) = self.set.join_next() => match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a task of the agent stopped unexpectedly")),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("a task of the agent panicked: {err}")),
            },
        };
        self.shutdown.cancel();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            log::warn!("tasks did not finish within {DRAIN_TIMEOUT:?}; detaching anyway");
            self.set.abort_all();
        }
        outcome
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
