#![warn(missing_docs)]
//! A job's state, as the container holds it.
//!
//! The container, not a process's memory, is a job's state: a producer following the job from
//! another machine, any worker, and any collector (one restarted, one taking over from
//! another) must read the same blobs the same way. This crate is the one place that reads and
//! writes them; the roles ask it, and none derives a job's state on its own.
//!
//! - [`Ledger`]: one job's blobs under `jobs/<job>/` (see [`fleet_protocol::job`] for the
//!   layout): the plan and manifest the producer writes, the seal and stored partitions the
//!   collector keeps, the failures (the collector's failed markers, the workers' dead-letter
//!   notes, a retry's marks) and the cancellation marker.
//! - [`standing`]: where a job stands, [`JobState`], derived from those blobs in one function.
//! - [`ErrorBudget`]: the rule of `--max-failed-partitions`, the one place it is decided.
//! - [`cancel`]: cancelling a job, the marker and then the message to the collector, as one
//!   call.
//!
//! Reading is blocking, as the store is: async callers run it on the blocking pool.

mod blobs;
mod budget;
pub mod cancel;
pub mod standing;

pub use blobs::Ledger;
pub use budget::ErrorBudget;
pub use cancel::cancel;
pub use standing::{Failures, JobState, Standing, all};

#[cfg(test)]
mod tests;
