//! Shared pieces of the scoring fleet, in the order an image meets them. Nothing here links
//! ONNX Runtime, an image decoder or the CNTK converter: the collector builds on this alone.
//!
//! - [`source`]: where staged inputs come from (file or URL).
//! - [`store`]: the blob store seam (local directory, Azure Blob Storage).
//! - [`dataset`]: the CIFAR-10 tarballs, streamed batch by batch (with a small pickle reader),
//!   and image collections under a prefix with their labels.
//! - [`job`]: job ids, the manifest, and the container layout.
//! - [`message`]: partitions and results, and their versioned binary encoding.
//! - [`broker`]: the message broker seam (in-process queues, RabbitMQ).
//! - [`results`]: scores CSV, summary, confusion matrix and the figures.
//! - [`cli`]: configuration helpers; [`concurrent`]: blocking work on a few threads at once.
//!
//! Errors are `thiserror` enums per module; each message names the thing (file, blob, queue)
//! and what to do about it, since it is what a user of the binaries reads.

pub mod broker;
pub mod cli;
pub mod concurrent;
pub mod dataset;
pub mod job;
pub mod message;
pub mod results;
pub mod source;
pub mod store;
