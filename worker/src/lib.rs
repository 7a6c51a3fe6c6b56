//! The worker: consumes partitions, scores each as one batch, publishes its scores.
//!
//! - [`scoring`]: the model (one ONNX Runtime session per process) and the per-partition work.
//! - [`run`]: the consume / score / publish / ack loop.
//!
//! Invariants: a partition is acked only after its scores are confirmed by the broker, so a
//! worker killed at any point loses nothing (the partition is redelivered). A partition that
//! can never be scored (undecodable, invalid, or for a model that cannot load) goes to the
//! dead-letter queue with the reason, instead of being retried forever. A host that cannot
//! score at all (no ONNX Runtime library, no GPU for `--provider cuda`) is not the
//! partition's fault: the worker leaves it unacknowledged for another worker and stops.

pub mod scoring;

use std::sync::Arc;
use std::time::Duration;

use fleet_common::broker::{Broker, BrokerError, Consumer, Delivery, Queue, settled};
use fleet_common::job;
use fleet_common::message::{self, Partition, ResultMessage};
use fleet_common::metrics::metrics;
use fleet_common::ops::health;
use fleet_common::shutdown::Shutdown;
use fleet_common::store::BlobStore;
use fleet_inference::InferenceOptions;
use tokio::task::JoinHandle;

use crate::scoring::{ImageOptions, Models, ScoreError};

/// How a worker runs. Part of the `worker` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// Partitions held unacknowledged at once: one being scored, one waiting.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 2)]
    pub prefetch: u16,
    /// Exit after the partitions queue has been empty this many seconds (for event-driven
    /// jobs); run until stopped when absent.
    #[arg(long, env = "WORKER_IDLE_EXIT_SECS")]
    pub idle_exit_secs: Option<u64>,
    /// Deliveries of one partition before it is dead-lettered.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    #[command(flatten)]
    pub inference: InferenceOptions,
    #[command(flatten)]
    pub images: ImageOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("a scoring task failed: {0}")]
    Task(String),
    #[error(
        "this worker cannot score on this host, and stopped (partitions stay in the queue for other workers): {0}"
    )]
    Host(String),
}

/// What one worker did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkerReport {
    pub partitions: u64,
    pub images: u64,
    pub dead_lettered: u64,
}

/// Consumes and scores partitions until shutdown, idle exit, or the broker closes.
pub async fn run<B: Broker>(
    broker: B,
    store: Arc<dyn BlobStore>,
    options: WorkerOptions,
    name: String,
    mut shutdown: Shutdown,
) -> Result<WorkerReport, WorkerError> {
    // A host that cannot score stops before it takes a partition.
    let provider = fleet_inference::Scorer::check_host(&options.inference)
        .map_err(|e| WorkerError::Host(e.to_string()))?;
    tracing::info!(provider, "this host can score");
    let mut consumer = broker.consume(Queue::Partitions, options.prefetch).await?;
    health().set_ready(true);
    let notes = store.clone();
    let mut models = Some(Models::new(
        store,
        options.inference.clone(),
        options.images.clone(),
    ));
    let mut report = WorkerReport::default();
    // The previous partition's publish-and-ack, overlapped with scoring the next one.
    let mut in_flight: Option<JoinHandle<Result<(), BrokerError>>> = None;
    let idle = options.idle_exit_secs.map(Duration::from_secs);
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            next = consumer.next() => next?,
            () = sleep_or_forever(idle) => {
                tracing::info!("partitions queue idle for {}s: exiting", idle.unwrap_or_default().as_secs());
                break;
            }
        };
        let Some(delivery) = next else { break };
        let _busy = health().busy();
        let partition = match message::decode::<Partition>(delivery.payload())
            .and_then(|p| p.validate().map(|()| p))
        {
            Ok(partition) => partition,
            Err(e) => {
                tracing::error!(error = %e, "poison message on the partitions queue: dead-lettering it");
                settled(delivery.dead_letter(&e.to_string()).await)?;
                report.dead_lettered += 1;
                metrics().dead_letters.add(1);
                continue;
            }
        };
        let (job, number) = (partition.job.clone(), partition.partition);
        // Scoring is CPU-bound: run it off the async threads, taking the models along.
        let mut owned = models
            .take()
            .expect("models are returned after each partition");
        let worker = name.clone();
        let (returned, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = owned.score(&partition, &worker);
            (owned, outcome)
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?;
        models = Some(returned);
        match outcome {
            Ok(scored) => {
                report.partitions += 1;
                report.images += scored.scores.len() as u64;
                let m = metrics();
                let unreadable = scored.scores.iter().filter(|s| s.error.is_some()).count() as u64;
                m.partitions_scored.add(1);
                m.images_scored.add(scored.scores.len() as u64 - unreadable);
                m.images_unreadable.add(unreadable);
                m.inference_seconds.observe(scored.inference_ms / 1000.0);
                m.partition_seconds.observe(
                    scored.finished_at_ms.saturating_sub(scored.published_at_ms) as f64 / 1000.0,
                );
                tracing::debug!(job = %scored.job, partition = scored.partition, images = scored.scores.len(), inference_ms = format_args!("{:.0}", scored.inference_ms), "scored");
                if let Some(previous) = in_flight.take() {
                    previous
                        .await
                        .map_err(|e| WorkerError::Task(e.to_string()))??;
                }
                let broker = broker.clone();
                let payload = message::encode(&ResultMessage::Scored(scored));
                in_flight = Some(tokio::spawn(async move {
                    broker.publish(Queue::Results, payload).await?;
                    settled(delivery.ack().await)
                }));
            }
            Err(ScoreError::Host(reason)) => {
                health().set_ready(false);
                tracing::error!(%reason, "this host cannot score: stopping, the partition stays in the queue");
                // Unacknowledged: the broker hands it to another worker.
                drop(delivery);
                if let Some(previous) = in_flight.take() {
                    previous
                        .await
                        .map_err(|e| WorkerError::Task(e.to_string()))??;
                }
                return Err(WorkerError::Host(reason));
            }
            Err(ScoreError::Permanent(reason)) => {
                tracing::error!(%job, partition = number, %reason, "partition cannot be scored: dead-lettering it");
                note_dead_letter(&notes, &job, number, &reason).await;
                settled(delivery.dead_letter(&reason).await)?;
                report.dead_lettered += 1;
                metrics().dead_letters.add(1);
            }
            Err(ScoreError::Transient(reason)) if delivery.attempt() >= options.max_attempts => {
                let reason = format!("failed {} times, last: {reason}", delivery.attempt());
                tracing::error!(%job, partition = number, %reason, "giving up on partition: dead-lettering it");
                note_dead_letter(&notes, &job, number, &reason).await;
                settled(delivery.dead_letter(&reason).await)?;
                report.dead_lettered += 1;
                metrics().dead_letters.add(1);
            }
            Err(ScoreError::Transient(reason)) => {
                tracing::warn!(%reason, attempt = delivery.attempt(), "scoring failed; the partition will be retried");
                metrics().partitions_retried.add(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                settled(delivery.retry().await)?;
            }
        }
    }
    // Draining: no more partitions taken.
    health().set_ready(false);
    if let Some(previous) = in_flight.take() {
        previous
            .await
            .map_err(|e| WorkerError::Task(e.to_string()))??;
    }
    Ok(report)
}

/// Notes in the container that partition `number` of `job` is dead-lettered, and why, for
/// `producer --wait`. Best effort: the dead-letter queue keeps the partition either way.
async fn note_dead_letter(store: &Arc<dyn BlobStore>, job: &str, number: u32, reason: &str) {
    let (store, key, reason) = (
        store.clone(),
        job::dead_letter_key(job, number),
        reason.to_owned(),
    );
    let noted = tokio::task::spawn_blocking(move || store.put(&key, reason.as_bytes())).await;
    match noted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%job, partition = number, error = %e, "could not note the dead letter in the container")
        }
        Err(e) => {
            tracing::warn!(%job, partition = number, error = %e, "could not note the dead letter in the container")
        }
    }
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
