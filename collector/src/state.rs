//! Per-job state of the collector, kept durably in the container.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use fleet_common::job::{self, DatasetKind, Manifest, files, now_ms};
use fleet_common::message::{self, Cancelled, ResultMessage, Scored, Sealed};
use fleet_common::results::{self, report};
use fleet_common::spec::ModelSpec;
use fleet_common::store::{BlobStore, StoreError};

use crate::Event;

/// Marker blob of a cancelled job: late results for it are dropped, even after a restart.
fn cancelled_key(job: &str) -> String {
    format!("jobs/{job}/cancelled")
}

#[derive(Debug, Default)]
struct JobState {
    partitions: BTreeMap<u32, Scored>,
    sealed: Option<Sealed>,
}

#[derive(Debug)]
pub struct Jobs {
    store: Arc<dyn BlobStore>,
    open: HashMap<String, JobState>,
    /// Jobs completed or cancelled since this collector started.
    finished: HashSet<String>,
}

impl Jobs {
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Self {
            store,
            open: HashMap::new(),
            finished: HashSet::new(),
        }
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
            ResultMessage::Sealed(sealed) => self.state(&job)?.sealed = Some(sealed),
            ResultMessage::Cancelled(Cancelled { job, reason }) => {
                self.store.put(&cancelled_key(&job), reason.as_bytes())?;
                self.delete_partitions(&job)?;
                self.open.remove(&job);
                self.finished.insert(job.clone());
                tracing::warn!(%job, %reason, "job cancelled by its producer");
                return Ok(vec![Event::Cancelled { job, reason }]);
            }
        }
        if let Some(summary) = self.complete_if_ready(&job)? {
            events.push(Event::Completed(Box::new(summary)));
        }
        Ok(events)
    }

    fn is_finished(&self, job: &str) -> Result<bool, StoreError> {
        if self.finished.contains(job) {
            return Ok(true);
        }
        if self.open.contains_key(job) {
            return Ok(false);
        }
        // First message of this job since start: it may have been finished before a restart.
        Ok(self.store.exists(&job::result_key(job, files::SUMMARY))?
            || self.store.exists(&cancelled_key(job))?)
    }

    /// The job's state, rebuilt from the container the first time it is seen.
    fn state(&mut self, job: &str) -> Result<&mut JobState, StoreError> {
        if !self.open.contains_key(job) {
            let mut state = JobState::default();
            for key in self.store.list(&job::partitions_prefix(job))? {
                let bytes = self.store.get(&key)?;
                match message::decode::<Scored>(&bytes) {
                    Ok(scored) => {
                        state.partitions.insert(scored.partition, scored);
                    }
                    // Written by this program, so only a foreign or damaged blob gets here: the
                    // partition will be scored again if it is still in the queue.
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "ignoring an unreadable stored partition")
                    }
                }
            }
            match self.store.get(&job::manifest_key(job)) {
                Ok(bytes) => {
                    if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) {
                        state.sealed = Some(Sealed {
                            job: job.into(),
                            partitions: manifest.partitions,
                            images: manifest.images,
                            classes: manifest.classes,
                            labelled: manifest.labelled_images > 0,
                            errors_column: manifest.dataset_kind == DatasetKind::Images,
                            submitted_at_ms: manifest.submitted_at_ms,
                            published_at_ms: manifest.published_at_ms,
                        });
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            if !state.partitions.is_empty() {
                tracing::info!(%job, partitions = state.partitions.len(), "resumed job state from storage");
            }
            self.open.insert(job.to_owned(), state);
        }
        Ok(self.open.get_mut(job).expect("inserted above"))
    }

    fn complete_if_ready(&mut self, job: &str) -> Result<Option<results::Summary>, StoreError> {
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
        let partitions: Vec<Scored> = state.partitions.values().cloned().collect();
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
        partitions: &[Scored],
    ) -> Result<String, StoreError> {
        let manifest = match self.store.get(&job::manifest_key(job)) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).ok(),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let spec = match &manifest {
            Some(manifest) => match self.store.get(&job::spec_key(&manifest.model)) {
                Ok(bytes) => ModelSpec::from_json(&bytes, &job::spec_key(&manifest.model))
                    .ok()
                    // Restaged since with another model: its provenance is not this job's.
                    .filter(|spec| spec.provenance.onnx_sha256 == manifest.model_sha256),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(report::render(&report::Report {
            summary: &files.summary,
            partitions,
            manifest: manifest.as_ref(),
            provenance: spec.as_ref().map(|spec| &spec.provenance),
            confusion: files.confusion.as_deref(),
            confusion_png: files.confusion_png.as_deref(),
        }))
    }

    fn delete_partitions(&self, job: &str) -> Result<(), StoreError> {
        for key in self.store.list(&job::partitions_prefix(job))? {
            self.store.delete(&key)?;
        }
        Ok(())
    }
}
