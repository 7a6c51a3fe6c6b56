//! The producer: stages inputs into a container and submits scoring jobs.
//!
//! - [`stage`]: dataset, model (CNTK converted to ONNX on the way) and mean image into a
//!   container, each checked first.
//! - [`submit`]: a job from the tarball in the container: partitions published, manifest
//!   written, job sealed.
//! - [`follow`]: waiting for a submitted job, by watching the container.
//! - [`embedded`]: the whole fleet in one process, on the in-process broker.

pub mod embedded;
pub mod follow;
pub mod stage;
pub mod submit;
