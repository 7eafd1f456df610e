//! Workload labels of L4 series and their cardinality budget.
//!
//! Label values come from traffic (addresses, process names, ports), so a
//! port scan or a client with many ephemeral peers could create unbounded
//! series. Each distinct label set is admitted until the budget is spent;
//! after that, new sets are folded into `other` (and counted), while the
//! admitted ones keep their names.

use std::collections::{HashMap, HashSet};

use prometheus_client::encoding::EncodeLabelSet;

/// The value that replaces labels beyond the budget.
pub const OVERFLOW: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct L4Labels {
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_port: String,
}

impl L4Labels {
    pub fn overflow() -> Self {
        Self {
            source_workload: OVERFLOW.into(),
            source_namespace: OVERFLOW.into(),
            destination_workload: OVERFLOW.into(),
            destination_namespace: OVERFLOW.into(),
            destination_port: OVERFLOW.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResetLabels {
    pub direction: &'static str,
    #[prometheus(flatten)]
    pub l4: L4Labels,
}

/// Admits label sets up to a budget.
#[derive(Debug)]
pub struct LabelBudget {
    admitted: HashSet<L4Labels>,
    budget: usize,
    /// Label sets folded into `other`.
    pub overflowed: u64,
}

impl LabelBudget {
    pub fn new(budget: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            budget,
            overflowed: 0,
        }
    }

    /// The labels to use for `labels`: themselves if admitted (or if there
    /// is room), else the overflow set.
    pub fn admit(&mut self, labels: L4Labels) -> L4Labels {
        if self.admitted.contains(&labels) {
            return labels;
        }
        if self.admitted.len() < self.budget {
            self.admitted.insert(labels.clone());
            return labels;
        }
        self.overflowed += 1;
        L4Labels::overflow()
    }
}

/// Distinct values kept per free-form L7 label (`rpc_method`,
/// `db_operation_name`, `http_route`, `server_address`, `error_type`).
pub const L7_VALUES_PER_LABEL: usize = 500;

/// Admits the values of L7 labels whose values come from traffic (a gRPC
/// path, a Redis command name, a route, a server address, an error code)
/// up to [`L7_VALUES_PER_LABEL`] distinct values per label; later new
/// values fold into `other` (and are counted). The bounded labels (HTTP
/// method, status code, DNS types) need no budget.
#[derive(Debug, Default)]
pub struct ValueBudget {
    admitted: HashMap<&'static str, HashSet<String>>,
    /// Values folded into `other`.
    pub overflowed: u64,
}

impl ValueBudget {
    /// `value` if admitted (or if `label` has room), else `other`.
    pub fn admit(&mut self, label: &'static str, value: String) -> String {
        self.admit_within(label, value, L7_VALUES_PER_LABEL)
    }

    fn admit_within(&mut self, label: &'static str, value: String, limit: usize) -> String {
        let values = self.admitted.entry(label).or_default();
        if values.contains(&value) {
            return value;
        }
        if values.len() < limit {
            values.insert(value.clone());
            return value;
        }
        self.overflowed += 1;
        OVERFLOW.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(port: u16) -> L4Labels {
        L4Labels {
            source_workload: "curl".into(),
            source_namespace: String::new(),
            destination_workload: "nginx".into(),
            destination_namespace: String::new(),
            destination_port: port.to_string(),
        }
    }

    #[test]
    fn folds_beyond_budget() {
        let mut b = LabelBudget::new(2);
        assert_eq!(b.admit(labels(1)), labels(1));
        assert_eq!(b.admit(labels(2)), labels(2));
        assert_eq!(b.admit(labels(3)), L4Labels::overflow());
        // Admitted sets keep their names.
        assert_eq!(b.admit(labels(1)), labels(1));
        assert_eq!(b.overflowed, 1);
    }

    #[test]
    fn folds_l7_values_beyond_their_budget_per_label() {
        let mut b = ValueBudget::default();
        assert_eq!(b.admit_within("rpc_method", "a/A".into(), 2), "a/A");
        assert_eq!(b.admit_within("rpc_method", "a/B".into(), 2), "a/B");
        assert_eq!(b.admit_within("rpc_method", "a/C".into(), 2), "other");
        // Admitted values keep their names; each label has its own room.
        assert_eq!(b.admit_within("rpc_method", "a/A".into(), 2), "a/A");
        assert_eq!(b.admit_within("http_route", "/x".into(), 2), "/x");
        assert_eq!(b.overflowed, 1);
    }
}
