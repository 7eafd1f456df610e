//! Whether and how to reach the Kubernetes API server: in a cluster (the
//! pod's service account and `KUBERNETES_SERVICE_HOST`), or through an
//! explicit kubeconfig file; and which node this is.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::{Enabled, KubernetesConfig};

/// Where a pod finds its service account (token, CA, namespace).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The pod's service account, and the API server the kubelet names in
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`.
    InCluster,
    Kubeconfig(PathBuf),
}

/// The outcome of detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Not wanted (`enabled: false`, or `auto` outside a cluster).
    Off,
    On(Source),
    /// Wanted (`enabled: true`) but there is nothing to connect with.
    Unavailable(String),
}

/// What the environment offers; read by [`Environment::current`], given
/// by hand in tests.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub in_cluster: bool,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
}

impl Environment {
    pub fn current() -> Self {
        let token = Path::new(SERVICE_ACCOUNT_DIR).join("token");
        let non_empty = |v: String| (!v.trim().is_empty()).then(|| v.trim().to_owned());
        Self {
            in_cluster: token.is_file()
                && std::env::var("KUBERNETES_SERVICE_HOST").is_ok_and(|h| !h.is_empty()),
            node_name: std::env::var("NODE_NAME").ok().and_then(non_empty),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty),
        }
    }
}

pub fn detect(config: &KubernetesConfig, env: &Environment) -> Detection {
    match (config.enabled, &config.kubeconfig, env.in_cluster) {
        (Enabled::False, _, _) => Detection::Off,
        (_, Some(path), _) => Detection::On(Source::Kubeconfig(path.clone())),
        (_, None, true) => Detection::On(Source::InCluster),
        (Enabled::Auto, None, false) => Detection::Off,
        (Enabled::True, None, false) => Detection::Unavailable(format!(
            "kubernetes.enabled is true, but this is not a pod with a service account \
             ({SERVICE_ACCOUNT_DIR}/token and KUBERNETES_SERVICE_HOST) and \
             kubernetes.kubeconfig is not set"
        )),
    }
}

/// The node whose pods are watched: `kubernetes.node_name`, else the
/// `NODE_NAME` environment variable (set by the DaemonSet from the
/// downward API), else the host name.
pub fn node_name(config: &KubernetesConfig, env: &Environment) -> Option<(String, &'static str)> {
    if let Some(name) = &config.node_name {
        return Some((name.clone(), "kubernetes.node_name"));
    }
    if let Some(name) = &env.node_name {
        return Some((name.clone(), "NODE_NAME"));
    }
    env.hostname.clone().map(|h| (h, "the host name"))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot use the pod's service account: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The client configuration for the source, and the API server's address
/// (for messages).
pub async fn client_config(source: &Source) -> Result<(kube::Config, String), ClientError> {
    let config = match source {
        Source::InCluster => kube::Config::incluster()?,
        Source::Kubeconfig(path) => {
            let err = |source| ClientError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
    };
    let server = config.cluster_url.to_string();
    Ok((config, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: Enabled, kubeconfig: Option<&str>) -> KubernetesConfig {
        KubernetesConfig {
            enabled,
            kubeconfig: kubeconfig.map(PathBuf::from),
            node_name: None,
        }
    }

    #[test]
    fn detection() {
        let inside = Environment {
            in_cluster: true,
            ..Environment::default()
        };
        let outside = Environment::default();
        assert_eq!(
            detect(&config(Enabled::Auto, None), &inside),
            Detection::On(Source::InCluster)
        );
        assert_eq!(
            detect(&config(Enabled::Auto, None), &outside),
            Detection::Off
        );
        assert_eq!(
            detect(&config(Enabled::False, None), &inside),
            Detection::Off
        );
        assert_eq!(
            detect(&config(Enabled::Auto, Some("/k")), &outside),
            Detection::On(Source::Kubeconfig("/k".into()))
        );
        assert!(matches!(
            detect(&config(Enabled::True, None), &outside),
            Detection::Unavailable(msg) if msg.contains("kubernetes.kubeconfig")
        ));
    }

    #[test]
    fn node_name_precedence() {
        let mut env = Environment {
            in_cluster: true,
            node_name: Some("from-env".into()),
            hostname: Some("host".into()),
        };
        let mut c = config(Enabled::Auto, None);
        assert_eq!(node_name(&c, &env).unwrap().0, "from-env");
        c.node_name = Some("from-config".into());
        assert_eq!(node_name(&c, &env).unwrap().0, "from-config");
        c.node_name = None;
        env.node_name = None;
        assert_eq!(node_name(&c, &env).unwrap().0, "host");
    }
}
