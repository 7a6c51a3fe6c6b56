//! Running a job to its end: `producer` without a subcommand (a job submitted and, embedded or
//! with `--wait`, followed) and `producer retry` (a stuck job's failed partitions published
//! again), and what both print once the job is over.

use std::sync::Arc;
use std::time::Duration;

use fleet_broker::BrokerError;
use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest};
use fleet_service::logging::say;
use fleet_storage::{BlobStore, StoreArgs, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use worker::WorkerOptions;

use crate::embedded::{EmbeddedError, EmbeddedRun};
use crate::follow::FollowError;
use crate::retry::RetryError;
use crate::submit::{SubmitError, SubmitOptions};

/// A job, and where it runs: `producer` without a subcommand.
#[derive(Debug)]
pub struct RunArgs {
    /// What to score.
    pub submit: SubmitOptions,
    /// Where the job runs.
    pub fleet: FleetArgs,
}

/// Where a job's partitions are scored, and whether to wait for its end.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Run producer, workers and collector in this process (no broker needed).
    #[arg(long)]
    pub embedded: bool,
    /// After submitting, follow the job to its end and print the accuracy.
    #[arg(long, conflicts_with = "embedded")]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(
        long = "wait-timeout-secs",
        env = "WAIT_TIMEOUT_SECS",
        default_value_t = 3600
    )]
    pub wait_timeout_secs: u64,
    /// The containers the fleet serves, when its workers and collector are restricted to a
    /// list (their FLEET_CONTAINERS, which a deployment shares with the producer): a job of
    /// another container is refused at submission.
    #[arg(
        long = "fleet-containers",
        env = "FLEET_CONTAINERS",
        value_delimiter = ',',
        conflicts_with = "embedded"
    )]
    pub fleet_containers: Vec<String>,
    /// Workers in the embedded run, each with its own copy of the models (so at most 64); they
    /// share the cores.
    #[arg(
        long,
        env = "EMBEDDED_WORKERS",
        default_value_t = 1,
        requires = "embedded",
        value_parser = clap::value_parser!(u16).range(1..=MAX_EMBEDDED_WORKERS as i64)
    )]
    pub workers: u16,
    /// The broker.
    #[command(flatten, next_help_heading = "Broker")]
    pub amqp: AmqpArgs,
    /// The embedded run's workers.
    #[command(flatten, next_help_heading = "Embedded workers' tuning")]
    pub worker: WorkerOptions,
}

impl FleetArgs {
    /// Refuses a job of `container` the fleet does not serve, as far as the producer knows
    /// (`--fleet-containers`); an embedded run serves its own.
    fn serves(&self, container: &str) -> Result<(), RunError> {
        let served = &self.fleet_containers;
        match self.embedded || served.is_empty() || served.iter().any(|c| c == container) {
            true => Ok(()),
            false => Err(RunError::NotServed {
                container: container.to_owned(),
                served: served.clone(),
            }),
        }
    }
}

/// Workers an embedded run may have: each holds the models and a few partitions, so a
/// thousand would hold gigabytes to no gain on any machine.
pub const MAX_EMBEDDED_WORKERS: u16 = 64;

/// Why a job did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The container cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The fleet does not serve the job's container.
    #[error(
        "the fleet serves containers {} (FLEET_CONTAINERS), not {container}: submit the job to one of those, or add {container} to the fleet's FLEET_CONTAINERS",
        served.join(", ")
    )]
    NotServed {
        /// The job's container.
        container: String,
        /// Those the fleet serves.
        served: Vec<String>,
    },
    /// The broker cannot be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The job cannot be submitted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The job's failed partitions cannot be published again.
    #[error(transparent)]
    Retry(#[from] RetryError),
    /// The embedded run failed.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The job, followed, did not complete.
    #[error(transparent)]
    Follow(#[from] FollowError),
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// How a job run by `producer` ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Every partition scored, or not waited for.
    Whole,
    /// Some partitions failed within the error budget.
    Partial,
}

impl Completed {
    /// How the job of `summary` ended; a partial one is said on standard error.
    pub fn of(summary: &Summary) -> Self {
        match &summary.partial {
            Some(partial) => {
                say(format!(
                    "job {} completed partial: {} images in {} partitions could not be scored ({}); their rows in scores.csv carry the reason",
                    summary.job,
                    partial.images,
                    partial.failed_partitions,
                    partial.reasons.join("; ")
                ));
                Completed::Partial
            }
            None => Completed::Whole,
        }
    }
}

/// Submits the job `args` describe and, embedded or with `--wait`, sees it to its end.
pub async fn run(store: &StoreArgs, args: RunArgs) -> Result<Completed, RunError> {
    args.fleet.serves(&store.container)?;
    let store = store.open_async(false).await?;
    let job = job::new_job_id();
    let fleet = args.fleet;
    if fleet.embedded {
        let run = crate::embedded::run(
            store.clone(),
            &args.submit,
            usize::from(fleet.workers),
            fleet.worker,
            &job,
        )
        .await?;
        return Ok(embedded_done(store.as_ref(), &run));
    }
    let broker = AmqpBroker::connect(fleet.amqp).await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} publishing {pos} images ({per_sec}, {elapsed})")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let manifest =
        crate::submit::submit(&broker, store.clone(), &args.submit, &job, |n| bar.inc(n)).await;
    bar.finish_and_clear();
    let manifest = manifest?;
    say(format!(
        "submitted {} images in {} partitions",
        manifest.images, manifest.partitions
    ));
    // Standard output carries the id alone, for `J=$(producer ...)`.
    println!("{job}");
    if fleet.wait {
        return wait(store, &manifest, fleet.wait_timeout_secs).await;
    }
    Ok(Completed::Whole)
}

/// What `producer retry` retries, and where.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The job's id.
    pub job: String,
    /// Where the partitions are scored.
    #[command(flatten, next_help_heading = "Where the job runs")]
    pub fleet: FleetArgs,
}

/// Publishes a job's failed partitions again, over the fleet or in this process.
pub async fn retry(store: &StoreArgs, args: RetryArgs) -> Result<Completed, RunError> {
    args.fleet.serves(&store.container)?;
    let store = store.open_async(false).await?;
    let (found_in, job) = (store.clone(), args.job.clone());
    let retry = tokio::task::spawn_blocking(move || crate::retry::prepare(found_in.as_ref(), &job))
        .await??;
    if !retry.waiting.is_empty() {
        tracing::warn!(
            job = %retry.job,
            partitions = ?retry.waiting,
            "dead-lettered partitions whose rows the collector has not stored yet are left out: retry again once it has"
        );
    }
    say(format!(
        "job {}: scoring {} failed partitions again",
        retry.job,
        retry.partitions.len()
    ));
    let fleet = args.fleet;
    if fleet.embedded {
        let done = crate::embedded::retry(
            store.clone(),
            &retry,
            usize::from(fleet.workers),
            fleet.worker,
        )
        .await?;
        return Ok(embedded_done(store.as_ref(), &done));
    }
    let broker = AmqpBroker::connect(fleet.amqp).await?;
    let published = retry.publish(&broker, store.clone(), &mut |_| {}).await?;
    say(format!("published {published} partitions"));
    println!("{}", retry.job);
    if fleet.wait {
        return wait(store, &retry.manifest, fleet.wait_timeout_secs).await;
    }
    Ok(Completed::Whole)
}

/// What an embedded run prints once its job is complete: the job's id on standard output, the
/// rest on standard error.
pub fn embedded_done(store: &dyn BlobStore, run: &EmbeddedRun) -> Completed {
    print_summary(&run.summary);
    if let Some(peak) = peak_memory_mb() {
        // Every role ran in this process: its peak is the job's.
        say(format!("peak memory: {peak} MB"));
    }
    print_report(store, &run.job);
    println!("{}", run.job);
    Completed::of(&run.summary)
}

/// Follows a job submitted to the fleet to its end, and prints its accuracy.
pub async fn wait(
    store: Arc<dyn BlobStore>,
    manifest: &Manifest,
    timeout_secs: u64,
) -> Result<Completed, RunError> {
    let timeout = Duration::from_secs(timeout_secs);
    let summary = crate::follow::follow(store.clone(), manifest, timeout).await?;
    print_summary(&summary);
    print_report(store.as_ref(), &manifest.job);
    Ok(Completed::of(&summary))
}

/// How long a printed report link opens without credentials.
pub const REPORT_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where the job's report opens in a browser: a path, or a link signed for reading it alone;
/// where no link can be signed (a managed identity), the command that brings it home.
fn print_report(store: &dyn BlobStore, job: &str) {
    let key = job::result_key(job, job::files::REPORT);
    match store.shareable(&key, REPORT_LINK_LIFETIME) {
        Some(link) => say(format!("report: {link}")),
        None => say(format!(
            "report: {} (needs the store's credentials; `producer results {job}` brings the job's files home)",
            store.location(&key)
        )),
    }
}

/// This process's peak resident memory, in MB (Linux's `VmHWM`; `None` elsewhere).
fn peak_memory_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn print_summary(summary: &Summary) {
    for warning in &summary.warnings {
        tracing::warn!("{warning}");
    }
    say(summary.accuracy_line());
    say(format!(
        "scored {} images in {:.2}s ({:.0} images/s)",
        summary.scored, summary.timings.wall_seconds, summary.timings.images_per_second
    ));
    if !summary.decoders.is_empty() {
        say(format!("JPEG decoding: {}", summary.decoders.join(", ")));
    }
}
