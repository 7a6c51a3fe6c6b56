//! `producer status [JOB]`: the jobs of a container and where each stands, as the ledger reads
//! them from the container alone, so it works from any machine, whichever processes ran the
//! jobs. This module only writes them out.

use std::fmt::Write as _;

use fleet_ledger::{JobState, Ledger, Standing};
use fleet_protocol::job::{self, files};
use fleet_storage::{BlobStore, StoreArgs, StoreError};

/// Where `producer status` looks.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Where the container is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// One job's id, for its details.
    pub job: Option<String>,
}

/// Why `producer status` has nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The container cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container has no such job.
    #[error("{store} has no job {job}; `producer status` lists those it has")]
    NoSuchJob {
        /// The store, as it describes itself.
        store: String,
        /// The job named.
        job: String,
    },
}

/// `producer status [JOB]`: the container's jobs as a table, or one job's details.
pub fn run(args: StatusArgs) -> Result<(), StatusError> {
    let store = args.store.open(false)?;
    match args.job {
        Some(job) => {
            let standing = Ledger::new(store.as_ref(), &job)
                .standing()?
                .ok_or_else(|| StatusError::NoSuchJob {
                    store: store.describe(),
                    job: job.clone(),
                })?;
            print!("{}", details(&standing, store.as_ref()));
        }
        None => {
            let jobs = fleet_ledger::all(store.as_ref())?;
            if jobs.is_empty() {
                println!("{} has no jobs", store.describe());
            } else {
                println!("{}", header());
                for job in &jobs {
                    println!("{}", line(job));
                }
            }
        }
    }
    Ok(())
}

/// One line of the table `producer status` prints.
pub fn line(standing: &Standing) -> String {
    let detail = match &standing.state {
        JobState::Complete(summary) | JobState::Partial(summary) => summary.accuracy_line(),
        JobState::Cancelled(reason) => reason.clone(),
        JobState::Stuck => format!(
            "{} failed: {}",
            standing.failures.count,
            (standing.failures.reasons.first()).map_or("", |(_, reason)| reason.as_str())
        ),
        JobState::Running => String::new(),
        JobState::Submitting => "no manifest yet".into(),
    };
    row(
        &standing.job,
        standing.state.name(),
        &standing.progress(),
        &standing.failures.count.to_string(),
        &detail,
    )
}

/// Everything known of the job, for `producer status JOB`.
pub fn details(standing: &Standing, store: &dyn BlobStore) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job: {}", standing.job);
    let _ = writeln!(out, "state: {}", standing.state.name());
    if let Some(m) = &standing.manifest {
        let _ = writeln!(out, "dataset: {}", m.dataset);
        for model in m.models() {
            let _ = writeln!(out, "model: {} (sha256 {})", model.name, model.sha256);
        }
        let _ = writeln!(out, "images: {}", m.images);
    }
    let _ = writeln!(out, "partitions in: {}", standing.progress());
    if standing.failures.retrying > 0 {
        let _ = writeln!(
            out,
            "being retried: {} failed partitions",
            standing.failures.retrying
        );
    }
    match &standing.state {
        JobState::Complete(summary) | JobState::Partial(summary) => {
            let _ = writeln!(out, "{}", summary.accuracy_line());
            let _ = writeln!(
                out,
                "report: {}",
                store.location(&job::result_key(&standing.job, files::REPORT))
            );
        }
        JobState::Cancelled(reason) => {
            let _ = writeln!(out, "cancelled: {reason}");
        }
        JobState::Stuck => {
            let _ = writeln!(
                out,
                "failed: {} partitions, over its error budget of {}",
                standing.failures.count, standing.budget.max_failed_partitions
            );
            for reason in standing.failures.by_reason() {
                let _ = writeln!(out, "dead-lettered {reason}");
            }
            let _ = writeln!(
                out,
                "once the cause is fixed, `producer retry {}` scores those partitions again",
                standing.job
            );
        }
        JobState::Running | JobState::Submitting => {}
    }
    out
}

/// The table's header, matching [`line`].
pub fn header() -> String {
    row("job", "state", "partitions", "failed", "detail")
}

fn row(job: &str, state: &str, partitions: &str, failed: &str, detail: &str) -> String {
    format!("{job:<24} {state:<10} {partitions:>11} {failed:>7}  {detail}")
}
