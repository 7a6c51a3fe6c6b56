//! Scoring one partition in two stages, so that the worker can overlap them across
//! partitions: [`Models::prepare`] gets every image ready (tarball pixels from the message, or
//! blobs fetched and decoded concurrently), then [`score_together`] makes one model call for
//! the partition (or for several partitions of one model, which a device runs faster as one
//! batch) and takes the top k per image.
//!
//! An image that cannot be read gets its own error and the partition goes on; a model that
//! cannot be used fails the partition (it would fail every time); a host that cannot run
//! models fails the worker, never the partition.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleet_imaging::{DecodeLimits, Image, Preprocessor, decoding_bytes, thumbnail};
use fleet_inference::{Fit, InferenceError, InferenceOptions, Scorer};
use fleet_protocol::gallery;
use fleet_protocol::job::{self, Thresholds, VectorColumn, VectorPrecision, now_ms};
use fleet_protocol::message::{Images, Partition, Score, Scored, Thumbnail};
use fleet_service::concurrent;
use fleet_service::errors::chain;
use fleet_spec::{ModelSpec, Outputs, sha256_hex};
use fleet_storage::{BlobStore, Containers, ErrorKind};

use crate::budget::Budget;

/// How images are fetched, decoded and fed to the model. Part of the worker's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageOptions {
    /// Largest model input and output of one call, in MiB: a partition's images are scored in
    /// calls of as many images as fit (at least one; for a model with a fixed batch, a few
    /// batches per run at most), whatever the partition size, so that a worker's memory
    /// follows the model's size, not the partition's. On a GPU, raise it to fill the device
    /// (1024, say).
    #[arg(long, env = "MAX_CALL_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_call_mb: u32,
    /// Blobs of one partition fetched at once (decoded one per core, as far as
    /// --decode-memory-mb allows).
    #[arg(long, env = "FETCH_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub fetch_concurrency: u16,
    /// Memory that images decoding at once may hold, in MiB, as their headers say (16-bit
    /// and alpha pixels count): an image waits for room, and one larger than the whole budget
    /// is decoded alone; 0: 64 MiB per core.
    #[arg(long, env = "DECODE_MEMORY_MB", default_value_t = 0)]
    pub decode_memory_mb: u32,
    /// Largest image decoded, in pixels (width x height); larger ones get an error row
    /// (decompression bombs claim huge sizes in a few bytes).
    #[arg(long, env = "MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Largest image file read, in bytes; larger ones get an error row.
    #[arg(long, env = "MAX_IMAGE_BYTES", default_value_t = 64 << 20)]
    pub max_image_bytes: u64,
    /// Most scans of a progressive JPEG decoded; files with more get an error row (each scan
    /// is a pass over the whole image: thousands of empty ones take seconds of CPU).
    #[arg(long, env = "MAX_JPEG_SCANS", default_value_t = 100)]
    pub max_jpeg_scans: u32,
}

/// Why a partition was not scored. Each holds the reason as it travels (a dead-letter note,
/// the error cell of the partition's rows): the error and its causes, written once
/// ([`fleet_service::errors::Chain`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreError {
    /// Will fail every time (the model is missing or unusable, the partition is invalid for
    /// it): dead-letter.
    Permanent(String),
    /// May succeed later (storage unreachable, say): retry.
    Transient(String),
    /// This host cannot score at all (no ONNX Runtime library, no GPU for `--provider cuda`):
    /// hand the partition back for another worker, and stop.
    Host(String),
}

/// A model ready to score, shared by the stage that prepares partitions and the one that runs
/// them.
#[derive(Debug)]
struct Loaded {
    spec: ModelSpec,
    preprocessor: Preprocessor,
    /// A session runs one call at a time; only the run stage takes it.
    scorer: Mutex<Scorer>,
    /// The execution provider the session runs on.
    provider: &'static str,
    /// Buffers of partitions already scored, for the next ones: two are in use at a time
    /// (one prepared, one running), and a fresh one per partition costs resident memory.
    spare: Mutex<Spare>,
    /// Images per model call: as many as `--max-call-mb` holds.
    call_images: usize,
    /// Where the partitions' vectors are written, for a model with embeddings.
    store: Arc<dyn BlobStore>,
}

/// Buffers kept for reuse.
#[derive(Debug, Default)]
struct Spare {
    pixels: Vec<Vec<u8>>,
    values: Vec<Vec<f32>>,
}

/// A partition's images between preparing and scoring: the 8-bit crops the model's filter made
/// (a quarter of the bytes of the values made from them at call time), or, for a filter that
/// never rounds to 8 bits, the model's input values themselves.
#[derive(Debug)]
enum Input {
    Pixels(Vec<u8>),
    Values(Vec<f32>),
}

/// One image's place in an [`Input`].
enum Slot<'a> {
    Pixels(&'a mut [u8]),
    Values(&'a mut [f32]),
}

impl Input {
    /// A buffer for `images` images of `model`, from its spares when it has one.
    fn new(model: &Loaded, images: usize) -> Self {
        let len = images * model.preprocessor.input_len();
        let mut spare = lock(&model.spare);
        if model.preprocessor.makes_pixels() {
            let mut pixels = spare.pixels.pop().unwrap_or_default();
            pixels.clear();
            pixels.resize(len, 0);
            Input::Pixels(pixels)
        } else {
            let mut values = spare.values.pop().unwrap_or_default();
            values.clear();
            values.resize(len, 0.0);
            Input::Values(values)
        }
    }

    /// Each image's slot, in order.
    fn slots(&mut self, image_len: usize) -> Vec<Slot<'_>> {
        match self {
            Input::Pixels(pixels) => pixels
                .chunks_exact_mut(image_len)
                .map(Slot::Pixels)
                .collect(),
            Input::Values(values) => values
                .chunks_exact_mut(image_len)
                .map(Slot::Values)
                .collect(),
        }
    }

    /// Writes image `i`'s model input into `out`.
    fn write(&self, i: usize, preprocessor: &Preprocessor, out: &mut [f32]) {
        let len = out.len();
        match self {
            Input::Pixels(pixels) => {
                preprocessor.write_from_pixels(&pixels[i * len..][..len], out);
            }
            Input::Values(values) => out.copy_from_slice(&values[i * len..][..len]),
        }
    }

    /// Gives the buffer back to `model`'s spares.
    fn recycle(self, model: &Loaded) {
        let mut spare = lock(&model.spare);
        match self {
            Input::Pixels(pixels) if !pixels.is_empty() => spare.pixels.push(pixels),
            Input::Values(values) if !values.is_empty() => spare.values.push(values),
            _ => {}
        }
    }
}

/// The models this worker has loaded, by container and name: each loaded once, on first use.
#[derive(Debug)]
pub struct Models {
    /// The containers served: each job's images and models are in its own.
    containers: Arc<Containers>,
    inference: InferenceOptions,
    images: ImageOptions,
    /// What images decoding at once may hold, over every partition.
    decoding: Budget,
    /// Images decoding at once, over every partition: one per core. Fetching is I/O and runs
    /// `--fetch-concurrency` wide; decoding more images than there are cores would only hold
    /// more of them at once (and scatter their buffers over more of the C heap's arenas).
    cores: Budget,
    loaded: HashMap<(String, String), Arc<Loaded>>,
}

/// Default memory for images decoding at once, per core (`--decode-memory-mb 0`): room for a
/// 12-megapixel photo turned upright on each.
const DECODE_BYTES_PER_CORE: u64 = 64 << 20;

/// A partition with its models' input ready ([`Models::prepare`]), to be run by the models
/// ([`score_together`]).
#[derive(Debug)]
pub struct Prepared {
    partition: Partition,
    /// The job's models, in its order, each with the partition's images prepared for it.
    models: Vec<(Arc<Loaded>, Input)>,
    images: ImagesRead,
    started_at_ms: u64,
    preprocess_ms: f64,
}

impl Models {
    /// Models to be loaded from the partitions' containers as they name them, run and fed as
    /// the options say.
    pub fn new(
        containers: Arc<Containers>,
        inference: InferenceOptions,
        images: ImageOptions,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as u64;
        let decoding = match images.decode_memory_mb {
            0 => DECODE_BYTES_PER_CORE * cores,
            mb => u64::from(mb) << 20,
        };
        Self {
            containers,
            inference,
            images,
            decoding: Budget::new(decoding),
            cores: Budget::new(cores),
            loaded: HashMap::new(),
        }
    }

    fn load(
        &mut self,
        store: &Arc<dyn BlobStore>,
        container: &str,
        model: &str,
    ) -> Result<Arc<Loaded>, ScoreError> {
        let key = (container.to_owned(), model.to_owned());
        if !self.loaded.contains_key(&key) {
            let call_bytes = (self.images.max_call_mb as usize).saturating_mul(1 << 20);
            let loaded = load(store, model, &self.inference, call_bytes)?;
            self.loaded.insert(key.clone(), Arc::new(loaded));
        }
        Ok(self.loaded[&key].clone())
    }

    /// Gets a validated partition's images ready for its models (each loaded on first use):
    /// the pixels in the message, or its blobs fetched and decoded, once, and prepared for
    /// each model by its own spec. On the partition's `last_attempt`, a blob the store still
    /// fails to read is that image's error, unless every blob fails (the store is away, not
    /// the blobs): one bad blob never costs its neighbours their scores.
    pub fn prepare(
        &mut self,
        partition: Partition,
        last_attempt: bool,
    ) -> Result<Prepared, ScoreError> {
        // The job's container: served here, or the partition is the job's mistake.
        let store = self
            .containers
            .get(&partition.container)
            .map_err(|e| match e.kind() {
                ErrorKind::Transient => ScoreError::Transient(chain(&e)),
                _ => ScoreError::Permanent(chain(&e)),
            })?;
        let models = (partition.models.iter())
            .map(|name| self.load(&store, &partition.container, name))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, model) in partition.models.iter().zip(&models) {
            let classes = model.spec.class_count;
            let tags = partition.tags.iter().flatten().flatten();
            if let Some(label) = partition
                .labels
                .iter()
                .flatten()
                .chain(tags)
                .find(|&&l| l >= classes)
            {
                return Err(ScoreError::Permanent(format!(
                    "partition {} of job {}: label {label} is beyond model {name}'s {classes} \
                     classes",
                    partition.partition, partition.job
                )));
            }
        }
        // A partition cut for these models holds this at most (the producer cuts them so);
        // a larger one would exhaust the worker's memory, whoever made it.
        let specs: Vec<ModelSpec> = models.iter().map(|m| m.spec.clone()).collect();
        let most = fleet_spec::max_partition_images(&specs) as usize;
        if partition.len() > most {
            return Err(ScoreError::Permanent(format!(
                "partition {} of job {} has {} images, but a worker holds at most {most} of \
                 model {} ({} bytes each) at once: submit it again with --partition-size {most}",
                partition.partition,
                partition.job,
                partition.len(),
                partition.models.join(" and "),
                specs.iter().map(ModelSpec::waiting_bytes).sum::<u64>()
            )));
        }
        let mut models: Vec<(Arc<Loaded>, Input)> = models
            .into_iter()
            .map(|model| {
                let input = Input::new(&model, partition.len());
                (model, input)
            })
            .collect();
        let started_at_ms = now_ms();
        let started = Instant::now();
        let images = read_images(
            &partition.images,
            &mut models,
            store.as_ref(),
            &Reading {
                options: &self.images,
                decoding: &self.decoding,
                cores: &self.cores,
                last_attempt,
            },
        )?;
        Ok(Prepared {
            preprocess_ms: started.elapsed().as_secs_f64() * 1000.0,
            partition,
            models,
            images,
            started_at_ms,
        })
    }
}

impl Prepared {
    /// Whether `self` and `other` are for the same loaded models (and so can share calls).
    pub fn same_models(&self, other: &Prepared) -> bool {
        self.models.len() == other.models.len()
            && (self.models.iter().zip(&other.models)).all(|(a, b)| Arc::ptr_eq(&a.0, &b.0))
    }

    /// Images in the partition.
    fn len(&self) -> usize {
        self.partition.len()
    }

    /// The partition's result from its images' rankings by each model (none when no image of
    /// the partition could be read); `vectors` says whether its vectors blob was written.
    fn into_scored(self, ranked: Vec<Vec<Ranked>>, calls: &Calls, worker: &str) -> Scored {
        let Self {
            partition,
            models,
            images:
                ImagesRead {
                    errors,
                    notes,
                    mut thumbnails,
                },
            started_at_ms,
            preprocess_ms,
        } = self;
        let provider = models.first().map_or("", |(model, _)| model.provider);
        for (model, input) in models {
            input.recycle(&model);
        }
        let k = usize::from(partition.top_k).max(1);
        // Each model's scores of the partition's images, and the few best classes of each
        // image, for the pictures the report may show (the scores keep the job's top-k).
        let mut shown: Vec<Vec<Vec<(u32, f32)>>> = Vec::with_capacity(ranked.len());
        let mut by_model: Vec<Vec<Score>> = Vec::with_capacity(ranked.len());
        for ranked in ranked {
            let mut ranked = ranked.into_iter();
            let mut model_shown = Vec::with_capacity(partition.len());
            let mut model_scores = Vec::with_capacity(partition.len());
            let images = (errors.iter().cloned())
                .zip(notes.iter().cloned())
                .zip(&partition.labels)
                .enumerate();
            for (i, ((error, note), &label)) in images {
                let ranking = ranked.next();
                let true_tags = partition.tags.get(i).cloned().flatten();
                model_scores.push(match (error, ranking) {
                    (Some(error), _) | (None, Some(Err(error))) => {
                        model_shown.push(Vec::new());
                        Score {
                            label,
                            top: Vec::new(),
                            error: Some(error),
                            scored: false,
                            tags: Vec::new(),
                            true_tags,
                        }
                    }
                    (None, Some(Ok(Ranking { mut top, tags }))) => {
                        model_shown.push(top.iter().take(gallery::SHOWN_TOP).copied().collect());
                        top.truncate(k);
                        Score {
                            label,
                            top,
                            error: note.map(|note| format!("scored despite: {note}")),
                            scored: true,
                            tags,
                            true_tags,
                        }
                    }
                    (None, None) => unreachable!("a readable image has its ranking"),
                });
            }
            shown.push(model_shown);
            by_model.push(model_scores);
        }
        let mut by_model = by_model.into_iter();
        let scores = by_model.next().unwrap_or_default();
        let more: Vec<Vec<Score>> = by_model.collect();
        let thumbnails = gallery::pick_thumbnails(partition.partition, &scores, &more)
            .into_iter()
            .filter_map(|i| {
                let image = match &partition.images {
                    Images::Planes {
                        height,
                        width,
                        pixels,
                        ..
                    } => {
                        let len = 3 * *height as usize * *width as usize;
                        let planes = &pixels[i * len..][..len];
                        thumbnail(
                            &Image::from_planes(planes, *height as usize, *width as usize),
                            gallery::THUMBNAIL_SIDE,
                        )
                    }
                    Images::Blobs { .. } => thumbnails.get_mut(i)?.take()?,
                };
                Some(Thumbnail {
                    position: i as u32,
                    png: fleet_figures::rgb_png(image.width, image.height, &image.data),
                    top: (shown.iter())
                        .map(|model| model.get(i).cloned().unwrap_or_default())
                        .collect(),
                })
            })
            .collect();
        // Each partition is charged its images' share of the calls, so that the job's summed
        // model time stays the time the models ran.
        let share = partition.len() as f64 / calls.images.max(1) as f64;
        let model_ms: Vec<f64> = calls.model_ms.iter().map(|ms| ms * share).collect();
        Scored {
            filenames: partition.images.names().to_vec(),
            job: partition.job,
            container: partition.container,
            partition: partition.partition,
            batch: partition.batch,
            first_index: partition.first_index,
            scores,
            inference_ms: model_ms.iter().sum(),
            model_ms: if more.is_empty() {
                Vec::new()
            } else {
                model_ms
            },
            more,
            worker: worker.to_owned(),
            preprocess_ms,
            published_at_ms: partition.published_at_ms,
            started_at_ms,
            finished_at_ms: now_ms(),
            provider: provider.to_owned(),
            // Tarball pixels arrive decoded: only files are.
            decoder: match &partition.images {
                Images::Planes { .. } => String::new(),
                Images::Blobs { .. } => fleet_imaging::jpeg_decoder().to_owned(),
            },
            thumbnails,
            failed: None,
            vectors: calls.vectors,
        }
    }
}

/// What the calls that scored a batch of partitions came to, for each partition's result.
struct Calls {
    /// Images in the batch.
    images: usize,
    /// Each model's time in its calls, in the job's order.
    model_ms: Vec<f64>,
    /// Whether each partition's vectors blob was written.
    vectors: bool,
}

/// The scores of a partition no worker could score: every image with `reason` as its error.
/// The collector writes its rows and counts it against the job's error budget.
pub fn failed(partition: &Partition, reason: &str) -> Scored {
    let now = now_ms();
    let scores: Vec<Score> = (partition.labels.iter())
        .enumerate()
        .map(|(i, &label)| Score {
            label,
            top: Vec::new(),
            error: Some(format!("partition not scored: {reason}")),
            scored: false,
            tags: Vec::new(),
            true_tags: partition.tags.get(i).cloned().flatten(),
        })
        .collect();
    Scored {
        job: partition.job.clone(),
        container: partition.container.clone(),
        partition: partition.partition,
        batch: partition.batch.clone(),
        first_index: partition.first_index,
        filenames: partition.images.names().to_vec(),
        scores: scores.clone(),
        more: vec![scores; partition.models.len().saturating_sub(1)],
        worker: String::new(),
        inference_ms: 0.0,
        model_ms: Vec::new(),
        preprocess_ms: 0.0,
        published_at_ms: partition.published_at_ms,
        started_at_ms: now,
        finished_at_ms: now,
        provider: String::new(),
        decoder: String::new(),
        thumbnails: Vec::new(),
        failed: Some(reason.to_owned()),
        vectors: false,
    }
}

/// Scores partitions of the same models ([`Prepared::same_models`]) together, and gives each
/// its own outcome, in order. A device runs one large batch much faster per image than several
/// small ones, so the partitions' images go to each model in calls of as many as
/// `--max-call-mb` holds, each call's input made from the images' 8-bit crops just before it
/// (or copied, for a filter that keeps values). A failed call fails every partition.
pub fn score_together(batch: Vec<Prepared>, worker: &str) -> Vec<Result<Scored, ScoreError>> {
    let Some(first) = batch.first() else {
        return Vec::new();
    };
    assert!(
        batch.iter().all(|p| p.same_models(first)),
        "partitions scored together share their models"
    );
    let models: Vec<Arc<Loaded>> = first.models.iter().map(|(m, _)| m.clone()).collect();
    let total: usize = batch.iter().map(Prepared::len).sum();
    let any_readable = batch
        .iter()
        .any(|p| p.images.errors.iter().any(Option::is_none));
    // Every image of the batch, as (partition, image), in order.
    let images: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(p, prepared)| (0..prepared.len()).map(move |i| (p, i)))
        .collect();
    // The report shows a few classes under each picture, whatever the job's top-k.
    let k = batch
        .iter()
        .map(|p| usize::from(p.partition.top_k))
        .max()
        .unwrap_or(1)
        .max(gallery::SHOWN_TOP);
    // Each partition's vectors blob, filled as its images' rows come: an image's vectors of
    // every model, one model after another.
    let row_bytes: usize = models.iter().map(|m| m.spec.vector_bytes()).sum();
    let mut vectors: Vec<Vec<u8>> = batch.iter().map(|p| vec![0; p.len() * row_bytes]).collect();
    let mut ranked: Vec<Vec<Ranked>> = Vec::with_capacity(models.len());
    let mut model_ms = Vec::with_capacity(models.len());
    let mut offset = 0;
    let mut call = Ok(());
    for (m, model) in models.iter().enumerate() {
        let started = Instant::now();
        let run = Run {
            batch: &batch,
            m,
            images: &images,
            k,
            offset,
            row_bytes,
        };
        match any_readable.then(|| run.rank(model, &mut vectors)) {
            Some(Ok(rankings)) => ranked.push(rankings),
            Some(Err(e)) => {
                call = Err(e);
                break;
            }
            None => ranked.push(Vec::new()),
        }
        model_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        offset += model.spec.vector_bytes();
    }
    let calls = Calls {
        images: total,
        model_ms,
        vectors: row_bytes > 0,
    };
    // Each model's rankings, taken a partition at a time.
    let mut ranked: Vec<std::vec::IntoIter<Ranked>> =
        ranked.into_iter().map(Vec::into_iter).collect();
    let store = models.first().map(|m| m.store.clone());
    batch
        .into_iter()
        .zip(vectors)
        .map(|(prepared, vectors)| {
            let n = prepared.len();
            let rankings: Vec<Vec<Ranked>> = (ranked.iter_mut())
                .map(|r| r.by_ref().take(n).collect())
                .collect();
            call.clone()?;
            // Large outputs travel through the store: the message only says they are there.
            if let (true, Some(store)) = (calls.vectors, &store) {
                let key = job::vectors_key(&prepared.partition.job, prepared.partition.partition);
                store.put(&key, &vectors).map_err(|e| match e.kind() {
                    ErrorKind::Transient => ScoreError::Transient(chain(&e)),
                    _ => ScoreError::Permanent(chain(&e)),
                })?;
            }
            Ok(prepared.into_scored(rankings, &calls, worker))
        })
        .collect()
}

/// One model's pass over a batch of partitions ([`score_together`]).
struct Run<'a> {
    batch: &'a [Prepared],
    /// The model's place in the job's order.
    m: usize,
    /// Every image of the batch, as (partition, image).
    images: &'a [(usize, usize)],
    /// Classes ranked per image.
    k: usize,
    /// Where the model's vectors start in an image's row of the vectors blob.
    offset: usize,
    /// Bytes of an image's row of the vectors blob (every model's vectors).
    row_bytes: usize,
}

impl Run<'_> {
    /// Runs `model` over the batch's images, in calls of as many as it takes at once; each
    /// image's ranking, in order, and its vectors written into its partition's blob.
    fn rank(&self, model: &Loaded, vectors: &mut [Vec<u8>]) -> Result<Vec<Ranked>, ScoreError> {
        let image_len = model.preprocessor.input_len();
        let classes = model.spec.class_count as usize;
        let row_len = classes
            + (model.spec.embeddings.iter())
                .map(|e| e.column.dim as usize)
                .sum::<usize>();
        let probabilities = model.spec.outputs == Outputs::Probabilities;
        let multi_label = model.spec.multi_label.as_ref();
        let columns = model.spec.vector_columns();
        let vector_bytes = model.spec.vector_bytes();
        // Each call's outputs are ranked as they come: a partition of a many-class model would
        // otherwise hold images x classes values (2 GB for 500 images of 1,000,000 classes).
        let mut ranked: Vec<Ranked> = Vec::with_capacity(self.images.len());
        let mut input = lock(&model.spare).values.pop().unwrap_or_default();
        let mut call_outputs = Vec::new();
        let mut scorer = lock(&model.scorer);
        let result = self
            .images
            .chunks(model.call_images)
            .try_for_each(|chunk| {
                input.clear();
                input.resize(chunk.len() * image_len, 0.0);
                for (&(p, i), slot) in chunk.iter().zip(input.chunks_exact_mut(image_len)) {
                    self.batch[p].models[self.m]
                        .1
                        .write(i, &model.preprocessor, slot);
                }
                scorer.score(&input, chunk.len(), &mut call_outputs)?;
                let mut values = Vec::new();
                for (&(p, i), row) in chunk.iter().zip(call_outputs.chunks_exact(row_len)) {
                    let (class_row, embedding_row) = row.split_at(classes);
                    values.clear();
                    ranked.push(match (classes, multi_label) {
                        (0, _) => Ok(Ranking::default()),
                        (_, None) => rank(class_row, self.k, probabilities),
                        (_, Some(thresholds)) => {
                            // Each class on its own: its sigmoid, kept as the row's
                            // class scores.
                            values.extend(class_row.iter().map(|&x| match probabilities {
                                true => x,
                                false => sigmoid(x),
                            }));
                            rank_tags(&values, self.k, thresholds)
                        }
                    });
                    values.extend_from_slice(embedding_row);
                    let out = &mut vectors[p][i * self.row_bytes + self.offset..][..vector_bytes];
                    write_vectors(&columns, &values, out);
                }
                Ok(())
            })
            .map_err(|e: InferenceError| ScoreError::Transient(chain(&e)));
        lock(&model.spare).values.push(input);
        result.map(|()| ranked)
    }
}

/// Writes one image's `values` (its vectors, one after another) into `out` as the job's vector
/// `columns` say: each scaled to length 1 if asked, in its precision, little-endian.
fn write_vectors(columns: &[VectorColumn], values: &[f32], out: &mut [u8]) {
    let (mut values, mut out) = (values, out);
    for column in columns {
        let (vector, rest) = values.split_at(column.dim as usize);
        let (bytes, rest_out) = out.split_at_mut(column.bytes());
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        let scale = if column.normalized && norm > 0.0 {
            1.0 / norm
        } else {
            1.0
        };
        match column.precision {
            VectorPrecision::Float32 => {
                for (v, b) in vector.iter().zip(bytes.chunks_exact_mut(4)) {
                    b.copy_from_slice(&(v * scale).to_le_bytes());
                }
            }
            VectorPrecision::Float16 => {
                for (v, b) in vector.iter().zip(bytes.chunks_exact_mut(2)) {
                    b.copy_from_slice(&half::f16::from_f32(v * scale).to_le_bytes());
                }
            }
        }
        (values, out) = (rest, rest_out);
    }
}

/// One image's ranking: its top classes with their scores and (a multi-label model's) its
/// tags, or why it has none.
type Ranked = Result<Ranking, String>;

/// What the model's scores say of one image.
#[derive(Debug, Clone, Default, PartialEq)]
struct Ranking {
    /// The best classes, best first.
    top: Vec<(u32, f32)>,
    /// A multi-label model's: every class over its threshold, best first.
    tags: Vec<(u32, f32)>,
}

/// Why a row that is not all numbers has no ranking: a NaN would report an arbitrary class.
fn not_a_number(row: &[f32]) -> Option<String> {
    let bad = row.iter().find(|v| !v.is_finite())?;
    Some(format!(
        "the model's output is not a number ({bad}): a fault of the model or its preparation \
         (--scale, --mean, --std), not of the image"
    ))
}

/// The ranking of one output row of a single-label model: [`top_k`].
fn rank(row: &[f32], k: usize, probabilities: bool) -> Ranked {
    match not_a_number(row) {
        Some(why) => Err(why),
        None => Ok(Ranking {
            top: top_k(row, k, probabilities),
            tags: Vec::new(),
        }),
    }
}

/// The ranking of a multi-label model's class `scores` (each already a probability): the
/// `k` best, and every class at or over its threshold, best first.
fn rank_tags(scores: &[f32], k: usize, thresholds: &Thresholds) -> Ranked {
    if let Some(why) = not_a_number(scores) {
        return Err(why);
    }
    let mut tags: Vec<(u32, f32)> = (scores.iter().enumerate())
        .filter(|&(c, &p)| p >= thresholds.of(c))
        .map(|(c, &p)| (c as u32, p))
        .collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Ranking {
        top: top_k(scores, k, true),
        tags,
    })
}

/// The logistic function, as ONNX's Sigmoid computes it.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Locks `mutex`, whatever panicked while holding it: a session and a buffer stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads model `model`: its spec, the ONNX model (checked against the spec), its mean image,
/// and a session.
fn load(
    store: &Arc<dyn BlobStore>,
    model: &str,
    options: &InferenceOptions,
    call_bytes: usize,
) -> Result<Loaded, ScoreError> {
    let fetch = |key: &str| {
        store.get(key).map_err(|e| match e.kind() {
            ErrorKind::Transient => ScoreError::Transient(chain(&e)),
            ErrorKind::NotFound | ErrorKind::Blob | ErrorKind::Corrupt | ErrorKind::Setup => {
                ScoreError::Permanent(format!(
                    "model {model}: {}; stage it with `producer stage`",
                    chain(&e)
                ))
            }
        })
    };
    let spec_key = job::spec_key(model);
    let mut spec = ModelSpec::from_json(&fetch(&spec_key)?, &spec_key)
        .map_err(|e| ScoreError::Permanent(chain(&e)))?;
    // Scores name classes by index: a worker holds no names (a million of them are ~50 MB).
    (spec.classes, spec.class_ids) = (None, None);
    let onnx = fetch(&job::model_key(model))?;
    if sha256_hex(&onnx) != spec.provenance.onnx_sha256 {
        return Err(ScoreError::Permanent(format!(
            "{} is not the model its spec {spec_key} describes (sha256 differs): stage the model again",
            job::model_key(model)
        )));
    }
    let mean = spec.mean_image_key().map(fetch).transpose()?;
    let preprocessor =
        Preprocessor::new(&spec, mean.as_deref()).map_err(|e| ScoreError::Permanent(chain(&e)))?;
    // The spec's size (what a model that leaves it free is fed, and what one that fixes it
    // must agree with) and its choice of output.
    let scorer =
        Scorer::load_fitted(&onnx, model, options, &Fit::of(&spec)).map_err(|e| match e {
            InferenceError::Host { .. } => ScoreError::Host(chain(&e)),
            InferenceError::Run { .. } => ScoreError::Transient(chain(&e)),
            _ => ScoreError::Permanent(chain(&e)),
        })?;
    let signature = scorer.signature();
    let expected = (
        spec.input.as_str(),
        spec.layout,
        spec.channels as usize,
        spec.height as usize,
        spec.width as usize,
        spec.class_count as usize,
        spec.embeddings
            .iter()
            .map(|e| e.column.dim as usize)
            .collect::<Vec<_>>(),
    );
    let actual = (
        signature.input.as_str(),
        signature.layout,
        signature.channels,
        signature.height,
        signature.width,
        signature.classes(),
        signature
            .embeddings
            .iter()
            .map(|e| e.len)
            .collect::<Vec<_>>(),
    );
    if expected != actual {
        return Err(ScoreError::Permanent(format!(
            "model {model} takes {actual:?} but its spec says {expected:?}: stage the model again"
        )));
    }
    // The model's values are float32 (made so even for a float16 model, converted at the call).
    // A call holds each image's input and its row of outputs (a many-class model's rows, or a
    // large embedding's, are the larger).
    let image_bytes = (preprocessor.input_len() + signature.row_len()) * 4;
    let budget = (call_bytes / image_bytes).max(1);
    // A model with a fixed batch runs it again and again, its runs at once: a call of a few
    // batches per run keeps them busy, and a longer one would only hold more memory.
    let call_images = match signature.fixed_batch {
        Some(fixed) => (fixed * scorer.runs() * CALLS_PER_RUN)
            .min(budget)
            .max(fixed),
        None => budget,
    };
    Ok(Loaded {
        spare: Mutex::new(Spare::default()),
        call_images,
        provider: scorer.provider(),
        scorer: Mutex::new(scorer),
        spec,
        preprocessor,
        store: store.clone(),
    })
}

/// Batches per run in one call of a model with a fixed batch: enough that runs finishing at
/// different times rarely wait for each other.
const CALLS_PER_RUN: usize = 4;

/// What [`read_images`] found out about a partition's images besides their model input.
#[derive(Debug)]
struct ImagesRead {
    /// Each image's error, if any (its slot is left blank; its outputs are not read).
    errors: Vec<Option<String>>,
    /// For images read despite a fault of their file (a JPEG with a damaged segment), the
    /// decoder's warning: the image is scored, and its row says so.
    notes: Vec<Option<String>>,
    /// For fetched images, a thumbnail of each one decoded (pixels in the message need none:
    /// they are still at hand when the report's picks are known).
    thumbnails: Vec<Option<Image>>,
}

/// How blobs are read: the worker's limits, its budgets for decoding, and whether this is the
/// partition's last attempt.
struct Reading<'a> {
    options: &'a ImageOptions,
    decoding: &'a Budget,
    cores: &'a Budget,
    last_attempt: bool,
}

/// Fills each model's input with every image's model input, each image read once. A storage
/// failure other than a missing blob fails the partition, to be retried: it says nothing about
/// the image.
fn read_images(
    images: &Images,
    models: &mut [(Arc<Loaded>, Input)],
    store: &dyn BlobStore,
    reading: &Reading<'_>,
) -> Result<ImagesRead, ScoreError> {
    let options = reading.options;
    match images {
        Images::Planes {
            height,
            width,
            pixels,
            ..
        } => {
            let (height, width) = (*height as usize, *width as usize);
            for (model, input) in models.iter_mut() {
                let preprocessor = &model.preprocessor;
                match input {
                    Input::Values(values) => {
                        preprocessor.write_planes(pixels, height, width, values);
                    }
                    Input::Pixels(_) => {
                        for (planes, slot) in pixels
                            .chunks_exact(3 * height * width)
                            .zip(input.slots(preprocessor.input_len()))
                        {
                            let image = Image::from_planes(planes, height, width);
                            if let Slot::Pixels(out) = slot {
                                preprocessor.write_pixels(&image, out);
                            }
                        }
                    }
                }
            }
            Ok(ImagesRead {
                errors: vec![None; images.len()],
                notes: vec![None; images.len()],
                thumbnails: Vec::new(),
            })
        }
        Images::Blobs { prefix, names } => {
            let limits = DecodeLimits {
                max_pixels: options.max_image_pixels,
                max_scans: options.max_jpeg_scans,
            };
            let loaded: Vec<Arc<Loaded>> = models.iter().map(|(m, _)| m.clone()).collect();
            let preprocessors: Vec<&Preprocessor> =
                loaded.iter().map(|m| &m.preprocessor).collect();
            // Each image's slot in each model's input.
            let mut slots: Vec<Vec<Slot<'_>>> = (0..names.len()).map(|_| Vec::new()).collect();
            for ((_, input), preprocessor) in models.iter_mut().zip(&preprocessors) {
                let image_len = preprocessor.input_len();
                for (i, slot) in input.slots(image_len).into_iter().enumerate() {
                    slots[i].push(slot);
                }
            }
            let prepared = Mutex::new(ImagesRead {
                errors: vec![None; names.len()],
                notes: vec![None; names.len()],
                thumbnails: vec![None; names.len()],
            });
            let threads = usize::from(options.fetch_concurrency).min(names.len());
            // Blobs the store failed to read on the last attempt, and the first reason.
            let store_failed = Mutex::new((0usize, None::<String>));
            concurrent::try_for_each(slots.into_iter().enumerate(), threads, |(i, slots)| {
                let key = format!("{prefix}{}", names[i]);
                let bytes = match fetch(store, &key, options.max_image_bytes) {
                    Ok(bytes) => Ok(bytes),
                    Err(Fetch::Image(error)) => Err(error),
                    Err(Fetch::Store(error)) if !reading.last_attempt => {
                        return Err(ScoreError::Transient(error));
                    }
                    Err(Fetch::Store(error)) => {
                        let mut failed = lock(&store_failed);
                        failed.0 += 1;
                        failed.1.get_or_insert_with(|| error.clone());
                        Err(format!(
                            "the store failed to read it on every attempt: {error}"
                        ))
                    }
                };
                // Both held until the decoded pixels are dropped, at the end of this image; the
                // core first, so that no memory is held by an image waiting for one.
                let _core = bytes.as_ref().ok().map(|_| reading.cores.hold(1));
                let _held = bytes.as_ref().ok().map(|bytes| {
                    reading
                        .decoding
                        .hold(decoding_bytes(bytes).unwrap_or(u64::MAX))
                });
                let decoded = bytes.and_then(|bytes| {
                    Preprocessor::decode_for(&preprocessors, &bytes, limits).map_err(|e| chain(&e))
                });
                // The thumbnail is made now, while the pixels are at hand; which ones the
                // report wants is known only once the partition is scored.
                let (error, note, small) = match decoded {
                    Ok((image, note)) => {
                        for (slot, preprocessor) in slots.into_iter().zip(&preprocessors) {
                            match slot {
                                Slot::Pixels(out) => preprocessor.write_pixels(&image, out),
                                Slot::Values(out) => preprocessor.write(&image, out),
                            }
                        }
                        (None, note, Some(thumbnail(&image, gallery::THUMBNAIL_SIDE)))
                    }
                    Err(error) => (Some(error), None, None),
                };
                let mut prepared = prepared.lock().expect("no panic holds the results");
                prepared.errors[i] = error;
                prepared.notes[i] = note;
                prepared.thumbnails[i] = small;
                Ok(())
            })?;
            // Every blob failing is the store's outage, not the blobs': the partition is retried
            // later (`producer retry`), not written as so many unreadable images.
            let (failed, first) = store_failed.into_inner().expect("no panic holds it");
            if failed == names.len()
                && let Some(error) = first
            {
                return Err(ScoreError::Transient(error));
            }
            Ok(prepared.into_inner().expect("no panic holds the results"))
        }
    }
}

/// Why a blob was not read, as the reason travels (see [`ScoreError`]).
enum Fetch {
    /// The image's own fault: missing, too large.
    Image(String),
    /// The store's: retry the partition later.
    Store(String),
}

/// Reads blob `key`, up to `max_bytes`.
fn fetch(store: &dyn BlobStore, key: &str, max_bytes: u64) -> Result<Vec<u8>, Fetch> {
    let reader = store.open(key).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Fetch::Image("the blob no longer exists".into()),
        // This blob, not the store: the others are read, and retrying changes nothing.
        ErrorKind::Blob | ErrorKind::Corrupt => Fetch::Image(chain(&e)),
        ErrorKind::Setup | ErrorKind::Transient => Fetch::Store(chain(&e)),
    })?;
    let mut bytes = Vec::new();
    reader
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Fetch::Store(format!("{key}: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Fetch::Image(format!(
            "file larger than the {max_bytes}-byte limit (--max-image-bytes)"
        )));
    }
    Ok(bytes)
}

/// The `k` most probable classes with their probabilities, best first; ties go to the lower
/// class, as numpy's argmax does. `row` is logits (softmax taken here) or, with
/// `probabilities`, already a distribution.
pub fn top_k(row: &[f32], k: usize, probabilities: bool) -> Vec<(u32, f32)> {
    let k = k.clamp(1, row.len().max(1));
    // Whether class `a` ranks above class `b`: a larger value, or an equal one and a lower
    // class.
    let above = |a: usize, b: usize| row[a].total_cmp(&row[b]).then(b.cmp(&a)).is_gt();
    // One pass, keeping the best k in order: a million classes cost a million comparisons
    // with the k-th, not a sort.
    let mut order: Vec<usize> = Vec::with_capacity(k + 1);
    for class in 0..row.len() {
        if order.len() == k && !above(class, order[k - 1]) {
            continue;
        }
        let at = order.partition_point(|&kept| above(kept, class));
        order.insert(at, class);
        order.truncate(k);
    }
    let max = row[order[0]];
    // exp(l - max) over the sum of exp(l - max): stable for any logits.
    let sum: f32 = if probabilities {
        1.0
    } else {
        row.iter().map(|&l| (l - max).exp()).sum()
    };
    order
        .into_iter()
        .map(|c| {
            let p = if probabilities {
                row[c]
            } else {
                (row[c] - max).exp() / sum
            };
            (c as u32, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Fetch, fetch, top_k};
    use fleet_storage::BlobStore;
    use fleet_storage::local::LocalStore;

    #[test]
    fn a_blob_that_cannot_be_read_is_the_images_fault_not_the_stores() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::create(root.path(), "ctr").unwrap();
        store.put("a/ok.jpg", b"bytes").unwrap();
        // A directory where a blob is named: no regular file to read, however often tried.
        std::fs::create_dir_all(root.path().join("ctr/a/dir.jpg")).unwrap();
        assert!(matches!(fetch(&store, "a/ok.jpg", 64), Ok(bytes) if bytes == b"bytes"));
        for (key, why) in [
            ("a/dir.jpg", "not a regular file"),
            ("a/gone.jpg", "no longer exists"),
        ] {
            match fetch(&store, key, 64) {
                Err(Fetch::Image(error)) => assert!(error.contains(why), "{key}: {error}"),
                Err(Fetch::Store(error)) => panic!("{key}: retried as the store's fault: {error}"),
                Ok(_) => panic!("{key} was read"),
            }
        }
        assert!(
            matches!(fetch(&store, "a/ok.jpg", 2), Err(Fetch::Image(_))),
            "too large"
        );
    }

    #[test]
    fn argmax_and_confidence() {
        let logits = [1.0, 3.0, 3.0, -2.0];
        let top = top_k(&logits, 1, false);
        assert_eq!(top[0].0, 1, "ties go to the first maximum");
        let expected = 3f32.exp() / logits.iter().map(|l| l.exp()).sum::<f32>();
        assert!((top[0].1 - expected).abs() < 1e-6);
        let top = top_k(&[1000.0, 0.0], 1, false);
        assert!(
            (top[0].1 - 1.0).abs() < 1e-6,
            "large logits must not overflow"
        );
    }

    #[test]
    fn top_k_ranks_as_a_stable_sort_does() {
        // Values with many ties, as quantised or saturated outputs have.
        let row: Vec<f32> = (0..5_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 26) as f32)
            .collect();
        let mut sorted: Vec<usize> = (0..row.len()).collect();
        sorted.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for k in [1, 2, 5, 50] {
            let top: Vec<usize> = top_k(&row, k, true).iter().map(|t| t.0 as usize).collect();
            assert_eq!(top, sorted[..k], "k = {k}");
        }
        assert_eq!(top_k(&[1.0, 2.0], 9, true).len(), 2, "k beyond the classes");
    }

    #[test]
    fn top_k_is_ordered_and_probabilities_are_kept() {
        let top = top_k(&[0.1, 0.6, 0.3], 3, true);
        assert_eq!(top, vec![(1, 0.6), (2, 0.3), (0, 0.1)]);
        assert_eq!(top_k(&[0.1, 0.6, 0.3], 2, true).len(), 2);
        let top = top_k(&[0.0, 2.0, 1.0], 2, false);
        assert_eq!((top[0].0, top[1].0), (1, 2));
        assert!(top[0].1 > top[1].1);
    }
}
