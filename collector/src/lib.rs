#![warn(missing_docs)]
//! The collector: gathers each job's scored partitions and writes its result files.
//!
//! Invariants:
//! - A result is acked only after its rows are stored durably in the container (its Parquet
//!   file, its staged block of `scores.csv`, then `jobs/<job>/partitions/<n>.bin`, which marks
//!   it stored); a collector restarted at any point rebuilds its state from there and finishes
//!   the job.
//! - One row set per (job, partition): the first copy stored is the one counted and written; a
//!   redelivered or twice-scored partition changes nothing. The one exception is a partition
//!   stored failed and published again by `producer retry`: the retry's copy replaces it.
//! - Store operations per result are constant: the container is read for a job only when a
//!   collector first sees it, or sees it again after its subscription was renewed (another
//!   collector may have stored results in between). Memory per job is bounded by its classes.
//! - `scores.csv` and the other result files are written only when every partition is in;
//!   `summary.json` is written last, so its presence means the set is complete.

pub mod results;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_broker::{Broker, BrokerError, Consumer, Delivery, Queue, settled};
use fleet_protocol::Summary;
use fleet_protocol::message::{self, ResultMessage};
use fleet_service::errors::Chain;
use fleet_service::metrics::metrics;
use fleet_service::ops::health;
use fleet_service::shutdown::Shutdown;
use fleet_storage::{Containers, StoreError};
use tokio::sync::mpsc;

use crate::state::Served;

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
    /// A partition's rows were stored: its scores, or (a failed partition) the reason it has
    /// none. Once for each partition, and once more for a failed one whose retry was scored.
    Stored {
        /// The job's id.
        job: String,
        /// The partition.
        partition: u32,
        /// Images in the partition.
        images: u64,
        /// Why the partition has no scores, for a failed one (its rows carry the reason).
        failed: Option<String>,
    },
    /// A job's result files were written.
    Completed(Box<Summary>),
    /// A completed job's intermediate blobs were deleted.
    TidiedUp {
        /// The job's id.
        job: String,
        /// Blobs deleted.
        blobs: u64,
        /// How long it took.
        seconds: f64,
    },
    /// A job was cancelled by its producer; nothing was written for it.
    Cancelled {
        /// The job's id.
        job: String,
        /// Why.
        reason: String,
    },
}

/// How often the open jobs are checked for a cancellation marked in the container alone.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Consumes results until shutdown or the broker closes, for the jobs of every container
/// `containers` serves; a result of another is dead-lettered with the reason. Events go to
/// `events`, if given.
pub async fn run<B: Broker>(
    broker: B,
    containers: Arc<Containers>,
    options: CollectorOptions,
    mut shutdown: Shutdown,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<(), CollectorError> {
    let mut consumer = broker.consume(Queue::Results, options.prefetch).await?;
    // Consuming: as the active collector, or as a standby the broker will hand over to.
    health().set_ready(true);
    let mut jobs = Some(Served::new(containers));
    // What memory holds of a job is whole only while this collector alone has been handed the
    // job's results: since its subscription began.
    let mut subscription = 0;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emit = |event: Event| {
        record(&event);
        if let Some(events) = &events {
            let _ = events.send(event);
        }
    };
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = sweep.tick() => {
                let owned = jobs.take().expect("state is returned after each step");
                let (returned, outcome) = with_jobs(owned, |jobs| jobs.sweep()).await?;
                jobs = Some(returned);
                match outcome {
                    Ok(events) => events.into_iter().for_each(emit),
                    // The next sweep tries again; nothing was lost.
                    Err(e) => tracing::warn!(error = %Chain(&e), "could not check the open jobs for cancellations"),
                }
                continue;
            }
            next = consumer.next() => next?,
        };
        let Some(delivery) = next else { break };
        let _busy = health().busy();
        let decoded = message::decode::<ResultMessage>(delivery.payload()).and_then(|m| match &m {
            ResultMessage::Scored(scored) => scored.validate().map(|()| m),
            _ => Ok(m),
        });
        let message = match decoded {
            Ok(message) => message,
            Err(e) => {
                let reason = Chain(&e).to_string();
                tracing::error!(%reason, "poison message on the results queue: dead-lettering it");
                settled(delivery.dead_letter(&reason).await)?;
                continue;
            }
        };
        let mut owned = jobs.take().expect("state is returned after each step");
        if consumer.subscriptions() != subscription {
            subscription = consumer.subscriptions();
            owned.forget();
        }
        let patience = Duration::from_secs(options.store_retry_secs);
        let (returned, outcome) = with_jobs(owned, move |jobs| {
            with_retries(patience, || jobs.handle(message.clone()))
        })
        .await?;
        jobs = Some(returned);
        let events = match outcome {
            // A job of a container not served here: no retry or other collector of this
            // fleet mends it.
            Err(e) if Containers::refuses(&e) => {
                let reason = Chain(&e).to_string();
                tracing::error!(%reason, "result of a container this collector does not serve: dead-lettering it");
                settled(delivery.dead_letter(&reason).await)?;
                continue;
            }
            // On error the delivery is dropped unacknowledged: the broker hands it out again.
            other => other?,
        };
        // Stored durably (and, when complete, written): now the broker may forget it.
        settled(delivery.ack().await)?;
        metrics()
            .jobs_in_flight
            .set(jobs.as_ref().map_or(0, Served::open_jobs) as i64);
        events.into_iter().for_each(emit);
        if jobs.as_ref().is_some_and(Served::has_completed) {
            let owned = jobs.take().expect("state is returned after each step");
            let (returned, events) = with_jobs(owned, Served::tidy_up_completed).await?;
            jobs = Some(returned);
            events.into_iter().for_each(emit);
        }
    }
    health().set_ready(false);
    Ok(())
}

/// Runs `step` on the jobs off the async threads (storage is blocking I/O), and hands them
/// back with its outcome.
async fn with_jobs<T: Send + 'static>(
    mut jobs: Served,
    step: impl FnOnce(&mut Served) -> T + Send + 'static,
) -> Result<(Served, T), CollectorError> {
    tokio::task::spawn_blocking(move || {
        let outcome = step(&mut jobs);
        (jobs, outcome)
    })
    .await
    .map_err(CollectorError::Task)
}

/// Counts an event in the metrics, and logs a completed job's accuracy.
fn record(event: &Event) {
    let m = metrics();
    match event {
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
        Event::TidiedUp {
            job,
            blobs,
            seconds,
        } => {
            tracing::debug!(%job, blobs, seconds, "deleted the job's intermediate blobs");
        }
    }
}

/// Runs `attempt` until it succeeds or `patience` is spent, backing off from 250 ms to 10 s,
/// while it fails in a way that may pass ([`ErrorKind::Transient`](fleet_storage::ErrorKind)):
/// any other failure (a corrupt blob, a store set up wrong, a full disk) is returned at once,
/// since trying again gives the same answer. Storage outages are waited out here, holding the
/// delivery, rather than by requeueing it: a requeue would count against the message's
/// delivery limit.
fn with_retries<T>(
    patience: Duration,
    mut attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(250);
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if e.kind().is_transient() && Instant::now() + delay < deadline => {
                tracing::warn!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64, "storage failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_broker::memory::MemoryBroker;
    use fleet_ledger::Ledger;
    use fleet_protocol::job::{self, Plan};
    use fleet_protocol::message::{Score, Scored, Sealed};
    use fleet_storage::BlobStore;
    use fleet_storage::local::LocalStore;

    fn scored(partition: u32, failed: Option<&str>) -> Vec<u8> {
        message::encode(&ResultMessage::Scored(Box::new(Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
            job: "j".into(),
            partition,
            batch: "b".into(),
            first_index: u64::from(partition),
            filenames: vec!["a.png".into()],
            scores: vec![Score {
                label: None,
                top: if failed.is_some() {
                    Vec::new()
                } else {
                    vec![(0, 0.9)]
                },
                error: failed.map(|reason| format!("partition not scored: {reason}")),
                scored: failed.is_none(),
                tags: Vec::new(),
                true_tags: None,
            }],
            worker: "w".into(),
            inference_ms: 1.0,
            preprocess_ms: 1.0,
            published_at_ms: 1,
            started_at_ms: 2,
            finished_at_ms: 3,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: Vec::new(),
            failed: failed.map(str::to_owned),
            vectors: false,
        })))
    }

    /// A blob that reads but does not decode is not waited on: retrying reads the same bytes.
    /// The job it belongs to cannot complete, and says so at once, not after the 300 s a
    /// storage outage is given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_stored_partition_is_not_retried_for_the_storage_patience() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(LocalStore::create(dir.path(), "ctr").unwrap());
        let plan = Plan {
            models: Vec::new(),
            job: "j".into(),
            classes: vec!["zero".into()],
            top_k: 1,
            several_batches: false,
            max_failed_partitions: 1,
            vectors: Vec::new(),
            multi_label: None,
        };
        Ledger::new(store.as_ref(), "j").write_plan(&plan).unwrap();
        let broker = MemoryBroker::default();
        let (shutdown, trigger) = Shutdown::manual();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let options = CollectorOptions {
            prefetch: 8,
            store_retry_secs: 300,
        };
        let collector = tokio::spawn(run(
            broker.clone(),
            Arc::new(Containers::one("ctr", store.clone())),
            options,
            shutdown,
            Some(events_tx),
        ));
        let publish = |payload| broker.publish(Queue::Results, payload);
        publish(scored(0, None)).await.unwrap();
        publish(scored(1, Some("the model is gone"))).await.unwrap();
        let sealed = Sealed {
            job: "j".into(),
            container: "ctr".into(),
            partitions: 3,
            images: 3,
            labelled: false,
            submitted_at_ms: 0,
            published_at_ms: 1,
        };
        publish(message::encode(&ResultMessage::Sealed(sealed)))
            .await
            .unwrap();
        // The failed partition's copy, read back when the job completes, is damaged.
        while !store.exists(&job::partition_key("j", 1)).unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.put(&job::partition_key("j", 1), b"damaged").unwrap();
        let started = Instant::now();
        publish(scored(2, None)).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await.expect("the collector runs") {
                    Event::Cancelled { reason, .. } => break reason,
                    Event::Completed(_) => panic!("completed from a damaged partition"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the job is given up within seconds, not retried for 300 s");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            reason.contains("stored partition jobs/j/partitions/000001.bin cannot be read")
                && reason.contains("submit the job again"),
            "{reason}"
        );
        let cancelled = Ledger::new(store.as_ref(), "j").cancellation().unwrap();
        assert_eq!(cancelled.as_deref(), Some(reason.as_str()));
        trigger.fire();
        broker.close();
        collector.await.unwrap().unwrap();
    }
}
