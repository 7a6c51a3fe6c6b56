//! Submitting a job: find the dataset and the model's classes, cut the dataset into
//! partitions, publish them, then write the manifest and seal the job.
//!
//! Two kinds of dataset sit behind [`Dataset`]: a CIFAR-10 tarball blob, which the producer
//! decodes and ships as pixels, and an image collection under a prefix, which it only lists:
//! its partitions carry blob names and the workers fetch the images (the claim check).

use std::sync::Arc;

use fleet_broker::{Broker, BrokerError, Queue};
use fleet_dataset::collection::{self, LabelFile, LabelSource, ResolvedSource};
use fleet_dataset::{
    self as dataset, BatchSelection, CLASS_NAMES, DatasetError, HEIGHT, IMAGE_BYTES, WIDTH,
};
use fleet_figures::{Sample, sample_grid_png};
use fleet_protocol::job::{self, BatchEntry, DatasetKind, Manifest, now_ms};
use fleet_protocol::message::{
    self, Cancelled, Images, MAX_TOP_K, Partition, ResultMessage, Sealed,
};
use fleet_spec::ModelSpec;
use fleet_storage::{BlobStore, StoreError};
use tokio::sync::mpsc;

/// Images shown in `samples.png`.
const SAMPLES: usize = 16;

/// What to score. Part of the `producer` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitOptions {
    /// Dataset in the container: a CIFAR-10 tarball blob (python or binary version), or a
    /// prefix under which every JPEG, PNG, BMP, GIF and WebP file is scored.
    #[arg(long, env = "DATASET", default_value = job::DATASET_BLOB)]
    pub dataset: String,
    /// Model to score with: `models/<name>.onnx` and its spec `models/<name>.json`.
    #[arg(long = "model-name", env = "MODEL_NAME", default_value = job::DEFAULT_MODEL)]
    pub model: String,
    /// True labels: `auto` (a tarball's own; none for images), `none`, `folders` (each
    /// image's folder names its class), or a label file in the container beside the images
    /// (or a local file): a CNTK map file (`path<TAB>label index`) or a `.csv`
    /// (`filename,label`, a class name or index).
    #[arg(long, env = "LABELS", default_value = "auto")]
    pub labels: LabelSource,
    /// Batches of a tarball to score: `all`, or a comma-separated list (`test_batch,data_batch_1`).
    #[arg(long, env = "BATCHES", default_value = "test_batch")]
    pub batches: BatchSelection,
    /// Images per partition: one message, which a worker scores in calls of `--max-call-mb`
    /// (a model with a large input gets smaller partitions, as many images as a worker holds).
    #[arg(long, env = "PARTITION_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub partition_size: u32,
    /// Classes reported per image in `scores.csv`, best first.
    #[arg(long = "top-k", env = "TOP_K", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_TOP_K as i64))]
    pub top_k: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "model {model} is not staged in {store} (no {key}); run `producer stage --model ... --model-name {model}` first"
    )]
    NotStaged {
        model: String,
        store: String,
        key: String,
    },
    #[error(transparent)]
    Spec(#[from] fleet_spec::SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Labels(String),
    #[error("the dataset reader failed: {0}")]
    Task(String),
}

/// The dataset of a job, found in the container.
#[derive(Debug)]
enum Dataset {
    Tarball {
        blob: String,
        /// CIFAR-10's labels are kept.
        labelled: bool,
    },
    Images {
        collection: collection::Collection,
        labels: Vec<Option<u32>>,
    },
}

/// What the job needs to know before anything is published.
#[derive(Debug)]
struct Plan {
    spec: ModelSpec,
    classes: Vec<String>,
    dataset: Dataset,
    labels: String,
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
    let (plan_store, plan_options) = (store.clone(), options.clone());
    let plan = tokio::task::spawn_blocking(move || plan(plan_store.as_ref(), &plan_options))
        .await
        .map_err(|e| SubmitError::Task(e.to_string()))??;
    // A worker holds a partition's images until the model takes them: a model with a large
    // input gets partitions it can hold.
    let most = plan.spec.max_partition_images();
    let mut options = options.clone();
    if options.partition_size > most {
        tracing::warn!(
            requested = options.partition_size,
            partition_size = most,
            "model {}'s input is {} bytes an image: partitions cut to {most} images, which a worker can hold",
            options.model,
            plan.spec.waiting_bytes()
        );
        options.partition_size = most;
    }
    let options = &options;
    let submitted_at_ms = now_ms();
    let outcome = publish(
        broker,
        store.clone(),
        options,
        job,
        &plan,
        submitted_at_ms,
        &mut on_published,
    )
    .await;
    if let Err(e) = &outcome {
        // Anything published so far must not complete into results. The marker in the
        // container stops a collector even when the broker is what failed; the message tells
        // the active collector at once.
        let reason = e.to_string();
        let (marker_store, marker_job, marker_reason) = (store, job.to_owned(), reason.clone());
        let marked = tokio::task::spawn_blocking(move || {
            marker_store.put(&job::cancelled_key(&marker_job), marker_reason.as_bytes())
        })
        .await;
        let failure = match marked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failure {
            tracing::error!(%job, %error, "could not mark the job cancelled in the container");
        }
        let cancel = ResultMessage::Cancelled(Cancelled {
            job: job.into(),
            reason,
        });
        if let Err(cancel_error) = broker
            .publish(Queue::Results, message::encode(&cancel))
            .await
        {
            tracing::error!(%job, error = %cancel_error, "could not cancel the job after a failed submission");
        }
    }
    outcome
}

/// Reads the model's spec, finds the dataset and resolves the labels.
fn plan(store: &dyn BlobStore, options: &SubmitOptions) -> Result<Plan, SubmitError> {
    let model = &options.model;
    let spec_key = job::spec_key(model);
    let mut spec = match store.get(&spec_key) {
        Ok(bytes) => ModelSpec::from_json(&bytes, &spec_key)?,
        Err(e) if e.is_not_found() => {
            return Err(SubmitError::NotStaged {
                model: model.clone(),
                store: store.describe(),
                key: spec_key,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let model_key = job::model_key(model);
    if !store.exists(&model_key)? {
        return Err(SubmitError::NotStaged {
            model: model.clone(),
            store: store.describe(),
            key: model_key,
        });
    }
    // A name that cannot be a blob (`photos/`, `./photos`) can still be a prefix.
    let tarball = match store.exists(&options.dataset) {
        Ok(exists) => exists,
        Err(StoreError::BadKey(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if tarball {
        // A tarball: its labels are CIFAR-10's classes, and so are its names when the model
        // has none of its own.
        let labelled = match &options.labels {
            LabelSource::Auto => true,
            LabelSource::None => false,
            other => {
                return Err(SubmitError::Labels(format!(
                    "--labels {other} is for image collections; a tarball carries its own labels \
                     (use auto or none)"
                )));
            }
        };
        if labelled && spec.class_count as usize != CLASS_NAMES.len() {
            return Err(SubmitError::Labels(format!(
                "{} holds CIFAR-10 labels (10 classes) but model {model} has {} classes: they \
                 cannot be compared; score with --labels none for predictions only",
                options.dataset, spec.class_count
            )));
        }
        let classes = match (
            &spec.classes,
            spec.class_count as usize == CLASS_NAMES.len(),
        ) {
            (Some(names), _) => names.clone(),
            (None, true) => CLASS_NAMES.map(String::from).to_vec(),
            (None, false) => spec.class_names(),
        };
        return Ok(Plan {
            labels: if labelled { "tarball" } else { "none" }.into(),
            spec,
            classes,
            dataset: Dataset::Tarball {
                blob: options.dataset.clone(),
                labelled,
            },
        });
    }
    let mut collection = collection::list(store, &options.dataset)?;
    // A label file beside the images is read, not skipped.
    if let LabelSource::File(name) = &options.labels {
        collection.not_images.retain(|other| other != name);
    }
    if let Some(note) = collection.not_images_note() {
        tracing::warn!("{note}");
    }
    let has_names = spec.classes.is_some();
    // Moved out of the spec, not copied: a model may have a million classes.
    let classes = match spec.classes.take() {
        Some(names) => names,
        None => spec.class_names(),
    };
    let source = match &options.labels {
        LabelSource::Auto | LabelSource::None => ResolvedSource::None,
        LabelSource::Folders => {
            if !has_names {
                return Err(SubmitError::Labels(format!(
                    "folder labels need the class names of model {model}: stage it with \
                     --classes FILE (one name per line, in the model's output order)"
                )));
            }
            ResolvedSource::Folders
        }
        LabelSource::File(name) => {
            ResolvedSource::File(read_label_file(store, &collection.prefix, name)?)
        }
    };
    let labels = collection::resolve_labels(
        &collection.names,
        &source,
        &collection::Classes::new(&classes, spec.class_ids.as_deref()),
    )?;
    Ok(Plan {
        labels: options.labels.to_string(),
        spec,
        classes,
        dataset: Dataset::Images { collection, labels },
    })
}

/// A label file: beside the images, else a blob of that name, else a local file.
fn read_label_file(
    store: &dyn BlobStore,
    prefix: &str,
    name: &str,
) -> Result<LabelFile, SubmitError> {
    let beside = format!("{prefix}{name}");
    for key in [beside.as_str(), name] {
        match store.get(key) {
            Ok(bytes) => return Ok(LabelFile::parse(&String::from_utf8_lossy(&bytes), key)?),
            Err(e) if e.is_not_found() || matches!(e, StoreError::BadKey(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match std::fs::read_to_string(name) {
        Ok(text) => Ok(LabelFile::parse(&text, name)?),
        Err(e) => Err(SubmitError::Labels(format!(
            "label file {name} is neither a blob ({beside} or {name} in {}) nor a readable local file ({e})",
            store.describe()
        ))),
    }
}

/// Publishes every partition, writes the manifest and seals the job.
async fn publish<B: Broker>(
    broker: &B,
    store: Arc<dyn BlobStore>,
    options: &SubmitOptions,
    job: &str,
    plan: &Plan,
    submitted_at_ms: u64,
    on_published: &mut impl FnMut(u64),
) -> Result<Manifest, SubmitError> {
    let (kind, dataset, batches, labelled_images, samples) = match &plan.dataset {
        Dataset::Tarball { blob, labelled } => {
            let (batches, labelled_images, samples) = publish_tarball(
                broker,
                store.clone(),
                options,
                job,
                blob,
                *labelled,
                on_published,
            )
            .await?;
            (
                DatasetKind::Tarball,
                blob.clone(),
                batches,
                labelled_images,
                Some(samples),
            )
        }
        Dataset::Images { collection, labels } => {
            let batch =
                publish_collection(broker, options, job, collection, labels, on_published).await?;
            let labelled = labels.iter().flatten().count() as u64;
            (
                DatasetKind::Images,
                collection.prefix.clone(),
                vec![batch],
                labelled,
                None,
            )
        }
    };
    let published_at_ms = now_ms();
    let partitions = batches.iter().map(|b| b.partitions).sum();
    let images = batches.iter().map(|b| u64::from(b.images)).sum();
    let manifest = Manifest {
        job: job.into(),
        dataset,
        dataset_kind: kind,
        labels: plan.labels.clone(),
        labelled_images,
        model: options.model.clone(),
        model_sha256: plan.spec.provenance.onnx_sha256.clone(),
        classes: plan.classes.clone(),
        top_k: options.top_k,
        partition_size: options.partition_size,
        partitions,
        images,
        batches,
        submitted_at_ms,
        published_at_ms,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    let job_owned = job.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        store.put(&job::manifest_key(&job_owned), &manifest_json)?;
        if let Some(samples) = samples {
            store.put(&job::samples_key(&job_owned), &samples)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| SubmitError::Task(e.to_string()))??;
    let sealed = ResultMessage::Sealed(Sealed {
        job: job.into(),
        partitions,
        images,
        classes: plan.classes.clone(),
        labelled: labelled_images > 0,
        errors_column: kind == DatasetKind::Images,
        submitted_at_ms,
        published_at_ms,
    });
    broker
        .publish(Queue::Results, message::encode(&sealed))
        .await?;
    tracing::info!(%job, partitions, images, "job submitted");
    Ok(manifest)
}

/// Publishes partitions of blob names; the producer never reads an image.
async fn publish_collection<B: Broker>(
    broker: &B,
    options: &SubmitOptions,
    job: &str,
    collection: &collection::Collection,
    labels: &[Option<u32>],
    on_published: &mut impl FnMut(u64),
) -> Result<BatchEntry, SubmitError> {
    let size = options.partition_size as usize;
    let mut partitions = 0;
    for (i, (names, labels)) in collection
        .names
        .chunks(size)
        .zip(labels.chunks(size))
        .enumerate()
    {
        let partition = Partition {
            job: job.into(),
            partition: i as u32,
            model: options.model.clone(),
            batch: collection.prefix.clone(),
            first_index: (i * size) as u64,
            images: Images::Blobs {
                prefix: collection.prefix.clone(),
                names: names.to_vec(),
            },
            labels: labels.to_vec(),
            top_k: options.top_k,
            published_at_ms: now_ms(),
        };
        broker
            .publish(Queue::Partitions, message::encode(&partition))
            .await?;
        on_published(names.len() as u64);
        partitions += 1;
    }
    Ok(BatchEntry {
        name: collection.prefix.clone(),
        images: collection.names.len() as u32,
        first_partition: 0,
        partitions,
    })
}

/// Publishes every partition of the chosen tarball batches; returns the batches seen, the
/// labelled image count and the sample grid PNG.
async fn publish_tarball<B: Broker>(
    broker: &B,
    store: Arc<dyn BlobStore>,
    options: &SubmitOptions,
    job: &str,
    blob: &str,
    labelled: bool,
    on_published: &mut impl FnMut(u64),
) -> Result<(Vec<BatchEntry>, u64, Vec<u8>), SubmitError> {
    // The tarball is decoded on a blocking thread, a few partitions ahead of publishing.
    let (tx, mut rx) = mpsc::channel::<Partition>(4);
    let (dataset, selection, size, model, job_id, top_k) = (
        blob.to_owned(),
        options.batches.clone(),
        options.partition_size as usize,
        options.model.clone(),
        job.to_owned(),
        options.top_k,
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
                    first_index: start as u64,
                    images: Images::Planes {
                        height: HEIGHT as u32,
                        width: WIDTH as u32,
                        names: batch.filenames[start..end].to_vec(),
                        pixels: batch.pixels[start * IMAGE_BYTES..end * IMAGE_BYTES].to_vec(),
                    },
                    labels: batch.labels[start..end]
                        .iter()
                        .map(|&l| labelled.then_some(u32::from(l)))
                        .collect(),
                    top_k,
                    // Set when it is published.
                    published_at_ms: 0,
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
    while let Some(mut partition) = rx.recv().await {
        if let Images::Planes { names, pixels, .. } = &partition.images {
            for i in 0..names.len().min(SAMPLES - samples.len()) {
                let image = pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].to_vec();
                samples.push((image, names[i].clone()));
            }
        }
        let images = partition.len() as u64;
        partition.published_at_ms = now_ms();
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
    let labelled_images = if labelled {
        batches.iter().map(|b| u64::from(b.images)).sum()
    } else {
        0
    };
    let grid: Vec<Sample<'_>> = samples
        .iter()
        .map(|(pixels, caption)| Sample {
            width: WIDTH,
            height: HEIGHT,
            pixels,
            caption: caption.clone(),
        })
        .collect();
    Ok((batches, labelled_images, sample_grid_png(&grid, 8)))
}
