//! Controlling a job once it is submitted: `producer cancel`.
//!
//! A cancellation is a marker in the container (see [`fleet_ledger::cancel()`]) holding who
//! cancelled the job, when, and why. Everything reads it there: workers drop the job's
//! partitions unscored (acknowledged, not dead-lettered), the collector deletes what it stored
//! of the job and writes no result, and `producer status` and `--wait` say cancelled.

use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_ledger::cancel::CancelError;
use fleet_ledger::{JobState, Ledger};
use fleet_protocol::job;
use fleet_service::errors::Chain;
use fleet_storage::{BlobStore, StoreArgs, StoreError};

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
    /// The job could not be marked cancelled.
    #[error(transparent)]
    Cancel(#[from] CancelError),
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// What `producer cancel` cancels, and why.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The broker.
    #[command(flatten, next_help_heading = "Broker")]
    pub amqp: AmqpArgs,
    /// The job's id.
    pub job: String,
    /// Why, recorded with the cancellation.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `producer cancel`: marks the job cancelled in the container, then tells the collector at
/// once; prints the reason recorded.
pub async fn run(store: &StoreArgs, args: CancelArgs) -> Result<(), ControlError> {
    let store = store.open_async(false).await?;
    let (checked, job) = (store.clone(), args.job.clone());
    tokio::task::spawn_blocking(move || check(checked.as_ref(), &job)).await??;
    let reason = fleet_ledger::cancel::reason(&caller(), args.reason.as_deref());
    match AmqpBroker::connect(args.amqp).await {
        Ok(broker) => match fleet_ledger::cancel(store, &broker, &args.job, &reason).await {
            // The marker is what counts; the message only spares the collector its next look.
            Err(e @ CancelError::Message { .. }) => tracing::warn!(error = %Chain(&e)),
            outcome => outcome?,
        },
        Err(e) => {
            let (marker, job, why) = (store.clone(), args.job.clone(), reason.clone());
            tokio::task::spawn_blocking(move || {
                Ledger::new(marker.as_ref(), &job).mark_cancelled(&why)
            })
            .await??;
            tracing::warn!(error = %Chain(&e), "the job is marked cancelled; the collector finds the marker within seconds");
        }
    }
    println!("job {}: {reason}", args.job);
    Ok(())
}

/// Checks that `job` can be cancelled: it is submitted (or being submitted), neither complete
/// nor cancelled already. The cancellation itself is [`fleet_ledger::cancel()`].
pub fn check(store: &dyn BlobStore, job: &str) -> Result<(), ControlError> {
    let standing = Ledger::new(store, job).standing()?;
    match standing.map(|s| s.state) {
        None => Err(ControlError::NoSuchJob {
            store: store.describe(),
            job: job.to_owned(),
        }),
        Some(JobState::Complete(_) | JobState::Partial(_)) => Err(ControlError::Complete {
            job: job.to_owned(),
            results: store.location(&job::result_key(job, "")),
        }),
        Some(JobState::Cancelled(reason)) => Err(ControlError::Cancelled {
            job: job.to_owned(),
            reason,
        }),
        Some(JobState::Submitting | JobState::Running | JobState::Stuck) => Ok(()),
    }
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
    use fleet_protocol::job::files;
    use fleet_storage::local::LocalStore;

    #[test]
    fn only_a_job_not_finished_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path(), "ctr").unwrap();
        assert!(matches!(
            check(&store, "j"),
            Err(ControlError::NoSuchJob { .. })
        ));
        let plan = |job: &str| {
            let plan =
                format!(r#"{{"job":"{job}","classes":[],"top_k":1,"several_batches":false}}"#);
            store.put(&job::plan_key(job), plan.as_bytes()).unwrap();
        };
        plan("j");
        assert!(check(&store, "j").is_ok());
        let reason = fleet_ledger::cancel::reason("ann@box", Some("wrong model"));
        assert!(
            reason.starts_with("cancelled by ann@box at 20") && reason.ends_with("Z: wrong model"),
            "{reason}"
        );
        Ledger::new(&store, "j").mark_cancelled(&reason).unwrap();
        assert!(matches!(
            check(&store, "j"),
            Err(ControlError::Cancelled { reason: r, .. }) if r == reason
        ));
        plan("k");
        let summary = r#"{"job":"k","images":0,"scored":0,"unreadable":0,"labelled":0,
            "correct":0,"accuracy":null,"classes":[],"per_class":[],"predicted":[],
            "most_confused":[],"batches":[],"partitions":0,"workers":{},
            "timings":{"submitted_at_ms":0,"completed_at_ms":0,"wall_seconds":0,
            "images_per_second":0,"inference_seconds":0,"preprocess_seconds":0}}"#;
        store
            .put(&job::result_key("k", files::SUMMARY), summary.as_bytes())
            .unwrap();
        assert!(matches!(
            check(&store, "k"),
            Err(ControlError::Complete { .. })
        ));
    }
}
