#![warn(missing_docs)]
//! The producer: stages inputs into a container and submits scoring jobs. Each command of the
//! `producer` binary is a module's `run`, with its arguments beside it.
//!
//! - [`run`]: `producer` itself: a job submitted, and seen to its end embedded or with `--wait`.
//! - [`stage`]: dataset, model (CNTK converted to ONNX on the way) and mean image into a
//!   container, each checked first (`producer stage`).
//! - [`convert`]: a CNTK model to an ONNX file, or its graph (`producer convert`).
//! - [`submit`]: a job from a tarball or an image collection in the container: partitions
//!   published, manifest written, job sealed.
//! - [`follow`]: waiting for a submitted job, by watching the container.
//! - [`incremental`]: which images of a collection earlier jobs scored as they are now.
//! - [`status`]: the container's jobs and where each stands, as the ledger reads them.
//! - [`results`]: a job's result files brought home (`producer results`).
//! - [`control`]: cancelling a submitted job.
//! - [`retry`]: publishing a job's failed partitions again.
//! - [`embedded`]: the whole fleet in one process, on the in-process broker.
//! - [`models`]: which staged model a command means when it names none.
//! - [`source`]: where staged inputs come from (a file or a URL).

pub mod control;
pub mod convert;
pub mod embedded;
pub mod follow;
pub mod incremental;
pub mod models;
pub mod results;
pub mod retry;
pub mod run;
pub mod source;
pub mod stage;
pub mod status;
pub mod submit;
