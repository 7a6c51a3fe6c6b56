#![warn(missing_docs)]
//! The contract between the fleet's roles: what the producer, the workers and the collector
//! write for one another, and where they find it.
//!
//! - [`message`]: partitions and results, and their versioned binary encoding.
//! - [`job`]: job ids, the manifest, and the container layout (every blob key).
//! - [`summary`]: `summary.json`, written by the collector and read by the producer.
//! - [`gallery`]: which images of a partition the report may show, decided by the worker that
//!   holds their pixels.
//!
//! Nothing here does I/O: a change to this crate is a change to the wire or the container, and
//! a mixed fleet must still refuse what it cannot read (see [`message::MESSAGE_VERSION`]).

pub mod gallery;
pub mod job;
pub mod message;
pub mod summary;

pub use summary::Summary;
