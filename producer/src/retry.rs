//! `producer retry`: publishing a job's failed partitions again once their cause is fixed.
//!
//! The collector keeps a durable copy of every partition it stores, a failed one included
//! (its images' names, labels and place in the dataset, each with the reason), and marks each
//! failed one under `jobs/<job>/failed/`. A retry rebuilds each marked partition's message
//! from that copy (a collection's blob names; a tarball's pixels, read again from the tarball),
//! removes the partition's dead-letter note so that `--wait` and `producer status` see the job
//! running again, and publishes it. The collector lets a scored copy replace the failed one,
//! so the job completes as if nothing had failed. Nothing else changes: a retry can run while
//! workers score, and again after an interruption (a partition published twice is stored
//! once).

use std::sync::Arc;

use fleet_broker::{Broker, BrokerError, Queue};
use fleet_dataset::{self as dataset, BatchSelection, DatasetError, HEIGHT, IMAGE_BYTES, WIDTH};
use fleet_ledger::{ErrorBudget, JobState, Ledger};
use fleet_protocol::job::{self, DatasetKind, Manifest, now_ms};
use fleet_protocol::message::{self, Images, Partition, Scored};
use fleet_spec::ModelSpec;
use fleet_storage::{BlobStore, StoreError};

/// Why a job's failed partitions cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The container knows no such job.
    #[error("{store} has no job {job}; `producer status` lists those it has")]
    NoSuchJob {
        /// The store, as it describes itself.
        store: String,
        /// The job named.
        job: String,
    },
    /// The job completed: its results are written, and stay as they are.
    #[error(
        "job {job} is complete: its results are in {results}; submit a new job to score its images again"
    )]
    Complete {
        /// The job.
        job: String,
        /// Where its results are.
        results: String,
    },
    /// The job completed within its error budget: its results are final, and the images of
    /// its failed partitions are scored by another job.
    #[error(
        "job {job} completed partial ({images} images in {partitions} failed partitions, within \
         its error budget): its results in {results} are final. To score those images, {how}"
    )]
    Partial {
        /// The job.
        job: String,
        /// Where its results are.
        results: String,
        /// Images of its failed partitions.
        images: u64,
        /// Its failed partitions.
        partitions: u32,
        /// The job that scores them.
        how: &'static str,
    },
    /// The job was cancelled: nothing of it is kept.
    #[error("job {job} was cancelled ({reason}); submit it again")]
    Cancelled {
        /// The job.
        job: String,
        /// The reason recorded.
        reason: String,
    },
    /// The job has no manifest yet.
    #[error(
        "job {job} is still being submitted (it has no manifest yet); retry it once `producer status {job}` says stuck"
    )]
    Submitting {
        /// The job.
        job: String,
    },
    /// No partition of the job is stored failed.
    #[error("job {job} has no failed partition to retry{waiting}")]
    NothingFailed {
        /// The job.
        job: String,
        /// What is known of dead-lettered partitions whose rows are not stored yet.
        waiting: String,
    },
    /// The job's model is no longer staged as it was.
    #[error(
        "job {job} was scored with model {model} (sha256 {was}), but {now}: stage the same model file again as {model}, or submit a new job"
    )]
    ModelChanged {
        /// The job.
        job: String,
        /// The model's name.
        model: String,
        /// The sha256 the job scored with.
        was: String,
        /// What is staged instead.
        now: String,
    },
    /// The container cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tarball cannot be read again.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A partition cannot be published.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A storage task panicked or was cancelled.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A job's failed partitions, ready to publish again.
#[derive(Debug)]
pub struct Retry {
    /// The job.
    pub job: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its error budget (`--max-failed-partitions` when it was submitted).
    pub budget: ErrorBudget,
    /// The partitions stored failed, in order.
    pub partitions: Vec<u32>,
    /// Partitions dead-lettered whose failed rows the collector has not stored yet: not
    /// retried now (their images are not known here). Another retry takes them.
    pub waiting: Vec<u32>,
}

/// Finds what of `job` can be retried, and checks it can be: the job is sealed, neither
/// complete nor cancelled, and its model is staged as it was when the job was submitted.
pub fn prepare(store: &dyn BlobStore, job: &str) -> Result<Retry, RetryError> {
    let ledger = Ledger::new(store, job);
    let no_such_job = || RetryError::NoSuchJob {
        store: store.describe(),
        job: job.to_owned(),
    };
    let standing = ledger.standing()?.ok_or_else(no_such_job)?;
    match standing.state {
        JobState::Partial(summary) => {
            let narrowable = standing.manifest.as_ref().is_some_and(|manifest| {
                manifest.dataset_kind == DatasetKind::Images
                    && ["none", "folders"].contains(&manifest.labels.as_str())
            });
            let (images, partitions) = (summary.partial.as_ref()).map_or((0, 0), |lacking| {
                (lacking.images, lacking.failed_partitions)
            });
            return Err(RetryError::Partial {
                job: job.to_owned(),
                results: store.location(&job::result_key(job, "")),
                images,
                partitions,
                how: if narrowable {
                    "run the job again with --incremental: it scores only the images that no \
                     complete job of the same models has a prediction for"
                } else {
                    "submit the job again (--incremental, which scores only those, narrows a \
                     collection listed with --labels none or folders)"
                },
            });
        }
        JobState::Complete(_) => {
            return Err(RetryError::Complete {
                job: job.to_owned(),
                results: store.location(&job::result_key(job, "")),
            });
        }
        JobState::Cancelled(reason) => {
            return Err(RetryError::Cancelled {
                job: job.to_owned(),
                reason,
            });
        }
        JobState::Submitting | JobState::Running | JobState::Stuck => {}
    }
    let Some(manifest) = standing.manifest else {
        return Err(RetryError::Submitting {
            job: job.to_owned(),
        });
    };
    check_models(store, &manifest)?;

    let partitions = ledger.failed_partitions()?;
    let mut waiting = Vec::new();
    for partition in ledger.dead_letter_notes()? {
        if partitions.binary_search(&partition).is_ok() {
            continue;
        }
        if ledger.is_stored(partition)? {
            // Stored scored after all (another delivery of it was): the note is stale.
            ledger.drop_dead_letter_note(partition)?;
        } else {
            waiting.push(partition);
        }
    }
    if partitions.is_empty() {
        let waiting = match waiting.len() {
            0 => String::new(),
            n => format!(
                " yet: {n} dead-lettered partitions are not stored by the collector yet (is one \
                 running?); retry once `producer status {job}` counts them in"
            ),
        };
        return Err(RetryError::NothingFailed {
            job: job.to_owned(),
            waiting,
        });
    }
    Ok(Retry {
        job: job.to_owned(),
        manifest,
        budget: standing.budget,
        partitions,
        waiting,
    })
}

/// The job's models must be the ones it was scored with: rows of two versions of a model in
/// one job would not be one job's results.
fn check_models(store: &dyn BlobStore, manifest: &Manifest) -> Result<(), RetryError> {
    for model in manifest.models() {
        let changed = |now: String| RetryError::ModelChanged {
            job: manifest.job.clone(),
            model: model.name.clone(),
            was: model.sha256.clone(),
            now,
        };
        let spec_key = job::spec_key(&model.name);
        let staged = match store.get(&spec_key) {
            Ok(bytes) => ModelSpec::provenance_from_json(&bytes).map(|p| p.onnx_sha256),
            Err(e) if e.is_not_found() => {
                return Err(changed(format!("it is not staged now (no {spec_key})")));
            }
            Err(e) => return Err(e.into()),
        };
        match staged {
            Some(sha) if sha == model.sha256 => {}
            Some(sha) => return Err(changed(format!("the model staged now is sha256 {sha}"))),
            None => return Err(changed(format!("{spec_key} cannot be read"))),
        }
        if !store.exists(&job::model_key(&model.name))? {
            return Err(changed(format!(
                "its spec is staged without the model ({} is missing)",
                job::model_key(&model.name)
            )));
        }
    }
    Ok(())
}

impl Retry {
    /// Images in the job.
    pub fn images(&self) -> u64 {
        self.manifest.images
    }

    /// Publishes each failed partition again, rebuilt from its stored copy, after removing its
    /// dead-letter note; `on_published` gets each one's image count. Returns how many were
    /// published (a partition scored since it was found failed is left out); none is an
    /// error.
    pub async fn publish<B: Broker>(
        &self,
        broker: &B,
        store: Arc<dyn BlobStore>,
        on_published: &mut impl FnMut(u64),
    ) -> Result<u32, RetryError> {
        let mut published = 0;
        let mut tarball = Vec::new();
        for &number in &self.partitions {
            let (reader, job) = (store.clone(), self.job.clone());
            let read = tokio::task::spawn_blocking(move || {
                stored_failed(&Ledger::new(reader.as_ref(), &job), number)
            });
            let Some(failed) = read.await?? else {
                continue;
            };
            let partition = match self.manifest.dataset_kind {
                DatasetKind::Images => self.rebuild(
                    &failed,
                    Images::Blobs {
                        prefix: failed.batch.clone(),
                        names: failed.filenames.clone(),
                    },
                ),
                // Its pixels are read from the tarball below, all such partitions at once.
                DatasetKind::Tarball => {
                    tarball.push(failed);
                    continue;
                }
            };
            self.publish_one(broker, &store, partition, on_published)
                .await?;
            published += 1;
        }
        if !tarball.is_empty() {
            for partition in self.read_pixels(&store, tarball).await? {
                self.publish_one(broker, &store, partition, on_published)
                    .await?;
                published += 1;
            }
        }
        if published == 0 {
            // Nothing is in flight: no result would ever complete the job.
            return Err(RetryError::NothingFailed {
                job: self.job.clone(),
                waiting: ": each partition marked failed was scored since".into(),
            });
        }
        Ok(published)
    }

    /// The partition message of a failed partition's stored copy, with `images`.
    fn rebuild(&self, failed: &Scored, images: Images) -> Partition {
        Partition {
            job: self.job.clone(),
            container: failed.container.clone(),
            partition: failed.partition,
            models: self.manifest.models().into_iter().map(|m| m.name).collect(),
            batch: failed.batch.clone(),
            first_index: failed.first_index,
            images,
            labels: failed.scores.iter().map(|score| score.label).collect(),
            // A multi-label job's true classes, where its images have them.
            tags: match failed.scores.iter().any(|score| score.true_tags.is_some()) {
                true => (failed.scores.iter())
                    .map(|score| score.true_tags.clone())
                    .collect(),
                false => Vec::new(),
            },
            top_k: self.manifest.top_k,
            published_at_ms: 0,
        }
    }

    /// Marks the partition as being retried and removes its dead-letter note, then publishes
    /// it: until its new outcome is stored it is not counted as failed, and a note the retry's
    /// own failure writes comes after, and stays.
    async fn publish_one<B: Broker>(
        &self,
        broker: &B,
        store: &Arc<dyn BlobStore>,
        mut partition: Partition,
        on_published: &mut impl FnMut(u64),
    ) -> Result<(), RetryError> {
        let (ledger_store, job, number) = (store.clone(), self.job.clone(), partition.partition);
        tokio::task::spawn_blocking(move || {
            let ledger = Ledger::new(ledger_store.as_ref(), &job);
            ledger.mark_retrying(number)?;
            ledger.drop_dead_letter_note(number)
        })
        .await??;
        // Never older than the mark: the collector takes the retry's copy by it.
        partition.published_at_ms = now_ms();
        let images = partition.len() as u64;
        broker
            .publish(Queue::Partitions, message::encode(&partition))
            .await?;
        tracing::debug!(job = %self.job, partition = partition.partition, "failed partition published again");
        on_published(images);
        Ok(())
    }

    /// The tarball partitions among `failed`, their pixels read again from the job's tarball.
    async fn read_pixels(
        &self,
        store: &Arc<dyn BlobStore>,
        failed: Vec<Scored>,
    ) -> Result<Vec<Partition>, RetryError> {
        let mut batches: Vec<String> = failed.iter().map(|f| f.batch.clone()).collect();
        batches.sort();
        batches.dedup();
        let (store, blob) = (store.clone(), self.manifest.dataset.clone());
        let partitions = failed.iter().map(|f| {
            self.rebuild(
                f,
                Images::Planes {
                    height: HEIGHT as u32,
                    width: WIDTH as u32,
                    names: f.filenames.clone(),
                    pixels: Vec::new(),
                },
            )
        });
        let mut partitions: Vec<Partition> = partitions.collect();
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<Partition>, RetryError> {
            let source = store.open(&blob)?;
            dataset::read_tarball(source, &blob, &BatchSelection::Named(batches), |batch| {
                for partition in partitions.iter_mut().filter(|p| p.batch == batch.name) {
                    let start = partition.first_index as usize;
                    let end = start + partition.len();
                    let Images::Planes { pixels, .. } = &mut partition.images else {
                        unreachable!("made as planes above")
                    };
                    let Some(slice) = batch.pixels.get(start * IMAGE_BYTES..end * IMAGE_BYTES)
                    else {
                        return Err(DatasetError::Corrupt {
                            source_name: blob.clone(),
                            detail: format!(
                                ": batch {} has {} images, fewer than when the job was submitted",
                                batch.name,
                                batch.len()
                            ),
                            source: None,
                        });
                    };
                    pixels.extend_from_slice(slice);
                }
                Ok(())
            })?;
            Ok(partitions)
        });
        read.await?
    }
}

/// The stored copy of a partition marked failed, or `None` when a scored copy replaced it
/// since (its marker is stale: it goes).
fn stored_failed(ledger: &Ledger<'_>, partition: u32) -> Result<Option<Scored>, RetryError> {
    // Marked, not yet stored: the collector stores it (its result was not acked).
    let Some(scored) = ledger.stored_partition(partition)? else {
        return Ok(None);
    };
    if scored.failed.is_none() {
        ledger.clear_failed(partition)?;
        return Ok(None);
    }
    Ok(Some(scored))
}
