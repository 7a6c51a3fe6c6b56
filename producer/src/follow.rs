//! Following a submitted job to its end from the outside, by watching its ledger in the
//! container: the collector's stored partitions show progress, `summary.json` marks
//! completion, a cancellation or failures over the error budget mark a job that can no longer
//! complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_ledger::{JobState, Ledger, Standing};
use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest};
use fleet_service::errors::Chain;
use fleet_storage::{BlobStore, StoreError};
use indicatif::{ProgressBar, ProgressStyle};

/// Why following a job ended without its results.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The container cannot be read, and waiting will not change that.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job was cancelled.
    #[error("job {job} was cancelled: {reason}")]
    Cancelled {
        /// The job's id.
        job: String,
        /// Why.
        reason: String,
    },
    /// More partitions failed than the job's error budget allows: it cannot complete.
    #[error(
        "job {job} cannot complete: partitions were dead-lettered ({}). Fix the cause, then `producer retry {job}` scores them again (or submit the job again allowing failed partitions with --max-failed-partitions); the rows scored so far are in {scored}",
        reasons.join("; ")
    )]
    DeadLettered {
        /// The job's id.
        job: String,
        /// One line per distinct reason, with its partitions.
        reasons: Vec<String>,
        /// Where the rows scored so far are: the job's Parquet folder.
        scored: String,
    },
    /// The job did not complete in time.
    #[error(
        "job {job} did not complete within {seconds}s; is a collector running? ({done} of {total} partitions stored)"
    )]
    TimedOut {
        /// The job's id.
        job: String,
        /// How long it was waited for.
        seconds: u64,
        /// Partitions stored by then.
        done: usize,
        /// Partitions in the job.
        total: u32,
    },
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Waits until the job's `summary.json` is written, showing partitions stored as progress.
/// Whether the job was cancelled or is stuck over its error budget is the ledger's to say
/// ([`Ledger::standing`]), from the container.
pub async fn follow(
    store: Arc<dyn BlobStore>,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<Summary, FollowError> {
    let bar = ProgressBar::new(manifest.images).with_style(
        ProgressStyle::with_template(
            "{spinner} scoring {bar:40} {pos}/{len} images ({per_sec}, {eta} left)",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = Instant::now() + timeout;
    let job = manifest.job.clone();
    let mut tick = 0u64;
    let mut unreachable = false;
    // Partitions stored at the last look.
    let mut done = 0;
    loop {
        // The summary is looked for often, so that the command returns as soon as the job is
        // done (a missing blob is one cheap request); the rest of the ledger less often.
        let look_around = tick.is_multiple_of(LOOK_AROUND_EVERY);
        tick += 1;
        let (reader, job_id) = (store.clone(), job.clone());
        let status = tokio::task::spawn_blocking(move || {
            let ledger = Ledger::new(reader.as_ref(), &job_id);
            match ledger.summary()? {
                Some(summary) => Ok(Look::Done(Box::new(summary))),
                None if look_around => ledger.standing().map(|s| Look::Around(s.map(Box::new))),
                None => Ok(Look::Around(None)),
            }
        })
        .await
        .map_err(FollowError::Task)?;
        // Storage may be away for a while: keep watching until the deadline.
        let status = match status {
            Ok(status) => {
                if unreachable {
                    tracing::info!("storage is reachable again");
                    unreachable = false;
                }
                status
            }
            Err(e) if !e.kind().is_transient() => return Err(e.into()),
            Err(e) => {
                // Once per outage, not once per poll.
                if !unreachable {
                    tracing::warn!(error = %Chain(&e), "cannot read the job's progress; retrying");
                }
                unreachable = true;
                Look::Around(None)
            }
        };
        let standing = match status {
            Look::Done(summary) => {
                bar.finish_and_clear();
                return Ok(*summary);
            }
            Look::Around(standing) => standing,
        };
        if let Some(standing) = standing {
            match standing.state {
                JobState::Cancelled(reason) => {
                    bar.finish_and_clear();
                    return Err(FollowError::Cancelled { job, reason });
                }
                JobState::Stuck => {
                    bar.finish_and_clear();
                    let scored = store.location(&job::parquet_prefix(&job));
                    return Err(FollowError::DeadLettered {
                        job,
                        reasons: standing.failures.by_reason(),
                        scored,
                    });
                }
                // Completed between the two reads: the next poll reads its summary.
                _ => {
                    done = standing.stored;
                    bar.set_position(standing.stored_images.unwrap_or_default());
                }
            }
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            return Err(FollowError::TimedOut {
                job,
                seconds: timeout.as_secs(),
                done,
                total: manifest.partitions,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How often `summary.json` is looked for.
const POLL: Duration = Duration::from_millis(100);
/// Every how many polls the rest of the ledger is read: progress, cancellation, failures.
const LOOK_AROUND_EVERY: u64 = 5;

/// What one poll found.
enum Look {
    /// The job is complete.
    Done(Box<Summary>),
    /// Where it stands, when the ledger was read whole this time.
    Around(Option<Box<Standing>>),
}
