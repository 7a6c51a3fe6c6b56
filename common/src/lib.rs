//! Shared pieces of the CIFAR scoring fleet, in the order an image meets them:
//!
//! - [`source`]: where staged inputs come from (file or URL).
//! - [`store`]: the blob store seam (local directory, Azure Blob Storage).
//! - [`dataset`]: the CIFAR-10 tarballs, streamed batch by batch (with a small pickle reader).
//! - [`job`]: job ids, the manifest, and the container layout.
//! - [`message`]: partitions and results, and their versioned binary encoding.
//! - [`broker`]: the message broker seam (in-process queues, RabbitMQ).
//! - [`mean_image`]: the OpenCV XML mean image.
//! - [`preprocess`]: the walkthrough's preprocessing, over a whole partition.
//! - [`inference`]: ONNX Runtime sessions (CPU, or CUDA when present).
//! - [`results`]: scores CSV, summary, confusion matrix and the figures.
//! - [`shutdown`]: SIGTERM/SIGINT as a signal every long-running loop listens to.
//! - [`logging`]: the binaries' log output.
//!
//! Errors are `thiserror` enums per module; each message names the thing (file, blob, queue)
//! and what to do about it, since it is what a user of the binaries reads.

pub mod broker;
pub mod dataset;
pub mod inference;
pub mod job;
pub mod logging;
pub mod mean_image;
pub mod message;
pub mod preprocess;
pub mod results;
pub mod shutdown;
pub mod source;
pub mod store;
