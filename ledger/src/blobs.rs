//! One job's blobs under `jobs/<job>/`: what each means, and how each is written.

use std::collections::BTreeSet;

use fleet_protocol::Summary;
use fleet_protocol::job::{self, Manifest, Plan, files, now_ms};
use fleet_protocol::message::{self, Scored, Sealed};
use fleet_storage::{BlobStore, StoreError};

/// One job's blobs in a container: what each means, and how each is written.
#[derive(Debug, Clone, Copy)]
pub struct Ledger<'a> {
    store: &'a dyn BlobStore,
    job: &'a str,
}

impl<'a> Ledger<'a> {
    /// The ledger of job `job` in `store`.
    pub fn new(store: &'a dyn BlobStore, job: &'a str) -> Self {
        Self { store, job }
    }

    /// The job's id.
    pub fn job(&self) -> &'a str {
        self.job
    }

    /// The store the job is in.
    pub fn store(&self) -> &'a dyn BlobStore {
        self.store
    }

    /// Writes the job's plan: first of all its blobs, before any partition is published.
    pub fn write_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        let json = serde_json::to_vec(plan).expect("a plan always serializes");
        self.store.put(&job::plan_key(self.job), &json)
    }

    /// The job's plan; `None` before it is written, and once the job is complete or cancelled
    /// (the collector deletes it then).
    pub fn plan(&self) -> Result<Option<Plan>, StoreError> {
        self.json(&job::plan_key(self.job), "job plan")
    }

    /// Writes the job's manifest, once every partition is published.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
        self.store.put(&job::manifest_key(self.job), &json)
    }

    /// The job's manifest; `None` while it is being submitted.
    pub fn manifest(&self) -> Result<Option<Manifest>, StoreError> {
        self.json(&job::manifest_key(self.job), "job manifest")
    }

    /// Keeps the sample grid the producer drew of a tarball's first images, for the results.
    pub fn write_samples(&self, png: &[u8]) -> Result<(), StoreError> {
        self.store.put(&job::samples_key(self.job), png)
    }

    /// The sample grid, if the producer drew one.
    pub fn samples(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get_if_exists(&job::samples_key(self.job))
    }

    /// The job's `summary.json`, once it is complete.
    pub fn summary(&self) -> Result<Option<Summary>, StoreError> {
        self.json(&job::result_key(self.job, files::SUMMARY), "job summary")
    }

    /// Whether the job is complete or cancelled: nothing more may be stored for it.
    pub fn is_finished(&self) -> Result<bool, StoreError> {
        Ok(self
            .store
            .exists(&job::result_key(self.job, files::SUMMARY))?
            || self.is_cancelled()?)
    }

    /// Records the job's seal as the collector received it, before the seal is acknowledged:
    /// a restarted or standby collector learns the job's partition count from it.
    pub fn record_seal(&self, sealed: &Sealed) -> Result<(), StoreError> {
        self.store
            .put(&job::sealed_key(self.job), &message::encode(sealed))
    }

    /// The seal a collector recorded. A record this build cannot read counts as none (the
    /// producer's `Sealed` message, redelivered, says the same), with a warning.
    pub fn seal(&self) -> Result<Option<Sealed>, StoreError> {
        let Some(bytes) = self.store.get_if_exists(&job::sealed_key(self.job))? else {
            return Ok(None);
        };
        match message::decode::<Sealed>(&bytes) {
            Ok(sealed) => Ok(Some(sealed)),
            Err(e) => {
                tracing::warn!(job = %self.job, error = &e as &dyn std::error::Error, "the recorded seal cannot be read; waiting for the producer's");
                Ok(None)
            }
        }
    }

    /// Stores the collector's durable copy of a partition, which marks it stored. A failed
    /// partition (its rows carry the reason) is marked failed first, so that every failed copy
    /// has its marker, where `producer retry` finds it.
    pub fn store_partition(&self, scored: &Scored) -> Result<(), StoreError> {
        if let Some(reason) = &scored.failed {
            self.store.put(
                &job::failed_key(self.job, scored.partition),
                reason.as_bytes(),
            )?;
        }
        self.store.put(
            &job::partition_key(self.job, scored.partition),
            &message::encode(scored),
        )
    }

    /// The durable copy of partition `partition`, if it is stored.
    pub fn stored_partition(&self, partition: u32) -> Result<Option<Scored>, StoreError> {
        let key = job::partition_key(self.job, partition);
        match self.store.get_if_exists(&key)? {
            Some(bytes) => self.decode_partition(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether partition `partition` is stored (scored or failed).
    pub fn is_stored(&self, partition: u32) -> Result<bool, StoreError> {
        self.store.exists(&job::partition_key(self.job, partition))
    }

    /// Hands every stored partition to `each`, in order, until it fails; how many there were.
    /// A copy that does not decode, or holds another partition than its name says, is
    /// [`StoreError::Corrupt`]: the job cannot complete from it.
    pub fn for_each_stored(
        &self,
        mut each: impl FnMut(Scored) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let keys = self.store.list(&job::partitions_prefix(self.job))?;
        let mut read = 0;
        for key in &keys {
            // Deleted since the listing: the job was completed meanwhile.
            let Some(bytes) = self.store.get_if_exists(key)? else {
                continue;
            };
            each(self.decode_partition(key, &bytes)?)?;
            read += 1;
        }
        Ok(read)
    }

    fn decode_partition(&self, key: &str, bytes: &[u8]) -> Result<Scored, StoreError> {
        let corrupt = |e: Box<dyn std::error::Error + Send + Sync>| {
            StoreError::corrupt(self.store, key, "stored partition", e)
        };
        let scored = message::decode::<Scored>(bytes).map_err(|e| corrupt(e.into()))?;
        scored.validate().map_err(|e| corrupt(e.into()))?;
        if job::partition_key(self.job, scored.partition) != key || scored.job != self.job {
            return Err(corrupt(
                format!(
                    "it holds partition {} of job {}",
                    scored.partition, scored.job
                )
                .into(),
            ));
        }
        Ok(scored)
    }

    /// The vectors the worker that scored partition `partition` wrote, checked to hold
    /// `bytes_per_image` for each of its `images`: a blob of another size, or none, is
    /// [`StoreError::Corrupt`].
    pub fn vectors(
        &self,
        partition: u32,
        images: usize,
        bytes_per_image: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let key = job::vectors_key(self.job, partition);
        // The worker writes it before it sends the scores: gone, it is lost.
        let bytes = self.store.get(&key).map_err(|e| match e {
            StoreError::NotFound { .. } => {
                StoreError::corrupt(self.store, &key, "vectors blob", "it is gone")
            }
            e => e,
        })?;
        if bytes.len() != images * bytes_per_image {
            let reason = format!(
                "it holds {} bytes, not {images} images of {bytes_per_image}",
                bytes.len()
            );
            return Err(StoreError::corrupt(
                self.store,
                &key,
                "vectors blob",
                reason,
            ));
        }
        Ok(bytes)
    }

    /// The partitions the collector stored failed, in order.
    pub fn failed_partitions(&self) -> Result<Vec<u32>, StoreError> {
        self.numbers(&job::failed_prefix(self.job))
    }

    /// Removes partition `partition`'s failed marker and retry mark: a scored copy replaced
    /// its failed one.
    pub fn clear_failed(&self, partition: u32) -> Result<(), StoreError> {
        self.store.delete(&job::failed_key(self.job, partition))?;
        self.store.delete(&job::retrying_key(self.job, partition))
    }

    /// Marks a failed partition as published again by a retry, now, and returns when (Unix
    /// ms): until its new outcome is stored, it is not counted as failed. Written before the
    /// partition is published, so that the partition's new copy is never older than the mark.
    pub fn mark_retrying(&self, partition: u32) -> Result<u64, StoreError> {
        let since = now_ms();
        self.store.put(
            &job::retrying_key(self.job, partition),
            since.to_string().as_bytes(),
        )?;
        Ok(since)
    }

    /// When a retry published partition `partition` again, if one did and its outcome is not
    /// stored yet.
    pub fn retrying_since(&self, partition: u32) -> Result<Option<u64>, StoreError> {
        let key = job::retrying_key(self.job, partition);
        let Some(bytes) = self.store.get_if_exists(&key)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e| StoreError::corrupt(self.store, &key, "retry mark", e))
    }

    /// Marks the failed partition's retry as over (its new copy failed too): it counts as
    /// failed again, with its new reason.
    pub fn retry_failed(&self, partition: u32, reason: &str) -> Result<(), StoreError> {
        self.store
            .put(&job::failed_key(self.job, partition), reason.as_bytes())?;
        self.store.delete(&job::retrying_key(self.job, partition))
    }

    /// Notes that a worker dead-lettered partition `partition`, and why: the word `--wait`
    /// and `producer status` have of a failure before the collector stores its rows.
    pub fn note_dead_letter(&self, partition: u32, reason: &str) -> Result<(), StoreError> {
        self.store.put(
            &job::dead_letter_key(self.job, partition),
            reason.as_bytes(),
        )
    }

    /// The partitions that have a worker's dead-letter note, in order.
    pub fn dead_letter_notes(&self) -> Result<Vec<u32>, StoreError> {
        self.numbers(&job::dead_letters_prefix(self.job))
    }

    /// Removes partition `partition`'s dead-letter note: it is published again, or it was
    /// stored scored after all.
    pub fn drop_dead_letter_note(&self, partition: u32) -> Result<(), StoreError> {
        self.store
            .delete(&job::dead_letter_key(self.job, partition))
    }

    /// The reason recorded for failed partition `partition`: its dead-letter note, else its
    /// failed marker.
    pub fn failure_reason(&self, partition: u32) -> Result<Option<String>, StoreError> {
        for key in [
            job::dead_letter_key(self.job, partition),
            job::failed_key(self.job, partition),
        ] {
            if let Some(bytes) = self.store.get_if_exists(&key)? {
                return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        Ok(None)
    }

    /// Marks the job cancelled, with the reason: everything that reads the ledger drops the
    /// job from then on. The only place the marker is written; see [`cancel()`] for the whole
    /// cancellation.
    pub fn mark_cancelled(&self, reason: &str) -> Result<(), StoreError> {
        self.store
            .put(&job::cancelled_key(self.job), reason.as_bytes())
    }

    /// Why the job was cancelled, if it was.
    pub fn cancellation(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get_if_exists(&job::cancelled_key(self.job))?
            .map(|reason| String::from_utf8_lossy(&reason).into_owned()))
    }

    /// Whether the job was cancelled: one cheap look, for workers checking often.
    pub fn is_cancelled(&self) -> Result<bool, StoreError> {
        self.store.exists(&job::cancelled_key(self.job))
    }

    /// The job's blobs that only serve it while it runs, for the collector to delete once it
    /// is complete or cancelled: stored partitions, failed markers and retry marks, vectors
    /// blobs, the recorded seal, the sample grid and the plan. The manifest, the listing and the
    /// cancellation marker stay, as the job's record.
    pub fn intermediate_blobs(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = self.store.list(&job::partitions_prefix(self.job))?;
        keys.extend(self.store.list(&job::failed_prefix(self.job))?);
        keys.extend(self.store.list(&job::retrying_prefix(self.job))?);
        keys.extend(self.store.list(&job::vectors_prefix(self.job))?);
        keys.extend([
            job::sealed_key(self.job),
            job::samples_key(self.job),
            job::plan_key(self.job),
        ]);
        Ok(keys)
    }

    /// A JSON blob, `None` when it is not there.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.store.get_if_exists(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::corrupt(self.store, key, what, e))
    }

    /// The partition numbers named under `prefix`, in order.
    fn numbers(&self, prefix: &str) -> Result<Vec<u32>, StoreError> {
        let numbers: BTreeSet<u32> = (self.store.list(prefix)?.iter())
            .filter_map(|key| job::partition_of(key))
            .collect();
        Ok(numbers.into_iter().collect())
    }
}
