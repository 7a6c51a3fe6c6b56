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
    /// One job's id, for its details.
    pub job: Option<String>,
    /// Print JSON for scripts: an array of jobs, or one job's object (its `summary.json`
    /// included once it is complete).
    #[arg(long)]
    pub json: bool,
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
pub fn run(store: &StoreArgs, args: StatusArgs) -> Result<(), StatusError> {
    let store = store.open(false)?;
    match args.job {
        Some(job) => {
            let standing = Ledger::new(store.as_ref(), &job)
                .standing()?
                .ok_or_else(|| StatusError::NoSuchJob {
                    store: store.describe(),
                    job: job.clone(),
                })?;
            if args.json {
                println!("{}", as_json(&JobJson::of(&standing, store.as_ref(), true)));
            } else {
                print!("{}", details(&standing, store.as_ref()));
            }
        }
        None => {
            let jobs = fleet_ledger::all(store.as_ref())?;
            if args.json {
                let jobs: Vec<JobJson> = (jobs.iter())
                    .map(|job| JobJson::of(job, store.as_ref(), false))
                    .collect();
                println!("{}", as_json(&jobs));
            } else if jobs.is_empty() {
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

/// A job as `producer status --json` prints it.
#[derive(Debug, serde::Serialize)]
pub struct JobJson<'a> {
    /// The job's id.
    pub job: &'a str,
    /// Where it stands: submitting, running, stuck, partial, complete, cancelled.
    pub state: &'static str,
    /// Partitions in the job, once its manifest is written.
    pub partitions: Option<u32>,
    /// Partitions whose rows are stored (all of them once the job is complete).
    pub partitions_in: u32,
    /// Images in the job, once its manifest is written.
    pub images: Option<u64>,
    /// Partitions failed (dead-lettered) and not being retried.
    pub failed_partitions: usize,
    /// Why they failed: one line per reason, with its partitions.
    pub failures: Vec<String>,
    /// Why the job was cancelled, and by whom.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<&'a str>,
    /// Top-1 accuracy, once complete with true labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The report's location, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The job's `summary.json`, once complete (only for one job's details).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<&'a fleet_protocol::Summary>,
}

impl<'a> JobJson<'a> {
    /// `standing` as JSON; with `details`, the summary too.
    pub fn of(standing: &'a Standing, store: &dyn BlobStore, details: bool) -> Self {
        let summary = standing.state.summary();
        JobJson {
            job: &standing.job,
            state: standing.state.name(),
            partitions: standing.manifest.as_ref().map(|m| m.partitions),
            partitions_in: summary.map_or(standing.stored as u32, |s| s.partitions),
            images: standing.manifest.as_ref().map(|m| m.images),
            failed_partitions: standing.failures.count,
            failures: standing.failures.by_reason(),
            cancelled: match &standing.state {
                JobState::Cancelled(reason) => Some(reason),
                _ => None,
            },
            accuracy: summary.and_then(|s| s.accuracy),
            report: summary.map(|_| store.location(&job::result_key(&standing.job, files::REPORT))),
            summary: summary.filter(|_| details),
        }
    }
}

/// A job or a list of jobs as JSON.
fn as_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("a job's fields serialize")
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
            for warning in &summary.warnings {
                let _ = writeln!(out, "warning: {warning}");
            }
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
