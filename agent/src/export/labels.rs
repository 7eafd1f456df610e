//! Workload labels of L4 series and their cardinality budget.
//!
//! Label values come from traffic (addresses, process names, ports), so a
//! port scan or a client with many ephemeral peers could create unbounded
//! series. Each distinct label set is admitted until the budget is spent;
//! after that, new sets are folded into `other` (and counted), while the
//! admitted ones keep their names.

use std::collections::HashSet;

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
}
