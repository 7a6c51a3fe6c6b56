//! Following a submitted job to its end from the outside, by watching the container: the
//! collector's stored partitions show progress, `summary.json` marks completion, a cancellation
//! marker or a worker's dead-letter notes mark a job that can no longer complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest, files};
use fleet_storage::{BlobStore, ErrorKind, StoreError};
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
    /// Partitions were dead-lettered: the job cannot complete.
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
    /// The job completed, but its summary does not parse.
    #[error("summary.json of job {job} is unreadable: {reason}")]
    BadSummary {
        /// The job's id.
        job: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Waits until the job's `summary.json` is written, showing partitions stored as progress.
pub async fn follow(
    store: Arc<dyn BlobStore>,
    manifest: &Manifest,
    timeout: Duration,
    max_failed_partitions: u32,
) -> Result<Summary, FollowError> {
    let bar = ProgressBar::new(u64::from(manifest.partitions)).with_style(
        ProgressStyle::with_template(
            "{spinner} scoring {bar:40} {pos}/{len} partitions ({elapsed})",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = Instant::now() + timeout;
    let job = manifest.job.clone();
    let mut tick = 0u64;
    let mut unreachable = false;
    loop {
        // The summary is looked for often, so that the command returns as soon as the job is
        // done (a missing blob is one cheap request); progress and cancellation less often.
        let look_around = tick.is_multiple_of(LOOK_AROUND_EVERY);
        tick += 1;
        let (reader, job_id) = (store.clone(), job.clone());
        let status = tokio::task::spawn_blocking(move || {
            read_status(reader.as_ref(), &job_id, look_around, max_failed_partitions)
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
            Err(e) if matches!(e.kind(), ErrorKind::Setup | ErrorKind::Blob) => {
                return Err(e.into());
            }
            Err(e) => {
                // Once per outage, not once per poll.
                if !unreachable {
                    tracing::warn!(error = %e, "cannot read the job's progress; retrying");
                }
                unreachable = true;
                Status::Running(None)
            }
        };
        match status {
            Status::Done(bytes) => {
                bar.finish_and_clear();
                return serde_json::from_slice(&bytes).map_err(|e| FollowError::BadSummary {
                    job,
                    reason: e.to_string(),
                });
            }
            Status::Cancelled(reason) => {
                bar.finish_and_clear();
                return Err(FollowError::Cancelled { job, reason });
            }
            Status::DeadLettered(reasons) => {
                bar.finish_and_clear();
                let scored = store.location(&job::parquet_prefix(&job));
                return Err(FollowError::DeadLettered {
                    job,
                    reasons,
                    scored,
                });
            }
            Status::Running(done) => {
                if let Some(done) = done {
                    bar.set_position(done as u64);
                }
                if Instant::now() > deadline {
                    bar.finish_and_clear();
                    return Err(FollowError::TimedOut {
                        job,
                        seconds: timeout.as_secs(),
                        done: bar.position() as usize,
                        total: manifest.partitions,
                    });
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where job `job` stands, from the container: done (its summary), else, when `look_around`,
/// cancelled, stuck on dead-lettered partitions, or running with so many partitions stored.
fn read_status(
    store: &dyn BlobStore,
    job: &str,
    look_around: bool,
    max_failed_partitions: u32,
) -> Result<Status, StoreError> {
    match store.get(&job::result_key(job, files::SUMMARY)) {
        Ok(bytes) => return Ok(Status::Done(bytes)),
        Err(e) if !e.is_not_found() => return Err(e),
        Err(_) => {}
    }
    if !look_around {
        return Ok(Status::Running(None));
    }
    match store.get(&job::cancelled_key(job)) {
        Ok(reason) => {
            return Ok(Status::Cancelled(
                String::from_utf8_lossy(&reason).into_owned(),
            ));
        }
        Err(e) if !e.is_not_found() => return Err(e),
        Err(_) => {}
    }
    let dead_letters = crate::status::dead_letters(store, job)?;
    if dead_letters.len() > max_failed_partitions as usize {
        return Ok(Status::DeadLettered(by_reason(dead_letters)));
    }
    Ok(Status::Running(Some(
        store.list(&job::partitions_prefix(job))?.len(),
    )))
}

/// One line per distinct reason of the dead-lettered `(partition, reason)`s: a model that
/// cannot load fails every partition the same way.
fn by_reason(dead_letters: Vec<(String, String)>) -> Vec<String> {
    let mut by_reason: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for (partition, reason) in dead_letters {
        by_reason.entry(reason).or_default().push(partition);
    }
    by_reason
        .into_iter()
        .map(|(reason, partitions)| format!("partition {}: {reason}", abbreviate(&partitions)))
        .collect()
}

/// Partition numbers for a message: all of a few, the first few of many.
fn abbreviate(partitions: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = partitions[..partitions.len().min(SHOWN)].join(", ");
    if partitions.len() > SHOWN {
        text.push_str(&format!(" and {} more", partitions.len() - SHOWN));
    }
    text
}

/// How often `summary.json` is looked for.
const POLL: Duration = Duration::from_millis(100);
/// Every how many polls the stored partitions are counted and cancellation is checked.
const LOOK_AROUND_EVERY: u64 = 5;

enum Status {
    Done(Vec<u8>),
    Cancelled(String),
    /// Why each dead-lettered partition was.
    DeadLettered(Vec<String>),
    /// Partitions stored, when they were counted.
    Running(Option<usize>),
}
