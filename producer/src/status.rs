//! `producer status [JOB]`: the jobs of a container and where each stands, read from the
//! container alone (manifests, stored partitions, dead-letter notes, cancellation markers,
//! summaries), so it works from any machine, whichever processes ran the jobs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest, files};
use fleet_storage::{BlobStore, StoreError};

/// Where a job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// `summary.json` is written.
    Complete(Box<Summary>),
    /// Dropped without results, with the reason.
    Cancelled(String),
    /// More partitions were dead-lettered than its error budget allows: it cannot complete
    /// until they are retried (`producer retry`). The reasons.
    Stuck(Vec<String>),
    /// Partitions are being scored (or waiting for a worker or a collector).
    Running,
    /// No manifest yet: being submitted, or its submission died before the end.
    Submitting,
}

/// One job as the container shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The job's id.
    pub job: String,
    /// Its manifest, once the producer wrote it.
    pub manifest: Option<Manifest>,
    /// Partitions the collector holds (it deletes them once the job is complete).
    pub stored: usize,
    /// Partitions a worker dead-lettered.
    pub dead_letters: usize,
    /// Where it stands.
    pub state: State,
}

/// Every job under `jobs/`, oldest first (job ids sort by submission time).
pub fn list(store: &dyn BlobStore) -> Result<Vec<JobStatus>, StoreError> {
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in store.list("jobs/")? {
        if let Some((job, rest)) = key.strip_prefix("jobs/").and_then(|k| k.split_once('/')) {
            jobs.entry(job.to_owned())
                .or_default()
                .push(rest.to_owned());
        }
    }
    jobs.into_iter()
        .map(|(job, blobs)| status(store, &job, &blobs))
        .collect()
}

/// One job, or `None` when the container has nothing of it.
pub fn one(store: &dyn BlobStore, job: &str) -> Result<Option<JobStatus>, StoreError> {
    let prefix = format!("jobs/{job}/");
    let blobs: Vec<String> = store
        .list(&prefix)?
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    if blobs.is_empty() {
        return Ok(None);
    }
    status(store, job, &blobs).map(Some)
}

/// The partitions of `job` a worker noted as dead-lettered, in order, each with its reason.
pub fn dead_letters(store: &dyn BlobStore, job: &str) -> Result<Vec<(String, String)>, StoreError> {
    let prefix = job::dead_letters_prefix(job);
    let mut notes = Vec::new();
    for key in store.list(&prefix)? {
        let reason = match store.get(&key) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let name = key.strip_prefix(&prefix).unwrap_or(&key);
        let partition = job::partition_of(&key).map_or(name.to_owned(), |n| n.to_string());
        notes.push((partition, reason));
    }
    Ok(notes)
}

/// A job's status from the names of its blobs under `jobs/<job>/`.
fn status(store: &dyn BlobStore, job: &str, blobs: &[String]) -> Result<JobStatus, StoreError> {
    let get = |key: &str| store.get_if_exists(key);
    let manifest = get(&job::manifest_key(job))?
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
    let stored = blobs
        .iter()
        .filter(|b| b.starts_with("partitions/"))
        .count();
    let dead: Vec<&String> = blobs
        .iter()
        .filter(|b| b.starts_with("dead-letters/"))
        .collect();
    // Dead letters within the job's error budget do not stop it (its plan is gone once the
    // job is complete, when the budget no longer matters).
    let budget = get(&job::plan_key(job))?
        .and_then(|bytes| serde_json::from_slice::<job::Plan>(&bytes).ok())
        .map_or(0, |plan| plan.max_failed_partitions as usize);
    let state = if let Some(summary) = get(&job::result_key(job, files::SUMMARY))?
        .and_then(|bytes| serde_json::from_slice::<Summary>(&bytes).ok())
    {
        State::Complete(Box::new(summary))
    } else if let Some(reason) = get(&job::cancelled_key(job))? {
        State::Cancelled(String::from_utf8_lossy(&reason).into_owned())
    } else if dead.len() > budget {
        State::Stuck(
            dead_letters(store, job)?
                .into_iter()
                .map(|(partition, reason)| format!("partition {partition}: {reason}"))
                .collect(),
        )
    } else if manifest.is_some() {
        State::Running
    } else {
        State::Submitting
    };
    Ok(JobStatus {
        job: job.to_owned(),
        manifest,
        stored,
        dead_letters: dead.len(),
        state,
    })
}

impl JobStatus {
    /// A word for the state.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Complete(_) => "complete",
            State::Cancelled(_) => "cancelled",
            State::Stuck(_) => "stuck",
            State::Running => "running",
            State::Submitting => "submitting",
        }
    }

    /// Partitions in: all of them once complete, else those stored, of the manifest's count.
    pub fn progress(&self) -> String {
        match (&self.state, &self.manifest) {
            (State::Complete(summary), _) => {
                format!("{0}/{0}", summary.partitions)
            }
            (_, Some(manifest)) => format!("{}/{}", self.stored, manifest.partitions),
            (_, None) => format!("{}/?", self.stored),
        }
    }

    /// One line of the table `producer status` prints.
    pub fn line(&self) -> String {
        let detail = match &self.state {
            State::Complete(summary) => summary.accuracy_line(),
            State::Cancelled(reason) => reason.clone(),
            State::Stuck(reasons) => format!(
                "{} dead-lettered: {}",
                self.dead_letters,
                reasons.first().map_or("", String::as_str)
            ),
            State::Running => String::new(),
            State::Submitting => "no manifest yet".into(),
        };
        row(
            &self.job,
            self.state_name(),
            &self.progress(),
            &self.dead_letters.to_string(),
            &detail,
        )
    }

    /// Everything known of the job, for `producer status JOB`.
    pub fn details(&self, store: &dyn BlobStore) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "job: {}", self.job);
        let _ = writeln!(out, "state: {}", self.state_name());
        if let Some(m) = &self.manifest {
            let _ = writeln!(out, "dataset: {}", m.dataset);
            let _ = writeln!(out, "model: {} (sha256 {})", m.model, m.model_sha256);
            let _ = writeln!(out, "images: {}", m.images);
        }
        let _ = writeln!(out, "partitions in: {}", self.progress());
        match &self.state {
            State::Complete(summary) => {
                let _ = writeln!(out, "{}", summary.accuracy_line());
                let _ = writeln!(
                    out,
                    "report: {}",
                    store.location(&job::result_key(&self.job, files::REPORT))
                );
            }
            State::Cancelled(reason) => {
                let _ = writeln!(out, "cancelled: {reason}");
            }
            State::Stuck(reasons) => {
                for reason in reasons {
                    let _ = writeln!(out, "dead-lettered {reason}");
                }
                let _ = writeln!(
                    out,
                    "once the cause is fixed, `producer retry {}` scores those partitions again",
                    self.job
                );
            }
            State::Running | State::Submitting => {}
        }
        out
    }
}

/// The table's header, matching [`JobStatus::line`].
pub fn header() -> String {
    row("job", "state", "partitions", "dead-letters", "detail")
}

fn row(job: &str, state: &str, partitions: &str, dead_letters: &str, detail: &str) -> String {
    format!("{job:<24} {state:<10} {partitions:>11} {dead_letters:>13}  {detail}")
}
