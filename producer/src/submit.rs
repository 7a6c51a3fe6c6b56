//! Submitting a job: stream the tarball from the container, cut each chosen batch into
//! partitions, publish them, then write the manifest and seal the job.

use std::sync::Arc;

use fleet_common::broker::{Broker, BrokerError, Queue};
use fleet_common::dataset::{self, BatchSelection, DatasetError, IMAGE_BYTES};
use fleet_common::job::{self, BatchEntry, Manifest, files, now_ms};
use fleet_common::message::{self, Cancelled, Partition, ResultMessage, Sealed};
use fleet_common::results::render::{Sample, sample_grid_png};
use fleet_common::store::{BlobStore, StoreError};
use tokio::sync::mpsc;

/// Images shown in `samples.png`.
const SAMPLES: usize = 16;

/// What to score. Part of the `producer` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitOptions {
    /// Blob holding the CIFAR-10 tarball (python or binary version).
    #[arg(long, env = "DATASET_BLOB", default_value = job::DATASET_BLOB)]
    pub dataset: String,
    /// Model to score with: `models/<name>.onnx` and `models/<name>.mean.xml` in the container.
    #[arg(long = "model-name", env = "MODEL_NAME", default_value = job::DEFAULT_MODEL)]
    pub model: String,
    /// Batches to score: `all`, or a comma-separated list (`test_batch,data_batch_1`).
    #[arg(long, env = "BATCHES", default_value = "test_batch")]
    pub batches: BatchSelection,
    /// Images per partition (one message, one model call).
    #[arg(long, env = "PARTITION_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub partition_size: u32,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            dataset: job::DATASET_BLOB.into(),
            model: job::DEFAULT_MODEL.into(),
            batches: BatchSelection::default(),
            partition_size: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("model {model} is not staged in {store} (no {key}); run `producer stage` first")]
    NotStaged {
        model: String,
        store: String,
        key: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the tarball reader failed: {0}")]
    Task(String),
}

/// Submits job `job` and returns its manifest once every partition is published and the job
/// is sealed. `on_published` is called with the image count of each published partition. If
/// the job cannot be submitted in full, it is cancelled and nothing of it is scored into
/// results.
pub async fn submit<B: Broker>(
    broker: &B,
    store: Arc<dyn BlobStore>,
    options: &SubmitOptions,
    job: &str,
    mut on_published: impl FnMut(u64),
) -> Result<Manifest, SubmitError> {
    let (check_store, model) = (store.clone(), options.model.clone());
    tokio::task::spawn_blocking(move || {
        for key in [job::model_key(&model), job::mean_image_key(&model)] {
            if !check_store.exists(&key)? {
                return Err(SubmitError::NotStaged {
                    model: model.clone(),
                    store: check_store.describe(),
                    key,
                });
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| SubmitError::Task(e.to_string()))??;
    let submitted_at_ms = now_ms();
    let result = publish_partitions(broker, store.clone(), options, job, &mut on_published).await;
    let (batches, samples) = match result {
        Ok(done) => done,
        Err(e) => {
            let cancel = ResultMessage::Cancelled(Cancelled {
                job: job.into(),
                reason: e.to_string(),
            });
            if let Err(cancel_error) = broker
                .publish(Queue::Results, message::encode(&cancel))
                .await
            {
                tracing::error!(%job, error = %cancel_error, "could not cancel the job after a failed submission");
            }
            return Err(e);
        }
    };
    let partitions = batches.iter().map(|b| b.partitions).sum();
    let images = batches.iter().map(|b| u64::from(b.images)).sum();
    let manifest = Manifest {
        job: job.into(),
        dataset: options.dataset.clone(),
        model: options.model.clone(),
        partition_size: options.partition_size,
        partitions,
        images,
        batches,
        submitted_at_ms,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    let put_store = store.clone();
    let job_owned = job.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        put_store.put(&job::manifest_key(&job_owned), &manifest_json)?;
        put_store.put(&job::result_key(&job_owned, files::SAMPLES_PNG), &samples)
    })
    .await
    .map_err(|e| SubmitError::Task(e.to_string()))??;
    let sealed = ResultMessage::Sealed(Sealed {
        job: job.into(),
        partitions,
        images,
        submitted_at_ms,
    });
    broker
        .publish(Queue::Results, message::encode(&sealed))
        .await?;
    tracing::info!(%job, partitions, images, "job submitted");
    Ok(manifest)
}

/// Publishes every partition; returns the batches seen and the sample grid PNG.
async fn publish_partitions<B: Broker>(
    broker: &B,
    store: Arc<dyn BlobStore>,
    options: &SubmitOptions,
    job: &str,
    on_published: &mut impl FnMut(u64),
) -> Result<(Vec<BatchEntry>, Vec<u8>), SubmitError> {
    // The tarball is decoded on a blocking thread, a few partitions ahead of publishing.
    let (tx, mut rx) = mpsc::channel::<Partition>(4);
    let (dataset, selection, size, model, job_id) = (
        options.dataset.clone(),
        options.batches.clone(),
        options.partition_size as usize,
        options.model.clone(),
        job.to_owned(),
    );
    let reader = tokio::task::spawn_blocking(move || -> Result<Vec<BatchEntry>, SubmitError> {
        let source = store.open(&dataset)?;
        let mut entries = Vec::new();
        let mut next_partition = 0u32;
        dataset::read_tarball(source, &dataset, &selection, |batch| {
            let first_partition = next_partition;
            for start in (0..batch.len()).step_by(size) {
                let end = (start + size).min(batch.len());
                let partition = Partition {
                    job: job_id.clone(),
                    partition: next_partition,
                    model: model.clone(),
                    batch: batch.name.clone(),
                    first_index: start as u32,
                    labels: batch.labels[start..end].to_vec(),
                    filenames: batch.filenames[start..end].to_vec(),
                    pixels: batch.pixels[start * IMAGE_BYTES..end * IMAGE_BYTES].to_vec(),
                };
                next_partition += 1;
                tx.blocking_send(partition)
                    .map_err(|_| DatasetError::Stopped("publishing stopped".into()))?;
            }
            entries.push(BatchEntry {
                name: batch.name.clone(),
                images: batch.len() as u32,
                first_partition,
                partitions: next_partition - first_partition,
            });
            Ok(())
        })?;
        Ok(entries)
    });

    let mut samples: Vec<(Vec<u8>, String)> = Vec::new();
    let mut publish_error = None;
    while let Some(partition) = rx.recv().await {
        for i in 0..partition.len().min(SAMPLES - samples.len()) {
            let pixels = partition.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].to_vec();
            samples.push((pixels, partition.filenames[i].clone()));
        }
        let images = partition.len() as u64;
        if let Err(e) = broker
            .publish(Queue::Partitions, message::encode(&partition))
            .await
        {
            publish_error = Some(e);
            break;
        }
        on_published(images);
    }
    // Dropping the receiver stops the reader at its next partition.
    drop(rx);
    let read = reader.await.map_err(|e| SubmitError::Task(e.to_string()))?;
    if let Some(e) = publish_error {
        return Err(e.into());
    }
    let batches = read?;
    let grid: Vec<Sample<'_>> = samples
        .iter()
        .map(|(pixels, caption)| Sample {
            pixels,
            caption: caption.clone(),
        })
        .collect();
    Ok((batches, sample_grid_png(&grid, 8)))
}
