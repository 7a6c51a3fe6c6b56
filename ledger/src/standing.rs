//! Where a job stands: [`JobState`], derived from the job's blobs in one function, [`read`].
//!
//! The evidence, and who writes it:
//! - `results/<job>/summary.json` (the collector, last of the results): complete, or partial
//!   when its summary says some partitions failed within the budget;
//! - `cancelled` (the producer, or a collector that found the job cannot complete);
//! - `plan.json` (the producer, first): the error budget; `manifest.json` (the producer, once
//!   every partition is published): submitted in full;
//! - `partitions/<n>.bin` (the collector): partition n is stored, scored or failed;
//! - `failed/<n>` (the collector, before storing a failed copy), `dead-letters/<n>` (the
//!   worker that gave up on it, best effort: the first word of a failure, before the
//!   collector has its rows), `retrying/<n>` (`producer retry`, before publishing it again).
//!
//! A partition counts as failed when a worker's note says so (unless it is stored scored
//! since: the note is stale), or when the collector marked it failed and no retry of it is
//! under way. Either word suffices: a lost note does not hide a failure the collector stored.

use std::collections::BTreeSet;

use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest};
use fleet_storage::{BlobStore, StoreError};

use crate::blobs::Ledger;
use crate::budget::ErrorBudget;

/// Reasons read for a job's failures, at most: a model that cannot load fails every partition
/// the same way, and its thousands of notes need not all be read to say so.
const REASONS_READ: usize = 20;

/// Where a job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// The producer is publishing its partitions, or died doing so (no manifest yet).
    Submitting,
    /// Submitted in full; partitions are being scored, or wait for a worker or a collector.
    Running,
    /// More partitions failed than its error budget allows: it cannot complete until they
    /// are retried (`producer retry`).
    Stuck,
    /// Complete, every partition scored.
    Complete(Box<Summary>),
    /// Complete within its error budget, some partitions without scores.
    Partial(Box<Summary>),
    /// Dropped without results, with the reason.
    Cancelled(String),
}

impl JobState {
    /// A word for the state, as `producer status` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Submitting => "submitting",
            JobState::Running => "running",
            JobState::Stuck => "stuck",
            JobState::Complete(_) => "complete",
            JobState::Partial(_) => "partial",
            JobState::Cancelled(_) => "cancelled",
        }
    }

    /// The job's summary, once it is complete (whole or partial).
    pub fn summary(&self) -> Option<&Summary> {
        match self {
            JobState::Complete(summary) | JobState::Partial(summary) => Some(summary),
            _ => None,
        }
    }
}

/// A job's failed partitions, as far as the ledger knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    /// Partitions failed now.
    pub count: usize,
    /// Failed partitions a retry published again, whose new outcome is not stored yet.
    pub retrying: usize,
    /// The first failed partitions (up to a few dozen), each with its reason.
    pub reasons: Vec<(u32, String)>,
}

impl Failures {
    /// One line per distinct reason, with the partitions that failed for it (a model that
    /// cannot load fails every partition the same way), and how many more were not read.
    pub fn by_reason(&self) -> Vec<String> {
        let mut by_reason: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for (partition, reason) in &self.reasons {
            by_reason.entry(reason).or_default().push(*partition);
        }
        let mut lines: Vec<String> = by_reason
            .into_iter()
            .map(|(reason, partitions)| format!("partition {}: {reason}", abbreviate(&partitions)))
            .collect();
        let unread = self.count.saturating_sub(self.reasons.len());
        if unread > 0 {
            lines.push(format!("and {unread} more partitions"));
        }
        lines
    }
}

/// Partition numbers for a message: all of a few, the first few of many.
fn abbreviate(partitions: &[u32]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = partitions.iter().take(SHOWN).map(u32::to_string).collect();
    let mut text = shown.join(", ");
    if partitions.len() > SHOWN {
        text.push_str(&format!(" and {} more", partitions.len() - SHOWN));
    }
    text
}

/// One job as the container shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The job's id.
    pub job: String,
    /// Its manifest, once the producer wrote it.
    pub manifest: Option<Manifest>,
    /// Partitions the collector holds (it deletes them once the job is complete).
    pub stored: usize,
    /// Images in them, once the manifest says how many each holds.
    pub stored_images: Option<u64>,
    /// Its failed partitions.
    pub failures: Failures,
    /// Its error budget; the default once its plan is gone (complete or cancelled).
    pub budget: ErrorBudget,
    /// Where it stands.
    pub state: JobState,
}

/// Where the job of `ledger` stands, from `names`, the names of its blobs under
/// `jobs/<job>/`: the one derivation of a job's state.
pub fn read(ledger: &Ledger<'_>, names: &[String]) -> Result<Standing, StoreError> {
    let numbers = |folder: &str| -> BTreeSet<u32> {
        names
            .iter()
            .filter_map(|name| name.strip_prefix(folder))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    };
    let stored = numbers("partitions/");
    let marked = numbers("failed/");
    let retrying = numbers("retrying/");
    let notes = numbers("dead-letters/");
    let has = |name: &str| names.iter().any(|n| n == name);

    // A note of a partition stored scored since is stale; a marker of one being retried is
    // not a failure until the retry's outcome is stored.
    let noted = notes
        .iter()
        .filter(|n| !stored.contains(n) || marked.contains(n));
    let failed: BTreeSet<u32> = noted.chain(marked.difference(&retrying)).copied().collect();
    let mut failures = Failures {
        count: failed.len(),
        retrying: retrying.difference(&notes).count(),
        reasons: Vec::new(),
    };
    for &partition in failed.iter().take(REASONS_READ) {
        // Gone since the listing: retried or completed meanwhile.
        if let Some(reason) = ledger.failure_reason(partition)? {
            failures.reasons.push((partition, reason));
        }
    }

    let budget = match has("plan.json") {
        true => ledger.plan()?.map(|plan| ErrorBudget::of(&plan)),
        false => None,
    };
    let manifest = match has("manifest.json") {
        true => ledger.manifest()?,
        false => None,
    };
    let state = if let Some(summary) = ledger.summary()? {
        match summary.partial {
            Some(_) => JobState::Partial(Box::new(summary)),
            None => JobState::Complete(Box::new(summary)),
        }
    } else if let Some(reason) = has("cancelled")
        .then(|| ledger.cancellation())
        .transpose()?
        .flatten()
    {
        JobState::Cancelled(reason)
    } else if !budget.unwrap_or_default().allows(failures.count) {
        JobState::Stuck
    } else if manifest.is_some() {
        JobState::Running
    } else {
        JobState::Submitting
    };
    let stored_images = (manifest.as_ref()).map(|m| {
        (stored.iter())
            .map(|&p| u64::from(m.partition_images(p)))
            .sum()
    });
    Ok(Standing {
        job: ledger.job().to_owned(),
        manifest,
        stored: stored.len(),
        stored_images,
        failures,
        budget: budget.unwrap_or_default(),
        state,
    })
}

impl Standing {
    /// Partitions in: all of them once complete, else those stored, of the manifest's count.
    pub fn progress(&self) -> String {
        match (self.state.summary(), &self.manifest) {
            (Some(summary), _) => format!("{0}/{0}", summary.partitions),
            (None, Some(manifest)) => format!("{}/{}", self.stored, manifest.partitions),
            (None, None) => format!("{}/?", self.stored),
        }
    }
}

impl Ledger<'_> {
    /// Where the job stands, read from its blobs; `None` when the container has nothing of it.
    pub fn standing(&self) -> Result<Option<Standing>, StoreError> {
        let prefix = job::job_prefix(self.job());
        let names: Vec<String> = self
            .store()
            .list(&prefix)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        read(self, &names).map(Some)
    }
}

/// Where every job of the container stands, oldest first (job ids sort by submission time):
/// one listing of `jobs/`, then each job's few blobs.
pub fn all(store: &dyn BlobStore) -> Result<Vec<Standing>, StoreError> {
    let mut jobs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for key in store.list(job::JOBS_PREFIX)? {
        if let Some((job, rest)) = key
            .strip_prefix(job::JOBS_PREFIX)
            .and_then(|k| k.split_once('/'))
        {
            jobs.entry(job.to_owned())
                .or_default()
                .push(rest.to_owned());
        }
    }
    jobs.iter()
        .map(|(job, names)| read(&Ledger::new(store, job), names))
        .collect()
}
