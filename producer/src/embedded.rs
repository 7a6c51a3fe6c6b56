//! The embedded default: producer, workers and collector in one process, over the in-process
//! broker and the given store, through the same code that runs as separate processes.

use std::sync::Arc;
use std::time::Duration;

use collector::{CollectorOptions, Event};
use fleet_broker::memory::MemoryBroker;
use fleet_protocol::Summary;
use fleet_service::shutdown::Shutdown;
use fleet_storage::BlobStore;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use worker::WorkerOptions;

use crate::submit::{SubmitError, SubmitOptions, submit};

/// Why an embedded run failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The job could not be submitted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
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
        "{count} partitions could not be scored and were dead-lettered: {reason} (allow failed partitions with --max-failed-partitions; the rows scored so far are in {scored})"
    )]
    DeadLettered {
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
    #[error("invalid collector configuration: {0}")]
    Config(String),
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
    mut worker_options: WorkerOptions,
    job: &str,
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
        fleet_service::cli::defaults().map_err(|e| EmbeddedError::Config(e.to_string()))?;
    let mut fleet: JoinSet<Result<(), EmbeddedError>> = JoinSet::new();
    {
        let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
        fleet.spawn(async move {
            collector::run(broker, store, collector_options, shutdown, Some(events_tx)).await?;
            Ok(())
        });
    }
    for i in 0..workers {
        let (broker, store, shutdown, options) = (
            broker.clone(),
            store.clone(),
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
            "{spinner} scoring {bar:40} {pos}/{len} images ({per_sec}, {elapsed})",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut dead_lettered = Vec::new();
    let submission = submit(&broker, store.clone(), options, job, |images| {
        bar.inc_length(images)
    });
    tokio::pin!(submission);
    let mut submitted = false;
    // Submit while the fleet scores, and wait for this job's completion.
    let outcome = loop {
        tokio::select! {
            result = &mut submission, if !submitted => match result {
                Ok(_) => submitted = true,
                Err(e) => break Err(e.into()),
            },
            event = events.recv() => match event {
                Some(Event::Stored { job: j, images }) if j == job => bar.inc(images),
                Some(Event::Completed(summary)) if summary.job == job => break Ok(*summary),
                Some(Event::Cancelled { job: j, reason }) if j == job => break Err(EmbeddedError::Cancelled { job: j, reason }),
                Some(_) => {}
                None => break Err(EmbeddedError::Incomplete),
            },
            // Dead-lettered partitions beyond the error budget mean the job can never
            // complete: stop waiting.
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                dead_lettered.extend(broker.drain_dead_letters());
                if dead_lettered.len() > options.max_failed_partitions as usize {
                    break Err(EmbeddedError::DeadLettered {
                        count: dead_lettered.len(),
                        reason: dead_lettered[0].reason.clone(),
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
