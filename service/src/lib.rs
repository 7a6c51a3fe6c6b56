//! What a long-running role (worker, collector, the embedded run) needs around its work, and
//! nothing of the work itself:
//!
//! - [`metrics`]: the process's counters and gauges, atomics only.
//! - [`ops`]: the operations endpoint (`/healthz`, `/readyz`, `/metrics`).
//! - [`shutdown`]: SIGTERM/SIGINT as a signal every long-running loop listens to.
//! - [`logging`]: the binaries' log output, text or JSON lines.

pub mod logging;
pub mod metrics;
pub mod ops;
pub mod shutdown;
