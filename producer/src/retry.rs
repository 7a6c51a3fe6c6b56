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
use fleet_protocol::job::{self, DatasetKind, Manifest, Plan, files, now_ms};
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
    pub max_failed_partitions: u32,
    /// The partitions stored failed, in order.
    pub partitions: Vec<u32>,
    /// Partitions dead-lettered whose failed rows the collector has not stored yet: not
    /// retried now (their images are not known here). Another retry takes them.
    pub waiting: Vec<u32>,
}

/// Finds what of `job` can be retried, and checks it can be: the job is sealed, neither
/// complete nor cancelled, and its model is staged as it was when the job was submitted.
pub fn prepare(store: &dyn BlobStore, job: &str) -> Result<Retry, RetryError> {
    let get = |key: &str| store.get_if_exists(key);
    if store.exists(&job::result_key(job, files::SUMMARY))? {
        return Err(RetryError::Complete {
            job: job.to_owned(),
            results: store.location(&job::result_key(job, "")),
        });
    }
    if let Some(reason) = get(&job::cancelled_key(job))? {
        return Err(RetryError::Cancelled {
            job: job.to_owned(),
            reason: String::from_utf8_lossy(&reason).into_owned(),
        });
    }
    let plan = get(&job::plan_key(job))?;
    let Some(manifest) = get(&job::manifest_key(job))? else {
        return Err(match plan {
            Some(_) => RetryError::Submitting {
                job: job.to_owned(),
            },
            None => RetryError::NoSuchJob {
                store: store.describe(),
                job: job.to_owned(),
            },
        });
    };
    let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| StoreError::Io {
        store: store.describe(),
        key: job::manifest_key(job),
        reason: format!("the manifest cannot be read: {e}"),
    })?;
    let max_failed_partitions = plan
        .and_then(|bytes| serde_json::from_slice::<Plan>(&bytes).ok())
        .map_or(0, |plan| plan.max_failed_partitions);
    check_model(store, &manifest)?;

    let partitions: Vec<u32> = (store.list(&job::failed_prefix(job))?.iter())
        .filter_map(|key| job::partition_of(key))
        .collect();
    let mut waiting = Vec::new();
    for key in store.list(&job::dead_letters_prefix(job))? {
        let Some(partition) = job::partition_of(&key) else {
            continue;
        };
        if partitions.binary_search(&partition).is_ok() {
            continue;
        }
        if store.exists(&job::partition_key(job, partition))? {
            // Stored scored after all (another delivery of it was): the note is stale, and
            // would keep `--wait` from seeing the job complete.
            store.delete(&key)?;
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
        max_failed_partitions,
        partitions,
        waiting,
    })
}

/// The job's model must be the one it was scored with: rows of two models in one job would
/// not be one job's results.
fn check_model(store: &dyn BlobStore, manifest: &Manifest) -> Result<(), RetryError> {
    let model = &manifest.model;
    let changed = |now: String| RetryError::ModelChanged {
        job: manifest.job.clone(),
        model: model.clone(),
        was: manifest.model_sha256.clone(),
        now,
    };
    let spec_key = job::spec_key(model);
    let staged = match store.get(&spec_key) {
        Ok(bytes) => ModelSpec::provenance_from_json(&bytes).map(|p| p.onnx_sha256),
        Err(e) if e.is_not_found() => {
            return Err(changed(format!("it is not staged now (no {spec_key})")));
        }
        Err(e) => return Err(e.into()),
    };
    match staged {
        Some(sha) if sha == manifest.model_sha256 => {}
        Some(sha) => return Err(changed(format!("the model staged now is sha256 {sha}"))),
        None => return Err(changed(format!("{spec_key} cannot be read"))),
    }
    if !store.exists(&job::model_key(model))? {
        return Err(changed(format!(
            "its spec is staged without the model ({} is missing)",
            job::model_key(model)
        )));
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
            let read = tokio::task::spawn_blocking(move || stored_failed(&*reader, &job, number));
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
            partition: failed.partition,
            model: self.manifest.model.clone(),
            batch: failed.batch.clone(),
            first_index: failed.first_index,
            images,
            labels: failed.scores.iter().map(|score| score.label).collect(),
            top_k: self.manifest.top_k,
            published_at_ms: 0,
        }
    }

    /// Removes the partition's dead-letter note, then publishes it: a note the retry's own
    /// failure writes comes after, and stays.
    async fn publish_one<B: Broker>(
        &self,
        broker: &B,
        store: &Arc<dyn BlobStore>,
        mut partition: Partition,
        on_published: &mut impl FnMut(u64),
    ) -> Result<(), RetryError> {
        let (notes, key) = (
            store.clone(),
            job::dead_letter_key(&self.job, partition.partition),
        );
        tokio::task::spawn_blocking(move || notes.delete(&key)).await??;
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
                                "batch {} has {} images, fewer than when the job was submitted",
                                batch.name,
                                batch.len()
                            ),
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
fn stored_failed(
    store: &dyn BlobStore,
    job: &str,
    partition: u32,
) -> Result<Option<Scored>, RetryError> {
    let key = job::partition_key(job, partition);
    // Marked, not yet stored: the collector stores it (its result was not acked).
    let Some(bytes) = store.get_if_exists(&key)? else {
        return Ok(None);
    };
    let scored = message::decode::<Scored>(&bytes).map_err(|e| StoreError::Io {
        store: store.describe(),
        key: key.clone(),
        reason: format!("the stored partition cannot be read: {e}"),
    })?;
    if scored.failed.is_none() {
        store.delete(&job::failed_key(job, partition))?;
        return Ok(None);
    }
    Ok(Some(scored))
}
