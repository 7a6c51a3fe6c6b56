//! The error budget: how many partitions of a job may fail with the job still completing.

use fleet_protocol::job::Plan;

/// The job's error budget (`--max-failed-partitions`), as its plan records it. Every place
/// that asks whether a job can still complete asks [`ErrorBudget::allows`]: the collector
/// before it completes a job, `producer status` and `--wait` before they call a job stuck,
/// the embedded run before it gives up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorBudget {
    /// Partitions that may fail.
    pub max_failed_partitions: u32,
}

impl ErrorBudget {
    /// The budget the job was submitted with.
    pub fn of(plan: &Plan) -> Self {
        Self {
            max_failed_partitions: plan.max_failed_partitions,
        }
    }

    /// Whether a job with `failed` failed partitions can still complete (partial, when any
    /// failed).
    pub fn allows(self, failed: usize) -> bool {
        failed <= self.max_failed_partitions as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_up_to_its_count() {
        let none = ErrorBudget::default();
        assert!(none.allows(0) && !none.allows(1));
        let two = ErrorBudget {
            max_failed_partitions: 2,
        };
        assert!(two.allows(2) && !two.allows(3));
    }
}
