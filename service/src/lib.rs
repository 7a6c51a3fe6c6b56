#![warn(missing_docs)]
//! What a long-running role (worker, collector, the embedded run) needs around its work, and
//! nothing of the work itself:
//!
//! - [`metrics`]: the process's counters and gauges, atomics only.
//! - [`ops`]: the operations endpoint (`/healthz`, `/readyz`, `/metrics`).
//! - [`shutdown`]: SIGTERM/SIGINT as a signal every long-running loop listens to.
//! - [`logging`]: the binaries' log output, text or JSON lines.
//! - [`cli`]: a role's options at their defaults, as clap would parse an empty command line.
//! - [`concurrent`]: blocking work on a few threads at once, stopping at the first error.
//! - [`errors`]: an error and its causes as one line of text, each cause once.
//! - [`memory`]: the C heap's shape, set first thing in `main`.

pub mod cli;
pub mod concurrent;
pub mod errors;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod shutdown;
