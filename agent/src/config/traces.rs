//! The `traces:` section of the configuration, and the standard
//! `OTEL_EXPORTER_OTLP_*` environment variables it is resolved with.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// OTLP's path for spans under a base endpoint (OTLP/HTTP).
const HTTP_TRACES_PATH: &str = "/v1/traces";

/// Traces: every L7 exchange as a span over OTLP (docs/traces.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`); unset, the
    /// `OTEL_EXPORTER_OTLP_*` variables decide, and without them traces
    /// are off.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` [default: from the environment, else
    /// `http/protobuf`].
    pub protocol: Option<String>,
    /// Share of new traces kept (0 to 1); a trace joined from an incoming
    /// `traceparent` keeps its sampled flag.
    pub sampling_ratio: f64,
    /// Writing `traceparent` into outgoing requests (not supported yet).
    pub inject_traceparent: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            sampling_ratio: 1.0,
            inject_traceparent: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how spans are sent, once resolved with the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub protocol: OtlpProtocol,
    /// The full endpoint when the configuration names one; `None` leaves
    /// it to the exporter's reading of `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// and `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    pub sampling_ratio: f64,
}

/// The environment variables that decide traces (a function, so that
/// tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl TracesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(invalid(
                "traces.sampling_ratio",
                &self.sampling_ratio,
                "must be between 0 and 1",
            ));
        }
        if let Some(p) = &self.protocol {
            parse_protocol("traces.protocol", p)?;
        }
        if let Some(e) = &self.endpoint {
            check_endpoint("traces.endpoint", e)?;
        }
        Ok(())
    }

    /// The settings in force, or `None` when no endpoint is set here or in
    /// the environment (traces off). A bad environment variable is an
    /// error naming it, as a bad field is.
    pub fn resolve(&self, env: Env<'_>) -> Result<Option<TraceSettings>, ConfigError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| set(name).map(|v| (name, v)));
        if self.endpoint.is_none() && from_env.is_none() {
            if self.inject_traceparent {
                return Err(invalid(
                    "traces.inject_traceparent",
                    &true,
                    "needs traces on: set traces.endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)",
                ));
            }
            return Ok(None);
        }
        let protocol = match &self.protocol {
            Some(p) => parse_protocol("traces.protocol", p)?,
            None => match [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|name| set(name).map(|v| (name, v)))
            {
                Some((name, v)) => parse_protocol(name, &v)?,
                None => OtlpProtocol::HttpProtobuf,
            },
        };
        if self.endpoint.is_none()
            && let Some((name, value)) = &from_env
        {
            check_endpoint(name, value)?;
        }
        let endpoint = self.endpoint.as_ref().map(|base| match protocol {
            OtlpProtocol::Grpc => base.clone(),
            OtlpProtocol::HttpProtobuf => http_traces_url(base),
        });
        Ok(Some(TraceSettings {
            protocol,
            endpoint,
            sampling_ratio: self.sampling_ratio,
        }))
    }
}

fn parse_protocol(field: &str, text: &str) -> Result<OtlpProtocol, ConfigError> {
    match text.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err(field_error(field, text, "http/json is not supported yet")),
        _ => Err(field_error(field, text, "must be grpc or http/protobuf")),
    }
}

fn check_endpoint(field: &str, text: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| field_error(field, text, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(field_error(field, text, "https is not supported yet")),
        _ => Err(field_error(
            field,
            text,
            "must be an http:// URL with a host",
        )),
    }
}

fn field_error(field: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Field {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// A base URL as OTLP/HTTP wants it for spans: `/v1/traces` appended, as
/// for `OTEL_EXPORTER_OTLP_ENDPOINT`, unless it is already there.
fn http_traces_url(base: &str) -> String {
    let trimmed = base.trim_end_matches('/');
    if trimmed.ends_with(HTTP_TRACES_PATH) {
        trimmed.to_owned()
    } else {
        format!("{trimmed}{HTTP_TRACES_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn off_without_an_endpoint() {
        let c = TracesConfig::default();
        assert_eq!(c.resolve(&env(&[])).unwrap(), None);
        // A protocol alone does not turn traces on.
        let e = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(c.resolve(&e).unwrap(), None);
    }

    #[test]
    fn the_configuration_wins_over_the_environment() {
        let c = TracesConfig {
            endpoint: Some("http://127.0.0.1:4318/".into()),
            ..TracesConfig::default()
        };
        let e = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        let s = c.resolve(&e).unwrap().unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4318/"));
        let s = c.resolve(&env(&[])).unwrap().unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn the_environment_turns_traces_on() {
        let c = TracesConfig::default();
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let s = c.resolve(&e).unwrap().unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        // Left to the exporter, which reads the same variables.
        assert_eq!(s.endpoint, None);
    }

    #[test]
    fn bad_values_name_the_field_or_variable() {
        let bad = TracesConfig {
            sampling_ratio: 1.5,
            ..TracesConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("traces.sampling_ratio")
        );
        let inject = TracesConfig {
            inject_traceparent: true,
            ..TracesConfig::default()
        };
        inject.validate().expect("valid on its own");
        let none = |_: &str| None;
        let err = inject.resolve(&none).unwrap_err().to_string();
        assert!(err.contains("traces.inject_traceparent") && err.contains("needs traces on"));
        let on = TracesConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..inject
        };
        assert!(on.resolve(&none).expect("valid").is_some());
        let proto = TracesConfig {
            protocol: Some("udp".into()),
            ..TracesConfig::default()
        };
        assert!(
            proto
                .validate()
                .unwrap_err()
                .to_string()
                .contains("traces.protocol")
        );
        let url = TracesConfig {
            endpoint: Some("collector:4317".into()),
            ..TracesConfig::default()
        };
        assert!(
            url.validate()
                .unwrap_err()
                .to_string()
                .contains("traces.endpoint")
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
        ]);
        let err = TracesConfig::default().resolve(&e).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
    }
}
