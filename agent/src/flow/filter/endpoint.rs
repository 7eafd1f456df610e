//! The endpoint filters of `weft flows`: `--ip`, `--port`, `--pid`,
//! `--process`, `--pod`, `--namespace`, `--workload`, each either-side,
//! and their direction-aware forms `--from-*` (the record's source, the
//! client) and `--to-*` (its destination, the server), as in `hubble
//! observe`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{FilterError, non_empty};
use crate::flow::record::{Endpoint, FlowRecord};

/// Which side of a record an endpoint filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Either side (`--ip`).
    Either,
    /// The source, the side that opened the connection (`--from-ip`).
    From,
    /// The destination, the side that accepted it (`--to-ip`).
    To,
}

impl Side {
    /// The flag naming `kind` on this side: `ip`, `from-ip`, `to-ip`.
    pub fn flag(self, kind: &str) -> String {
        match self {
            Side::Either => kind.to_owned(),
            Side::From => format!("from-{kind}"),
            Side::To => format!("to-{kind}"),
        }
    }

    /// The endpoints of `record` this side names.
    fn endpoints(self, record: &FlowRecord) -> Vec<&Endpoint> {
        match self {
            Side::Either => vec![&record.source, &record.destination],
            Side::From => vec![&record.source],
            Side::To => vec![&record.destination],
        }
    }
}

/// `--pod [namespace/]name-prefix`: pod names carry generated suffixes
/// (`web-7d9f8-x2k4q`), so, as in Hubble, the name is a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodFilter {
    namespace: Option<String>,
    name_prefix: String,
}

impl PodFilter {
    fn parse(flag: &str, value: &str) -> Result<Self, FilterError> {
        let text = non_empty(flag, value)?;
        let invalid = || {
            FilterError::new(
                flag,
                value,
                "expected [namespace/]pod-name-prefix (to match a whole namespace, use --namespace)",
            )
        };
        match text.split_once('/') {
            None => Ok(PodFilter {
                namespace: None,
                name_prefix: text.to_owned(),
            }),
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(invalid());
                }
                Ok(PodFilter {
                    namespace: Some(ns.to_owned()),
                    name_prefix: name.to_owned(),
                })
            }
        }
    }

    fn matches(&self, endpoint: &Endpoint) -> bool {
        let name_ok = endpoint
            .pod
            .as_deref()
            .is_some_and(|pod| pod.starts_with(&self.name_prefix));
        let namespace_ok = match &self.namespace {
            None => true,
            Some(ns) => endpoint.namespace.as_deref() == Some(ns.as_str()),
        };
        name_ok && namespace_ok
    }
}

impl std::fmt::Display for PodFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name_prefix),
            None => f.write_str(&self.name_prefix),
        }
    }
}

/// The endpoint filters of one side. Each kind is matched on its own: with
/// `--ip A --port 80`, A and port 80 may be on different sides; with
/// `--from-ip A --from-port 80` both are the source's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct EndpointFilter {
    pub(super) ips: Vec<IpNet>,
    pub(super) ports: Vec<u16>,
    pub(super) pids: Vec<u32>,
    pub(super) processes: Vec<String>,
    pub(super) pods: Vec<PodFilter>,
    pub(super) namespaces: Vec<String>,
    pub(super) workloads: Vec<String>,
}

impl EndpointFilter {
    pub(super) fn add_ip(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let text = non_empty(flag, value)?;
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                FilterError::new(
                    flag,
                    value,
                    "expected an IP address (10.0.0.1, fd00::1) or a CIDR (10.0.0.0/8)",
                )
            })?;
        self.ips.push(net);
        Ok(())
    }

    pub(super) fn add_port(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let port = non_empty(flag, value)?
            .parse::<u16>()
            .map_err(|_| FilterError::new(flag, value, "expected a port number (0-65535)"))?;
        self.ports.push(port);
        Ok(())
    }

    pub(super) fn add_pid(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let pid = non_empty(flag, value)?
            .parse::<u32>()
            .map_err(|_| FilterError::new(flag, value, "expected a process id (a number)"))?;
        self.pids.push(pid);
        Ok(())
    }

    pub(super) fn add_process(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let name = non_empty(flag, value)?;
        self.processes.push(name.to_owned());
        Ok(())
    }

    pub(super) fn add_pod(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        self.pods.push(PodFilter::parse(flag, value)?);
        Ok(())
    }

    pub(super) fn add_namespace(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let ns = non_empty(flag, value)?;
        if ns.contains('/') {
            return Err(FilterError::new(
                flag,
                value,
                "a namespace name cannot contain '/' (for a pod, use --pod namespace/name)",
            ));
        }
        self.namespaces.push(ns.to_owned());
        Ok(())
    }

    pub(super) fn add_workload(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        let name = non_empty(flag, value)?;
        self.workloads.push(name.to_owned());
        Ok(())
    }

    /// Whether every constrained kind has a value matching one of the
    /// endpoints `side` names in `record`.
    pub(super) fn matches(&self, side: Side, record: &FlowRecord) -> bool {
        if *self == Self::default() {
            return true;
        }
        let sides = side.endpoints(record);
        let any = |pred: &dyn Fn(&Endpoint) -> bool| sides.iter().any(|e| pred(e));
        let named = |want: &[String], have: fn(&Endpoint) -> Option<&str>| {
            want.is_empty() || any(&|e| have(e).is_some_and(|v| want.iter().any(|w| w == v)))
        };
        (self.ports.is_empty() || any(&|e| self.ports.contains(&e.port)))
            && (self.ips.is_empty() || any(&|e| self.ip_matches(e.ip)))
            && (self.pids.is_empty() || any(&|e| e.pid.is_some_and(|p| self.pids.contains(&p))))
            && named(&self.processes, |e| e.process.as_deref())
            && (self.pods.is_empty() || any(&|e| self.pods.iter().any(|pod| pod.matches(e))))
            && named(&self.namespaces, |e| e.namespace.as_deref())
            && named(&self.workloads, |e| e.workload.as_deref())
    }

    /// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; an IPv4
    /// filter must still match them.
    fn ip_matches(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.ips
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// Reads one side's fields of the API's filter, validating each value.
    pub(super) fn read(
        &mut self,
        side: Side,
        raw: RawEndpointFilter<'_>,
    ) -> Result<(), FilterError> {
        for v in raw.ip {
            self.add_ip(&side.flag("ip"), v)?;
        }
        for &v in raw.port {
            let flag = side.flag("port");
            let port = u16::try_from(v).map_err(|_| {
                FilterError::new(&flag, &v.to_string(), "expected a port number (0-65535)")
            })?;
            self.ports.push(port);
        }
        self.pids.extend_from_slice(raw.pid);
        for v in raw.process {
            self.add_process(&side.flag("process"), v)?;
        }
        for v in raw.pod {
            self.add_pod(&side.flag("pod"), v)?;
        }
        for v in raw.namespace {
            self.add_namespace(&side.flag("namespace"), v)?;
        }
        for v in raw.workload {
            self.add_workload(&side.flag("workload"), v)?;
        }
        Ok(())
    }

    /// This side's values as the API carries them (the inverse of
    /// [`EndpointFilter::read`]).
    pub(super) fn write(&self) -> OwnedEndpointFilter {
        OwnedEndpointFilter {
            ip: self.ips.iter().map(IpNet::to_string).collect(),
            port: self.ports.iter().map(|&p| u32::from(p)).collect(),
            pid: self.pids.clone(),
            process: self.processes.clone(),
            pod: self.pods.iter().map(PodFilter::to_string).collect(),
            namespace: self.namespaces.clone(),
            workload: self.workloads.clone(),
        }
    }
}

/// One side's fields of the API's filter, borrowed.
pub(super) struct RawEndpointFilter<'a> {
    pub(super) ip: &'a [String],
    pub(super) port: &'a [u32],
    pub(super) pid: &'a [u32],
    pub(super) process: &'a [String],
    pub(super) pod: &'a [String],
    pub(super) namespace: &'a [String],
    pub(super) workload: &'a [String],
}

/// One side's fields for the API's filter.
pub(super) struct OwnedEndpointFilter {
    pub(super) ip: Vec<String>,
    pub(super) port: Vec<u32>,
    pub(super) pid: Vec<u32>,
    pub(super) process: Vec<String>,
    pub(super) pod: Vec<String>,
    pub(super) namespace: Vec<String>,
    pub(super) workload: Vec<String>,
}
