#![warn(missing_docs)]
//! The producer: stages inputs into a container and submits scoring jobs.
//!
//! - [`stage`]: dataset, model (CNTK converted to ONNX on the way) and mean image into a
//!   container, each checked first.
//! - [`submit`]: a job from a tarball or an image collection in the container: partitions
//!   published, manifest written, job sealed.
//! - [`follow`]: waiting for a submitted job, by watching the container.
//! - [`incremental`]: which images of a collection earlier jobs scored as they are now.
//! - [`status`]: the container's jobs and where each stands.
//! - [`control`]: cancelling a submitted job.
//! - [`retry`]: publishing a job's failed partitions again.
//! - [`embedded`]: the whole fleet in one process, on the in-process broker.
//! - [`models`]: which staged model a command means when it names none.
//! - [`source`]: where staged inputs come from (a file or a URL).

pub mod control;
pub mod embedded;
pub mod follow;
pub mod incremental;
pub mod models;
pub mod retry;
pub mod source;
pub mod stage;
pub mod status;
pub mod submit;
