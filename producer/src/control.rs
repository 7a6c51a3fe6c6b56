//! Controlling a job once it is submitted: `producer cancel`.
//!
//! A cancellation is a marker in the container, `jobs/<job>/cancelled`, holding who cancelled
//! the job, when, and why. Everything reads it there: workers drop the job's partitions
//! unscored (acknowledged, not dead-lettered), the collector deletes what it stored of the job
//! and writes no result, and `producer status` and `--wait` say cancelled. The `Cancelled`
//! message the caller publishes after the marker only makes the collector act at once.

use fleet_protocol::job::{self, files, now_ms, utc_timestamp};
use fleet_storage::{BlobStore, StoreError};

/// Why a job cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The container knows no such job.
    #[error("{store} has no job {job}; `producer status` lists those it has")]
    NoSuchJob {
        /// The store, as it describes itself.
        store: String,
        /// The job named.
        job: String,
    },
    /// The job completed: its results are written.
    #[error("job {job} is complete: its results are in {results}; nothing to cancel")]
    Complete {
        /// The job.
        job: String,
        /// Where its results are.
        results: String,
    },
    /// The job was cancelled before.
    #[error("job {job} is cancelled already ({reason})")]
    Cancelled {
        /// The job.
        job: String,
        /// The reason recorded then.
        reason: String,
    },
    /// The container cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Marks `job` cancelled in the container, by `who`, with an optional `why`. Returns the
/// reason recorded, for the `Cancelled` message.
pub fn cancel(
    store: &dyn BlobStore,
    job: &str,
    who: &str,
    why: Option<&str>,
) -> Result<String, ControlError> {
    if store.exists(&job::result_key(job, files::SUMMARY))? {
        return Err(ControlError::Complete {
            job: job.to_owned(),
            results: store.location(&job::result_key(job, "")),
        });
    }
    match store.get(&job::cancelled_key(job)) {
        Ok(reason) => {
            return Err(ControlError::Cancelled {
                job: job.to_owned(),
                reason: String::from_utf8_lossy(&reason).into_owned(),
            });
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    if !store.exists(&job::plan_key(job))? && !store.exists(&job::manifest_key(job))? {
        return Err(ControlError::NoSuchJob {
            store: store.describe(),
            job: job.to_owned(),
        });
    }
    let mut reason = format!("cancelled by {who} at {}", utc_timestamp(now_ms()));
    if let Some(why) = why {
        reason.push_str(&format!(": {why}"));
    }
    store.put(&job::cancelled_key(job), reason.as_bytes())?;
    Ok(reason)
}

/// Who runs this command, as a cancellation records it: `user@host`.
pub fn caller() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "an unknown host".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_storage::local::LocalStore;

    #[test]
    fn only_a_running_job_is_cancelled_and_says_by_whom() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path(), "ctr").unwrap();
        assert!(matches!(
            cancel(&store, "j", "ann@box", None),
            Err(ControlError::NoSuchJob { .. })
        ));
        store.put(&job::plan_key("j"), b"{}").unwrap();
        let reason = cancel(&store, "j", "ann@box", Some("wrong model")).unwrap();
        assert!(
            reason.starts_with("cancelled by ann@box at 20") && reason.ends_with("Z: wrong model"),
            "{reason}"
        );
        assert_eq!(
            store.get(&job::cancelled_key("j")).unwrap(),
            reason.as_bytes()
        );
        assert!(matches!(
            cancel(&store, "j", "bob@box", None),
            Err(ControlError::Cancelled { .. })
        ));
        store.put(&job::plan_key("k"), b"{}").unwrap();
        store
            .put(&job::result_key("k", files::SUMMARY), b"{}")
            .unwrap();
        assert!(matches!(
            cancel(&store, "k", "ann@box", None),
            Err(ControlError::Complete { .. })
        ));
    }
}
