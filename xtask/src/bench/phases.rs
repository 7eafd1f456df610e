//! The configurations compared (B0, B1, B2, S1) and one phase: a
//! configuration set up, warmed up, measured at each load point, torn down.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::collector::Collector;
use super::lab::Lab;
use super::load::{Load, Outcome};
use super::measure::{BpfObjects, Cost, Snapshot};
use super::proc::{Proc, check_interrupted};
use super::weft::{Agent, L7Switch, Mode};
use super::workloads::{Shape, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Config {
    /// No instrumentation: the baseline.
    B0,
    /// weft with L4 only.
    B1,
    /// weft with L4 and L7.
    B2,
    /// A sidecar proxy (haproxy) in each pod.
    S1,
    /// weft with L4 only, the client dialing a weft service address in
    /// front of the server (connect-time load balancing in the kernel).
    B3,
    /// B2, and every exchange's span exported over OTLP/gRPC to a
    /// receiver on the node.
    B2t,
}

impl Config {
    pub const ALL: [Config; 6] = [
        Config::B0,
        Config::B1,
        Config::B2,
        Config::S1,
        Config::B3,
        Config::B2t,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Config::B0 => "B0",
            Config::B1 => "B1",
            Config::B2 => "B2",
            Config::S1 => "S1",
            Config::B3 => "B3",
            Config::B2t => "B2T",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Config::B0 => "no instrumentation",
            Config::B1 => "weft, L4",
            Config::B2 => "weft, L4 + L7",
            Config::S1 => "haproxy sidecar in each pod",
            Config::B3 => "weft, L4, the client dialing a weft service address",
            Config::B2t => "weft, L4 + L7, spans to an OTLP receiver",
        }
    }

    pub fn is_weft(self) -> bool {
        matches!(self, Config::B1 | Config::B2 | Config::B3 | Config::B2t)
    }
}

/// What the phases share.
pub struct Ctx<'a> {
    pub lab: &'a Lab,
    pub workload: &'a dyn Workload,
    pub weft_bin: &'a Path,
    /// How to switch weft's L7; `None` when it has none.
    pub l7: Option<&'a L7Switch>,
    pub connections: u32,
    /// How long the agent gets to publish its counters after a load point
    /// (it reads the kernel's loss counters once per poll interval, 1 s).
    pub settle: Duration,
}

/// One measured load point.
#[derive(Clone, Debug)]
pub struct Point {
    /// 0 for the calibration, then 1, 2, ...
    pub round: u32,
    pub config: Config,
    pub load: Load,
    pub outcome: Outcome,
    pub cost: Cost,
}

/// A configuration while it is set up.
pub struct Running {
    pub config: Config,
    pub agent: Option<Agent>,
    sidecars: Vec<Proc>,
    /// B2T's OTLP receiver.
    collector: Option<Collector>,
    /// Where the client sends its requests.
    pub target: SocketAddrV4,
}

/// B3's service address: routed nowhere (the client pod has no route to
/// it), so every request that succeeds went through weft's rewrite.
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 10);

const SIDECAR_OUT: u16 = 15001;
const SIDECAR_IN: u16 = 15006;

impl Running {
    pub fn start(ctx: &Ctx, config: Config) -> Result<Self> {
        let lab = ctx.lab;
        let direct = SocketAddrV4::new(lab.server.ip, ctx.workload.port());
        let mut running = Running {
            config,
            agent: None,
            sidecars: Vec::new(),
            collector: None,
            target: direct,
        };
        match config {
            Config::B0 => {}
            Config::B1 | Config::B2 => {
                let off = Mode::default();
                let mode = match (config, ctx.l7) {
                    (Config::B2, Some(switch)) => &switch.on,
                    (Config::B2, None) => anyhow::bail!("{}", super::weft::NO_L7),
                    (_, Some(switch)) => &switch.off,
                    (_, None) => &off,
                };
                running.agent = Some(Agent::start(ctx.weft_bin, lab, mode)?);
            }
            Config::B2t => {
                let switch = ctx.l7.context(super::weft::NO_L7)?;
                let collector = Collector::start(&lab.dir)?;
                let mode = traces_mode(&switch.on, &collector);
                running.agent = Some(Agent::start(ctx.weft_bin, lab, &mode)?);
                running.collector = Some(collector);
            }
            Config::B3 => {
                let mode = steering_mode(ctx, direct);
                running.agent = Some(Agent::start(ctx.weft_bin, lab, &mode)?);
                running.target = SocketAddrV4::new(SERVICE_IP, ctx.workload.port());
            }
            Config::S1 => {
                // Like a mesh's sidecars, without the iptables redirect (the
                // client addresses its sidecar): that favours the sidecar.
                let inbound = SocketAddrV4::new(lab.server.ip, SIDECAR_IN);
                let app = SocketAddrV4::new(Ipv4Addr::LOCALHOST, ctx.workload.port());
                let outbound = SocketAddrV4::new(Ipv4Addr::LOCALHOST, SIDECAR_OUT);
                let mode = ctx.workload.proxy_mode();
                running
                    .sidecars
                    .push(haproxy(lab, "server", inbound, app, mode)?);
                running
                    .sidecars
                    .push(haproxy(lab, "client", outbound, inbound, mode)?);
                running.target = outbound;
            }
        }
        Ok(running)
    }

    /// Warms the path up (connection pools, caches, the agent's tables).
    pub fn warm_up(&self, ctx: &Ctx, seconds: u64) -> Result<()> {
        let shape = Shape {
            connections: ctx.connections,
            connection_per_request: false,
        };
        let outcome = ctx
            .workload
            .drive(ctx.lab, self.target, Load::Max, shape, seconds)?;
        if let Some(outcome) = outcome {
            anyhow::ensure!(
                outcome.ok > 0,
                "{}: no request succeeded while warming up ({} errors)",
                self.config.id(),
                outcome.errors
            );
        }
        Ok(())
    }

    /// Measures one load point; `None` when the workload cannot drive it.
    pub fn measure(
        &mut self,
        ctx: &Ctx,
        round: u32,
        load: Load,
        shape: Shape,
        seconds: u64,
    ) -> Result<Option<Point>> {
        check_interrupted()?;
        let counters_before = self
            .agent
            .as_ref()
            .map(|agent| agent.settled_counters(ctx.settle))
            .transpose()?;
        let before = Snapshot::take(ctx.lab, self.agent.as_ref())?;
        let Some(outcome) = ctx
            .workload
            .drive(ctx.lab, self.target, load, shape, seconds)?
        else {
            return Ok(None);
        };
        let after = Snapshot::take(ctx.lab, self.agent.as_ref())?;
        let mut cost = before.cost(&after);
        if let (Some(agent), Some(counters_before)) = (&mut self.agent, counters_before) {
            agent.check_alive()?;
            let counters_after = agent.settled_counters(ctx.settle)?;
            cost = cost.with_counters(&counters_before, &counters_after);
            cost.agent_rss_kib = Some(agent.memory_kib()?.0);
        }
        for sidecar in &mut self.sidecars {
            sidecar.check_alive()?;
        }
        if let Some(collector) = &mut self.collector {
            collector.check_alive()?;
        }
        Ok(Some(Point {
            round,
            config: self.config,
            load,
            outcome,
            cost,
        }))
    }

    /// The agent's memory at the end of a phase: (RSS, peak RSS, BPF maps),
    /// KiB.
    pub fn agent_memory(&self) -> Result<Option<(u64, u64, u64)>> {
        let Some(agent) = &self.agent else {
            return Ok(None);
        };
        let (rss, peak) = agent.memory_kib()?;
        let maps = BpfObjects::of_process(agent.pid())?.map_bytes() / 1024;
        Ok(Some((rss, peak, maps)))
    }

    pub fn stop(self) {
        if let Some(agent) = self.agent {
            let bin = agent.bin().to_owned();
            agent.stop();
            if self.config == Config::B3 {
                // Steering outlives the agent by design: remove it so that
                // the next configuration's connects pay nothing for it.
                super::weft::cleanup(&bin);
            }
        }
        // The sidecars stop when dropped.
    }
}

/// B1's mode with one service, at [`SERVICE_IP`], whose only backend is
/// the server.
pub fn steering_mode(ctx: &Ctx, server: SocketAddrV4) -> Mode {
    let mut mode = ctx.l7.map(|s| s.off.clone()).unwrap_or_default();
    let mut config = mode.config.take().unwrap_or_default();
    if !config.is_empty() && !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(&format!(
        "services:\n  - name: bench\n    address: {SERVICE_IP}\n    port: {port}\n    backends:\n      - {{address: {ip}, port: {port}}}\n",
        port = server.port(),
        ip = server.ip(),
    ));
    mode.config = Some(config);
    mode
}

/// B2's mode, with traces exported over OTLP/gRPC to `collector`.
pub fn traces_mode(l7_on: &Mode, collector: &Collector) -> Mode {
    let mut mode = l7_on.clone();
    let mut config = mode.config.take().unwrap_or_default();
    if !config.is_empty() && !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(&format!(
        "traces:\n  endpoint: http://{}\n  protocol: grpc\n",
        collector.grpc
    ));
    mode.config = Some(config);
    mode
}

/// haproxy as a sidecar in `pod`, listening on `listen` and forwarding to
/// `upstream` with pooled keep-alive connections.
fn haproxy(
    lab: &Lab,
    pod: &str,
    listen: SocketAddrV4,
    upstream: SocketAddrV4,
    mode: &str,
) -> Result<Proc> {
    let reuse = if mode == "http" {
        "    http-reuse always\n"
    } else {
        ""
    };
    let config = format!(
        "global\n\
         \x20   nbthread 1\n\
         \x20   maxconn 8000\n\
         defaults\n\
         \x20   mode {mode}\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 300s\n\
         \x20   timeout server 300s\n\
         {reuse}\
         frontend in\n\
         \x20   bind {listen}\n\
         \x20   default_backend out\n\
         backend out\n\
         \x20   server upstream {upstream}\n"
    );
    let path = lab.dir.join(format!("haproxy-{pod}.cfg"));
    fs::write(&path, config)?;
    let pod = if pod == "client" {
        &lab.client
    } else {
        &lab.server
    };
    let name = format!("haproxy-{}", pod.name);
    let path = path.display().to_string();
    let mut proc = pod.spawn(lab, &name, &["haproxy", "-db", "-f", &path])?;
    pod.wait_listening(listen.port(), Duration::from_secs(10))
        .or_else(|e| proc.check_alive().and(Err(e)))
        .with_context(|| format!("starting {name}"))?;
    Ok(proc)
}
