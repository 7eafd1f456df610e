//! The agent's configuration: embedded defaults, overridden by a YAML file
//! (`--config`), overridden by flags. Validated as a whole before anything
//! is loaded into the kernel; an invalid value is an error naming the field.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde::{Deserialize, Serialize};

mod group;
mod kubernetes;
pub mod steer;
pub mod traces;
pub use group::GroupName;
pub use kubernetes::{Enabled, KubernetesConfig};
pub use steer::{HealthConfig, PolicyConfig, PolicyMode, ServiceConfig};
pub use traces::{OtlpProtocol, TraceSettings, TracesConfig};

/// Default Prometheus listener (spec.md).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// Default flow API socket (spec.md).
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prometheus endpoint address.
    pub metrics_addr: SocketAddr,
    /// Path of the metrics page.
    pub metrics_path: String,
    /// Unix socket of the gRPC flow API.
    pub api_socket: PathBuf,
    /// The group that may read the flow API besides root (the socket is
    /// `root:<group>`, 0660); unset, only root.
    pub api_socket_group: Option<GroupName>,
    /// How often a long-lived flow gets an `update` record.
    #[serde(with = "duration_text")]
    pub update_interval: Duration,
    /// A UDP flow with no datagram for this long is closed.
    #[serde(with = "duration_text")]
    pub udp_idle_timeout: Duration,
    /// How often the kernel's counters are read into metrics.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// How long a closed connection waits for its other end (when both ends
    /// are on this node) before its record is written with one end only.
    #[serde(with = "duration_text")]
    pub close_grace: Duration,
    /// Capacity of the kernel's table of live TCP sockets.
    pub tcp_socket_capacity: u32,
    /// Capacity of the kernel's table of UDP flows.
    pub udp_flow_capacity: u32,
    /// Size of the kernel-to-agent ring buffer, in bytes (a power of two,
    /// at least one page).
    pub ring_buffer_bytes: u32,
    /// Events queued between the ring reader and the flow table.
    pub event_queue_capacity: usize,
    /// Connections and UDP flows the agent tracks at once.
    pub flow_table_capacity: usize,
    /// Recent flow records kept for `weft flows`.
    pub flow_store_capacity: usize,
    /// Distinct workload label sets per metric family; more fold into
    /// `other`.
    pub metric_label_budget: usize,
    /// Payload bytes copied per socket read/write for the L7 parsers (at
    /// most 4096); 0 turns L7 off.
    pub l7_capture_bytes: u32,
    /// Connections whose L7 streams are parsed at once.
    pub l7_stream_capacity: usize,
    /// Replace URL query values with `REDACTED` in L7 records.
    pub l7_redact_query_values: bool,
    /// Replace SQL literals with `?` in L7 records.
    pub l7_obfuscate_sql: bool,
    /// Replace Redis arguments after the key with `?` in L7 records.
    pub l7_obfuscate_redis_values: bool,
    /// Read the plaintext of TLS connections at OpenSSL's libssl
    /// (uprobes on SSL_read/SSL_write); needs L7 capture.
    pub l7_tls_plaintext: bool,
    /// Kubernetes identity (pods, namespaces, workloads, Services).
    pub kubernetes: KubernetesConfig,
    /// Virtual addresses balanced at connect time (docs/steering.md).
    pub services: Vec<ServiceConfig>,
    /// Passive health defaults of every service.
    pub health: HealthConfig,
    /// Kubernetes ClusterIP Services as services.
    pub kubernetes_services: bool,
    /// `enforce` or `audit` for every rule of `policies`.
    pub policy_mode: PolicyMode,
    /// Named L3/L4 rules.
    pub policies: Vec<PolicyConfig>,
    /// Spans over OTLP (off while no endpoint is set).
    pub traces: TracesConfig,
    /// The kernel programs log their rare paths (losses, early stops,
    /// layouts that did not match) into the agent's log.
    pub bpf_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default address"),
            metrics_path: "/metrics".into(),
            api_socket: DEFAULT_API_SOCKET.into(),
            api_socket_group: None,
            update_interval: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            close_grace: Duration::from_secs(1),
            tcp_socket_capacity: 65_536,
            udp_flow_capacity: 16_384,
            ring_buffer_bytes: 1 << 20,
            event_queue_capacity: 16_384,
            flow_table_capacity: 131_072,
            flow_store_capacity: 10_000,
            metric_label_budget: 2_000,
            l7_capture_bytes: 1024,
            l7_stream_capacity: 16_384,
            l7_redact_query_values: true,
            l7_obfuscate_sql: true,
            l7_obfuscate_redis_values: true,
            l7_tls_plaintext: true,
            kubernetes: KubernetesConfig::default(),
            services: Vec::new(),
            health: HealthConfig::default(),
            kubernetes_services: false,
            policy_mode: PolicyMode::default(),
            policies: Vec::new(),
            traces: TracesConfig::default(),
            bpf_log: false,
        }
    }
}

/// `weft agent` flags. Each one overrides the same field of the file.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// YAML configuration file (fields as in docs/configuration.md); flags win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Prometheus endpoint address [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Unix socket of the flow API [default: /run/weft/weft.sock].
    #[arg(long, value_name = "PATH", env = "WEFT_API_SOCKET")]
    pub api_socket: Option<PathBuf>,
    /// Group (name or gid) whose members may use the flow API besides
    /// root [default: none, root only].
    #[arg(long, value_name = "GROUP")]
    pub api_socket_group: Option<String>,
    /// Interval of `update` records for long-lived flows [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub update_interval: Option<String>,
    /// Idle time after which a UDP flow is closed [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub udp_idle_timeout: Option<String>,
    /// Recent flow records kept for `weft flows` [default: 10000].
    #[arg(long, value_name = "N")]
    pub flow_store_capacity: Option<String>,
    /// Log the kernel programs' rare paths (a full map or ring, a program
    /// stopped by a missing field or a failed read, a layout that did not
    /// match) at their 1st, 2nd, 4th... occurrence per CPU [default: off].
    #[arg(long)]
    pub bpf_log: bool,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// An invalid value at a path known at run time (`services[1].port`).
    #[error("invalid {field} {value:?}: {reason}")]
    Field {
        field: String,
        value: String,
        reason: String,
    },
}

impl Config {
    /// The gid the flow API socket is given, when `api_socket_group` is
    /// set; a name that does not resolve is an error naming the field.
    pub fn api_socket_gid(&self) -> Result<Option<u32>, ConfigError> {
        self.api_socket_group
            .as_ref()
            .map(|group| {
                group
                    .resolve()
                    .map_err(|reason| invalid("api_socket_group", group, reason))
            })
            .transpose()
    }

    /// What the L7 parsers may report (private by default; bodies never).
    pub fn l7_privacy(&self) -> weft_l7::Privacy {
        weft_l7::Privacy {
            redact_query_values: self.l7_redact_query_values,
            obfuscate_sql: self.l7_obfuscate_sql,
            obfuscate_redis_values: self.l7_obfuscate_redis_values,
            ..weft_l7::Privacy::default()
        }
    }

    /// Defaults, then the file, then the flags; validated.
    pub fn load(args: &AgentArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_flags(args)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML; an empty document is the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field `{path}`: {inner}")
            }
        })
    }

    fn apply_flags(&mut self, args: &AgentArgs) -> Result<(), ConfigError> {
        if let Some(addr) = &args.metrics_addr {
            self.metrics_addr = addr.parse().map_err(|e| invalid("metrics_addr", addr, e))?;
        }
        if let Some(path) = &args.api_socket {
            self.api_socket = path.clone();
        }
        if let Some(group) = &args.api_socket_group {
            self.api_socket_group = Some(GroupName::parse(group));
        }
        if let Some(text) = &args.update_interval {
            self.update_interval = parse_duration("update_interval", text)?;
        }
        if let Some(text) = &args.udp_idle_timeout {
            self.udp_idle_timeout = parse_duration("udp_idle_timeout", text)?;
        }
        if args.bpf_log {
            self.bpf_log = true;
        }
        if let Some(text) = &args.flow_store_capacity {
            self.flow_store_capacity = text
                .parse()
                .map_err(|e| invalid("flow_store_capacity", text, e))?;
        }
        Ok(())
    }

    /// Checks every field; the first bad one is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.metrics_path.starts_with('/') {
            return Err(invalid(
                "metrics_path",
                &self.metrics_path,
                "must start with /",
            ));
        }
        if [
            crate::export::server::HEALTHZ,
            crate::export::server::READYZ,
        ]
        .contains(&self.metrics_path.as_str())
        {
            return Err(invalid(
                "metrics_path",
                &self.metrics_path,
                "is taken by the health endpoints",
            ));
        }
        if !self.api_socket.is_absolute() {
            return Err(invalid(
                "api_socket",
                &self.api_socket.display(),
                "must be an absolute path",
            ));
        }
        self.api_socket_gid()?;
        check_duration("update_interval", self.update_interval, 1, 3600)?;
        check_duration("udp_idle_timeout", self.udp_idle_timeout, 1, 3600)?;
        check_duration("poll_interval", self.poll_interval, 0, 60)?;
        if self.poll_interval < Duration::from_millis(100) {
            return Err(invalid(
                "poll_interval",
                &humantime::format_duration(self.poll_interval),
                "must be at least 100ms",
            ));
        }
        check_duration("close_grace", self.close_grace, 0, 60)?;
        check_range(
            "tcp_socket_capacity",
            self.tcp_socket_capacity as u64,
            64,
            4 << 20,
        )?;
        check_range(
            "udp_flow_capacity",
            self.udp_flow_capacity as u64,
            64,
            4 << 20,
        )?;
        let ring = self.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(4096..=(1 << 30)).contains(&ring) {
            return Err(invalid(
                "ring_buffer_bytes",
                &ring,
                "must be a power of two between 4096 and 1073741824",
            ));
        }
        check_range(
            "event_queue_capacity",
            self.event_queue_capacity as u64,
            16,
            1 << 24,
        )?;
        check_range(
            "flow_table_capacity",
            self.flow_table_capacity as u64,
            64,
            1 << 24,
        )?;
        check_range(
            "flow_store_capacity",
            self.flow_store_capacity as u64,
            1,
            1 << 24,
        )?;
        check_range(
            "metric_label_budget",
            self.metric_label_budget as u64,
            1,
            1 << 20,
        )?;
        check_range(
            "l7_capture_bytes",
            self.l7_capture_bytes as u64,
            0,
            weft_common::data::DATA_MAX as u64,
        )?;
        check_range(
            "l7_stream_capacity",
            self.l7_stream_capacity as u64,
            1,
            1 << 22,
        )?;
        self.kubernetes.validate()?;
        self.traces.validate()?;
        // The environment is part of the tracing configuration: a bad
        // variable fails here, with the fields.
        self.traces.resolve(&|name| std::env::var(name).ok())?;
        steer::validate(&self.services, &self.health, &self.policies)?;
        steer::refuse_unsupported(self)?;
        Ok(())
    }
}

fn invalid(
    field: &'static str,
    value: &dyn std::fmt::Display,
    reason: impl ToString,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text)
        .map_err(|e| invalid(field, &text, format!("{e} (examples: 500ms, 10s, 5m)")))
}

fn check_duration(
    field: &'static str,
    d: Duration,
    min_s: u64,
    max_s: u64,
) -> Result<(), ConfigError> {
    if d < Duration::from_secs(min_s) || d > Duration::from_secs(max_s) {
        return Err(invalid(
            field,
            &humantime::format_duration(d),
            format!("must be between {min_s}s and {max_s}s"),
        ));
    }
    Ok(())
}

fn check_range(field: &'static str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(invalid(
            field,
            &v,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Durations written as text in YAML ("10s", "500ms").
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}; examples: 500ms, 10s, 5m)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_is_configurable_and_private_by_default() {
        let p = Config::default().l7_privacy();
        assert!(p.redact_query_values && p.obfuscate_sql && p.obfuscate_redis_values);
        let c =
            Config::from_yaml("l7_obfuscate_sql: false\nl7_redact_query_values: false\n").unwrap();
        let p = c.l7_privacy();
        assert!(!p.obfuscate_sql && !p.redact_query_values && p.obfuscate_redis_values);
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_values_are_read() {
        let c = Config::from_yaml("metrics_addr: 0.0.0.0:9999\nupdate_interval: 2s\n").unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.update_interval, Duration::from_secs(2));
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::from_yaml("metrics_adr: 1.2.3.4:1\n").unwrap_err();
        assert!(err.contains("metrics_adr"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = Config::from_yaml("udp_idle_timeout: soon\n").unwrap_err();
        assert!(err.contains("udp_idle_timeout"), "{err}");
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(
            &path,
            "metrics_addr: 127.0.0.1:1000\nflow_store_capacity: 5\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(path),
            metrics_addr: Some("127.0.0.1:2000".into()),
            ..AgentArgs::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.metrics_addr.port(), 2000);
        assert_eq!(c.flow_store_capacity, 5);
    }

    #[test]
    fn api_socket_group_is_a_name_or_a_gid() {
        assert_eq!(Config::default().api_socket_group, None);
        assert_eq!(Config::default().api_socket_gid().unwrap(), None);
        let c = Config::from_yaml("api_socket_group: root\n").unwrap();
        assert_eq!(c.api_socket_group, Some(GroupName::Name("root".into())));
        assert_eq!(c.api_socket_gid().unwrap(), Some(0));
        let c = Config::from_yaml("api_socket_group: 4242\n").unwrap();
        assert_eq!(c.api_socket_group, Some(GroupName::Gid(4242)));
        assert_eq!(c.api_socket_gid().unwrap(), Some(4242));
        // Printed as written, and read back the same.
        let printed = serde_yaml_ng::to_string(&c).unwrap();
        assert!(printed.contains("api_socket_group: 4242\n"), "{printed}");
        assert_eq!(Config::from_yaml(&printed).unwrap(), c);
        let err = Config::from_yaml("api_socket_group: [a]\n").unwrap_err();
        assert!(err.contains("api_socket_group"), "{err}");
    }

    #[test]
    fn api_socket_group_flag_wins_and_an_unknown_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, "api_socket_group: 4242\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            api_socket_group: Some("root".into()),
            ..AgentArgs::default()
        };
        assert_eq!(
            Config::load(&args).unwrap().api_socket_gid().unwrap(),
            Some(0)
        );
        let args = AgentArgs {
            api_socket_group: Some("weft-no-such-group-7f3a".into()),
            ..AgentArgs::default()
        };
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "invalid api_socket_group \"weft-no-such-group-7f3a\": no group of that name"
            ),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let mut c = Config {
            ring_buffer_bytes: 1000,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ring_buffer_bytes"), "{err}");
        c.ring_buffer_bytes = 1 << 20;
        c.metrics_path = "/readyz".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("metrics_path"), "{err}");
        c.metrics_path = "/metrics".into();
        c.api_socket = "relative.sock".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api_socket"), "{err}");
        let args = AgentArgs {
            metrics_addr: Some("nowhere".into()),
            ..AgentArgs::default()
        };
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(
            err.contains("metrics_addr") && err.contains("nowhere"),
            "{err}"
        );
    }
}
