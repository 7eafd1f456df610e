//! Passive health (outlier ejection), with Envoy's semantics: a backend
//! whose connects fail `consecutive_failures` times in a row is taken out
//! of its service's rotation (with `eject_on_l7_errors`, also one that
//! answers that many requests in a row with an HTTP 5xx or gRPC
//! `UNAVAILABLE`: Envoy's `consecutive_5xx`, kept apart from connect
//! failures as Envoy does with `split_external_local_origin_errors`) for `base_ejection_time` times the number of
//! times it has been ejected, and comes back by itself when that passes.
//! At most `max_ejection_percent` of a service's backends are out at once
//! (counting the one about to go), except that one may always go while
//! the others are all in; a service's last backend in rotation is never
//! ejected, so health alone never leaves a service without a backend.
//!
//! This is the pure state machine; the reporter feeds it the outcomes of
//! steered connects (from flow records) and writes its decisions into the
//! kernel's slots.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::steer::HealthConfig;

/// How a steered connect ended, as the flow table saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Established.
    Connected,
    /// Refused, reset or timed out (the flow record's `failure`).
    Failed(crate::flow::record::Failure),
    /// A response over a steered connection (an L7 exchange seen at the
    /// client): `error` for an HTTP 5xx or a gRPC `UNAVAILABLE`. Counted
    /// only where `eject_on_l7_errors` is on.
    Answered { error: bool },
}

/// A steered connect's outcome, sent from the flow table to the steering
/// task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOutcome {
    pub service: String,
    pub backend: std::net::SocketAddr,
    pub outcome: Outcome,
}

/// An ejection or a return, as flow records and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChange {
    /// `ejected` or `returned`.
    pub state: String,
    /// Why: `consecutive_connect_failures` or `consecutive_l7_errors` (for
    /// a return, why it had been ejected).
    pub reason: String,
    /// The failures (failed connects or error responses) in a row that
    /// caused the ejection.
    pub consecutive_failures: u32,
    /// How many times the backend has been ejected (this one included).
    pub ejections: u32,
    /// How long this ejection lasts, in seconds.
    pub ejection_time_s: u64,
}

/// The reason label of ejections caused by failed connects.
pub const CONNECT_FAILURES: &str = "consecutive_connect_failures";
/// The reason label of ejections caused by L7 errors.
pub const L7_ERRORS: &str = "consecutive_l7_errors";
/// The reason label of backends out because their active check failed.
pub const CHECK_FAILED: &str = "active_check_failed";
/// Failed active checks in a row that take a backend out (Envoy's
/// `unhealthy_threshold`); the first check that passes brings it back
/// (`healthy_threshold` 1).
pub const CHECK_FAILURES: u32 = 2;

#[derive(Debug, Clone, Default)]
struct BackendHealth {
    consecutive_failures: u32,
    /// Error responses in a row. A separate streak: a backend that
    /// accepts every connect and answers every request with a 503 must
    /// still go, so an established connect does not end this streak.
    consecutive_l7_errors: u32,
    ejections: u32,
    /// While ejected: until when (agent clock).
    ejected_until: Option<Duration>,
    /// Active checks failed in a row.
    failed_checks: u32,
    /// Out of rotation until an active check passes.
    check_failed: bool,
    /// Why it was last ejected, with the failures that caused it.
    last: Option<HealthChange>,
}

/// The health of every backend of every service, by (service id, backend
/// id).
#[derive(Debug, Default)]
pub struct Health {
    backends: BTreeMap<(u32, u32), BackendHealth>,
}

impl Health {
    /// Records an outcome of backend `backend` of service `service` (which
    /// has the backends `all`) at `now`. Returns the ejection it caused.
    pub fn record(
        &mut self,
        (service, backend): (u32, u32),
        all: &[u32],
        outcome: Outcome,
        config: &HealthConfig,
        now: Duration,
    ) -> Option<HealthChange> {
        let ejected_now = self.ejected_of(service, all);
        let b = self.backends.entry((service, backend)).or_default();
        if b.ejected_until.is_some() || b.check_failed {
            // Connects that were already on their way when it went out.
            return None;
        }
        let (streak, reason) = match outcome {
            Outcome::Connected => {
                b.consecutive_failures = 0;
                return None;
            }
            Outcome::Failed(_) => {
                b.consecutive_failures += 1;
                (b.consecutive_failures, CONNECT_FAILURES)
            }
            Outcome::Answered { .. } if !config.eject_on_l7_errors => return None,
            Outcome::Answered { error: false } => {
                b.consecutive_l7_errors = 0;
                return None;
            }
            Outcome::Answered { error: true } => {
                b.consecutive_l7_errors += 1;
                (b.consecutive_l7_errors, L7_ERRORS)
            }
        };
        if streak < config.consecutive_failures {
            return None;
        }
        let total = all.len() as u64;
        let out = ejected_now.len() as u64;
        let within_percent = (out + 1) * 100 <= total * u64::from(config.max_ejection_percent);
        let allowed = out + 1 < total && (within_percent || out == 0);
        if !allowed {
            return None;
        }
        b.ejections += 1;
        let time = config.base_ejection_time * b.ejections;
        b.ejected_until = Some(now + time);
        let change = HealthChange {
            state: "ejected".into(),
            reason: reason.into(),
            consecutive_failures: streak,
            ejections: b.ejections,
            ejection_time_s: time.as_secs(),
        };
        b.consecutive_failures = 0;
        b.consecutive_l7_errors = 0;
        b.last = Some(change.clone());
        Some(change)
    }

    /// Returns the backends whose ejection has run out by `now`, with what
    /// they had been ejected for.
    pub fn expire(&mut self, now: Duration) -> Vec<((u32, u32), HealthChange)> {
        let mut back = Vec::new();
        for (&key, b) in &mut self.backends {
            if b.ejected_until.is_some_and(|until| until <= now) {
                b.ejected_until = None;
                b.consecutive_failures = 0;
                b.consecutive_l7_errors = 0;
                // Still out while its active check fails: no return yet.
                if b.check_failed {
                    continue;
                }
                if let Some(last) = &b.last {
                    back.push((
                        key,
                        HealthChange {
                            state: "returned".into(),
                            ..last.clone()
                        },
                    ));
                }
            }
        }
        back
    }

    /// The result of an active check of backend `backend` of `service`
    /// (which has the backends `all`). Returns the change it caused: out
    /// after [`CHECK_FAILURES`] failed checks in a row, unless it is the
    /// last backend in rotation; back at the first check that passes.
    pub fn checked(
        &mut self,
        (service, backend): (u32, u32),
        all: &[u32],
        ok: bool,
    ) -> Option<HealthChange> {
        let out_now = self.ejected_of(service, all);
        let b = self.backends.entry((service, backend)).or_default();
        if ok {
            b.failed_checks = 0;
            if !std::mem::take(&mut b.check_failed) || b.ejected_until.is_some() {
                return None;
            }
            return Some(HealthChange {
                state: "returned".into(),
                reason: CHECK_FAILED.into(),
                consecutive_failures: 0,
                ejections: b.ejections,
                ejection_time_s: 0,
            });
        }
        b.failed_checks += 1;
        if b.check_failed || b.failed_checks < CHECK_FAILURES {
            return None;
        }
        let already_out = out_now.contains(&backend);
        let in_rotation_after = all.len() - out_now.len() - usize::from(!already_out);
        if in_rotation_after == 0 {
            return None;
        }
        b.check_failed = true;
        if already_out {
            // Ejected by passive health: it stays out, now until a check
            // passes too; no second record.
            return None;
        }
        b.ejections += 1;
        let change = HealthChange {
            state: "ejected".into(),
            reason: CHECK_FAILED.into(),
            consecutive_failures: b.failed_checks,
            ejections: b.ejections,
            ejection_time_s: 0,
        };
        b.last = Some(change.clone());
        Some(change)
    }

    /// The ejected backends of `service` among `all` (by passive health or
    /// by the active check).
    pub fn ejected_of(&self, service: u32, all: &[u32]) -> BTreeSet<u32> {
        all.iter()
            .copied()
            .filter(|&id| self.is_out(service, id))
            .collect()
    }

    /// Whether backend `id` of `service` is out of rotation.
    pub fn is_out(&self, service: u32, id: u32) -> bool {
        self.backends
            .get(&(service, id))
            .is_some_and(|b| b.ejected_until.is_some() || b.check_failed)
    }

    /// Until when backend `id` of `service` is out, if it is.
    pub fn ejected_until(&self, service: u32, id: u32) -> Option<Duration> {
        self.backends
            .get(&(service, id))
            .and_then(|b| b.ejected_until)
    }

    /// Why backend `id` of `service` is out, if it is.
    pub fn reason(&self, service: u32, id: u32) -> Option<&HealthChange> {
        if !self.is_out(service, id) {
            return None;
        }
        self.backends.get(&(service, id))?.last.as_ref()
    }

    /// How many times backend `id` of `service` has been ejected.
    pub fn ejections(&self, service: u32, id: u32) -> u32 {
        self.backends.get(&(service, id)).map_or(0, |b| b.ejections)
    }

    /// Failed connects in a row so far (since the last success, ejection
    /// or return).
    pub fn consecutive_failures(&self, service: u32, id: u32) -> u32 {
        self.backends
            .get(&(service, id))
            .map_or(0, |b| b.consecutive_failures)
    }

    /// Error responses in a row so far (counted with `eject_on_l7_errors`
    /// only).
    pub fn consecutive_l7_errors(&self, service: u32, id: u32) -> u32 {
        self.backends
            .get(&(service, id))
            .map_or(0, |b| b.consecutive_l7_errors)
    }

    /// Forgets the backends that are no longer configured.
    pub fn retain(&mut self, keep: impl Fn(u32, u32) -> bool) {
        self.backends.retain(|&(s, b), _| keep(s, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Failure;

    const FAIL: Outcome = Outcome::Failed(Failure::Refused);

    fn config() -> HealthConfig {
        HealthConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 50,
            eject_on_l7_errors: false,
            health_check_interval: Duration::ZERO,
        }
    }

    fn fail(h: &mut Health, backend: u32, all: &[u32], n: u32, now: u64) -> Option<HealthChange> {
        let mut last = None;
        for _ in 0..n {
            last = h.record((1, backend), all, FAIL, &config(), Duration::from_secs(now));
        }
        last
    }

    #[test]
    fn ejected_after_exactly_consecutive_failures_and_back_after_the_time() {
        let mut h = Health::default();
        let all = [10, 11, 12];
        assert_eq!(fail(&mut h, 10, &all, 2, 0), None);
        let c = fail(&mut h, 10, &all, 1, 0).expect("third failure ejects");
        assert_eq!(
            (c.consecutive_failures, c.ejections, c.ejection_time_s),
            (3, 1, 10)
        );
        assert_eq!(h.ejected_until(1, 10), Some(Duration::from_secs(10)));
        assert!(h.expire(Duration::from_secs(9)).is_empty());
        let back = h.expire(Duration::from_secs(10));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.state, "returned");
        assert_eq!(h.ejected_until(1, 10), None);
        // The second ejection lasts twice as long.
        let c = fail(&mut h, 10, &all, 3, 20).expect("ejected again");
        assert_eq!((c.ejections, c.ejection_time_s), (2, 20));
    }

    #[test]
    fn a_success_starts_the_count_over() {
        let mut h = Health::default();
        let all = [10, 11];
        fail(&mut h, 10, &all, 2, 0);
        h.record((1, 10), &all, Outcome::Connected, &config(), Duration::ZERO);
        assert_eq!(fail(&mut h, 10, &all, 2, 0), None);
        assert!(fail(&mut h, 10, &all, 1, 0).is_some());
    }

    #[test]
    fn the_active_check_takes_out_after_two_failures_and_brings_back_at_once() {
        let mut h = Health::default();
        let all = [10, 11, 12];
        assert_eq!(h.checked((1, 10), &all, false), None);
        let out = h.checked((1, 10), &all, false).expect("second failure");
        assert_eq!(
            (
                out.state.as_str(),
                out.reason.as_str(),
                out.consecutive_failures
            ),
            ("ejected", CHECK_FAILED, 2)
        );
        assert!(h.is_out(1, 10));
        assert_eq!(h.ejected_until(1, 10), None, "out until a check passes");
        assert_eq!(
            h.reason(1, 10).map(|c| c.reason.as_str()),
            Some(CHECK_FAILED)
        );
        // Further failures change nothing; its connects are not counted.
        assert_eq!(h.checked((1, 10), &all, false), None);
        assert_eq!(fail(&mut h, 10, &all, 5, 0), None);
        // No cap but the last backend: a second may go, the third not.
        h.checked((1, 11), &all, false);
        assert!(h.checked((1, 11), &all, false).is_some());
        h.checked((1, 12), &all, false);
        assert_eq!(h.checked((1, 12), &all, false), None);
        assert_eq!(h.ejected_of(1, &all), BTreeSet::from([10, 11]));
        let back = h.checked((1, 10), &all, true).expect("back");
        assert_eq!(
            (back.state.as_str(), back.reason.as_str()),
            ("returned", CHECK_FAILED)
        );
        assert!(!h.is_out(1, 10));
        assert_eq!(h.checked((1, 10), &all, true), None);
    }

    const ERROR: Outcome = Outcome::Answered { error: true };
    const ANSWER: Outcome = Outcome::Answered { error: false };

    fn l7_config() -> HealthConfig {
        HealthConfig {
            eject_on_l7_errors: true,
            ..config()
        }
    }

    #[test]
    fn error_responses_eject_only_with_eject_on_l7_errors() {
        let all = [10, 11, 12];
        let mut h = Health::default();
        for _ in 0..10 {
            let r = h.record((1, 10), &all, ERROR, &config(), Duration::ZERO);
            assert_eq!(r, None, "counted without eject_on_l7_errors");
        }
        assert_eq!(h.consecutive_l7_errors(1, 10), 0);
        let mut h = Health::default();
        let mut last = None;
        for i in 0..3 {
            // Every request on a new connection that was established.
            let connected = h.record(
                (1, 10),
                &all,
                Outcome::Connected,
                &l7_config(),
                Duration::ZERO,
            );
            assert_eq!(connected, None);
            last = h.record((1, 10), &all, ERROR, &l7_config(), Duration::ZERO);
            if i < 2 {
                assert_eq!(last, None);
                assert_eq!(h.consecutive_l7_errors(1, 10), i + 1);
            }
        }
        let c = last.expect("the third error in a row ejects");
        assert_eq!((c.reason.as_str(), c.consecutive_failures), (L7_ERRORS, 3));
        assert_eq!(h.consecutive_l7_errors(1, 10), 0);
        assert_eq!(h.reason(1, 10).map(|c| c.reason.as_str()), Some(L7_ERRORS));
    }

    #[test]
    fn a_good_response_starts_the_l7_count_over_and_connects_keep_theirs() {
        let all = [10, 11];
        let mut h = Health::default();
        let at = Duration::ZERO;
        for _ in 0..2 {
            assert_eq!(h.record((1, 10), &all, ERROR, &l7_config(), at), None);
        }
        assert_eq!(h.record((1, 10), &all, ANSWER, &l7_config(), at), None);
        for _ in 0..2 {
            assert_eq!(h.record((1, 10), &all, ERROR, &l7_config(), at), None);
        }
        // Two failed connects and two errors: neither streak is at three.
        for _ in 0..2 {
            assert_eq!(h.record((1, 10), &all, FAIL, &l7_config(), at), None);
        }
        let c = h
            .record((1, 10), &all, FAIL, &l7_config(), at)
            .expect("the third failed connect ejects");
        assert_eq!(c.reason, CONNECT_FAILURES);
    }

    #[test]
    fn at_most_max_ejection_percent_and_never_the_last_backend() {
        let mut h = Health::default();
        let all = [10, 11, 12];
        assert!(fail(&mut h, 10, &all, 3, 0).is_some());
        // A second of three would make 67 % > 50 %.
        assert_eq!(fail(&mut h, 11, &all, 10, 0), None);
        assert_eq!(h.ejected_of(1, &all).len(), 1);
        // One backend alone is never ejected.
        let mut h = Health::default();
        assert_eq!(fail(&mut h, 10, &[10], 10, 0), None);
        // With 0 % one may still go while the others are all in (Envoy).
        let mut h = Health::default();
        let zero = HealthConfig {
            max_ejection_percent: 0,
            ..config()
        };
        let mut out = None;
        for _ in 0..3 {
            out = h.record((1, 10), &all, FAIL, &zero, Duration::ZERO);
        }
        assert!(out.is_some());
    }
}
