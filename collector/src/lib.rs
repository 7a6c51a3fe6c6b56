#![warn(missing_docs)]
//! The collector: gathers each job's scored partitions and writes its result files.
//!
//! Invariants:
//! - A result is acked only after its rows are stored durably in the container
//!   (`jobs/<job>/partitions/<n>.bin`); a collector restarted at any point rebuilds its state
//!   from there and finishes the job.
//! - One row set per (job, partition): a redelivered or twice-scored partition overwrites the
//!   same blob with the same rows.
//! - Result files are written only when every partition is in; `summary.json` is written last,
//!   so its presence means the set is complete.

pub mod results;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_broker::{Broker, BrokerError, Consumer, Delivery, Queue, settled};
use fleet_protocol::Summary;
use fleet_protocol::message::{self, ResultMessage};
use fleet_service::metrics::metrics;
use fleet_service::ops::health;
use fleet_service::shutdown::Shutdown;
use fleet_storage::{BlobStore, StoreError};
use tokio::sync::mpsc;

use crate::state::Jobs;

/// How the collector runs. Part of the `collector` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorOptions {
    /// Results held unacknowledged at once.
    #[arg(long, env = "COLLECTOR_PREFETCH", default_value_t = 8)]
    pub prefetch: u16,
    /// How long to keep retrying when storage fails, before giving up (the result stays
    /// unacknowledged and is redelivered to the next collector).
    #[arg(long, env = "COLLECTOR_STORE_RETRY_SECS", default_value_t = 300)]
    pub store_retry_secs: u64,
}

/// Why a collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The broker failed in a way retrying does not mend.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Results could not be stored.
    #[error("storing results failed")]
    Store(#[from] StoreError),
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// What the collector tells its caller as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A partition's scores were stored.
    Stored {
        /// The job's id.
        job: String,
        /// Images in the partition.
        images: u64,
    },
    /// A job's result files were written.
    Completed(Box<Summary>),
    /// A job was cancelled by its producer; nothing was written for it.
    Cancelled {
        /// The job's id.
        job: String,
        /// Why.
        reason: String,
    },
}

/// Consumes results until shutdown or the broker closes. Events go to `events`, if given.
pub async fn run<B: Broker>(
    broker: B,
    store: Arc<dyn BlobStore>,
    options: CollectorOptions,
    mut shutdown: Shutdown,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<(), CollectorError> {
    let mut consumer = broker.consume(Queue::Results, options.prefetch).await?;
    // Consuming: as the active collector, or as a standby the broker will hand over to.
    health().set_ready(true);
    let jobs = Jobs::new(store);
    let mut jobs = Some(jobs);
    let notify = |event: Event| {
        if let Some(events) = &events {
            let _ = events.send(event);
        }
    };
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            next = consumer.next() => next?,
        };
        let Some(delivery) = next else { break };
        let _busy = health().busy();
        let message = match message::decode::<ResultMessage>(delivery.payload()) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(error = %e, "poison message on the results queue: dead-lettering it");
                settled(delivery.dead_letter(&e.to_string()).await)?;
                continue;
            }
        };
        // Storage is blocking I/O: run it off the async threads, taking the state along.
        let mut owned = jobs.take().expect("state is returned after each message");
        let patience = Duration::from_secs(options.store_retry_secs);
        let (returned, outcome, in_flight) = tokio::task::spawn_blocking(move || {
            let outcome = with_retries(patience, || owned.handle(message.clone()));
            let in_flight = owned.open_jobs();
            (owned, outcome, in_flight)
        })
        .await
        .map_err(CollectorError::Task)?;
        jobs = Some(returned);
        // On error the delivery is dropped unacknowledged: the broker hands it out again.
        let events = outcome?;
        // Stored durably (and, when complete, written): now the broker may forget it.
        settled(delivery.ack().await)?;
        let m = metrics();
        m.jobs_in_flight.set(in_flight as i64);
        for event in events {
            match &event {
                Event::Stored { images, .. } => {
                    m.results_stored.add(1);
                    m.result_rows_stored.add(*images);
                }
                Event::Completed(summary) => {
                    tracing::info!(job = %summary.job, "{}", summary.accuracy_line());
                    m.jobs_completed.add(1);
                    m.job_seconds.observe(summary.timings.wall_seconds);
                }
                Event::Cancelled { .. } => m.jobs_cancelled.add(1),
            }
            notify(event);
        }
    }
    health().set_ready(false);
    Ok(())
}

/// Runs `attempt` until it succeeds or `patience` is spent, backing off from 250 ms to 10 s.
/// Storage outages are waited out here, holding the delivery, rather than by requeueing it:
/// a requeue would count against the message's delivery limit.
fn with_retries<T>(
    patience: Duration,
    mut attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(250);
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "storage failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}
