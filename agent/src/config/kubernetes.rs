//! The `kubernetes:` section of the configuration.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, invalid};

/// Kubernetes identity: names endpoints by pod, namespace and workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `auto` (on when running in a pod with a service account), `true` or
    /// `false`.
    pub enabled: Enabled,
    /// A kubeconfig file to reach the API server with, instead of the
    /// pod's service account (out-of-cluster runs, tests).
    pub kubeconfig: Option<PathBuf>,
    /// The node whose pods are watched [default: `NODE_NAME` from the
    /// environment, else the host name].
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Enabled {
    #[default]
    Auto,
    True,
    False,
}

impl Serialize for Enabled {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Enabled::Auto => s.serialize_str("auto"),
            Enabled::True => s.serialize_bool(true),
            Enabled::False => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        let bad = |text: &str| {
            serde::de::Error::custom(format!("{text:?} is not one of auto, true, false"))
        };
        match Raw::deserialize(d).map_err(|_: D::Error| bad("this value"))? {
            Raw::Bool(true) => Ok(Enabled::True),
            Raw::Bool(false) => Ok(Enabled::False),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(Enabled::Auto),
                "true" => Ok(Enabled::True),
                "false" => Ok(Enabled::False),
                other => Err(bad(other)),
            },
        }
    }
}

impl KubernetesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.kubeconfig {
            // Read and parsed now, so that a bad file is a configuration
            // error (exit 2) and not a feature that never comes up.
            if let Err(err) = kube::config::Kubeconfig::read_from(path) {
                return Err(invalid("kubernetes.kubeconfig", &path.display(), err));
            }
        }
        if let Some(name) = &self.node_name
            && !is_dns_subdomain(name)
        {
            return Err(invalid(
                "kubernetes.node_name",
                name,
                "must be a Kubernetes node name (lowercase letters, digits, '-' and '.', \
                 at most 253 characters)",
            ));
        }
        Ok(())
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of node names.
fn is_dns_subdomain(name: &str) -> bool {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(ok_char)
        && edge(name.as_bytes().first())
        && edge(name.as_bytes().last())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn enabled_takes_auto_and_booleans() {
        let c = Config::from_yaml("kubernetes:\n  enabled: true\n").unwrap();
        assert_eq!(c.kubernetes.enabled, Enabled::True);
        let c = Config::from_yaml("kubernetes:\n  enabled: false\n").unwrap();
        assert_eq!(c.kubernetes.enabled, Enabled::False);
        let c = Config::from_yaml("kubernetes:\n  enabled: auto\n  node_name: n1\n").unwrap();
        assert_eq!(c.kubernetes.enabled, Enabled::Auto);
        assert_eq!(c.kubernetes.node_name.as_deref(), Some("n1"));
        assert_eq!(Config::default().kubernetes.enabled, Enabled::Auto);
        let err = Config::from_yaml("kubernetes:\n  enabled: maybe\n").unwrap_err();
        assert!(
            err.contains("kubernetes.enabled") && err.contains("maybe"),
            "{err}"
        );
        let err = Config::from_yaml("kubernetes:\n  nodename: x\n").unwrap_err();
        assert!(err.contains("nodename"), "{err}");
        // The printed configuration reads back the same.
        let text = serde_yaml_ng::to_string(&Config::default()).unwrap();
        assert_eq!(Config::from_yaml(&text).unwrap(), Config::default());
    }

    #[test]
    fn invalid_values_name_the_field() {
        let mut c = Config::default();
        c.kubernetes.node_name = Some("Node_A".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kubernetes.node_name"), "{err}");
        c.kubernetes.node_name = Some("node-a.example".into());
        c.validate().unwrap();
        c.kubernetes.kubeconfig = Some("/nonexistent/kubeconfig".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kubernetes.kubeconfig"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "clusters: [oops\n").unwrap();
        c.kubernetes.kubeconfig = Some(path);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kubernetes.kubeconfig"), "{err}");
    }
}
