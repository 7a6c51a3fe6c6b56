//! Submitting a job: find the dataset and the model's classes, cut the dataset into
//! partitions, publish them, then write the manifest and seal the job.
//!
//! Two kinds of dataset sit behind [`Dataset`]: a CIFAR-10 tarball blob, which the producer
//! decodes and ships as pixels, and an image collection under a prefix, which it only lists:
//! its partitions carry blob names and the workers fetch the images (the claim check).

use std::sync::Arc;

use fleet_broker::{Broker, BrokerError, Queue};
use fleet_dataset::collection::{self, Entry, LabelSource};
use fleet_dataset::{
    self as dataset, BatchSelection, CLASS_NAMES, DatasetError, HEIGHT, IMAGE_BYTES, WIDTH,
};
use fleet_figures::{Sample, sample_grid_png};
use fleet_ledger::Ledger;
use fleet_protocol::job::{self, BatchEntry, DatasetKind, Manifest, now_ms};
use fleet_protocol::message::{
    self, Images, MAX_MODELS, MAX_TOP_K, Partition, ResultMessage, Sealed,
};
use fleet_service::errors::Chain;
use fleet_spec::ModelSpec;
use fleet_storage::{BlobStore, StoreError};
use tokio::sync::mpsc;

use crate::incremental::{self, Coverage};

/// Images shown in `samples.png`.
const SAMPLES: usize = 16;

/// What to score. Part of the `producer` binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitOptions {
    /// Dataset in the container: a CIFAR-10 tarball blob (python or binary version), or a
    /// prefix under which every JPEG, PNG, BMP, GIF and WebP file is scored.
    #[arg(long, env = "DATASET", default_value = job::DATASET_BLOB)]
    pub dataset: String,
    /// Model to score with: `models/<name>.onnx` and its spec `models/<name>.json` [default:
    /// the container's only staged model]. Several, comma-separated (`resnet50,resnet50-v2`),
    /// score each image in one pass, read once and prepared for each by its own spec, and are
    /// compared: the first with each other, every pair.
    #[arg(long = "model-name", env = "MODEL_NAME", value_delimiter = ',')]
    pub models: Vec<String>,
    /// True labels: `auto` (a tarball's own; none for images), `none`, `folders` (each
    /// image's folder names its class), or a label file in the container beside the images
    /// (or a local file): a CNTK map file (`path<TAB>label index`) or a `.csv`
    /// (`filename,label`, a class name or index).
    #[arg(long, env = "LABELS", default_value = "auto")]
    pub labels: LabelSource,
    /// Classes reported per image in `scores.csv`, best first.
    #[arg(long = "top-k", env = "TOP_K", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_TOP_K as i64))]
    pub top_k: u8,
    /// Score only the images of the collection that no complete job of the same model (its
    /// ONNX sha256 and spec) and top-k scored at their present size and version; the job's
    /// results name the earlier jobs whose rows cover the rest.
    #[arg(long, env = "INCREMENTAL")]
    pub incremental: bool,
    /// Partitions that may fail (dead-lettered: no worker could score them) with the job still
    /// completing, as partial: their images get rows with the reason, the summary and report
    /// say partial, and `--wait` exits with status 3. Beyond it the job cannot complete.
    #[arg(
        long = "max-failed-partitions",
        env = "MAX_FAILED_PARTITIONS",
        default_value_t = 0
    )]
    pub max_failed_partitions: u32,
    /// Batches of a tarball to score: `all`, or a comma-separated list (`test_batch,data_batch_1`).
    #[arg(long, env = "BATCHES", default_value = "test_batch")]
    pub batches: BatchSelection,
    /// Images per partition: one message, which a worker scores in calls of `--max-call-mb`
    /// (a model with a large input gets smaller partitions, as many images as a worker holds)
    /// [default: a size that cuts the job into at least 16 partitions, so that every worker of
    /// a fleet gets work, and at most 500].
    #[arg(long, env = "PARTITION_SIZE", value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub partition_size: Option<u32>,
}

/// Why a job cannot be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The model is not staged.
    #[error(
        "model {model} is not staged in {store} (no {key}); {}run `producer stage --model ... \
         --model-name {model}` first",
        staged_here(.staged)
    )]
    NotStaged {
        /// The model's name.
        model: String,
        /// The store, as it describes itself.
        store: String,
        /// The blob that is missing.
        key: String,
        /// The models that are staged there, for a user who mistyped one.
        staged: Vec<String>,
    },
    /// No model is named and the container holds none or several.
    #[error(transparent)]
    Model(#[from] crate::models::ChoiceError),
    /// Models that cannot be scored in one job.
    #[error("{0}")]
    Models(String),
    /// The model's spec cannot be read.
    #[error(transparent)]
    Spec(#[from] fleet_spec::SpecError),
    /// The container cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dataset cannot be read or labelled.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A partition or a message cannot be published.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Labels that cannot go with this dataset or model.
    #[error("{0}")]
    Labels(String),
    /// `--incremental` with a dataset it cannot narrow.
    #[error(
        "--incremental scores the new images of a collection listed with --labels none or folders; {0}"
    )]
    Incremental(String),
    /// The job would have more partitions than its results can be written in.
    #[error(
        "the job would have more than {max} partitions of {partition_size} images; give a larger --partition-size (or score the dataset in several jobs)",
        max = job::MAX_PARTITIONS
    )]
    TooManyPartitions {
        /// Images per partition.
        partition_size: u32,
    },
    /// A submission task panicked or was cancelled.
    #[error("a submission task failed (reading the dataset or the store)")]
    Task(#[from] tokio::task::JoinError),
}

/// The dataset of a job, found in the container.
#[derive(Debug)]
enum Dataset {
    Tarball {
        blob: String,
        /// CIFAR-10's labels are kept.
        labelled: bool,
    },
    /// An image collection, listed and labelled as it is published.
    Images {
        /// The prefix as the user gave it.
        prefix: String,
        /// The model has class names (folder labels need them).
        named: bool,
        /// The whole listing with its labels, when a label file labels it (matching the file
        /// needs every name); `None`: listed a page at a time as it is published.
        held: Option<collection::Labelled>,
    },
}

/// What the job needs to know before anything is published.
#[derive(Debug)]
struct Inputs {
    /// The model named first, or the container's only one.
    model: String,
    spec: ModelSpec,
    /// In a job of several models, the others, in order, each with its spec.
    more: Vec<(String, ModelSpec)>,
    classes: Vec<String>,
    dataset: Dataset,
    labels: String,
    /// The scope of a collection listed page by page (see [`incremental::scope`]).
    scope: Option<String>,
    /// The earlier jobs of the scope, for an incremental job.
    coverage: Option<Coverage>,
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
    let (inputs_store, inputs_options) = (store.clone(), options.clone());
    let mut inputs =
        tokio::task::spawn_blocking(move || find_inputs(inputs_store.as_ref(), &inputs_options))
            .await
            .map_err(SubmitError::Task)??;
    let coverage = std::sync::Mutex::new(inputs.coverage.take());
    // A worker holds a partition's images until the models take them: models with a large
    // input get partitions a worker can hold.
    let specs: Vec<ModelSpec> = std::iter::once(&inputs.spec)
        .chain(inputs.more.iter().map(|(_, spec)| spec))
        .cloned()
        .map(|mut spec| {
            // Only the sizes count here, and a model may have a million class names.
            (spec.classes, spec.class_ids) = (None, None);
            spec
        })
        .collect();
    let most = fleet_spec::max_partition_images(&specs);
    let mut options = options.clone();
    options.models = inputs.names();
    if let Some(requested) = options.partition_size.filter(|&size| size > most) {
        tracing::warn!(
            requested,
            partition_size = most,
            "the input of {} is {} bytes an image: partitions cut to {most} images, which a worker can hold",
            options.models.join(" and "),
            specs.iter().map(ModelSpec::waiting_bytes).sum::<u64>()
        );
        options.partition_size = Some(most);
    }
    let sizing = Sizing {
        chosen: options.partition_size,
        most,
    };
    let options = &options;
    let submitted_at_ms = now_ms();
    let submission = Submission {
        broker,
        store: store.clone(),
        options,
        sizing,
        job,
        inputs: &inputs,
        coverage,
    };
    let outcome = submission.publish(submitted_at_ms, &mut on_published).await;
    if let Err(e) = &outcome {
        // Anything published so far must not complete into results. The marker in the
        // container stops a collector even when the broker is what failed; the message tells
        // the active collector at once.
        let reason = Chain(e).to_string();
        if let Err(cancel_error) = fleet_ledger::cancel(store, broker, job, &reason).await {
            tracing::error!(%job, error = %Chain(&cancel_error), "could not cancel the job after a failed submission");
        }
    }
    outcome
}

impl Inputs {
    /// The job's models, in order.
    fn names(&self) -> Vec<String> {
        std::iter::once(&self.model)
            .chain(self.more.iter().map(|(name, _)| name))
            .cloned()
            .collect()
    }
}

/// "staged there: a, b; " (at most ten named), or nothing when none is.
fn staged_here(models: &[String]) -> String {
    const NAMED: usize = 10;
    match models.len() {
        0 => String::new(),
        n if n <= NAMED => format!("staged there: {}; ", models.join(", ")),
        n => format!(
            "staged there: {} and {} more; ",
            models[..NAMED].join(", "),
            n - NAMED
        ),
    }
}

/// Model `model`'s spec, as staged and as read, once its ONNX file is found beside it.
fn staged_spec(store: &dyn BlobStore, model: &str) -> Result<(Vec<u8>, ModelSpec), SubmitError> {
    let not_staged = |key: String| SubmitError::NotStaged {
        model: model.to_owned(),
        store: store.describe(),
        key,
        // Only to help: a listing that fails names nothing.
        staged: crate::models::staged(store)
            .unwrap_or_default()
            .into_iter()
            .filter(|name| name != model)
            .collect(),
    };
    let spec_key = job::spec_key(model);
    let spec_json = match store.get(&spec_key) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Err(not_staged(spec_key)),
        Err(e) => return Err(e.into()),
    };
    let spec = ModelSpec::from_json(&spec_json, &spec_key)?;
    let model_key = job::model_key(model);
    if !store.exists(&model_key)? {
        return Err(not_staged(model_key));
    }
    Ok((spec_json, spec))
}

/// Refuses models that cannot be scored in one job: more than a job holds, one named twice, a
/// multi-label one (its measures are its own), or models of other classes than the first's
/// (their predictions could not be compared, nor share the job's labels).
fn check_together(models: &[(String, Vec<u8>, ModelSpec)]) -> Result<(), SubmitError> {
    let refuse = |why: String| Err(SubmitError::Models(why));
    if models.len() > MAX_MODELS {
        return refuse(format!(
            "{} models named, and a job scores each image with {MAX_MODELS} at most",
            models.len()
        ));
    }
    let Some(((first, _, spec), rest)) = models.split_first() else {
        return Ok(());
    };
    for (i, (name, _, other)) in rest.iter().enumerate() {
        if models[..=i].iter().any(|(earlier, ..)| earlier == name) {
            return refuse(format!("model {name} is named twice in --model-name"));
        }
        for (name, spec) in [(first, spec), (name, other)] {
            if spec.multi_label.is_some() {
                return refuse(format!(
                    "model {name} is multi-label: a job of several models compares single-label \
                     classifiers (or embedding models); score it in a job of its own"
                ));
            }
        }
        let (ours, theirs) = (spec.class_names(), other.class_names());
        let why = if ours.len() != theirs.len() {
            Some(format!("{} classes against {}", ours.len(), theirs.len()))
        } else {
            (ours.iter().zip(&theirs).enumerate())
                .find(|(_, (a, b))| a != b)
                .map(|(c, (a, b))| format!("class {c} is {a:?} in one and {b:?} in the other"))
        };
        let ids_differ =
            matches!((&spec.class_ids, &other.class_ids), (Some(a), Some(b)) if a != b);
        if let Some(why) = why.or(ids_differ.then(|| "their class ids differ".to_owned())) {
            return refuse(format!(
                "models {first} and {name} do not have the same classes ({why}): a job of \
                 several models compares models of the same classes, in the same order; stage \
                 them with the same --classes"
            ));
        }
    }
    Ok(())
}

/// Reads the models' specs, finds the dataset and resolves the labels.
fn find_inputs(store: &dyn BlobStore, options: &SubmitOptions) -> Result<Inputs, SubmitError> {
    let names = match options.models.as_slice() {
        [] => vec![crate::models::chosen(store, None)?],
        names => names.to_vec(),
    };
    let mut models = names
        .into_iter()
        .map(|name| {
            let (json, spec) = staged_spec(store, &name)?;
            Ok((name, json, spec))
        })
        .collect::<Result<Vec<_>, SubmitError>>()?;
    check_together(&models)?;
    let jsons: Vec<(String, Vec<u8>)> = (models.iter())
        .map(|(name, json, _)| (name.clone(), json.clone()))
        .collect();
    let (model, _, mut spec) = models.remove(0);
    let more: Vec<(String, ModelSpec)> = (models.into_iter())
        .map(|(name, _, mut spec)| {
            // The first model's class names are the job's: the others have the same.
            (spec.classes, spec.class_ids) = (None, None);
            (name, spec)
        })
        .collect();
    let model = &model;
    // A name that cannot be a blob (`photos/`, `./photos`) can still be a prefix.
    let tarball = match store.exists(&options.dataset) {
        Ok(exists) => exists,
        Err(StoreError::BadKey(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if tarball && options.incremental {
        return Err(SubmitError::Incremental(format!(
            "{} is a tarball, scored whole",
            options.dataset
        )));
    }
    if !spec.has_classes() && !matches!(options.labels, LabelSource::Auto | LabelSource::None) {
        return Err(SubmitError::Labels(format!(
            "model {model} has no classes (it is staged for its embeddings alone): its jobs \
             take no labels; leave out --labels {}",
            options.labels
        )));
    }
    if tarball {
        // A tarball: its labels are CIFAR-10's classes, and so are its names when the model
        // has none of its own. A model with no classes takes none.
        let labelled = match &options.labels {
            LabelSource::Auto => spec.has_classes(),
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
        return Ok(Inputs {
            model: model.clone(),
            labels: if labelled { "tarball" } else { "none" }.into(),
            spec,
            more,
            classes,
            dataset: Dataset::Tarball {
                blob: options.dataset.clone(),
                labelled,
            },
            scope: None,
            coverage: None,
        });
    }
    let named = spec.classes.is_some();
    // Moved out of the spec, not copied: a model may have a million classes.
    let classes = match spec.classes.take() {
        Some(names) => names,
        None => spec.class_names(),
    };
    // Everything that can be refused is refused here, before anything is written.
    let known = collection::Classes::new(&classes, spec.class_ids.as_deref())
        .multi_label(spec.multi_label.is_some());
    let held = match &options.labels {
        LabelSource::File(file) if options.incremental => {
            return Err(SubmitError::Incremental(format!(
                "a label file ({file}) labels images by name alone"
            )));
        }
        LabelSource::File(_) => Some(collection::labelled(
            store,
            &options.dataset,
            &options.labels,
            &known,
            named,
        )?),
        _ => {
            collection::check(store, &options.dataset, &options.labels, &known, named)?;
            None
        }
    };
    // A collection listed page by page records its listing, so that later incremental jobs
    // of its scope can build on it.
    let scope = held.is_none().then(|| {
        let models: Vec<(&str, &[u8])> = (jsons.iter())
            .map(|(name, json)| (name.as_str(), json.as_slice()))
            .collect();
        incremental::scope(&models, options.top_k)
    });
    let coverage = match &scope {
        Some(scope) if options.incremental => Some(Coverage::find(store, scope)?),
        _ => None,
    };
    Ok(Inputs {
        model: model.clone(),
        labels: options.labels.to_string(),
        spec,
        more,
        classes,
        dataset: Dataset::Images {
            prefix: options.dataset.clone(),
            named,
            held,
        },
        scope,
        coverage,
    })
}

/// What listing a collection for a job came to.
#[derive(Debug, Default)]
struct Listing {
    /// Images published with a label.
    labelled: u64,
    /// Images left out as unchanged (an incremental job).
    unchanged: u64,
    /// Blocks of the job's listing staged.
    blocks: u32,
    /// The earlier jobs covering the unchanged images (an incremental job).
    since: Option<Vec<String>>,
}

/// Leaves out of `page` the images `coverage` covers; how many.
fn narrow(coverage: &mut Coverage, prefix: &str, page: &mut Vec<Entry>) -> u64 {
    let before = page.len();
    page.retain(|entry| match &entry.listed {
        Some((size, version)) => {
            !coverage.covers(&format!("{prefix}{}", entry.name), *size, version)
        }
        // Never left out unless its version says it is unchanged.
        None => true,
    });
    (before - page.len()) as u64
}

/// Cuts a collection's images, as they are listed, into partitions of `size` and publishes
/// each as soon as it is full.
struct Cutter {
    prefix: String,
    sizing: Sizing,
    /// The partition size, once settled: when the images seen settle it, or at the end.
    size: Option<usize>,
    waiting: Vec<Entry>,
    partitions: u32,
    published: u64,
}

impl Cutter {
    fn new(prefix: &str, sizing: Sizing) -> Self {
        Self {
            prefix: prefix.to_owned(),
            sizing,
            size: None,
            waiting: Vec::new(),
            partitions: 0,
            published: 0,
        }
    }

    /// Takes a page in, publishing every partition it fills once the size is settled (until
    /// then, the images wait: a bounded number, [`Sizing::settled_after`]).
    async fn add<B: Broker>(
        &mut self,
        submission: &Submission<'_, B>,
        page: Vec<Entry>,
        on_published: &mut impl FnMut(u64),
    ) -> Result<(), SubmitError> {
        self.waiting.extend(page);
        if self.size.is_none() && self.waiting.len() >= self.sizing.settled_after() {
            self.size = Some(self.sizing.of(self.waiting.len()) as usize);
        }
        let Some(size) = self.size else {
            return Ok(());
        };
        while self.waiting.len() >= size {
            let rest = self.waiting.split_off(size);
            let full = std::mem::replace(&mut self.waiting, rest);
            self.publish(submission, full, on_published).await?;
        }
        Ok(())
    }

    /// Publishes what waits (all of a collection smaller than the size's settling point,
    /// else the last, partial partition); what was published.
    async fn finish<B: Broker>(
        mut self,
        submission: &Submission<'_, B>,
        labelled_images: u64,
        on_published: &mut impl FnMut(u64),
    ) -> Result<Published, SubmitError> {
        let size = *(self.size).get_or_insert(self.sizing.of(self.waiting.len()) as usize);
        while !self.waiting.is_empty() {
            let rest = self.waiting.split_off(size.min(self.waiting.len()));
            let part = std::mem::replace(&mut self.waiting, rest);
            self.publish(submission, part, on_published).await?;
        }
        Ok(Published {
            partition_size: size as u32,
            kind: DatasetKind::Images,
            dataset: self.prefix.clone(),
            batches: vec![BatchEntry {
                name: self.prefix,
                images: self.published as u32,
                first_partition: 0,
                partitions: self.partitions,
            }],
            labelled_images,
            samples: None,
            incremental: None,
        })
    }

    async fn publish<B: Broker>(
        &mut self,
        submission: &Submission<'_, B>,
        entries: Vec<Entry>,
        on_published: &mut impl FnMut(u64),
    ) -> Result<(), SubmitError> {
        let count = entries.len() as u64;
        submission
            .publish_names(
                &self.prefix,
                self.partitions,
                self.published,
                entries,
                on_published,
            )
            .await?;
        self.partitions += 1;
        self.published += count;
        Ok(())
    }
}

/// Partitions a job is cut into at least, by default: enough for every worker of a
/// fleet to get work (and for the bars to move) however few the images.
pub const MIN_PARTITIONS: u32 = 16;
/// Images a partition holds at most, by default: one message, scored in a few model calls.
pub const MAX_PARTITION_SIZE: u32 = 500;

/// How a job's images are cut into partitions: each batch (a collection, or a tarball's
/// batch) into partitions of one size, its last one holding the rest.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    /// `--partition-size`, when given (within `most`).
    chosen: Option<u32>,
    /// The most images a worker can hold waiting for the models.
    most: u32,
}

impl Sizing {
    /// The partition size of a batch of `images` images: the one chosen, else the largest
    /// that cuts it into at least [`MIN_PARTITIONS`] partitions (one per image when it has
    /// fewer), within [`MAX_PARTITION_SIZE`] and what a worker can hold.
    fn of(self, images: usize) -> u32 {
        let ceiling = MAX_PARTITION_SIZE.min(self.most).max(1);
        self.chosen.unwrap_or_else(|| {
            let even = images / MIN_PARTITIONS as usize;
            u32::try_from(even).unwrap_or(u32::MAX).clamp(1, ceiling)
        })
    }

    /// Images of a batch listed page by page after which its size is settled, whatever
    /// follows: the size is the ceiling from there on.
    fn settled_after(self) -> usize {
        match self.chosen {
            Some(_) => 0,
            None => MIN_PARTITIONS as usize * MAX_PARTITION_SIZE.min(self.most).max(1) as usize,
        }
    }
}

/// One job being submitted: what its publishing steps share.
struct Submission<'a, B> {
    broker: &'a B,
    store: Arc<dyn BlobStore>,
    options: &'a SubmitOptions,
    /// How its images are cut into partitions.
    sizing: Sizing,
    job: &'a str,
    inputs: &'a Inputs,
    /// The inputs' coverage, taken by the collection's lister.
    coverage: std::sync::Mutex<Option<Coverage>>,
}

/// What publishing a dataset's partitions came to.
struct Published {
    /// Images per partition (each batch's last partition holds the rest).
    partition_size: u32,
    kind: DatasetKind,
    /// The tarball blob or the collection's prefix.
    dataset: String,
    batches: Vec<BatchEntry>,
    labelled_images: u64,
    /// The sample grid PNG (tarballs).
    samples: Option<Vec<u8>>,
    /// What an incremental job left to earlier ones.
    incremental: Option<job::Incremental>,
}

impl<B: Broker> Submission<'_, B> {
    /// Publishes every partition, writes the manifest and seals the job.
    async fn publish(
        &self,
        submitted_at_ms: u64,
        on_published: &mut impl FnMut(u64),
    ) -> Result<Manifest, SubmitError> {
        self.write_plan().await?;
        let published = match &self.inputs.dataset {
            Dataset::Tarball { blob, labelled } => {
                self.publish_tarball(blob, *labelled, on_published).await?
            }
            Dataset::Images {
                held: Some(held), ..
            } => self.publish_held(held, on_published).await?,
            Dataset::Images {
                prefix,
                named,
                held: None,
            } => {
                self.publish_collection(prefix, *named, on_published)
                    .await?
            }
        };
        let manifest = self.manifest(&published, submitted_at_ms);
        self.write_manifest(&manifest, published.samples).await?;
        self.seal(&manifest).await?;
        tracing::info!(
            job = %self.job,
            partitions = manifest.partitions,
            images = manifest.images,
            "job submitted"
        );
        Ok(manifest)
    }

    /// `plan.json`: how the collector writes the rows, before any partition can arrive.
    async fn write_plan(&self) -> Result<(), SubmitError> {
        let several_batches = match &self.inputs.dataset {
            Dataset::Tarball { .. } => match &self.options.batches {
                BatchSelection::All => true,
                BatchSelection::Named(names) => names.len() > 1,
            },
            Dataset::Images { .. } => false,
        };
        let plan = job::Plan {
            job: self.job.into(),
            classes: self.inputs.classes.clone(),
            top_k: self.options.top_k,
            several_batches,
            max_failed_partitions: self.options.max_failed_partitions,
            vectors: self.vector_columns(),
            multi_label: self.inputs.spec.multi_label.clone(),
            models: match self.inputs.more.is_empty() {
                true => Vec::new(),
                false => self.inputs.names(),
            },
        };
        let (store, job) = (self.store.clone(), self.job.to_owned());
        let index = (self.inputs.scope.as_ref()).map(|scope| job::index_key(scope, self.job));
        tokio::task::spawn_blocking(move || {
            Ledger::new(store.as_ref(), &job).write_plan(&plan)?;
            // The job counts for later incremental jobs only once it is complete.
            match index {
                Some(index) => store.put(&index, b""),
                None => Ok(()),
            }
        })
        .await
        .map_err(SubmitError::Task)??;
        Ok(())
    }

    /// The vector columns of the job's rows: the model's; in a job of several models, each
    /// model's in turn, each named with its model's name first.
    fn vector_columns(&self) -> Vec<job::VectorColumn> {
        if self.inputs.more.is_empty() {
            return self.inputs.spec.vector_columns();
        }
        let specs = std::iter::once((&self.inputs.model, &self.inputs.spec))
            .chain(self.inputs.more.iter().map(|(name, spec)| (name, spec)));
        specs
            .enumerate()
            .flat_map(|(m, (name, spec))| {
                spec.vector_columns()
                    .into_iter()
                    .map(move |column| job::VectorColumn {
                        name: format!("{name}_{}", column.name),
                        model: m as u8,
                        ..column
                    })
            })
            .collect()
    }

    /// Refuses partition `partition` when the job would have more than its results can hold.
    fn check_partition(&self, partition: u32, size: usize) -> Result<(), SubmitError> {
        if partition >= job::MAX_PARTITIONS {
            return Err(SubmitError::TooManyPartitions {
                partition_size: size as u32,
            });
        }
        Ok(())
    }

    fn manifest(&self, published: &Published, submitted_at_ms: u64) -> Manifest {
        let batches = &published.batches;
        Manifest {
            job: self.job.into(),
            dataset: published.dataset.clone(),
            dataset_kind: published.kind,
            labels: self.inputs.labels.clone(),
            labelled_images: published.labelled_images,
            model: self.inputs.model.clone(),
            model_sha256: self.inputs.spec.provenance.onnx_sha256.clone(),
            more_models: (self.inputs.more.iter())
                .map(|(name, spec)| job::ModelRef {
                    name: name.clone(),
                    sha256: spec.provenance.onnx_sha256.clone(),
                })
                .collect(),
            classes: self.inputs.classes.clone(),
            top_k: self.options.top_k,
            partition_size: published.partition_size,
            partitions: batches.iter().map(|b| b.partitions).sum(),
            images: batches.iter().map(|b| u64::from(b.images)).sum(),
            batches: batches.clone(),
            submitted_at_ms,
            published_at_ms: now_ms(),
            incremental: published.incremental.clone(),
        }
    }

    /// `manifest.json`, and the sample grid where there is one.
    async fn write_manifest(
        &self,
        manifest: &Manifest,
        samples: Option<Vec<u8>>,
    ) -> Result<(), SubmitError> {
        let (store, job, manifest) = (self.store.clone(), self.job.to_owned(), manifest.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let ledger = Ledger::new(store.as_ref(), &job);
            ledger.write_manifest(&manifest)?;
            if let Some(samples) = samples {
                ledger.write_samples(&samples)?;
            }
            Ok(())
        })
        .await
        .map_err(SubmitError::Task)??;
        Ok(())
    }

    /// The `Sealed` message: from here a collector may complete the job.
    async fn seal(&self, manifest: &Manifest) -> Result<(), SubmitError> {
        let sealed = ResultMessage::Sealed(Sealed {
            job: self.job.into(),
            container: self.store.container().to_owned(),
            partitions: manifest.partitions,
            images: manifest.images,
            labelled: manifest.labelled_images > 0,
            submitted_at_ms: manifest.submitted_at_ms,
            published_at_ms: manifest.published_at_ms,
        });
        self.broker
            .publish(Queue::Results, message::encode(&sealed))
            .await?;
        Ok(())
    }

    /// Publishes partitions of blob names as the collection is listed, a page at a time; the
    /// producer never reads an image, and holds one page of names (see
    /// [`collection::for_each_page`] for a label file's exception).
    async fn publish_collection(
        &self,
        dataset: &str,
        named: bool,
        on_published: &mut impl FnMut(u64),
    ) -> Result<Published, SubmitError> {
        let prefix = collection::normalize_prefix(dataset);
        let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(2);
        let lister = {
            let (store, dataset, source) = (
                self.store.clone(),
                dataset.to_owned(),
                self.options.labels.clone(),
            );
            let (classes, ids, multi) = (
                self.inputs.classes.clone(),
                self.inputs.spec.class_ids.clone(),
                self.inputs.spec.multi_label.is_some(),
            );
            let mut coverage = self.coverage.lock().expect("never poisoned").take();
            let (prefix, listing) = (prefix.clone(), job::listing_key(self.job));
            tokio::task::spawn_blocking(move || -> Result<Listing, SubmitError> {
                let classes = collection::Classes::new(&classes, ids.as_deref()).multi_label(multi);
                let mut outcome = Listing::default();
                collection::for_each_page(
                    store.as_ref(),
                    &dataset,
                    &source,
                    &classes,
                    named,
                    &mut |mut page| {
                        if let Some(coverage) = &mut coverage {
                            outcome.unchanged += narrow(coverage, &prefix, &mut page);
                        }
                        if page.is_empty() {
                            return Ok(());
                        }
                        outcome.labelled += page
                            .iter()
                            .filter(|e| e.label.is_some() || e.tags.is_some())
                            .count() as u64;
                        let lines = incremental::listing_lines(&prefix, &page);
                        store
                            .stage_block(&listing, outcome.blocks, lines.as_bytes())
                            .map_err(DatasetError::Store)?;
                        outcome.blocks += 1;
                        tx.blocking_send(page)
                            .map_err(|_| DatasetError::Stopped("publishing stopped"))
                    },
                )?;
                let blocks: Vec<u32> = (0..outcome.blocks).collect();
                store.commit_blocks(&listing, &blocks)?;
                store.discard_blocks(&listing)?;
                outcome.since = coverage.map(|c| c.jobs().to_vec());
                Ok(outcome)
            })
        };
        let mut cutter = Cutter::new(&prefix, self.sizing);
        let mut outcome = Ok(());
        while let Some(page) = rx.recv().await {
            outcome = cutter.add(self, page, on_published).await;
            if outcome.is_err() {
                break;
            }
        }
        // Dropping the receiver stops the listing at its next page.
        drop(rx);
        let listed = lister.await.map_err(SubmitError::Task)?;
        outcome?;
        let listed = listed?;
        let mut published = cutter.finish(self, listed.labelled, on_published).await?;
        if let (Some(since), Some(scope)) = (listed.since, &self.inputs.scope) {
            tracing::info!(job = %self.job, unchanged = listed.unchanged, since = ?since, "incremental: unchanged images left to earlier jobs");
            published.incremental = Some(job::Incremental {
                scope: scope.clone(),
                since,
                unchanged: listed.unchanged,
            });
        }
        Ok(published)
    }

    /// Publishes partitions of a collection listed whole (a label file labels it).
    async fn publish_held(
        &self,
        held: &collection::Labelled,
        on_published: &mut impl FnMut(u64),
    ) -> Result<Published, SubmitError> {
        let size = self.sizing.of(held.collection.names.len()) as usize;
        let mut cutter = Cutter::new(&held.collection.prefix, self.sizing);
        let mut page_start = 0;
        for (names, labels) in held
            .collection
            .names
            .chunks(size)
            .zip(held.labels.chunks(size))
        {
            let first = page_start;
            page_start += names.len();
            let page = (names.iter().zip(labels).enumerate())
                .map(|(i, (name, &label))| Entry {
                    name: name.clone(),
                    label,
                    tags: held.tags.get(first + i).cloned().flatten(),
                    listed: None,
                })
                .collect();
            cutter.add(self, page, on_published).await?;
        }
        let labelled =
            (held.labels.iter().flatten().count() + held.tags.iter().flatten().count()) as u64;
        cutter.finish(self, labelled, on_published).await
    }

    /// Publishes partition `partition` of a collection: `entries`, images with their labels,
    /// the first being the collection's image `first_index`.
    async fn publish_names(
        &self,
        prefix: &str,
        partition: u32,
        first_index: u64,
        entries: Vec<Entry>,
        on_published: &mut impl FnMut(u64),
    ) -> Result<(), SubmitError> {
        self.check_partition(partition, entries.len())?;
        let images = entries.len() as u64;
        let multi = self.inputs.spec.multi_label.is_some();
        let (mut names, mut labels, mut tags) = (Vec::new(), Vec::new(), Vec::new());
        for entry in entries {
            names.push(entry.name);
            labels.push(entry.label);
            if multi {
                tags.push(entry.tags);
            }
        }
        let partition = Partition {
            job: self.job.into(),
            container: self.store.container().to_owned(),
            partition,
            models: self.inputs.names(),
            batch: prefix.to_owned(),
            first_index,
            images: Images::Blobs {
                prefix: prefix.to_owned(),
                names,
            },
            labels,
            tags,
            top_k: self.options.top_k,
            published_at_ms: now_ms(),
        };
        self.broker
            .publish(Queue::Partitions, message::encode(&partition))
            .await?;
        on_published(images);
        Ok(())
    }

    /// Publishes every partition of the chosen tarball batches, decoded on a blocking thread a
    /// few partitions ahead of publishing.
    async fn publish_tarball(
        &self,
        blob: &str,
        labelled: bool,
        on_published: &mut impl FnMut(u64),
    ) -> Result<Published, SubmitError> {
        let (tx, mut rx) = mpsc::channel::<Partition>(4);
        let reader = self.read_tarball(blob, labelled, tx);
        let mut samples: Vec<(Vec<u8>, String)> = Vec::new();
        let mut publish_error = None;
        while let Some(mut partition) = rx.recv().await {
            if let Images::Planes { names, pixels, .. } = &partition.images {
                for i in 0..names.len().min(SAMPLES - samples.len()) {
                    let image = pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].to_vec();
                    samples.push((image, names[i].clone()));
                }
            }
            if let Err(e) = self.check_partition(partition.partition, partition.len()) {
                drop(rx);
                let _ = reader.await;
                return Err(e);
            }
            let images = partition.len() as u64;
            partition.published_at_ms = now_ms();
            if let Err(e) = self
                .broker
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
        let read = reader.await.map_err(SubmitError::Task)?;
        if let Some(e) = publish_error {
            return Err(e.into());
        }
        let (partition_size, batches) = read?;
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
        Ok(Published {
            partition_size,
            kind: DatasetKind::Tarball,
            dataset: blob.to_owned(),
            batches,
            labelled_images,
            samples: Some(sample_grid_png(&grid, 8)),
            incremental: None,
        })
    }

    /// Reads the tarball's chosen batches on a blocking thread into `tx`, one partition at a
    /// time; the partition size (settled by the first batch, for every batch) and the batches
    /// seen.
    fn read_tarball(
        &self,
        blob: &str,
        labelled: bool,
        tx: mpsc::Sender<Partition>,
    ) -> tokio::task::JoinHandle<Result<(u32, Vec<BatchEntry>), SubmitError>> {
        let container = self.store.container().to_owned();
        let (store, dataset, selection, sizing, models, job_id, top_k) = (
            self.store.clone(),
            blob.to_owned(),
            self.options.batches.clone(),
            self.sizing,
            self.inputs.names(),
            self.job.to_owned(),
            self.options.top_k,
        );
        // A multi-label model's true classes are tags: CIFAR-10's one label, as a set.
        let multi = self.inputs.spec.multi_label.is_some();
        tokio::task::spawn_blocking(move || -> Result<(u32, Vec<BatchEntry>), SubmitError> {
            let source = store.open(&dataset)?;
            let mut entries = Vec::new();
            let mut next_partition = 0u32;
            let mut settled = None;
            dataset::read_tarball(source, &dataset, &selection, |batch| {
                let size = *settled.get_or_insert(sizing.of(batch.len()) as usize);
                let first_partition = next_partition;
                for start in (0..batch.len()).step_by(size) {
                    let end = (start + size).min(batch.len());
                    let partition = Partition {
                        job: job_id.clone(),
                        container: container.clone(),
                        partition: next_partition,
                        models: models.clone(),
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
                            .map(|&l| (labelled && !multi).then_some(u32::from(l)))
                            .collect(),
                        tags: match multi {
                            true => batch.labels[start..end]
                                .iter()
                                .map(|&l| labelled.then(|| vec![u32::from(l)]))
                                .collect(),
                            false => Vec::new(),
                        },
                        top_k,
                        // Set when it is published.
                        published_at_ms: 0,
                    };
                    next_partition += 1;
                    tx.blocking_send(partition)
                        .map_err(|_| DatasetError::Stopped("publishing stopped"))?;
                }
                entries.push(BatchEntry {
                    name: batch.name.clone(),
                    images: batch.len() as u32,
                    first_partition,
                    partitions: next_partition - first_partition,
                });
                Ok(())
            })?;
            let size = settled.unwrap_or(1) as u32;
            Ok((size, entries))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_PARTITION_SIZE, MIN_PARTITIONS, Sizing};

    #[test]
    fn a_job_is_cut_into_at_least_sixteen_partitions_of_at_most_five_hundred() {
        let auto = Sizing {
            chosen: None,
            most: 20_000,
        };
        let partitions = |images: usize| images.div_ceil(auto.of(images) as usize);
        for images in [16, 17, 40, 150, 1_000, 7_999] {
            assert!(partitions(images) >= MIN_PARTITIONS as usize, "{images}");
        }
        assert_eq!(
            (auto.of(5), partitions(5)),
            (1, 5),
            "one image a partition below 16"
        );
        assert_eq!(auto.of(150), 9);
        assert_eq!(auto.of(10_000), MAX_PARTITION_SIZE);
        assert_eq!(auto.of(1_000_000), MAX_PARTITION_SIZE);
        // What a worker can hold of a large model bounds the size; a chosen size is kept.
        let held = Sizing {
            chosen: None,
            most: 5,
        };
        assert_eq!(held.of(10_000), 5);
        let chosen = Sizing {
            chosen: Some(3),
            most: 5,
        };
        assert_eq!((chosen.of(10_000), chosen.settled_after()), (3, 0));
        assert_eq!(auto.settled_after(), 16 * 500);
    }
}
