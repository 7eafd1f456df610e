//! `weft agent`: start-up wiring, run, and shutdown.
//!
//! Start-up order: configuration (already validated by the caller), the
//! metrics listener (a taken port fails before anything is loaded), the
//! kernel programs, then the tasks:
//!
//! ring reader --(bounded queue)--> flow table --> flow store --> flow API
//!                                       \--> metrics registry --> /metrics
//!
//! On SIGINT/SIGTERM every task is cancelled, and dropping the loaded
//! programs detaches them all.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
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
    events::{PipelineCounters, data, ring},
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
    loader::{Probes, mounts},
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
    // Kubernetes identity never delays start-up: flows are named as soon
    // as (and whenever) the watcher has published names. Services from
    // the cluster need it: refused before anything is loaded.
    let kubernetes = kubernetes::setup(&config.kubernetes, &kubernetes::Environment::current());
    if let Some(error) = crate::steer::needs_kubernetes(&config)
        && kubernetes.is_none()
    {
        return Err(error).context("cannot set up steering");
    }
    let metrics_socket = metrics_server::bind(config.metrics_addr)?;
    let mut probes = Probes::load(&config, metrics_socket.addr)?;
    let metrics_listener = metrics_socket.listen()?;
    if let Some(kernel_log) = probes.kernel_log.take() {
        tokio::spawn(crate::loader::kernel_log::forward(kernel_log));
    }
    let maps = probes
        .maps
        .take()
        .context("kernel maps were already taken")?;
    // Steering after observation: a node that cannot run the agent at all
    // says so first.
    let steering = crate::steer::Steering::start(&config).context("cannot set up steering")?;
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

    let (mut metrics, l4, health, l7_metrics) = Metrics::new();
    let steer_metrics = SteerMetrics::register(&mut metrics.registry);
    let policy_metrics = PolicyMetrics::register(&mut metrics.registry);
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
    program_states(&health, &probes);
    let metrics = Arc::new(metrics);
    let store = Arc::new(FlowStore::new(config.flow_store_capacity));
    let pipeline = Arc::new(PipelineCounters::default());
    let cgroup2 = mounts::mounts().ok().and_then(|m| mounts::cgroup2(&m));
    let mut enricher = Enricher::new(cgroup2);
    let KubeReaders {
        watcher: kube_watcher,
        names: kube_names,
        services: kube_services,
        pods: kube_pods,
    } = KubeReaders::new(&config, kubernetes);
    if let Some(names) = kube_names {
        enricher = enricher.with_kubernetes(names);
    }

    // Traces: the exporter is built here, inside the runtime (its gRPC
    // channel's worker runs on it); nothing is built while they are off.
    let mut span_export = None;
    let tracer = match config
        .traces
        .resolve(&|name| std::env::var(name).ok())
        .context("invalid traces configuration")?
    {
        Some(settings) => {
            let (tracer, task) = crate::trace::Tracer::start(&settings, spans_exported)?;
            log::info!(
                "traces on: {:?} to {}",
                settings.protocol,
                settings
                    .endpoint
                    .as_deref()
                    .unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint")
            );
            span_export = Some(task);
            Some(tracer)
        }
        None => None,
    };
    let mut emitter = Emitter::new(
        store.clone(),
        l4,
        LabelBudget::new(config.metric_label_budget),
        enricher,
    );
    emitter.traces = tracer;
    let (services_tx, services_rx) = watch::channel(Vec::new());
    let (outcomes_tx, outcomes_rx) = mpsc::channel(OUTCOME_QUEUE);
    let events_lost = health.events_lost.clone();
    let mut policy = None;
    let reporter = steering.map(|s| {
        policy = Some((s.policy, s.policy_events));
        emitter.services = ServiceTags::new(s.steered, &s.plan);
        emitter.services.outcomes = Some(OutcomeFeed {
            tx: outcomes_tx,
            dropped: health
                .events_lost
                .get_or_create(&LossLabels {
                    source: "steer".into(),
                    stage: "health_outcome_dropped".into(),
                })
                .clone(),
        });
        let mut reporter = Reporter::new(s.maps, s.plan, steer_metrics, config.poll_interval)
            .with_losses(s.counters, health.events_lost.clone());
        reporter.store = Some(store.clone());
        reporter.active = emitter.services.active.clone();
        reporter.sources = follow_services(&config, kube_services, &mut emitter.services);
        reporter
    });

    let readiness = metrics_server::Readiness::default();
    let secs = |d: Duration| d.as_nanos() as u64;
    let table = FlowTable {
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
        store: store.clone(),
        health,
        pipeline: pipeline.clone(),
        info: StaticStatus {
            programs: probes.programs.clone(),
            failed_programs: probes.failed.clone(),
            features: probes.features.clone(),
            kernel,
            drop_reason_names: probes.drop_reason_names.clone(),
        },
        poll_interval: config.poll_interval,
        capacity: config.flow_table_capacity,
        ready: readiness.clone(),
        l7: L7Engine::new(
            config.l7_stream_capacity,
            weft_l7::Limits::default(),
            config.l7_privacy(),
        ),
        l7_metrics,
        l7_unattributed: 0,
        l7_closing: Default::default(),
        drops: Default::default(),
    };

    let shutdown = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::channel(config.event_queue_capacity);
    let (status_tx, status_rx) = watch::channel(StatusReport::default());
    let mut tasks = JoinSet::new();
    // The payload queue's sender is dropped when L7 capture is off, which
    // closes the flow table's data branch.
    let (data_tx, data_rx) = mpsc::channel(config.event_queue_capacity);
    if let Some(data_ring) = maps.data {
        let shutdown = shutdown.clone();
        let pipeline = pipeline.clone();
        tasks.spawn(async move {
            data::read_data(data_ring, data_tx, pipeline, shutdown)
                .await
                .context("payload ring reader failed")
        });
    } else {
        drop(data_tx);
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            ring::read_events(maps.events, events_tx, pipeline, shutdown)
                .await
                .context("ring buffer reader failed")
        });
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            table.run(events_rx, data_rx, status_tx, shutdown).await;
            Ok(())
        });
    }
    {
        let shutdown = shutdown.clone();
        let path = config.metrics_path.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            metrics_server::serve(metrics_listener, path, metrics, readiness, shutdown)
                .await
                .context("metrics endpoint failed")
        });
    }
    if let Some(task) = span_export {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            task.run(shutdown).await;
            Ok(())
        });
    }
    if let Some(reporter) = reporter {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            reporter.run(outcomes_rx, services_tx, shutdown).await;
            Ok(())
        });
    }
    let (policies_tx, policies_rx) = watch::channel(Vec::new());
    if let Some((mut task, events)) = policy {
        task.metrics = policy_metrics;
        task.lost = events_lost.clone();
        task.kubernetes = kube_pods;
        let recorder = PolicyRecorder {
            rules: task.plan.rules.iter().map(|r| r.name.clone()).collect(),
            namespaces: task.namespaces.clone(),
            store: store.clone(),
            decode_errors: events_lost
                .get_or_create(&LossLabels {
                    source: "policy".into(),
                    stage: "decode_error".into(),
                })
                .clone(),
        };
        let interval = config.poll_interval;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            task.run(interval, policies_tx, stop).await;
            Ok(())
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            recorder.run(events, stop).await;
            Ok(())
        });
    }
    if let Some(watcher) = kube_watcher {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            watcher.run(shutdown).await;
            Ok(())
        });
    }
    {
        let shutdown = shutdown.clone();
        let socket = config.api_socket.clone();
        tasks.spawn(async move {
            api::serve(
                &socket,
                store,
                status_rx,
                services_rx,
                policies_rx,
                shutdown,
            )
            .await
            .map_err(anyhow::Error::from)
        });
    }
    log::info!(
        "weft agent {} running: metrics on http://{}{}, flow API on {}",
        env!("CARGO_PKG_VERSION"),
        config.metrics_addr,
        config.metrics_path,
        config.api_socket.display()
    );

    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); Ok(()) }
        _ = sigint.recv() => { log::info!("SIGINT: shutting down"); Ok(()) }
        // A task ending on its own is a failure (they run until shutdown).
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a task of the agent stopped unexpectedly")),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(anyhow::anyhow!("a task of the agent panicked: {err}")),
        },
    };
    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!("tasks did not finish within {DRAIN_TIMEOUT:?}; detaching anyway");
        tasks.abort_all();
    }
    // Detaches every observation program; steering stays pinned.
    drop(probes);
    log::info!("detached all observation programs");
    outcome
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
