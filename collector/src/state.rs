//! Per-job state of the collector, and what it writes to the container.
//!
//! A collector takes a job in once: the first time it sees it (after it starts, or after its
//! subscription to the results queue was renewed, when another collector may have stored
//! results meanwhile) it reads the job's plan, its recorded seal and every partition stored so
//! far, through the job's [`Ledger`]. From then on a result costs the same few store operations
//! whatever the job's size: its Parquet file, its block of `scores.csv` and its durable copy
//! are written, and its counts go into the job's [`Tally`]. Nothing of its rows stays in
//! memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::results::{self, Tally, parquet, report, rows};
use fleet_ledger::{ErrorBudget, Ledger};
use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest, Plan, files, now_ms};
use fleet_protocol::message::{Cancelled, ResultMessage, Scored, Sealed};
use fleet_service::errors::Chain;
use fleet_spec::ModelSpec;
use fleet_storage::{BlobStore, Containers, ErrorKind, StoreError};

use crate::Event;

/// Deletions run at once when a job's intermediate blobs are tidied up.
const DELETE_THREADS: usize = 8;

/// Which partitions of a job are stored: one bit each.
#[derive(Debug, Default)]
struct Stored {
    words: Vec<u64>,
    count: u32,
}

impl Stored {
    fn contains(&self, partition: u32) -> bool {
        let (word, bit) = (partition as usize / 64, partition % 64);
        self.words.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn insert(&mut self, partition: u32) {
        let (word, bit) = (partition as usize / 64, partition % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) == 0 {
            self.words[word] |= 1 << bit;
            self.count += 1;
        }
    }

    fn remove(&mut self, partition: u32) {
        if self.contains(partition) {
            self.words[partition as usize / 64] &= !(1 << (partition % 64));
            self.count -= 1;
        }
    }

    /// The partitions held, in order.
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| i as u32 * 64 + bit)
        })
    }

    /// Whether the stored partitions are exactly `0..partitions`.
    fn are_all_of(&self, partitions: u32) -> bool {
        let highest = (self.words.iter().enumerate().rev())
            .find(|(_, word)| **word != 0)
            .map(|(i, word)| i as u32 * 64 + 63 - word.leading_zeros());
        self.count == partitions && highest.is_none_or(|h| h < partitions)
    }
}

/// What a collector holds of one open job.
#[derive(Debug)]
struct OpenJob {
    plan: Plan,
    /// Every partition stored, scored or failed.
    stored: Stored,
    /// The stored partitions that failed (dead-lettered: rows with the reason, no scores).
    /// A scored copy replaces a failed one (`producer retry`), so they are counted only when
    /// the job completes, read back then: at most the job's error budget of them.
    failed: Stored,
    sealed: Option<Sealed>,
    /// The scored partitions' counts.
    tally: Tally,
}

impl OpenJob {
    /// Counts a stored copy in, with its vectors blob when it has one.
    fn count(&mut self, scored: &Scored, vectors: Option<&[u8]>) {
        match scored.failed {
            Some(_) => self.failed.insert(scored.partition),
            None => self.tally.add(scored, vectors),
        }
        self.stored.insert(scored.partition);
    }

    /// The vectors blob of stored copy `scored`, when the job's rows carry vectors and the
    /// worker wrote them.
    fn vectors(&self, ledger: &Ledger<'_>, scored: &Scored) -> Result<Option<Vec<u8>>, StoreError> {
        if self.plan.vectors.is_empty() || !scored.vectors {
            return Ok(None);
        }
        let blob = ledger.vectors(
            scored.partition,
            scored.scores.len(),
            self.plan.vector_bytes(),
        )?;
        Ok(Some(blob))
    }
}

/// `scored` as the job's plan has it: scored by each of its models. One scored by another
/// number of models (a worker of another release) cannot be written in the job's columns: it
/// stands as a failed partition, with the reason, for the error budget and `producer retry`.
fn of_the_plan(plan: &Plan, mut scored: Scored) -> Scored {
    let models = scored.more.len() + 1;
    if models == plan.model_count() {
        return scored;
    }
    let reason = format!(
        "the worker's result holds the scores of {models} models, and the job has {}: a worker \
         of another release? Upgrade the fleet to one release and run `producer retry`",
        plan.model_count()
    );
    tracing::error!(job = %scored.job, partition = scored.partition, %reason, "result not of the job's plan");
    for score in &mut scored.scores {
        score.top.clear();
        score.tags.clear();
        score.scored = false;
        score.error = Some(format!("partition not scored: {reason}"));
    }
    scored.more = vec![scored.scores.clone(); plan.model_count() - 1];
    scored.model_ms.clear();
    scored.thumbnails.clear();
    scored.vectors = false;
    scored.failed = Some(reason);
    scored
}

/// What a copy of a partition arriving does to the job.
enum Arrival {
    /// The partition's first copy.
    First,
    /// A scored copy of a partition stored failed: it was retried, and replaces the failed
    /// copy.
    Scored,
    /// A failed copy of a partition stored failed, from the retry published since: its
    /// reason is the partition's now.
    FailedAgain,
    /// Another copy of a partition stored: a redelivery, or a second worker's. It changes
    /// nothing.
    Again,
}

/// The jobs of every container a collector serves: each container's in its own [`Jobs`],
/// made when its first message comes.
#[derive(Debug)]
pub struct Served {
    containers: Arc<Containers>,
    by_container: HashMap<String, Jobs>,
}

impl Served {
    /// No job yet, of any of `containers`.
    pub fn new(containers: Arc<Containers>) -> Self {
        Self {
            containers,
            by_container: HashMap::new(),
        }
    }

    /// Applies one message to the jobs of its container ([`Jobs::handle`]). A container not
    /// served, or not there, is refused ([`Containers::refuses`]) before anything is stored.
    pub fn handle(&mut self, message: ResultMessage) -> Result<Vec<Event>, StoreError> {
        let container = message.container();
        if !self.by_container.contains_key(container) {
            let store = self.containers.get(container)?;
            self.by_container
                .insert(container.to_owned(), Jobs::new(store));
        }
        let jobs = (self.by_container.get_mut(container)).expect("made above");
        jobs.handle(message)
    }

    /// Jobs held open, in every container.
    pub fn open_jobs(&self) -> usize {
        self.by_container.values().map(Jobs::open_jobs).sum()
    }

    /// [`Jobs::forget`], in every container.
    pub fn forget(&mut self) {
        self.by_container.values_mut().for_each(Jobs::forget);
    }

    /// Whether a container has completed jobs to tidy up.
    pub fn has_completed(&self) -> bool {
        self.by_container.values().any(Jobs::has_completed)
    }

    /// [`Jobs::tidy_up_completed`], in every container.
    pub fn tidy_up_completed(&mut self) -> Vec<Event> {
        (self.by_container.values_mut())
            .flat_map(Jobs::tidy_up_completed)
            .collect()
    }

    /// [`Jobs::sweep`], in every container; the first failure is returned after every
    /// container was swept.
    pub fn sweep(&mut self) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let mut failed = None;
        for jobs in self.by_container.values_mut() {
            match jobs.sweep() {
                Ok(more) => events.extend(more),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(events), Err)
    }
}

/// The jobs a collector holds open in one container, and those it saw finish.
#[derive(Debug)]
pub struct Jobs {
    store: Arc<dyn BlobStore>,
    open: HashMap<String, OpenJob>,
    /// Jobs completed or cancelled since this collector started.
    finished: HashSet<String>,
    /// Jobs completed whose intermediate blobs are still to delete.
    completed: Vec<String>,
}

impl Jobs {
    /// No job yet; each is taken in from `store` when its first message comes.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Self {
            store,
            open: HashMap::new(),
            finished: HashSet::new(),
            completed: Vec::new(),
        }
    }

    fn ledger<'a>(&'a self, job: &'a str) -> Ledger<'a> {
        Ledger::new(self.store.as_ref(), job)
    }

    /// Jobs held open (seen, neither complete nor cancelled).
    pub fn open_jobs(&self) -> usize {
        self.open.len()
    }

    /// Forgets the open jobs: to be called when the subscription to the results queue was
    /// renewed, since another collector may have stored results of them meanwhile. Each is
    /// taken in again from the container when its next message comes.
    pub fn forget(&mut self) {
        if !self.open.is_empty() {
            tracing::info!(
                jobs = self.open.len(),
                "subscription renewed: open jobs will be taken in again from the container"
            );
        }
        self.open.clear();
    }

    /// Applies one message. Returns only once everything it implies is stored; on error nothing
    /// in memory has changed and the same message can be applied again. A job whose own state
    /// in the container cannot be read (a plan missing or corrupt, a stored partition that
    /// does not decode) can never complete: its scores were acknowledged long ago, and no one
    /// will send them again. It is cancelled with the reason, where `producer --wait` looks,
    /// rather than waited for forever.
    pub fn handle(&mut self, message: ResultMessage) -> Result<Vec<Event>, StoreError> {
        let job = message.job().to_owned();
        match self.apply(message) {
            Err(Unusable::Store(StoreError::Corrupt {
                what, key, source, ..
            })) => {
                self.open.remove(&job);
                // Recorded in the job's own container: naming the container adds nothing.
                let why = format!("{what} {key} cannot be read: {}", Chain(source.as_ref()));
                self.cannot_complete(&job, why)
            }
            Err(Unusable::Store(e)) => Err(e),
            Err(Unusable::NoPlan(key)) => {
                self.cannot_complete(&job, format!("its plan {key} is missing"))
            }
            Ok(events) => Ok(events),
        }
    }

    fn cannot_complete(&mut self, job: &str, why: String) -> Result<Vec<Event>, StoreError> {
        let reason = format!("{why}; its scores are lost: submit the job again");
        tracing::error!(%job, %reason, "job cannot complete");
        Ok(vec![self.cancel(job, reason)?])
    }

    fn apply(&mut self, message: ResultMessage) -> Result<Vec<Event>, Unusable> {
        let job = message.job().to_owned();
        if !self.open.contains_key(&job) && self.is_finished(&job)? {
            tracing::debug!(%job, "result for a finished job: ignored");
            return Ok(vec![]);
        }
        if let ResultMessage::Cancelled(Cancelled { job, reason, .. }) = message {
            tracing::warn!(%job, %reason, "job cancelled by its producer");
            return Ok(vec![self.cancel(&job, reason)?]);
        }
        if !self.open.contains_key(&job) {
            let state = self.take_in(&job)?;
            self.open.insert(job.clone(), state);
        }
        let mut events = Vec::new();
        match message {
            ResultMessage::Scored(scored) => events.extend(self.store_partition(*scored)?),
            ResultMessage::Sealed(sealed) => {
                self.ledger(&job).record_seal(&sealed)?;
                self.open.get_mut(&job).expect("taken in above").sealed = Some(sealed);
            }
            ResultMessage::Cancelled(_) => unreachable!("handled above"),
        }
        if let Some(summary) = self.complete_if_ready(&job)? {
            events.push(Event::Completed(Box::new(summary)));
        }
        Ok(events)
    }

    /// Whether jobs completed since the last [`Jobs::tidy_up_completed`] wait for it.
    pub fn has_completed(&self) -> bool {
        !self.completed.is_empty()
    }

    /// Deletes the intermediate blobs of the jobs completed since the last call: one delete per
    /// partition, run after the result that completed the job was acknowledged, so that its
    /// results never wait on it. Failing loses nothing (the results are written): it is logged,
    /// and those blobs stay.
    pub fn tidy_up_completed(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for job in std::mem::take(&mut self.completed) {
            let started = Instant::now();
            match self.tidy_up(&job, false) {
                Ok(blobs) => events.push(Event::TidiedUp {
                    job,
                    blobs,
                    seconds: started.elapsed().as_secs_f64(),
                }),
                Err(e) => {
                    tracing::warn!(%job, error = %Chain(&e), "could not delete the job's intermediate blobs")
                }
            }
        }
        events
    }

    /// Cancels the open jobs that their producer marked cancelled in the container alone (it
    /// could not tell the collector: the broker was gone). No message of such a job may ever
    /// come again, and without this its Parquet files and stored partitions would stay. One
    /// read per open job, whatever the number of results.
    pub fn sweep(&mut self) -> Result<Vec<Event>, StoreError> {
        let open: Vec<String> = self.open.keys().cloned().collect();
        let mut events = Vec::new();
        for job in open {
            if let Some(reason) = self.ledger(&job).cancellation()? {
                tracing::warn!(%job, %reason, "job marked cancelled by its producer");
                events.push(self.cancel(&job, reason)?);
            }
        }
        Ok(events)
    }

    /// Whether the job was completed or cancelled, here or by another collector (one active
    /// before a failover to this one, or a second one started by mistake): the container says.
    fn is_finished(&mut self, job: &str) -> Result<bool, StoreError> {
        if self.finished.contains(job) {
            return Ok(true);
        }
        let finished = self.ledger(job).is_finished()?;
        if finished {
            self.finished.insert(job.to_owned());
        }
        Ok(finished)
    }

    /// What a copy of partition `scored` does to the job: only a failed partition's copies
    /// need a look at the container (at most the job's budget of them, and their retries).
    fn arrival(&self, state: &OpenJob, scored: &Scored) -> Result<Arrival, StoreError> {
        let partition = scored.partition;
        if !state.stored.contains(partition) {
            return Ok(Arrival::First);
        }
        if !state.failed.contains(partition) {
            return Ok(Arrival::Again);
        }
        if scored.failed.is_none() {
            return Ok(Arrival::Scored);
        }
        // A failed copy replaces the failed one only when it comes from the retry marked
        // since: a redelivery of the first failure must not end the retry.
        let retried = self.ledger(&scored.job).retrying_since(partition)?;
        Ok(match retried {
            Some(since) if scored.published_at_ms >= since => Arrival::FailedAgain,
            _ => Arrival::Again,
        })
    }

    /// Writes the partition's rows (its Parquet file and its block of `scores.csv`), then its
    /// durable copy, which marks it stored; then counts it. A partition already stored is a
    /// redelivery, or a second worker's copy: it changes nothing, unless it was stored failed
    /// and this copy comes from a retry: then this copy replaces it.
    fn store_partition(&mut self, scored: Scored) -> Result<Option<Event>, StoreError> {
        let job = scored.job.clone();
        // Checked on receipt (`Scored::validate`): a name per score, a partition number below
        // MAX_PARTITIONS.
        let partition = scored.partition;
        let state = self.open.get(&job).expect("taken in before");
        let scored = of_the_plan(&state.plan, scored);
        let arrival = self.arrival(state, &scored)?;
        if let Arrival::Again = arrival {
            tracing::debug!(%job, partition, "partition already stored: ignored");
            return Ok(None);
        }
        // Its vectors, which travel through the store, go into its Parquet file.
        let vectors = state.vectors(&self.ledger(&job), &scored)?;
        let part = parquet::part(&state.plan, &scored, vectors.as_deref())
            .expect("a validated partition's rows are valid Parquet for the job's schema");
        let rows = rows::rows(&state.plan, &scored);
        // The two row files at once (one round trip to the store instead of two), then the
        // durable copy, which says both are there.
        let store = self.store.as_ref();
        let (parquet_written, rows_staged) = std::thread::scope(|scope| {
            let parquet = scope.spawn(|| store.put(&job::parquet_part_key(&job, partition), &part));
            let staged = store.stage_block(
                &job::result_key(&job, files::SCORES),
                partition + 1,
                rows.as_bytes(),
            );
            (parquet.join().expect("a store call does not panic"), staged)
        });
        parquet_written?;
        rows_staged?;
        let ledger = Ledger::new(store, &job);
        ledger.store_partition(&scored)?;
        let state = self.open.get_mut(&job).expect("taken in before");
        match arrival {
            Arrival::Scored => {
                tracing::info!(%job, partition, "a failed partition, retried, is scored");
                ledger.clear_failed(partition)?;
                state.failed.remove(partition);
            }
            Arrival::FailedAgain => {
                let reason = scored.failed.as_deref().unwrap_or_default();
                tracing::warn!(%job, partition, %reason, "a failed partition, retried, failed again");
                ledger.retry_failed(partition, reason)?;
            }
            Arrival::First | Arrival::Again => {}
        }
        if !matches!(arrival, Arrival::FailedAgain) {
            state.count(&scored, vectors.as_deref());
        }
        Ok(Some(Event::Stored {
            job,
            partition,
            images: scored.scores.len() as u64,
            failed: scored.failed,
        }))
    }

    /// Drops the job: the reason where `producer --wait` and a restarted collector see it, its
    /// stored partitions and Parquet files deleted, no result files.
    fn cancel(&mut self, job: &str, reason: String) -> Result<Event, StoreError> {
        self.ledger(job).mark_cancelled(&reason)?;
        self.tidy_up(job, true)?;
        self.open.remove(job);
        self.finished.insert(job.to_owned());
        Ok(Event::Cancelled {
            job: job.to_owned(),
            reason,
        })
    }

    /// Reads what the container holds of the job: its plan, the seal a collector recorded, and
    /// every partition stored so far (before a restart, or by another collector while this one
    /// was a standby or cut off), counted into a new tally one at a time.
    fn take_in(&self, job: &str) -> Result<OpenJob, Unusable> {
        let ledger = self.ledger(job);
        let plan = ledger
            .plan()?
            .ok_or_else(|| Unusable::NoPlan(job::plan_key(job)))?;
        let mut state = OpenJob {
            tally: Tally::new(&plan),
            plan,
            stored: Stored::default(),
            failed: Stored::default(),
            sealed: ledger.seal()?,
        };
        // Each stored partition is read once, its vectors too (the report's projection samples
        // them).
        let read = ledger.for_each_stored(|scored| {
            let vectors = state.vectors(&ledger, &scored)?;
            state.count(&scored, vectors.as_deref());
            Ok(())
        })?;
        if read > 0 {
            tracing::info!(%job, partitions = state.stored.count, "took in stored partitions (from before a restart, or another collector's)");
        }
        Ok(state)
    }

    /// Writes the result files once every partition of the sealed job is stored: `scores.csv`
    /// committed from its blocks, the confusion files, the report, and `summary.json` last.
    /// Safe to repeat after a failure part-way.
    fn complete_if_ready(&mut self, job: &str) -> Result<Option<Summary>, StoreError> {
        let Some(state) = self.open.get(job) else {
            return Ok(None);
        };
        let Some(sealed) = &state.sealed else {
            return Ok(None);
        };
        if !state.stored.are_all_of(sealed.partitions) {
            return Ok(None);
        }
        // Over its error budget a job does not complete: it stays as `producer status` shows
        // it, stuck on its failed partitions, its Parquet files readable, until they are
        // retried.
        if !ErrorBudget::of(&state.plan).allows(state.failed.count as usize) {
            return Ok(None);
        }
        let with_failed;
        let tally = if state.failed.count == 0 {
            &state.tally
        } else {
            with_failed = self.with_failed(job, state)?;
            &with_failed
        };
        let writing = Instant::now();
        let scores = job::result_key(job, files::SCORES);
        self.store
            .stage_block(&scores, 0, rows::header(&state.plan).as_bytes())?;
        let blocks: Vec<u32> = (0..=sealed.partitions).collect();
        self.store.commit_blocks(&scores, &blocks)?;
        let mut files = results::finish(tally, &state.plan, sealed, now_ms());
        let ledger = self.ledger(job);
        let manifest = self.manifest(&ledger)?;
        files.summary.incremental = manifest.as_ref().and_then(|m| m.incremental.clone());
        if files.summary.images != sealed.images {
            tracing::error!(%job, expected = sealed.images, got = files.summary.images, "image count differs from the manifest");
        }
        let put = |name: &str, bytes: &[u8]| self.store.put(&job::result_key(job, name), bytes);
        if let Some(csv) = &files.confusion_csv {
            put(files::CONFUSION_CSV, csv.as_bytes())?;
        }
        if let Some(csv) = &files.confused_pairs_csv {
            put(files::CONFUSED_PAIRS, csv.as_bytes())?;
        }
        if let Some(png) = &files.confusion_png {
            put(files::CONFUSION_PNG, png)?;
        }
        for (name, csv) in &files.agreement_csvs {
            put(name, csv.as_bytes())?;
        }
        // The producer drew the sample grid while reading the tarball; it joins the results now.
        if let Some(png) = ledger.samples()? {
            put(files::SAMPLES_PNG, &png)?;
        }
        files.summary.timings.writing_seconds = writing.elapsed().as_secs_f64();
        let report = self.report(manifest.as_ref(), &files, tally)?;
        put(files::REPORT, report.as_bytes())?;
        let summary =
            serde_json::to_vec_pretty(&files.summary).expect("a summary always serializes");
        put(files::SUMMARY, &summary)?;
        self.open.remove(job);
        self.finished.insert(job.to_owned());
        // The result files now hold these rows: the intermediate blobs go once the message that
        // completed the job is acknowledged (see `tidy_up_completed`).
        self.completed.push(job.to_owned());
        Ok(Some(files.summary))
    }

    /// The job's manifest, which adds to the report; `None` when it is gone or unreadable (a
    /// job from an older release): the job completes without it.
    fn manifest(&self, ledger: &Ledger<'_>) -> Result<Option<Manifest>, StoreError> {
        match ledger.manifest() {
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!(job = ledger.job(), error = %Chain(&e), "the report goes without the job's manifest");
                Ok(None)
            }
            read => read,
        }
    }

    /// The job's tally with its failed partitions counted in, read back from the container.
    fn with_failed(&self, job: &str, state: &OpenJob) -> Result<Tally, StoreError> {
        let mut tally = state.tally.clone();
        let ledger = self.ledger(job);
        for partition in state.failed.iter() {
            // It was read or written by this collector when the job was taken in.
            let scored = ledger.stored_partition(partition)?.ok_or_else(|| {
                StoreError::corrupt(
                    self.store.as_ref(),
                    &job::partition_key(job, partition),
                    "stored partition",
                    "it was stored, and is gone",
                )
            })?;
            tally.add(&scored, None);
        }
        Ok(tally)
    }

    /// The job's `report.html`. The manifest and the model's spec add to it; either may be
    /// gone (a job from an older release, a model deleted since) without failing the job.
    fn report(
        &self,
        manifest: Option<&Manifest>,
        files: &results::Finished,
        tally: &Tally,
    ) -> Result<String, StoreError> {
        let provenance = match manifest {
            Some(manifest) => self
                .store
                .get_if_exists(&job::spec_key(&manifest.model))?
                .and_then(|bytes| ModelSpec::provenance_from_json(&bytes))
                // Restaged since with another model: its provenance is not this job's.
                .filter(|provenance| provenance.onnx_sha256 == manifest.model_sha256),
            None => None,
        };
        Ok(report::render(&report::Report {
            summary: &files.summary,
            tally,
            manifest,
            provenance: provenance.as_ref(),
            confusion_png: files.confusion_png.as_deref(),
        }))
    }

    /// Deletes the job's intermediate blobs (see [`Ledger::intermediate_blobs`]) and what was
    /// staged of `scores.csv`; for a cancelled job, its Parquet files too.
    fn tidy_up(&self, job: &str, cancelled: bool) -> Result<u64, StoreError> {
        let mut keys = self.ledger(job).intermediate_blobs()?;
        if cancelled {
            keys.extend(self.store.list(&job::parquet_prefix(job))?);
        }
        fleet_service::concurrent::try_for_each(keys.iter(), DELETE_THREADS, |key| {
            self.store.delete(key)
        })?;
        self.store
            .discard_blocks(&job::result_key(job, files::SCORES))?;
        Ok(keys.len() as u64)
    }
}

/// Why a job's message cannot be applied.
#[derive(Debug)]
enum Unusable {
    /// The store failed, or holds something of the job that does not read.
    Store(StoreError),
    /// The job has no plan: its producer never wrote one, or it was deleted.
    NoPlan(String),
}

impl From<StoreError> for Unusable {
    fn from(e: StoreError) -> Self {
        Unusable::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::Summary;
    use fleet_protocol::job::DatasetKind;
    use fleet_protocol::message::Score;
    use fleet_storage::local::LocalStore;

    fn scored(partition: u32) -> ResultMessage {
        ResultMessage::Scored(Box::new(Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
            job: "j".into(),
            partition,
            batch: "b".into(),
            first_index: u64::from(partition) * 2,
            filenames: vec!["a.png".into(), "b.png".into()],
            scores: (0..2)
                .map(|i| Score {
                    label: Some(i),
                    top: vec![(0, 0.9)],
                    error: None,
                    scored: true,
                    tags: Vec::new(),
                    true_tags: None,
                })
                .collect(),
            worker: "w".into(),
            inference_ms: 1.0,
            preprocess_ms: 1.0,
            published_at_ms: 1,
            started_at_ms: 2,
            finished_at_ms: 3,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: Vec::new(),
            failed: None,
            vectors: false,
        }))
    }

    fn sealed() -> ResultMessage {
        ResultMessage::Sealed(Sealed {
            container: "ctr".into(),
            job: "j".into(),
            partitions: 3,
            images: 6,
            labelled: true,
            submitted_at_ms: 0,
            published_at_ms: 1,
        })
    }

    fn completed(events: &[Event]) -> Option<&Summary> {
        events.iter().find_map(|e| match e {
            Event::Completed(summary) => Some(summary.as_ref()),
            _ => None,
        })
    }

    /// Two collectors over one container, as after a failover from one to the other and back.
    fn two_collectors() -> (tempfile::TempDir, Jobs, Jobs) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            || -> Arc<dyn BlobStore> { Arc::new(LocalStore::create(dir.path(), "ctr").unwrap()) };
        let (a, b) = (Jobs::new(store()), Jobs::new(store()));
        // What the producer writes before it publishes a partition.
        let plan = Plan {
            models: Vec::new(),
            job: "j".into(),
            classes: vec!["zero".into(), "one".into()],
            top_k: 1,
            several_batches: false,
            max_failed_partitions: 0,
            vectors: Vec::new(),
            multi_label: None,
        };
        a.store
            .put(&job::plan_key("j"), &serde_json::to_vec(&plan).unwrap())
            .unwrap();
        (dir, a, b)
    }

    /// The job's rows as `scores.csv` has them, read back from the Parquet files.
    fn parquet_rows(store: &dyn BlobStore) -> Vec<String> {
        use ::parquet::file::reader::{FileReader, SerializedFileReader};
        use ::parquet::record::RowAccessor;
        let mut rows = Vec::new();
        for key in store.list(&job::parquet_prefix("j")).unwrap() {
            let bytes = bytes::Bytes::from(store.get(&key).unwrap());
            let reader = SerializedFileReader::new(bytes).unwrap();
            for row in reader.get_row_iter(None).unwrap() {
                let row = row.unwrap();
                rows.push(format!(
                    "{},{}",
                    row.get_long(0).unwrap(),
                    row.get_string(1).unwrap()
                ));
            }
        }
        rows
    }

    #[test]
    fn a_collector_active_again_takes_in_what_another_stored() {
        let (_dir, mut a, mut b) = two_collectors();
        assert!(a.handle(scored(0)).unwrap().len() == 1);
        a.handle(sealed()).unwrap();
        // A is cut off; B is active for one partition, then goes away.
        b.handle(scored(1)).unwrap();
        // A is active again, on a new subscription: the last partition completes the job with
        // B's rows in it.
        a.forget();
        let events = a.handle(scored(2)).unwrap();
        let summary = completed(&events).expect("the job completes");
        assert_eq!((summary.images, summary.partitions), (6, 3));
        assert!(matches!(
            a.tidy_up_completed()[..],
            [Event::TidiedUp { blobs: 6, .. }]
        ));
        let store = &a.store;
        let scores =
            String::from_utf8(store.get(&job::result_key("j", files::SCORES)).unwrap()).unwrap();
        assert_eq!(scores.lines().count(), 1 + 6, "{scores}");
        let indices: Vec<&str> = scores
            .lines()
            .skip(1)
            .map(|l| &l[..l.find(',').unwrap()])
            .collect();
        assert_eq!(indices, ["0", "1", "2", "3", "4", "5"]);
        assert!(store.list(&job::partitions_prefix("j")).unwrap().is_empty());
        assert!(!store.exists(&job::plan_key("j")).unwrap());
        assert_eq!(
            parquet_rows(store.as_ref()),
            [
                "0,a.png", "1,b.png", "2,a.png", "3,b.png", "4,a.png", "5,b.png"
            ]
        );
    }

    #[test]
    fn partitions_in_any_order_and_twice_give_each_row_once() {
        let (_dir, mut a, _) = two_collectors();
        for message in [scored(2), scored(0), scored(2), sealed(), scored(0)] {
            assert!(completed(&a.handle(message).unwrap()).is_none());
        }
        let events = a.handle(scored(1)).unwrap();
        let summary = completed(&events).expect("the job completes");
        assert_eq!((summary.images, summary.partitions), (6, 3));
        let scores =
            String::from_utf8(a.store.get(&job::result_key("j", files::SCORES)).unwrap()).unwrap();
        let indices: Vec<&str> = scores
            .lines()
            .skip(1)
            .map(|l| &l[..l.find(',').unwrap()])
            .collect();
        assert_eq!(indices, ["0", "1", "2", "3", "4", "5"], "{scores}");
        assert_eq!(parquet_rows(a.store.as_ref()).len(), 6);
    }

    #[test]
    fn a_job_marked_cancelled_in_the_container_alone_is_dropped_by_the_sweep() {
        let (_dir, mut a, _) = two_collectors();
        a.handle(scored(0)).unwrap();
        assert!(a.sweep().unwrap().is_empty(), "nothing to sweep yet");
        assert!(!a.store.list(&job::parquet_prefix("j")).unwrap().is_empty());
        a.store
            .put(&job::cancelled_key("j"), b"the seal could not be published")
            .unwrap();
        let events = a.sweep().unwrap();
        assert!(
            matches!(&events[..], [Event::Cancelled { reason, .. }] if reason == "the seal could not be published"),
            "{events:?}"
        );
        assert!(a.store.list(&job::result_key("j", "")).unwrap().is_empty());
        assert!(
            a.store
                .list(&job::partitions_prefix("j"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(a.open_jobs(), 0);
    }

    /// Partition 1 as a worker sends it when it gave up on it.
    fn failed() -> ResultMessage {
        let ResultMessage::Scored(mut scored) = scored(1) else {
            unreachable!()
        };
        scored.failed = Some("the blob store refused it".into());
        for score in &mut scored.scores {
            score.top.clear();
            score.error = Some("partition not scored: the blob store refused it".into());
        }
        ResultMessage::Scored(scored)
    }

    #[test]
    fn failed_partitions_within_the_budget_complete_the_job_partial() {
        for budget in [0, 1] {
            let (_dir, mut a, _) = two_collectors();
            let plan = Plan {
                models: Vec::new(),
                job: "j".into(),
                classes: vec!["zero".into(), "one".into()],
                top_k: 1,
                several_batches: false,
                max_failed_partitions: budget,
                vectors: Vec::new(),
                multi_label: None,
            };
            a.store
                .put(&job::plan_key("j"), &serde_json::to_vec(&plan).unwrap())
                .unwrap();
            for message in [scored(0), failed(), sealed()] {
                assert!(completed(&a.handle(message).unwrap()).is_none());
            }
            let events = a.handle(scored(2)).unwrap();
            if budget == 0 {
                assert!(completed(&events).is_none(), "completed over its budget");
                assert!(
                    !a.store
                        .exists(&job::result_key("j", files::SCORES))
                        .unwrap()
                );
                // What was scored can be read meanwhile.
                assert_eq!(parquet_rows(a.store.as_ref()).len(), 6);
                continue;
            }
            let summary = completed(&events).expect("the job completes partial");
            let partial = summary.partial.as_ref().expect("partial");
            assert_eq!((partial.failed_partitions, partial.images), (1, 2));
            assert_eq!(partial.reasons, ["the blob store refused it"]);
            assert_eq!(
                (summary.images, summary.scored, summary.unreadable),
                (6, 4, 2)
            );
            assert!(
                summary
                    .accuracy_line()
                    .contains("partial: 2 images in 1 failed partitions")
            );
            let scores =
                String::from_utf8(a.store.get(&job::result_key("j", files::SCORES)).unwrap())
                    .unwrap();
            let failed_rows: Vec<&str> = scores
                .lines()
                .filter(|l| l.ends_with("partition not scored: the blob store refused it"))
                .collect();
            assert_eq!(failed_rows.len(), 2, "{scores}");
            assert!(failed_rows[0].starts_with("2,a.png,0,,zero,,,"), "{scores}");
            let report =
                String::from_utf8(a.store.get(&job::result_key("j", files::REPORT)).unwrap())
                    .unwrap();
            assert!(report.contains("id=\"partial\""));
        }
    }

    #[test]
    fn a_retried_partition_scored_replaces_its_failed_copy() {
        let (_dir, mut a, mut b) = two_collectors();
        for message in [scored(0), failed(), sealed(), scored(2)] {
            assert!(completed(&a.handle(message).unwrap()).is_none());
        }
        // Marked for `producer retry`, and stuck over its budget of none.
        assert!(a.store.exists(&job::failed_key("j", 1)).unwrap());
        // Another collector takes the job in, failed partition included: a second failed
        // copy changes nothing.
        assert!(b.handle(failed()).unwrap().is_empty());
        // The partition retried and scored: the job completes whole.
        let events = b.handle(scored(1)).unwrap();
        let summary = completed(&events).expect("the job completes");
        assert!(summary.partial.is_none(), "{:?}", summary.partial);
        assert_eq!(
            (summary.images, summary.scored, summary.unreadable),
            (6, 6, 0)
        );
        let scores =
            String::from_utf8(b.store.get(&job::result_key("j", files::SCORES)).unwrap()).unwrap();
        assert!(!scores.contains("partition not scored"), "{scores}");
        assert_eq!(scores.lines().count(), 1 + 6, "{scores}");
        assert_eq!(parquet_rows(b.store.as_ref()).len(), 6);
        assert!(!b.store.exists(&job::failed_key("j", 1)).unwrap());
        // A failed copy arriving late (another worker's) changes nothing either.
        assert!(b.handle(failed()).unwrap().is_empty());
    }

    #[test]
    fn a_retry_failing_again_replaces_the_failed_copy_and_a_late_first_failure_does_not() {
        let (_dir, mut a, _) = two_collectors();
        for message in [scored(0), failed(), sealed(), scored(2)] {
            assert!(completed(&a.handle(message).unwrap()).is_none());
        }
        let store = a.store.clone();
        let ledger = Ledger::new(store.as_ref(), "j");
        // `producer retry` marks the partition, then publishes it again.
        let since = ledger.mark_retrying(1).unwrap();
        // A redelivery of the first failure, published before the retry, ends nothing.
        assert!(a.handle(failed()).unwrap().is_empty());
        assert_eq!(ledger.retrying_since(1).unwrap(), Some(since));
        // The retry's copy fails again: it replaces the first, with its own reason.
        let ResultMessage::Scored(mut again) = failed() else {
            unreachable!()
        };
        again.published_at_ms = since;
        again.failed = Some("the disk is still away".into());
        for score in &mut again.scores {
            score.error = Some("partition not scored: the disk is still away".into());
        }
        let events = a.handle(ResultMessage::Scored(again)).unwrap();
        assert!(
            matches!(&events[..], [Event::Stored { failed: Some(reason), .. }] if reason == "the disk is still away"),
            "{events:?}"
        );
        assert_eq!(ledger.retrying_since(1).unwrap(), None);
        let standing = ledger.standing().unwrap().unwrap();
        assert_eq!(standing.state, fleet_ledger::JobState::Stuck);
        assert_eq!(
            standing.failures.reasons,
            [(1, "the disk is still away".to_owned())]
        );
        let copy = ledger.stored_partition(1).unwrap().unwrap();
        assert_eq!(copy.failed.as_deref(), Some("the disk is still away"));
        assert!(
            parquet_rows(a.store.as_ref()).len() == 6,
            "the rows were replaced, not added"
        );
    }

    #[test]
    fn a_job_without_its_plan_is_cancelled_with_the_reason() {
        let (_dir, mut a, _) = two_collectors();
        a.store.delete(&job::plan_key("j")).unwrap();
        let events = a.handle(scored(0)).unwrap();
        assert!(
            matches!(&events[..], [Event::Cancelled { reason, .. }] if reason.contains("jobs/j/plan.json is missing")),
            "{events:?}"
        );
    }

    #[test]
    fn an_unreadable_stored_partition_cancels_the_job_with_the_reason() {
        let (_dir, mut a, _) = two_collectors();
        a.store
            .put(&job::partition_key("j", 2), b"not a partition")
            .unwrap();
        let events = a.handle(sealed()).unwrap();
        assert!(
            events.iter().any(|e| matches!(e, Event::Cancelled { .. })),
            "{events:?}"
        );
        let reason = String::from_utf8(a.store.get(&job::cancelled_key("j")).unwrap()).unwrap();
        assert!(
            reason.contains("jobs/j/partitions/000002.bin cannot be read")
                && reason.contains("submit the job again"),
            "{reason}"
        );
        assert!(
            a.store
                .list(&job::partitions_prefix("j"))
                .unwrap()
                .is_empty()
        );
        // Late results change nothing.
        assert!(a.handle(scored(0)).unwrap().is_empty());
        assert!(
            !a.store
                .exists(&job::result_key("j", files::SUMMARY))
                .unwrap()
        );
    }

    #[test]
    fn a_manifest_without_a_seal_completes_nothing() {
        let (_dir, mut a, _) = two_collectors();
        // The producer wrote its manifest, then failed to publish the seal: it cancels the job,
        // and until the cancellation arrives every partition in changes nothing.
        let manifest = Manifest {
            more_models: Vec::new(),
            job: "j".into(),
            dataset: "d".into(),
            dataset_kind: DatasetKind::Images,
            labels: "none".into(),
            labelled_images: 0,
            model: "m".into(),
            model_sha256: "0".into(),
            classes: vec!["zero".into(), "one".into()],
            top_k: 1,
            partition_size: 2,
            partitions: 3,
            images: 6,
            batches: Vec::new(),
            submitted_at_ms: 0,
            published_at_ms: 1,
            incremental: None,
        };
        a.store
            .put(
                &job::manifest_key("j"),
                &serde_json::to_vec(&manifest).unwrap(),
            )
            .unwrap();
        for partition in 0..3 {
            assert!(completed(&a.handle(scored(partition)).unwrap()).is_none());
        }
        let events = a
            .handle(ResultMessage::Cancelled(Cancelled {
                container: "ctr".into(),
                job: "j".into(),
                reason: "the seal could not be published".into(),
            }))
            .unwrap();
        assert!(
            matches!(events[..], [Event::Cancelled { .. }]),
            "{events:?}"
        );
        assert!(a.store.list(&job::result_key("j", "")).unwrap().is_empty());
        assert!(a.store.list("jobs/j/partitions/").unwrap().is_empty());
    }

    #[test]
    fn a_restarted_collector_completes_with_the_recorded_seal() {
        let (_dir, mut a, mut b) = two_collectors();
        a.handle(scored(0)).unwrap();
        a.handle(sealed()).unwrap();
        a.handle(scored(1)).unwrap();
        // A dies; B starts with nothing in memory. The seal was acked by A: only its record
        // tells B how many partitions the job has.
        let events = b.handle(scored(2)).unwrap();
        let summary = completed(&events).expect("the job completes");
        assert_eq!((summary.images, summary.partitions), (6, 3));
        assert!(b.store.exists(&job::sealed_key("j")).unwrap());
        b.tidy_up_completed();
        assert!(!b.store.exists(&job::sealed_key("j")).unwrap());
    }

    #[test]
    fn a_job_completed_elsewhere_is_left_alone() {
        let (_dir, mut a, mut b) = two_collectors();
        a.handle(scored(0)).unwrap();
        a.handle(scored(1)).unwrap();
        b.handle(sealed()).unwrap();
        // B sees the seal (its own) and the two partitions A stored: it completes the job.
        let events = b.handle(scored(2)).unwrap();
        assert!(completed(&events).is_some());
        b.tidy_up_completed();
        // A redelivery reaching A afterwards, on its new subscription, changes nothing and
        // stores nothing.
        a.forget();
        assert!(a.handle(scored(1)).unwrap().is_empty());
        assert!(
            a.store
                .list(&job::partitions_prefix("j"))
                .unwrap()
                .is_empty()
        );
    }
}
