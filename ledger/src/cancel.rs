//! Cancelling a job: the marker in the container, then a message to the collector.
//!
//! The marker is what counts: workers drop the job's partitions unscored once they see it,
//! and a collector, restarted or not, deletes what it stored of the job and writes no result.
//! The `Cancelled` message only makes the active collector act at once rather than at its next
//! look at its open jobs.

use std::sync::Arc;

use fleet_broker::{Broker, BrokerError, Queue};
use fleet_protocol::job::{now_ms, utc_timestamp};
use fleet_protocol::message::{self, Cancelled, ResultMessage};
use fleet_storage::{BlobStore, StoreError};

use crate::blobs::Ledger;

/// What of a cancellation failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The marker could not be written: the job is not cancelled (the message was still sent,
    /// so an active collector drops it).
    #[error("could not mark job {job} cancelled in the container")]
    Marker {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The marker is written, but the collector was not told: it finds the marker at its
    /// next look at its open jobs, within seconds.
    #[error(
        "job {job} is marked cancelled; telling the collector failed (it finds the marker within seconds)"
    )]
    Message {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// The storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// The reason a cancellation by `who` records: who, when, and `why` if given.
pub fn reason(who: &str, why: Option<&str>) -> String {
    let mut reason = format!("cancelled by {who} at {}", utc_timestamp(now_ms()));
    if let Some(why) = why {
        reason.push_str(&format!(": {why}"));
    }
    reason
}

/// Cancels job `job` for `reason`: marks it cancelled in `store`, then tells the collector
/// through `broker`. The message is sent even when the marker cannot be written, so that the
/// active collector drops what it holds of the job either way.
pub async fn cancel<B: Broker>(
    store: Arc<dyn BlobStore>,
    broker: &B,
    job: &str,
    reason: &str,
) -> Result<(), CancelError> {
    let (owned_job, owned_reason) = (job.to_owned(), reason.to_owned());
    let container = store.container().to_owned();
    let marked = tokio::task::spawn_blocking(move || {
        Ledger::new(store.as_ref(), &owned_job).mark_cancelled(&owned_reason)
    })
    .await?;
    let message = ResultMessage::Cancelled(Cancelled {
        job: job.to_owned(),
        container,
        reason: reason.to_owned(),
    });
    let told = broker
        .publish(Queue::Results, message::encode(&message))
        .await;
    match (marked, told) {
        (Err(source), told) => {
            if let Err(e) = told {
                tracing::error!(%job, error = &e as &dyn std::error::Error, "could not tell the collector of the cancellation either");
            }
            Err(CancelError::Marker {
                job: job.to_owned(),
                source,
            })
        }
        (Ok(()), Err(source)) => Err(CancelError::Message {
            job: job.to_owned(),
            source,
        }),
        (Ok(()), Ok(())) => Ok(()),
    }
}
