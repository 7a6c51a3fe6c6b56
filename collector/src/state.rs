//! Per-job state of the collector, kept durably in the container.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::results::{self, report};
use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest, files, now_ms};
use fleet_protocol::message::{self, Cancelled, ResultMessage, Scored, Sealed};
use fleet_spec::ModelSpec;
use fleet_storage::{BlobStore, StoreError};

use crate::Event;

#[derive(Debug, Default)]
struct JobState {
    partitions: BTreeMap<u32, Scored>,
    sealed: Option<Sealed>,
}

/// The jobs a collector holds open, and those it saw finish.
#[derive(Debug)]
pub struct Jobs {
    store: Arc<dyn BlobStore>,
    open: HashMap<String, JobState>,
    /// Jobs completed or cancelled since this collector started.
    finished: HashSet<String>,
}

impl Jobs {
    /// No job yet; each is taken in from `store` when its first message comes.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Self {
            store,
            open: HashMap::new(),
            finished: HashSet::new(),
        }
    }

    /// Jobs held open (seen, neither complete nor cancelled).
    pub fn open_jobs(&self) -> usize {
        self.open.len()
    }

    /// Applies one message. Returns only once everything it implies is stored; on error nothing
    /// in memory has changed and the same message can be applied again.
    pub fn handle(&mut self, message: ResultMessage) -> Result<Vec<Event>, StoreError> {
        let job = message.job().to_owned();
        if self.is_finished(&job)? {
            tracing::debug!(%job, "result for a finished job: ignored");
            return Ok(vec![]);
        }
        let mut events = Vec::new();
        match message {
            ResultMessage::Scored(scored) => {
                self.store.put(
                    &job::partition_key(&job, scored.partition),
                    &message::encode(&scored),
                )?;
                events.push(Event::Stored {
                    job: job.clone(),
                    images: scored.scores.len() as u64,
                });
                self.state(&job)?
                    .partitions
                    .insert(scored.partition, scored);
            }
            ResultMessage::Sealed(sealed) => {
                self.store
                    .put(&job::sealed_key(&job), &message::encode(&sealed))?;
                self.state(&job)?.sealed = Some(sealed);
            }
            ResultMessage::Cancelled(Cancelled { job, reason }) => {
                tracing::warn!(%job, %reason, "job cancelled by its producer");
                return Ok(vec![self.cancel(&job, reason)?]);
            }
        }
        if !self.complete_in_memory(&job)
            && let Some(unreadable) = self.catch_up(&job)?
        {
            // Its scores were acked long ago: no one will send them again. Say so, once, where
            // `producer --wait` looks, rather than wait for them forever.
            let reason = format!("{unreadable}; its scores are lost: submit the job again");
            tracing::error!(%job, %reason, "job cannot complete");
            events.push(self.cancel(&job, reason)?);
            return Ok(events);
        }
        if let Some(summary) = self.complete_if_ready(&job)? {
            events.push(Event::Completed(Box::new(summary)));
        }
        Ok(events)
    }

    /// Whether the job was completed or cancelled, here or by another collector (one active
    /// before a failover to this one, or a second one started by mistake): the container says.
    fn is_finished(&mut self, job: &str) -> Result<bool, StoreError> {
        if self.finished.contains(job) {
            return Ok(true);
        }
        let finished = self.store.exists(&job::result_key(job, files::SUMMARY))?
            || self.store.exists(&job::cancelled_key(job))?;
        if finished {
            self.open.remove(job);
            self.finished.insert(job.to_owned());
        }
        Ok(finished)
    }

    fn complete_in_memory(&self, job: &str) -> bool {
        self.open.get(job).is_some_and(|state| {
            state
                .sealed
                .as_ref()
                .is_some_and(|sealed| state.partitions.len() as u32 == sealed.partitions)
        })
    }

    /// Drops the job: the reason where `producer --wait` and a restarted collector see it, its
    /// stored partitions deleted, no result files.
    fn cancel(&mut self, job: &str, reason: String) -> Result<Event, StoreError> {
        self.store
            .put(&job::cancelled_key(job), reason.as_bytes())?;
        self.delete_partitions(job)?;
        self.open.remove(job);
        self.finished.insert(job.to_owned());
        Ok(Event::Cancelled {
            job: job.to_owned(),
            reason,
        })
    }

    /// Adds what the container holds and memory does not: the partitions stored before a
    /// restart, or by another collector while this one was a standby or cut off, and the seal
    /// one of them recorded. Without it a collector active again would wait for partitions acked
    /// elsewhere. Returns what makes the job impossible to complete: a stored partition that
    /// cannot be read.
    fn catch_up(&mut self, job: &str) -> Result<Option<String>, StoreError> {
        let keys = self.store.list(&job::partitions_prefix(job))?;
        let sealed_missing = self.open.get(job).is_some_and(|s| s.sealed.is_none());
        let sealed = if sealed_missing {
            self.recorded_seal(job)?
        } else {
            None
        };
        let known: HashSet<String> = self
            .state(job)?
            .partitions
            .keys()
            .map(|&n| job::partition_key(job, n))
            .collect();
        let mut found = Vec::new();
        for key in keys.into_iter().filter(|k| !known.contains(k)) {
            let bytes = match self.store.get(&key) {
                Ok(bytes) => bytes,
                // Deleted since the listing: the job was completed meanwhile.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            match message::decode::<Scored>(&bytes) {
                Ok(scored) if job::partition_key(job, scored.partition) == key => {
                    found.push(scored)
                }
                Ok(scored) => {
                    return Ok(Some(format!(
                        "stored partition {key} holds partition {} of job {}",
                        scored.partition, scored.job
                    )));
                }
                Err(e) => {
                    return Ok(Some(format!("stored partition {key} cannot be read ({e})")));
                }
            }
        }
        if !found.is_empty() {
            tracing::info!(%job, partitions = found.len(), "took in stored partitions (from before a restart, or another collector's)");
        }
        let state = self.state(job)?;
        if sealed.is_some() {
            state.sealed = sealed;
        }
        for scored in found {
            state.partitions.insert(scored.partition, scored);
        }
        Ok(None)
    }

    /// The seal of a job as a collector recorded it on receipt (see [`job::sealed_key`]). The
    /// manifest is not a seal: it is written before the `Sealed` message is published, and a
    /// job whose seal could not be published is cancelled.
    fn recorded_seal(&self, job: &str) -> Result<Option<Sealed>, StoreError> {
        let bytes = match self.store.get(&job::sealed_key(job)) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        // Written by a collector of another message format: the next `Sealed` redelivery or
        // the stored partitions cannot help either, so say so rather than wait silently.
        match message::decode::<Sealed>(&bytes) {
            Ok(sealed) => Ok(Some(sealed)),
            Err(e) => {
                tracing::warn!(%job, error = %e, "the recorded seal cannot be read; waiting for the producer's");
                Ok(None)
            }
        }
    }

    /// The job's state; the first time it is seen, with its seal if a collector recorded it
    /// (its partitions come in through [`Jobs::catch_up`]).
    fn state(&mut self, job: &str) -> Result<&mut JobState, StoreError> {
        if !self.open.contains_key(job) {
            let state = JobState {
                partitions: BTreeMap::new(),
                sealed: self.recorded_seal(job)?,
            };
            self.open.insert(job.to_owned(), state);
        }
        Ok(self.open.get_mut(job).expect("inserted above"))
    }

    fn complete_if_ready(&mut self, job: &str) -> Result<Option<Summary>, StoreError> {
        let Some(state) = self.open.get(job) else {
            return Ok(None);
        };
        let Some(sealed) = &state.sealed else {
            return Ok(None);
        };
        let complete = state.partitions.len() as u32 == sealed.partitions
            && state.partitions.keys().copied().eq(0..sealed.partitions);
        if !complete {
            return Ok(None);
        }
        let partitions: Vec<&Scored> = state.partitions.values().collect();
        let writing = Instant::now();
        let mut files = results::build(sealed, &partitions, now_ms());
        if files.summary.images != sealed.images {
            tracing::error!(%job, expected = sealed.images, got = files.summary.images, "image count differs from the manifest");
        }
        let put = |name: &str, bytes: &[u8]| self.store.put(&job::result_key(job, name), bytes);
        put(files::SCORES, files.scores_csv.as_bytes())?;
        if let Some(csv) = &files.confusion_csv {
            put(files::CONFUSION_CSV, csv.as_bytes())?;
        }
        if let Some(csv) = &files.confused_pairs_csv {
            put(files::CONFUSED_PAIRS, csv.as_bytes())?;
        }
        if let Some(png) = &files.confusion_png {
            put(files::CONFUSION_PNG, png)?;
        }
        // The producer drew the sample grid while reading the tarball; it joins the results now.
        match self.store.get(&job::samples_key(job)) {
            Ok(png) => put(files::SAMPLES_PNG, &png)?,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        files.summary.timings.writing_seconds = writing.elapsed().as_secs_f64();
        put(
            files::REPORT,
            self.report(job, &files, &partitions)?.as_bytes(),
        )?;
        let summary =
            serde_json::to_vec_pretty(&files.summary).expect("a summary always serializes");
        put(files::SUMMARY, &summary)?;
        self.open.remove(job);
        self.finished.insert(job.to_owned());
        // The result files now hold these rows; failing to tidy up loses nothing.
        if let Err(e) = self.delete_partitions(job) {
            tracing::warn!(%job, error = %e, "could not delete the job's intermediate partitions");
        }
        Ok(Some(files.summary))
    }

    /// The job's `report.html`. The manifest and the model's spec add to it; either may be
    /// gone (a job from an older release, a model deleted since) without failing the job.
    fn report(
        &self,
        job: &str,
        files: &results::ResultFiles,
        partitions: &[&Scored],
    ) -> Result<String, StoreError> {
        let manifest = match self.store.get(&job::manifest_key(job)) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).ok(),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let provenance = match &manifest {
            Some(manifest) => match self.store.get(&job::spec_key(&manifest.model)) {
                Ok(bytes) => ModelSpec::provenance_from_json(&bytes)
                    // Restaged since with another model: its provenance is not this job's.
                    .filter(|provenance| provenance.onnx_sha256 == manifest.model_sha256),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(report::render(&report::Report {
            summary: &files.summary,
            partitions,
            manifest: manifest.as_ref(),
            provenance: provenance.as_ref(),
            confusion: files.confusion.as_ref(),
            confusion_png: files.confusion_png.as_deref(),
        }))
    }

    /// Deletes the job's intermediate blobs: its stored partitions, its recorded seal and the
    /// sample grid (a copy is in the results).
    fn delete_partitions(&self, job: &str) -> Result<(), StoreError> {
        for key in self.store.list(&job::partitions_prefix(job))? {
            self.store.delete(&key)?;
        }
        self.store.delete(&job::sealed_key(job))?;
        self.store.delete(&job::samples_key(job))
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
        ResultMessage::Scored(Scored {
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
                })
                .collect(),
            worker: "w".into(),
            inference_ms: 1.0,
            preprocess_ms: 1.0,
            published_at_ms: 1,
            started_at_ms: 2,
            finished_at_ms: 3,
            provider: "CPU".into(),
            thumbnails: Vec::new(),
        })
    }

    fn sealed() -> ResultMessage {
        ResultMessage::Sealed(Sealed {
            job: "j".into(),
            partitions: 3,
            images: 6,
            classes: vec!["zero".into(), "one".into()],
            labelled: true,
            errors_column: false,
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
        (dir, a, b)
    }

    #[test]
    fn a_collector_active_again_takes_in_what_another_stored() {
        let (_dir, mut a, mut b) = two_collectors();
        assert!(a.handle(scored(0)).unwrap().len() == 1);
        a.handle(sealed()).unwrap();
        // A is cut off; B is active for one partition, then goes away.
        b.handle(scored(1)).unwrap();
        // A is active again: the last partition completes the job with B's rows in it.
        let events = a.handle(scored(2)).unwrap();
        let summary = completed(&events).expect("the job completes");
        assert_eq!((summary.images, summary.partitions), (6, 3));
        let store = &a.store;
        let scores =
            String::from_utf8(store.get(&job::result_key("j", files::SCORES)).unwrap()).unwrap();
        assert_eq!(scores.lines().count(), 1 + 6, "{scores}");
        assert!(store.list(&job::partitions_prefix("j")).unwrap().is_empty());
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
        // A redelivery reaching A afterwards changes nothing and stores nothing.
        assert!(a.handle(scored(1)).unwrap().is_empty());
        assert!(
            a.store
                .list(&job::partitions_prefix("j"))
                .unwrap()
                .is_empty()
        );
    }
}
