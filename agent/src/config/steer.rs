//! The steering sections of the configuration: `services:`, `health:`,
//! `policy_mode:`, `policies:` and `kubernetes_services:` (names fixed by
//! the spec). Validated as a whole at start; an error names the field by
//! its path (`services[1].backends[0].port`).

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_text};

/// Backends one service may have (the kernel's slot table is sized for it).
pub const MAX_BACKENDS: usize = 64;
/// Services one node may have.
pub const MAX_SERVICES: usize = 1024;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Policy rules one node may have (the kernel matches them as bits of a
/// 64-bit mask).
pub const MAX_POLICIES: usize = 64;
/// Deepest `from.cgroup` a rule may name (the kernel walks the connecting
/// task's ancestors that far).
pub const MAX_CGROUP_DEPTH: usize = 16;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIp,
}

impl SessionAffinity {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "none",
            SessionAffinity::ClientIp => "client_ip",
        }
    }
}

/// Where a service comes from (`weft services` shows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServiceSource {
    /// The `services:` section.
    #[default]
    Config,
    /// A ClusterIP Service and its EndpointSlices (`kubernetes_services`).
    Kubernetes,
}

impl ServiceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceSource::Config => "config",
            ServiceSource::Kubernetes => "kubernetes",
        }
    }
}

/// A virtual address balanced at connect time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(with = "duration_text", default = "default_affinity_timeout")]
    pub session_affinity_timeout: Duration,
    #[serde(default)]
    pub health: HealthOverrides,
    /// Not a configuration key: services of the file are `Config`.
    #[serde(skip)]
    pub source: ServiceSource,
}

/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
fn default_affinity_timeout() -> Duration {
    Duration::from_secs(3 * 3600)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Passive health defaults (Envoy's outlier detection semantics), and
/// the active TCP check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub consecutive_failures: u32,
    #[serde(with = "duration_text")]
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub eject_on_l7_errors: bool,
    /// How often the agent connects to each backend of a TCP service
    /// (the active check); 0s: never (the default).
    #[serde(with = "duration_text")]
    pub health_check_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            eject_on_l7_errors: false,
            health_check_interval: Duration::ZERO,
        }
    }
}

/// Per-service overrides of [`HealthConfig`]; an absent key keeps the
/// default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eject_on_l7_errors: Option<bool>,
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub health_check_interval: Option<Duration>,
}

impl HealthConfig {
    /// The defaults with a service's overrides applied.
    pub fn with(&self, o: &HealthOverrides) -> HealthConfig {
        HealthConfig {
            consecutive_failures: o.consecutive_failures.unwrap_or(self.consecutive_failures),
            base_ejection_time: o.base_ejection_time.unwrap_or(self.base_ejection_time),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(self.max_ejection_percent),
            eject_on_l7_errors: o.eject_on_l7_errors.unwrap_or(self.eject_on_l7_errors),
            health_check_interval: o
                .health_check_interval
                .unwrap_or(self.health_check_interval),
        }
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.consecutive_failures) {
            return Err(field(
                format!("{at}consecutive_failures"),
                self.consecutive_failures,
                "must be between 1 and 1000",
            ));
        }
        let t = self.base_ejection_time;
        if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
            return Err(field(
                format!("{at}base_ejection_time"),
                humantime::format_duration(t),
                "must be between 1s and 3600s",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(field(
                format!("{at}max_ejection_percent"),
                self.max_ejection_percent,
                "must be between 0 and 100",
            ));
        }
        let t = self.health_check_interval;
        if !t.is_zero() && (t < Duration::from_secs(1) || t > Duration::from_secs(3600)) {
            return Err(field(
                format!("{at}health_check_interval"),
                humantime::format_duration(t),
                "must be 0s (off) or between 1s and 3600s",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// A named L3/L4 rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub direction: Direction,
    #[serde(default)]
    pub from: PolicySource,
    #[serde(default)]
    pub to: PolicyDestination,
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySource {
    pub cidr: Vec<ipnet::IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl PolicySource {
    /// The key by which this source selects pods, if it does.
    pub fn pod_key(&self) -> Option<&'static str> {
        if self.namespace.is_some() {
            Some("namespace")
        } else if !self.pod_labels.is_empty() {
            Some("pod_labels")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyDestination {
    pub cidr: Vec<ipnet::IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// An invalid value at a path that is only known at run time.
fn field(path: String, value: impl ToString, reason: impl ToString) -> ConfigError {
    ConfigError::Field {
        field: path,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks `services:`, `health:` and `policies:` together (a rule may name
/// a service).
pub fn validate(
    services: &[ServiceConfig],
    health: &HealthConfig,
    policies: &[PolicyConfig],
) -> Result<(), ConfigError> {
    health.validate("health.")?;
    if services.len() > MAX_SERVICES {
        return Err(field(
            "services".into(),
            services.len(),
            format!("at most {MAX_SERVICES} services"),
        ));
    }
    let mut names = BTreeMap::new();
    let mut frontends = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        let at = format!("services[{i}]");
        validate_service(s, &at, health)?;
        if let Some(j) = names.insert(s.name.as_str(), i) {
            return Err(field(
                format!("{at}.name"),
                &s.name,
                format!("is already the name of services[{j}]"),
            ));
        }
        if let Some(j) = frontends.insert((s.address, s.port, s.protocol), i) {
            return Err(field(
                format!("{at}.address"),
                format!("{}:{}/{}", s.address, s.port, s.protocol.as_str()),
                format!("overlaps services[{j}] (same address, port and protocol)"),
            ));
        }
    }
    let mut rule_names = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if p.name.is_empty() {
            return Err(field(format!("{at}.name"), "", "must not be empty"));
        }
        if let Some(j) = rule_names.insert(p.name.as_str(), i) {
            return Err(field(
                format!("{at}.name"),
                &p.name,
                format!("is already the name of policies[{j}]"),
            ));
        }
        if let Some(name) = &p.to.service
            && !names.contains_key(name.as_str())
        {
            return Err(field(
                format!("{at}.to.service"),
                name,
                "names no service in `services:`",
            ));
        }
        validate_rule(p, &at)?;
    }
    if policies.len() > MAX_POLICIES {
        return Err(field(
            "policies".into(),
            policies.len(),
            format!("at most {MAX_POLICIES} rules"),
        ));
    }
    Ok(())
}

/// `from.namespace` is a namespace's name (an RFC 1123 label), and
/// `from.pod_labels` keys are not empty.
fn validate_pod_selector(p: &PolicyConfig, at: &str) -> Result<(), ConfigError> {
    if let Some(n) = &p.from.namespace {
        let label_ok = !n.is_empty()
            && n.len() <= 63
            && (n.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !label_ok {
            return Err(field(
                format!("{at}.from.namespace"),
                n,
                "must be a namespace name: 1 to 63 lowercase letters, digits or '-'",
            ));
        }
    }
    if p.from.pod_labels.keys().any(String::is_empty) {
        return Err(field(
            format!("{at}.from.pod_labels"),
            "\"\"",
            "a label key must not be empty",
        ));
    }
    Ok(())
}

/// What one rule may combine.
fn validate_rule(p: &PolicyConfig, at: &str) -> Result<(), ConfigError> {
    let name_ok = p.name.len() <= 63
        && (p.name.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(field(
            format!("{at}.name"),
            &p.name,
            "must be 1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    if p.to.service.is_some()
        && (!p.to.cidr.is_empty() || !p.to.ports.is_empty() || p.to.protocol.is_some())
    {
        return Err(field(
            format!("{at}.to.service"),
            p.to.service.as_deref().unwrap_or_default(),
            "a service names its own address, port and protocol: give either `service` or \
             `cidr`/`ports`/`protocol`",
        ));
    }
    if let Some(i) = p.to.ports.iter().position(|&port| port == 0) {
        return Err(field(
            format!("{at}.to.ports[{i}]"),
            0,
            "must be between 1 and 65535",
        ));
    }
    validate_pod_selector(p, at)?;
    if let Some(c) = &p.from.cgroup {
        if p.direction == Direction::Ingress {
            return Err(field(
                format!("{at}.from.cgroup"),
                c,
                "names local processes, which only egress rules check (an ingress rule's \
                 source is the packet's address: use `from.cidr`)",
            ));
        }
        if !c.starts_with('/') || c.split('/').any(|part| part == "..") {
            return Err(field(
                format!("{at}.from.cgroup"),
                c,
                "must be an absolute cgroup path such as /system.slice/nginx.service",
            ));
        }
        let depth = c.split('/').filter(|part| !part.is_empty()).count();
        if depth == 0 || depth > MAX_CGROUP_DEPTH {
            return Err(field(
                format!("{at}.from.cgroup"),
                c,
                format!("must name a cgroup 1 to {MAX_CGROUP_DEPTH} levels below the root"),
            ));
        }
    }
    Ok(())
}

/// Refuses what this version parses but does not enforce yet, and
/// `eject_on_l7_errors` without the L7 capture it reads errors from, so
/// that a configuration never promises more than the agent does.
pub fn refuse_unsupported(c: &super::Config) -> Result<(), ConfigError> {
    const LATER: &str = "is not supported by this version of weft yet (docs/steering.md)";
    if c.kubernetes_services && c.kubernetes.enabled == super::kubernetes::Enabled::False {
        return Err(field(
            "kubernetes_services".into(),
            true,
            "reads Services and EndpointSlices from the Kubernetes API, which \
             `kubernetes.enabled: false` turns off",
        ));
    }
    for (i, p) in c.policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if c.kubernetes.enabled == super::kubernetes::Enabled::False
            && let Some(key) = p.from.pod_key()
        {
            return Err(field(
                format!("{at}.from.{key}"),
                &p.name,
                "selects pods from the Kubernetes API, which `kubernetes.enabled: false` \
                 turns off",
            ));
        }
        let mut v6 = p
            .from
            .cidr
            .iter()
            .map(|n| ("from", n))
            .chain(p.to.cidr.iter().map(|n| ("to", n)));
        if let Some((side, net)) = v6.find(|(_, n)| matches!(n, ipnet::IpNet::V6(_))) {
            return Err(field(
                format!("{at}.{side}.cidr"),
                net,
                format!("IPv6 {LATER}"),
            ));
        }
    }
    // Error responses are read from captured payload.
    const NEEDS_L7: &str = "needs L7 capture, which `l7_capture_bytes: 0` turns off";
    if c.l7_capture_bytes == 0 {
        if c.health.eject_on_l7_errors
            && c.services
                .iter()
                .any(|s| s.health.eject_on_l7_errors != Some(false))
        {
            return Err(field("health.eject_on_l7_errors".into(), true, NEEDS_L7));
        }
        if let Some(i) = (c.services.iter()).position(|s| s.health.eject_on_l7_errors == Some(true))
        {
            return Err(field(
                format!("services[{i}].health.eject_on_l7_errors"),
                true,
                NEEDS_L7,
            ));
        }
    }
    Ok(())
}

fn validate_service(s: &ServiceConfig, at: &str, health: &HealthConfig) -> Result<(), ConfigError> {
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 63
        && s.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(field(
            format!("{at}.name"),
            &s.name,
            "must be 1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    if s.address.is_unspecified() || s.address.is_multicast() {
        return Err(field(
            format!("{at}.address"),
            s.address,
            "must be a unicast address",
        ));
    }
    if let IpAddr::V6(v6) = s.address
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(field(
            format!("{at}.address"),
            s.address,
            format!(
                "is a v4-mapped address: write {v4} (IPv6 sockets that dial {} reach it too)",
                s.address
            ),
        ));
    }
    if s.port == 0 {
        return Err(field(
            format!("{at}.port"),
            0,
            "must be between 1 and 65535",
        ));
    }
    if s.backends.len() > MAX_BACKENDS {
        return Err(field(
            format!("{at}.backends"),
            s.backends.len(),
            format!("at most {MAX_BACKENDS} backends per service"),
        ));
    }
    let mut seen = BTreeMap::new();
    for (j, b) in s.backends.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        if b.address.is_ipv4() != s.address.is_ipv4() {
            return Err(field(
                format!("{bat}.address"),
                b.address,
                format!("must be of the service address's family ({})", s.address),
            ));
        }
        if b.address.is_unspecified() || b.address.is_multicast() {
            return Err(field(
                format!("{bat}.address"),
                b.address,
                "must be a unicast address",
            ));
        }
        if b.port == 0 {
            return Err(field(
                format!("{bat}.port"),
                0,
                "must be between 1 and 65535",
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&b.weight) {
            return Err(field(
                format!("{bat}.weight"),
                b.weight,
                format!("must be between 1 and {MAX_WEIGHT}"),
            ));
        }
        if let Some(k) = seen.insert((b.address, b.port), j) {
            return Err(field(
                format!("{bat}.address"),
                format!("{}:{}", b.address, b.port),
                format!("is already {at}.backends[{k}]"),
            ));
        }
    }
    if s.session_affinity_timeout < Duration::from_secs(1)
        || s.session_affinity_timeout > Duration::from_secs(86_400)
    {
        return Err(field(
            format!("{at}.session_affinity_timeout"),
            humantime::format_duration(s.session_affinity_timeout),
            "must be between 1s and 86400s",
        ));
    }
    health.with(&s.health).validate(&format!("{at}.health."))
}

/// `Option<Duration>` written as text.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}; examples: 500ms, 10s, 5m)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(yaml: &str) -> String {
        match Config::from_yaml(yaml) {
            Err(e) => e,
            Ok(c) => c.validate().unwrap_err().to_string(),
        }
    }

    const WEB: &str = "services:\n  - name: web\n    address: 10.96.0.10\n    port: 80\n    backends:\n      - {address: 10.0.1.2, port: 8080}\n      - {address: 10.0.1.3, port: 8080, weight: 3}\n";

    #[test]
    fn a_service_is_read_with_its_defaults() {
        let c = Config::from_yaml(WEB).unwrap();
        c.validate().unwrap();
        let s = &c.services[0];
        assert_eq!(s.protocol, super::Protocol::Tcp);
        assert_eq!(s.backends[0].weight, 1);
        assert_eq!(s.backends[1].weight, 3);
        assert_eq!(s.session_affinity, super::SessionAffinity::None);
        assert_eq!(
            s.session_affinity_timeout,
            std::time::Duration::from_secs(10_800)
        );
        let sticky = Config::from_yaml(&format!(
            "{WEB}    session_affinity: client_ip\n    session_affinity_timeout: 10m\n"
        ))
        .unwrap();
        sticky.validate().unwrap();
        assert_eq!(
            sticky.services[0].session_affinity,
            super::SessionAffinity::ClientIp
        );
        assert_eq!(c.health.with(&s.health).consecutive_failures, 5);
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(Config::from_yaml(&text).unwrap(), c);
    }

    #[test]
    fn bad_services_name_the_field() {
        let e = err(
            "services:\n  - name: a\n    address: 10.96.0.10\n    port: 80\n    backends:\n      - {address: 10.0.1.2}\n",
        );
        assert!(
            e.contains("services[0].backends[0]") && e.contains("port"),
            "{e}"
        );
        let e = err(&format!(
            "{WEB}  - name: web2\n    address: 10.96.0.10\n    port: 80\n"
        ));
        assert!(
            e.contains("services[1].address") && e.contains("overlaps"),
            "{e}"
        );
        let e = err(&format!(
            "{WEB}  - name: web\n    address: 10.96.0.11\n    port: 80\n"
        ));
        assert!(e.contains("services[1].name"), "{e}");
        let e =
            err("services:\n  - name: a\n    address: 10.96.0.10\n    port: 80\n    backend: []\n");
        assert!(e.contains("backend"), "{e}");
        let e = err(
            "services:\n  - name: a\n    address: 10.96.0.10\n    port: 80\n    backends:\n      - {address: 'fd00::1', port: 1}\n",
        );
        assert!(e.contains("services[0].backends[0].address"), "{e}");
        // IPv6 services take IPv6 backends; a v4-mapped service address is
        // the IPv4 one, written so.
        Config::from_yaml(
            "services:\n  - name: a\n    address: 'fd00::10'\n    port: 80\n    backends:\n      - {address: 'fd00::1', port: 1}\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let e = err("services:\n  - name: a\n    address: '::ffff:10.96.0.10'\n    port: 80\n");
        assert!(
            e.contains("services[0].address") && e.contains("write 10.96.0.10"),
            "{e}"
        );
        let e = err(
            "services:\n  - name: a\n    address: 10.96.0.10\n    port: 80\n    protocol: sctp\n",
        );
        assert!(e.contains("services[0].protocol"), "{e}");
        let e = err("health:\n  max_ejection_percent: 150\n");
        assert!(e.contains("health.max_ejection_percent"), "{e}");
        let e = err("health:\n  health_check_interval: 500ms\n");
        assert!(e.contains("health.health_check_interval"), "{e}");
        let e = err(&format!("{WEB}    health: {{health_check_interval: 2h}}\n"));
        assert!(
            e.contains("services[0].health.health_check_interval"),
            "{e}"
        );
        let c = Config::from_yaml(&format!("{WEB}    health: {{health_check_interval: 5s}}\n"))
            .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.health.health_check_interval,
            std::time::Duration::ZERO,
            "off by default"
        );
        assert_eq!(
            c.health.with(&c.services[0].health).health_check_interval,
            std::time::Duration::from_secs(5)
        );
        let e = err(&format!(
            "{WEB}    session_affinity: client_ip\n    session_affinity_timeout: 0s\n"
        ));
        assert!(e.contains("services[0].session_affinity_timeout"), "{e}");
        let e = err(&format!("{WEB}    session_affinity: sticky\n"));
        assert!(e.contains("session_affinity"), "{e}");
        let e = err(&format!("{WEB}    health: {{consecutive_failures: 0}}\n"));
        assert!(e.contains("services[0].health.consecutive_failures"), "{e}");
    }

    #[test]
    fn eject_on_l7_errors_needs_l7_capture() {
        let on = format!("{WEB}    health: {{eject_on_l7_errors: true}}\n");
        let c = Config::from_yaml(&on).unwrap();
        c.validate().unwrap();
        assert!(c.health.with(&c.services[0].health).eject_on_l7_errors);
        let e = err(&format!("l7_capture_bytes: 0\n{on}"));
        assert!(
            e.contains("services[0].health.eject_on_l7_errors") && e.contains("l7_capture_bytes"),
            "{e}"
        );
        let e = err(&format!(
            "l7_capture_bytes: 0\nhealth: {{eject_on_l7_errors: true}}\n{WEB}"
        ));
        assert!(e.contains("health.eject_on_l7_errors"), "{e}");
        // Every service turns it off again: nothing needs the payload.
        let off = format!(
            "l7_capture_bytes: 0\nhealth: {{eject_on_l7_errors: true}}\n{WEB}    health: {{eject_on_l7_errors: false}}\n"
        );
        Config::from_yaml(&off).unwrap().validate().unwrap();
    }

    #[test]
    fn kubernetes_services_need_the_kubernetes_api() {
        Config::from_yaml("kubernetes_services: true\n")
            .unwrap()
            .validate()
            .unwrap();
        let e = err("kubernetes:\n  enabled: false\nkubernetes_services: true\n");
        assert!(
            e.contains("kubernetes_services") && e.contains("kubernetes.enabled: false"),
            "{e}"
        );
        // A file's service cannot claim to come from the cluster.
        let e = err(&format!("{WEB}    source: kubernetes\n"));
        assert!(e.contains("source"), "{e}");
        // Nor can a rule select pods without the API.
        let rule = "policies:\n  - name: r\n    direction: egress\n    from: {pod_labels: {app: web}}\n    action: deny\n";
        Config::from_yaml(rule).unwrap().validate().unwrap();
        let e = err(&format!("kubernetes:\n  enabled: false\n{rule}"));
        assert!(
            e.contains("policies[0].from.pod_labels") && e.contains("kubernetes.enabled: false"),
            "{e}"
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        let rule = "policies:\n  - name: r\n    direction: egress\n    to: {service: db}\n    action: deny\n";
        let e = err(&format!("{WEB}{rule}"));
        assert!(
            e.contains("policies[0].to.service") && e.contains("db"),
            "{e}"
        );
        let e = err(
            "policies:\n  - name: r\n    direction: egress\n    action: deny\n    colour: red\n",
        );
        assert!(e.contains("colour"), "{e}");
        let e = err(
            "policies:\n  - name: r\n    direction: egress\n    to: {cidrs: []}\n    action: deny\n",
        );
        assert!(e.contains("policies[0].to") && e.contains("cidrs"), "{e}");
        for (rule, path) in [
            (
                "    direction: ingress\n    from: {cgroup: /system.slice}\n",
                "policies[0].from.cgroup",
            ),
            (
                "    direction: egress\n    from: {cgroup: system.slice}\n",
                "policies[0].from.cgroup",
            ),
            (
                "    direction: egress\n    to: {ports: [0]}\n",
                "policies[0].to.ports[0]",
            ),
            (
                "    direction: egress\n    from: {namespace: Prod_1}\n",
                "policies[0].from.namespace",
            ),
            (
                "    direction: ingress\n    from: {pod_labels: {'': x}}\n",
                "policies[0].from.pod_labels",
            ),
            (
                "    direction: egress\n    to: {cidr: [fd00::/8]}\n",
                "policies[0].to.cidr",
            ),
        ] {
            let e = err(&format!("policies:\n  - name: r\n{rule}    action: deny\n"));
            assert!(e.contains(path), "{rule}: {e}");
        }
        let e = err(&format!(
            "{WEB}policies:\n  - name: r\n    direction: egress\n    to: {{service: web, ports: [80]}}\n    action: deny\n"
        ));
        assert!(e.contains("policies[0].to.service"), "{e}");
    }
}
