//! The embedded default: producer, workers and collector in one process, over the in-process
//! broker and the given store, through the same code that runs as separate processes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use collector::{CollectorOptions, Event};
use fleet_broker::memory::MemoryBroker;
use fleet_ledger::{ErrorBudget, Ledger};
use fleet_protocol::Summary;
use fleet_protocol::message::{self, Partition};
use fleet_service::shutdown::Shutdown;
use fleet_storage::{BlobStore, Containers};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use worker::WorkerOptions;

use crate::retry::{Retry, RetryError};
use crate::submit::{SubmitError, SubmitOptions, submit};

/// Why an embedded run failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The job could not be submitted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The job's failed partitions could not be published again.
    #[error(transparent)]
    Retry(#[from] RetryError),
    /// A worker stopped.
    #[error("worker failed")]
    Worker(#[from] worker::WorkerError),
    /// The collector stopped.
    #[error("collector failed")]
    Collector(#[from] collector::CollectorError),
    /// The job was cancelled.
    #[error("job {job} was cancelled: {reason}")]
    Cancelled {
        /// The job's id.
        job: String,
        /// Why.
        reason: String,
    },
    /// Partitions were dead-lettered: the job cannot complete.
    #[error(
        "{count} partitions of job {job} could not be scored and were dead-lettered: {reason}. Fix the cause, then `producer retry {job} --embedded` scores them again (or allow failed partitions with --max-failed-partitions); the rows scored so far are in {scored}"
    )]
    DeadLettered {
        /// The job's id.
        job: String,
        /// Partitions dead-lettered.
        count: usize,
        /// The first one's reason.
        reason: String,
        /// Where the rows scored so far are: the job's Parquet folder.
        scored: String,
    },
    /// The fleet stopped before the job's results were written.
    #[error("the fleet stopped before the job completed")]
    Incomplete,
    /// The in-process fleet's defaults do not parse.
    #[error("invalid collector configuration")]
    Config(#[source] clap::Error),
    /// The job's plan cannot be read.
    #[error("reading the job's plan failed")]
    Plan(#[source] fleet_storage::StoreError),
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// The job's error budget, from its plan.
async fn read_budget(store: &Arc<dyn BlobStore>, job: &str) -> Result<ErrorBudget, EmbeddedError> {
    let (store, job) = (store.clone(), job.to_owned());
    let plan = tokio::task::spawn_blocking(move || Ledger::new(store.as_ref(), &job).plan())
        .await?
        .map_err(EmbeddedError::Plan)?;
    Ok(plan.as_ref().map(ErrorBudget::of).unwrap_or_default())
}

/// The outcome of an embedded run.
#[derive(Debug)]
pub struct EmbeddedRun {
    /// The job's id.
    pub job: String,
    /// What it came to.
    pub summary: Summary,
}

/// Runs job `job` with `workers` workers and waits for its results.
pub async fn run(
    store: Arc<dyn BlobStore>,
    options: &SubmitOptions,
    workers: usize,
    worker_options: WorkerOptions,
    job: &str,
) -> Result<EmbeddedRun, EmbeddedError> {
    let submission = async |broker: &MemoryBroker, on_published: &mut dyn FnMut(u64)| {
        let manifest = submit(broker, store.clone(), options, job, on_published).await?;
        Ok(manifest.partitions)
    };
    run_fleet(store.clone(), workers, worker_options, job, submission).await
}

/// Publishes the failed partitions of `retry`'s job again (`producer retry --embedded`), with
/// `workers` workers, and waits for the job's results.
pub async fn retry(
    store: Arc<dyn BlobStore>,
    retry: &Retry,
    workers: usize,
    worker_options: WorkerOptions,
) -> Result<EmbeddedRun, EmbeddedError> {
    let publishing = async |broker: &MemoryBroker, on_published: &mut dyn FnMut(u64)| {
        Ok(retry
            .publish(broker, store.clone(), &mut &mut *on_published)
            .await?)
    };
    run_fleet(
        store.clone(),
        workers,
        worker_options,
        &retry.job,
        publishing,
    )
    .await
}

/// Runs a collector and `workers` workers in this process while `publish` publishes
/// partitions of `job` (returning how many), and waits until the job completes, or until every
/// partition published is settled with more of them failed than the job's error budget (its
/// plan's, as the ledger reads it) allows.
async fn run_fleet(
    store: Arc<dyn BlobStore>,
    workers: usize,
    mut worker_options: WorkerOptions,
    job: &str,
    publish: impl AsyncFnOnce(&MemoryBroker, &mut dyn FnMut(u64)) -> Result<u32, EmbeddedError>,
) -> Result<EmbeddedRun, EmbeddedError> {
    let broker = MemoryBroker::default();
    let (shutdown, trigger) = Shutdown::manual();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let workers = workers.max(1);
    if worker_options.inference.intra_threads == 0 {
        // Share the cores between the workers' sessions rather than oversubscribe them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        worker_options.inference.intra_threads = (cores / workers).max(1);
    }

    let collector_options: CollectorOptions =
        fleet_service::cli::defaults().map_err(EmbeddedError::Config)?;
    let mut fleet: JoinSet<Result<(), EmbeddedError>> = JoinSet::new();
    // The job's container alone: the embedded fleet serves nothing else.
    let served = Arc::new(Containers::one(store.container(), store.clone()));
    {
        let (broker, store, shutdown) = (broker.clone(), served.clone(), shutdown.clone());
        fleet.spawn(async move {
            collector::run(broker, store, collector_options, shutdown, Some(events_tx)).await?;
            Ok(())
        });
    }
    for i in 0..workers {
        let (broker, store, shutdown, options) = (
            broker.clone(),
            served.clone(),
            shutdown.clone(),
            worker_options.clone(),
        );
        let name = format!("embedded-worker-{}", i + 1);
        fleet.spawn(async move {
            let report = worker::run(broker, store, options, name.clone(), shutdown).await?;
            tracing::debug!(worker = %name, ?report, "worker done");
            Ok(())
        });
    }

    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} scoring {bar:40} {pos}/{len} images ({per_sec}, {eta} left)",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // Partitions stored (scored, or failed) or dead-lettered by the broker itself, and how
    // many were published; those failed now, each with its reason.
    let mut settled = HashSet::new();
    let mut failed: BTreeMap<u32, String> = BTreeMap::new();
    let mut published: Option<(u32, ErrorBudget)> = None;
    let mut grow = |images| bar.inc_length(images);
    let publishing = publish(&broker, &mut grow);
    tokio::pin!(publishing);
    // Publish while the fleet scores, and wait for this job's completion.
    let outcome = loop {
        tokio::select! {
            result = &mut publishing, if published.is_none() => match result {
                // The plan is written: its budget is the job's.
                Ok(partitions) => match read_budget(&store, job).await {
                    Ok(budget) => published = Some((partitions, budget)),
                    Err(e) => break Err(e),
                },
                Err(e) => break Err(e),
            },
            event = events.recv() => match event {
                Some(Event::Stored { job: j, partition, images, failed: reason }) if j == job => {
                    if settled.insert(partition) {
                        bar.inc(images);
                    }
                    match reason {
                        Some(reason) => failed.insert(partition, reason),
                        // A retry's scored copy replaced a failed one.
                        None => failed.remove(&partition),
                    };
                }
                Some(Event::Completed(summary)) if summary.job == job => break Ok(*summary),
                Some(Event::Cancelled { job: j, reason }) if j == job => break Err(EmbeddedError::Cancelled { job: j, reason }),
                Some(_) => {}
                // The collector ended: its error, not this silence, is what to say.
                None => break match fleet.join_next().await {
                    Some(Ok(Err(e))) => Err(e),
                    _ => Err(EmbeddedError::Incomplete),
                },
            },
            // Failed partitions beyond the error budget mean the job cannot complete: stop
            // waiting once every other partition is scored, so that a retry has only the
            // failed ones to score.
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                // A partition the broker dead-lettered on its own (past its delivery limit)
                // has no rows at the collector: it is settled, and failed, here.
                for dead in broker.drain_dead_letters() {
                    if let Ok(partition) = message::decode::<Partition>(&dead.payload)
                        && settled.insert(partition.partition)
                    {
                        failed.insert(partition.partition, dead.reason);
                    }
                }
                let Some((partitions, budget)) = published else { continue };
                if settled.len() >= partitions as usize && !budget.allows(failed.len()) {
                    let (_, reason) = failed.first_key_value().expect("over a budget, some failed");
                    break Err(EmbeddedError::DeadLettered {
                        job: job.to_owned(),
                        count: failed.len(),
                        reason: reason.clone(),
                        scored: store.location(&fleet_protocol::job::parquet_prefix(job)),
                    });
                }
            }
            Some(done) = fleet.join_next() => match done {
                // A fleet task ended before the job did: that is its error.
                Ok(Err(e)) => break Err(e),
                _ => break Err(EmbeddedError::Incomplete),
            },
        }
    };
    bar.finish_and_clear();
    trigger.fire();
    broker.close();
    while fleet.join_next().await.is_some() {}
    let summary = outcome?;
    Ok(EmbeddedRun {
        job: job.to_owned(),
        summary,
    })
}
