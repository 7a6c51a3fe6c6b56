#![warn(missing_docs)]
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

mod budget;
pub mod scoring;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_broker::{Broker, BrokerError, Consumer, Delivery, Queue, settled};
use fleet_inference::InferenceOptions;
use fleet_ledger::Ledger;
use fleet_protocol::message::{self, Partition, ResultMessage, Scored};
use fleet_service::errors::Chain;
use fleet_service::metrics::metrics;
use fleet_service::ops::{Busy, health};
use fleet_service::shutdown::Shutdown;
use fleet_storage::Containers;
use tokio::task::JoinHandle;

use crate::scoring::{ImageOptions, Models, Prepared, ScoreError, score_together};

/// How a worker runs. Part of the `worker` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// Partitions held unacknowledged at once: one the model runs, one being prepared. Raised
    /// to twice `--partitions-per-call` when that is more.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 2)]
    pub prefetch: u16,
    /// Partitions of one model scored together, at most, in calls of up to `--max-call-mb`. A
    /// GPU runs one large batch much faster per image than several small ones (set both so
    /// that a call fills the device); on a CPU one partition at a time is as fast. Partitions
    /// are joined only while the model is busy: it never waits for more.
    #[arg(long, env = "WORKER_PARTITIONS_PER_CALL", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub partitions_per_call: u16,
    /// Exit after the partitions queue has been empty this many seconds (for event-driven
    /// jobs); run until stopped when absent.
    #[arg(long, env = "WORKER_IDLE_EXIT_SECS")]
    pub idle_exit_secs: Option<u64>,
    /// Deliveries of one partition before it is dead-lettered, with a note for `producer
    /// --wait`: attempts that failed, and deliveries whose workers stopped before finishing
    /// them. Keep the broker's `--delivery-limit` at least this, or the broker dead-letters such
    /// partitions first, without the note.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// How models are run.
    #[command(flatten)]
    pub inference: InferenceOptions,
    /// How images are fetched and decoded.
    #[command(flatten)]
    pub images: ImageOptions,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker failed in a way retrying does not mend.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A task of the worker panicked or was cancelled.
    #[error("a scoring task failed")]
    Task(#[from] tokio::task::JoinError),
    /// This host cannot run models (no ONNX Runtime, no GPU where one was asked for): the
    /// reason, with its causes.
    #[error(
        "this worker cannot score on this host, and stopped (partitions stay in the queue for other workers): {0}"
    )]
    Host(String),
}

/// What one worker did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkerReport {
    /// Partitions scored and published.
    pub partitions: u64,
    /// Images in them.
    pub images: u64,
    /// Partitions dead-lettered.
    pub dead_lettered: u64,
    /// Partitions of cancelled jobs, acknowledged without being scored.
    pub dropped: u64,
}

/// Consumes and scores partitions until shutdown, idle exit, or the broker closes.
///
/// Partitions are prepared (images fetched and decoded) while the model runs the ones before
/// them: on a GPU the model is faster than decoding, and with blobs, fetching is I/O. Those
/// prepared while the model is busy wait for it, up to `--partitions-per-call`, and run together
/// in its next call. Each is settled (published and acked, retried or dead-lettered) in the
/// order it ran.
pub async fn run<B: Broker>(
    broker: B,
    containers: Arc<Containers>,
    options: WorkerOptions,
    name: String,
    mut shutdown: Shutdown,
) -> Result<WorkerReport, WorkerError> {
    // A host that cannot score stops before it takes a partition.
    let provider = fleet_inference::Scorer::check_host(&options.inference)
        .map_err(|e| WorkerError::Host(Chain(&e).to_string()))?;
    tracing::info!(
        provider,
        jpeg = fleet_imaging::jpeg_decoder(),
        "this host can score"
    );
    let partitions_per_call = usize::from(options.partitions_per_call.max(1));
    // One batch the model runs and one gathering: both held unacknowledged.
    let prefetch = options
        .prefetch
        .max(options.partitions_per_call.saturating_mul(2));
    let mut consumer = broker.consume(Queue::Partitions, prefetch).await?;
    health().set_ready(true);
    let mut settler = Settler {
        broker,
        containers: containers.clone(),
        cancelled: HashSet::new(),
        live: HashMap::new(),
        max_attempts: options.max_attempts,
        report: WorkerReport::default(),
        in_flight: None,
        pace: Pace::new(),
    };
    let mut models = Some(Models::new(
        containers,
        options.inference.clone(),
        options.images.clone(),
    ));
    let mut running: Option<Running<_>> = None;
    // Prepared while the model was busy: the model's next call. Never waiting while the model
    // is free.
    let mut waiting: Vec<InHand<_>> = Vec::new();
    let idle = options.idle_exit_secs.map(Duration::from_secs);
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            outcome = finished(&mut running) => {
                let run = running.take().expect("a finished run was running");
                settler.settle_all(run.partitions, outcome?).await?;
                running = Running::start(std::mem::take(&mut waiting), &name);
                continue;
            }
            next = consumer.next() => next?,
            () = sleep_or_forever(idle), if running.is_none() => {
                tracing::info!("partitions queue idle for {}s: exiting", idle.unwrap_or_default().as_secs());
                break;
            }
        };
        let Some(delivery) = next else { break };
        let busy = health().busy();
        let Some((delivery, partition)) = settler.admit(delivery).await? else {
            continue;
        };
        let (job, number) = (partition.job.clone(), partition.partition);
        // Its last attempt: what still fails to be read is the blob's, not the partition's.
        let last_attempt = delivery.attempt() >= options.max_attempts;
        let prepared = match prepare_off_thread(&mut models, partition, last_attempt).await? {
            Ok(prepared) => prepared,
            Err(e) => {
                settler.settle(delivery, &job, number, Err(e)).await?;
                continue;
            }
        };
        // One call holds one model: partitions of another wait for the next call.
        if waiting
            .first()
            .is_some_and(|w| !w.prepared.same_models(&prepared))
        {
            settler.settle_after(running.take()).await?;
            running = Running::start(std::mem::take(&mut waiting), &name);
        }
        let held = Held {
            delivery,
            job,
            number,
            _busy: busy,
        };
        waiting.push(InHand { held, prepared });
        // The model takes what waits when it is free, or when a full batch waits for it (one
        // call at a time, settled in order: the previous call's partitions come first).
        let model_free = running.as_ref().is_none_or(|r| r.handle.is_finished());
        if model_free || waiting.len() >= partitions_per_call {
            settler.settle_after(running.take()).await?;
            running = Running::start(std::mem::take(&mut waiting), &name);
        }
    }
    // Draining: no more partitions taken; those in hand are scored and settled.
    health().set_ready(false);
    settler.settle_after(running.take()).await?;
    let last = Running::start(waiting, &name);
    settler.settle_after(last).await?;
    settler.flush().await?;
    Ok(settler.report)
}

/// Fetches and decodes a partition's images: blocking work, run off the async threads, the
/// models taken along and put back.
async fn prepare_off_thread(
    models: &mut Option<Models>,
    partition: Partition,
    last_attempt: bool,
) -> Result<Result<Prepared, ScoreError>, WorkerError> {
    let mut owned = models
        .take()
        .expect("models are returned after each partition");
    let (returned, prepared) = tokio::task::spawn_blocking(move || {
        let prepared = owned.prepare(partition, last_attempt);
        (owned, prepared)
    })
    .await?;
    *models = Some(returned);
    Ok(prepared)
}

/// A partition's delivery, held unacknowledged until it is settled.
struct Held<D> {
    delivery: D,
    job: String,
    number: u32,
    /// Counts for liveness while the partition is in hand.
    _busy: Busy<'static>,
}

/// A prepared partition waiting for the model.
struct InHand<D> {
    held: Held<D>,
    prepared: Prepared,
}

/// Partitions of one model the model is running together, on a blocking thread.
struct Running<D> {
    partitions: Vec<Held<D>>,
    handle: JoinHandle<Vec<Result<Scored, ScoreError>>>,
}

impl<D: Delivery> Running<D> {
    /// Starts the model on `batch`; nothing when it is empty.
    fn start(batch: Vec<InHand<D>>, worker: &str) -> Option<Self> {
        if batch.is_empty() {
            return None;
        }
        let (partitions, prepared): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.held, p.prepared)).unzip();
        let worker = worker.to_owned();
        Some(Self {
            partitions,
            handle: tokio::task::spawn_blocking(move || score_together(prepared, &worker)),
        })
    }
}

/// The outcomes of the partitions `running` runs, when it finishes; never, when there is none.
async fn finished<D>(
    running: &mut Option<Running<D>>,
) -> Result<Vec<Result<Scored, ScoreError>>, WorkerError> {
    match running {
        Some(run) => (&mut run.handle).await.map_err(WorkerError::Task),
        None => std::future::pending().await,
    }
}

/// Settles partitions by their outcome, and keeps the worker's tally.
struct Settler<B> {
    broker: B,
    /// Where each job's ledger is: its cancellation, the notes of its dead letters.
    containers: Arc<Containers>,
    max_attempts: u32,
    report: WorkerReport,
    /// The previous partition's publish-and-ack, overlapped with the next one's work.
    in_flight: Option<JoinHandle<Result<(), BrokerError>>>,
    /// Jobs found cancelled, and when each other job was last found not to be, by container
    /// and job.
    cancelled: HashSet<(String, String)>,
    live: HashMap<(String, String), Instant>,
    /// What was scored since the last throughput line.
    pace: Pace,
}

/// How often a working worker logs its throughput.
const PACE_EVERY: Duration = Duration::from_secs(60);

/// Images and partitions scored since the last throughput line.
struct Pace {
    since: Instant,
    partitions: u64,
    images: u64,
}

impl Pace {
    fn new() -> Self {
        Pace {
            since: Instant::now(),
            partitions: 0,
            images: 0,
        }
    }

    /// Counts a scored partition; every [`PACE_EVERY`] of work, logs the throughput since the
    /// last line and the worker's totals.
    fn scored(&mut self, images: u64, report: &WorkerReport) {
        self.partitions += 1;
        self.images += images;
        let elapsed = self.since.elapsed();
        if elapsed >= PACE_EVERY {
            tracing::info!(
                partitions = self.partitions,
                images = self.images,
                images_per_second =
                    format_args!("{:.1}", self.images as f64 / elapsed.as_secs_f64()),
                total_partitions = report.partitions,
                total_images = report.images,
                "throughput over the last {}s",
                elapsed.as_secs()
            );
            *self = Pace::new();
        }
    }
}

impl<B: Broker> Settler<B> {
    /// The partition a delivery carries, or `None` when the delivery is dead-lettered instead:
    /// a poison message, or one delivered past the last attempt.
    async fn admit<D: Delivery>(
        &mut self,
        delivery: D,
    ) -> Result<Option<(D, Partition)>, WorkerError> {
        let partition = match message::decode::<Partition>(delivery.payload())
            .and_then(|p| p.validate().map(|()| p))
        {
            Ok(partition) => partition,
            Err(e) => {
                let reason = Chain(&e).to_string();
                tracing::error!(%reason, "poison message on the partitions queue: dead-lettering it");
                settled(delivery.dead_letter(&reason).await)?;
                self.report.dead_lettered += 1;
                metrics().dead_letters.add(1);
                return Ok(None);
            }
        };
        // A worker gives up on a partition at its last attempt, so a delivery past it was never
        // settled: the workers that held it stopped first. Tried again it may stop this one too,
        // and the broker would soon drop it into the dead-letter queue without saying why.
        if delivery.attempt() > self.max_attempts {
            let (job, number) = (&partition.job, partition.partition);
            let reason = format!(
                "delivered {} times without a result: the workers that took it stopped before \
                 finishing it (killed, crashed, out of memory, or cut off from the broker); not \
                 tried again. Look for the cause in those workers' logs or exit status",
                delivery.attempt() - 1
            );
            tracing::error!(%job, partition = number, %reason, "giving up on partition: dead-lettering it");
            self.dead_letter(delivery, job, number, &reason).await?;
            return Ok(None);
        }
        if self
            .is_cancelled(&partition.container, &partition.job)
            .await
        {
            tracing::debug!(job = %partition.job, partition = partition.partition, "the job is cancelled: dropping its partition unscored");
            settled(delivery.ack().await)?;
            self.report.dropped += 1;
            return Ok(None);
        }
        Ok(Some((delivery, partition)))
    }

    /// Whether `job` was cancelled (`producer cancel`, or a submission that failed), as the
    /// container says; asked at most once a second a job, so that watching for it costs a read
    /// a second at most, and the partitions delivered a second after it are dropped.
    async fn is_cancelled(&mut self, container: &str, job: &str) -> bool {
        const RECHECK: Duration = Duration::from_secs(1);
        let key = (container.to_owned(), job.to_owned());
        if self.cancelled.contains(&key) {
            return true;
        }
        if self.live.get(&key).is_some_and(|at| at.elapsed() < RECHECK) {
            return false;
        }
        let (containers, (owned_container, owned_job)) = (self.containers.clone(), key.clone());
        let asked = tokio::task::spawn_blocking(move || {
            let store = match containers.get(&owned_container) {
                Ok(store) => store,
                // Not served here: the partition is refused, with the reason, when it is
                // prepared.
                Err(e) if Containers::refuses(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            Ledger::new(store.as_ref(), &owned_job).is_cancelled()
        });
        match asked.await {
            Ok(Ok(true)) => {
                tracing::info!(%job, "job cancelled: its partitions are dropped unscored");
                self.cancelled.insert(key);
                true
            }
            Ok(Ok(false)) => {
                self.live.insert(key, Instant::now());
                false
            }
            // Unknown: score it. A cancelled job's scores are dropped by the collector.
            Ok(Err(e)) => {
                tracing::warn!(%job, error = %Chain(&e), "cannot tell whether the job is cancelled; scoring its partition");
                false
            }
            Err(e) => {
                tracing::warn!(%job, error = %Chain(&e), "cannot tell whether the job is cancelled; scoring its partition");
                false
            }
        }
    }

    /// Publishes a scored partition's results and acks it; hands a failed one back for a
    /// retry, dead-letters it, or (the host's fault) leaves it to another worker and stops.
    async fn settle(
        &mut self,
        delivery: impl Delivery,
        job: &str,
        number: u32,
        outcome: Result<Scored, ScoreError>,
    ) -> Result<(), WorkerError> {
        match outcome {
            Ok(scored) => {
                self.report.partitions += 1;
                self.report.images += scored.scores.len() as u64;
                let m = metrics();
                let unreadable = scored.scores.iter().filter(|s| s.error.is_some()).count() as u64;
                m.partitions_scored.add(1);
                m.images_scored.add(scored.scores.len() as u64 - unreadable);
                m.images_unreadable.add(unreadable);
                m.inference_seconds.observe(scored.inference_ms / 1000.0);
                m.partition_seconds.observe(
                    scored.finished_at_ms.saturating_sub(scored.published_at_ms) as f64 / 1000.0,
                );
                tracing::info!(
                    job = %scored.job,
                    partition = scored.partition,
                    images = scored.scores.len(),
                    unreadable,
                    seconds = format_args!("{:.2}", scored.finished_at_ms.saturating_sub(scored.started_at_ms) as f64 / 1000.0),
                    inference_seconds = format_args!("{:.2}", scored.inference_ms / 1000.0),
                    "partition scored"
                );
                self.pace.scored(scored.scores.len() as u64, &self.report);
                self.flush().await?;
                let broker = self.broker.clone();
                let payload = message::encode(&ResultMessage::Scored(Box::new(scored)));
                self.in_flight = Some(tokio::spawn(async move {
                    broker.publish(Queue::Results, payload).await?;
                    settled(delivery.ack().await)
                }));
            }
            Err(ScoreError::Host(reason)) => {
                health().set_ready(false);
                tracing::error!(%reason, "this host cannot score: stopping, the partition stays in the queue");
                // Unacknowledged: the broker hands it to another worker.
                drop(delivery);
                self.flush().await?;
                return Err(WorkerError::Host(reason));
            }
            Err(ScoreError::Permanent(reason)) => {
                tracing::error!(%job, partition = number, %reason, "partition cannot be scored: dead-lettering it");
                self.dead_letter(delivery, job, number, &reason).await?;
            }
            Err(ScoreError::Transient(reason)) if delivery.attempt() >= self.max_attempts => {
                let reason = format!("failed {} times, last: {reason}", delivery.attempt());
                tracing::error!(%job, partition = number, %reason, "giving up on partition: dead-lettering it");
                self.dead_letter(delivery, job, number, &reason).await?;
            }
            Err(ScoreError::Transient(reason)) => {
                tracing::warn!(%reason, attempt = delivery.attempt(), "scoring failed; the partition will be retried");
                metrics().partitions_retried.add(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                settled(delivery.retry().await)?;
            }
        }
        Ok(())
    }

    /// Waits for the model to finish `run`, if any, then settles its partitions.
    async fn settle_after(
        &mut self,
        run: Option<Running<impl Delivery>>,
    ) -> Result<(), WorkerError> {
        let Some(run) = run else { return Ok(()) };
        let outcomes = run.handle.await.map_err(WorkerError::Task)?;
        self.settle_all(run.partitions, outcomes).await
    }

    /// Settles each partition of a run by its outcome, in order.
    async fn settle_all(
        &mut self,
        partitions: Vec<Held<impl Delivery>>,
        outcomes: Vec<Result<Scored, ScoreError>>,
    ) -> Result<(), WorkerError> {
        debug_assert_eq!(partitions.len(), outcomes.len());
        if partitions.len() > 1 {
            tracing::debug!(
                partitions = partitions.len(),
                "partitions scored in one model call"
            );
        }
        for (partition, outcome) in partitions.into_iter().zip(outcomes) {
            self.settle(
                partition.delivery,
                &partition.job,
                partition.number,
                outcome,
            )
            .await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        delivery: impl Delivery,
        job: &str,
        number: u32,
        reason: &str,
    ) -> Result<(), WorkerError> {
        // Its images get rows with the reason, so that a job with an error budget can complete
        // without it (a poison message names no images: it gets none).
        if let Ok(partition) = message::decode::<Partition>(delivery.payload()) {
            self.flush().await?;
            let failed = ResultMessage::Scored(Box::new(scoring::failed(&partition, reason)));
            self.broker
                .publish(Queue::Results, message::encode(&failed))
                .await?;
            note_dead_letter(&self.containers, &partition.container, job, number, reason).await;
        }
        settled(delivery.dead_letter(reason).await)?;
        self.report.dead_lettered += 1;
        metrics().dead_letters.add(1);
        Ok(())
    }

    /// Waits for the last publish-and-ack.
    async fn flush(&mut self) -> Result<(), WorkerError> {
        if let Some(previous) = self.in_flight.take() {
            previous.await.map_err(WorkerError::Task)??;
        }
        Ok(())
    }
}

/// Notes in the job's container that partition `number` of `job` is dead-lettered, and why,
/// for `producer --wait`; in a container this fleet does not serve too, since the note is how
/// its submitter learns that. Best effort: the dead-letter queue keeps the partition either
/// way.
async fn note_dead_letter(
    containers: &Arc<Containers>,
    container: &str,
    job: &str,
    number: u32,
    reason: &str,
) {
    let (containers, container) = (containers.clone(), container.to_owned());
    let (owned, reason) = (job.to_owned(), reason.to_owned());
    let noted = tokio::task::spawn_blocking(move || {
        let store = containers.to_tell(&container)?;
        Ledger::new(store.as_ref(), &owned).note_dead_letter(number, &reason)
    })
    .await;
    match noted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%job, partition = number, error = %Chain(&e), "could not note the dead letter in the container")
        }
        Err(e) => {
            tracing::warn!(%job, partition = number, error = %Chain(&e), "could not note the dead letter in the container")
        }
    }
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use fleet_broker::memory::MemoryBroker;
    use fleet_protocol::message::{Images, Partition};
    use fleet_storage::local::LocalStore;

    use super::*;

    /// A partition whose earlier deliveries all ended unsettled (their workers died holding
    /// it) is dead-lettered untried once past `--max-attempts`, with a note for `--wait`.
    #[tokio::test]
    async fn a_partition_delivered_past_max_attempts_is_dead_lettered_untried() {
        let broker = MemoryBroker::new(4, 10);
        let partition = Partition {
            container: "ctr".into(),
            job: "job-1".into(),
            partition: 3,
            models: vec!["no-such-model".into()],
            batch: "test_batch".into(),
            first_index: 0,
            images: Images::Planes {
                height: 32,
                width: 32,
                names: vec!["a.png".into()],
                pixels: vec![0; 3 * 32 * 32],
            },
            labels: vec![Some(1)],
            tags: Vec::new(),
            top_k: 1,
            published_at_ms: 0,
        };
        broker
            .publish(Queue::Partitions, message::encode(&partition))
            .await
            .unwrap();
        // Two workers take it and vanish without settling it.
        let mut taken = broker.consume(Queue::Partitions, 1).await.unwrap();
        for attempt in 1..=2 {
            let delivery = taken.next().await.unwrap().unwrap();
            assert_eq!(delivery.attempt(), attempt);
            drop(delivery);
        }
        drop(taken);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn fleet_storage::BlobStore> =
            Arc::new(LocalStore::create(dir.path(), "ctr").unwrap());
        let served = Arc::new(Containers::one("ctr", store.clone()));
        let mut options: WorkerOptions = fleet_service::cli::defaults().unwrap();
        options.max_attempts = 2;
        options.idle_exit_secs = Some(1);
        let (shutdown, _trigger) = Shutdown::manual();
        let report = run(broker.clone(), served, options, "w".into(), shutdown)
            .await
            .unwrap();
        assert_eq!((report.partitions, report.dead_lettered), (0, 1));
        let dead = broker.drain_dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .reason
                .starts_with("delivered 2 times without a result"),
            "{}",
            dead[0].reason
        );
        // Untried: a try would have failed on the missing model and said so instead.
        let note = store
            .get(&fleet_protocol::job::dead_letter_key("job-1", 3))
            .unwrap();
        assert_eq!(String::from_utf8(note).unwrap(), dead[0].reason);
    }
}
