//! Jobs: their ids, their manifest, and where their blobs live in the container.
//!
//! Container layout:
//! - inputs: `cifar-10-python.tar.gz` (a tarball dataset), `<prefix>/**/*.{jpg,png,...}` (an
//!   image collection), `models/<name>.onnx`, `models/<name>.json` (its spec),
//!   `models/<name>.mean.xml` (its mean image, if any);
//! - a job's working state: `jobs/<job>/plan.json` (the rows' columns), `manifest.json`,
//!   `samples.png` (a tarball's first images, published with the results), `sealed.bin`,
//!   `partitions/<n>.bin` (the collector's durable state), `failed/<n>` (partition n stored
//!   failed), `retrying/<n>` (published again by `producer retry`), `cancelled` (the reason),
//!   `dead-letters/<n>` (why a worker dead-lettered partition n), `listing.tsv` (what a
//!   collection job was scored from); `index/<scope>/<job>` names the job for incremental jobs.
//!   What each means is `fleet-ledger`'s to say: the keys are here, the reading is there;
//! - its results: `results/<job>/scores.parquet/part-<n>.parquet`, written as each partition is
//!   stored, then `scores.csv`, `confusion.csv`, `confused_pairs.csv`, `confusion.png`,
//!   `samples.png`, `report.html` and last `summary.json`, written when the job completes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Default name of the dataset blob: the walkthrough's tarball.
pub const DATASET_BLOB: &str = "cifar-10-python.tar.gz";

/// The folders of a container where the product keeps its own blobs: no user's file goes there
/// (`producer status` would read images staged under `jobs/` as jobs).
pub const RESERVED_PREFIXES: [&str; 4] = ["jobs/", "models/", "results/", "index/"];

/// The reserved folder ([`RESERVED_PREFIXES`]) blob `key` would be in, if any.
pub fn reserved(key: &str) -> Option<&'static str> {
    RESERVED_PREFIXES
        .into_iter()
        .find(|prefix| key.starts_with(prefix) || key == prefix.trim_end_matches('/'))
}

/// Whether `name` may name a staged model: 1 to 100 letters, digits, `.`, `-` and `_`, not
/// beginning with `.`. It names blobs (`models/<name>.onnx`), is listed in `--model-name a,b`
/// and prefixes a job's columns (`<name>_predicted_label`).
pub fn valid_model_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Where models and their specs are staged.
pub fn models_prefix() -> &'static str {
    "models/"
}

/// The model's ONNX file.
pub fn model_key(model: &str) -> String {
    format!("models/{model}.onnx")
}

/// The model's spec: how its images are prepared.
pub fn spec_key(model: &str) -> String {
    format!("models/{model}.json")
}

/// The model's mean image (OpenCV XML), when its spec subtracts one.
pub fn mean_image_key(model: &str) -> String {
    format!("models/{model}.mean.xml")
}

/// Where every job's working state is: `jobs/<job>/...`.
pub const JOBS_PREFIX: &str = "jobs/";

/// Where job `job`'s working state is.
pub fn job_prefix(job: &str) -> String {
    format!("{JOBS_PREFIX}{job}/")
}

/// The job's plan (see [`Plan`]), written before its first partition is published.
pub fn plan_key(job: &str) -> String {
    format!("jobs/{job}/plan.json")
}

/// The job's manifest, written once every partition is published.
pub fn manifest_key(job: &str) -> String {
    format!("jobs/{job}/manifest.json")
}

/// Where the collector keeps the job's stored partitions.
pub fn partitions_prefix(job: &str) -> String {
    format!("jobs/{job}/partitions/")
}

/// A stored partition: the collector's durable copy of its scores.
pub fn partition_key(job: &str, partition: u32) -> String {
    format!("jobs/{job}/partitions/{partition:06}.bin")
}

/// The sample grid the producer draws while reading a tarball; the collector copies it into
/// the results when the job completes.
pub fn samples_key(job: &str) -> String {
    format!("jobs/{job}/samples.png")
}

/// The job's seal as the collector received it: the job's partition count, recorded before
/// the seal is acked so that a restarted or standby collector knows it. Only the `Sealed`
/// message makes it, never the manifest alone: a producer that wrote its manifest and then
/// failed to seal cancels the job, and no collector may complete it meanwhile.
pub fn sealed_key(job: &str) -> String {
    format!("jobs/{job}/sealed.bin")
}

/// Marker of a cancelled job, holding the reason: late results for it are dropped, even after
/// a restart, and `producer --wait` reports it.
pub fn cancelled_key(job: &str) -> String {
    format!("jobs/{job}/cancelled")
}

/// Where a worker notes that it dead-lettered a partition of the job, and why: the job can no
/// longer complete, and `producer --wait` says so with the reasons.
pub fn dead_letter_key(job: &str, partition: u32) -> String {
    format!("{}{partition:06}", dead_letters_prefix(job))
}

/// Where the notes of the job's dead-lettered partitions are.
pub fn dead_letters_prefix(job: &str) -> String {
    format!("jobs/{job}/dead-letters/")
}

/// Where the collector marks a partition it stored as failed (dead-lettered: its images have
/// rows with the reason, no scores), holding the reason. `producer retry` finds the partitions
/// to publish again here; the collector removes the marker when a scored copy replaces it.
pub fn failed_key(job: &str, partition: u32) -> String {
    format!("{}{partition:06}", failed_prefix(job))
}

/// Where the markers of the job's failed partitions are.
pub fn failed_prefix(job: &str) -> String {
    format!("jobs/{job}/failed/")
}

/// Where `producer retry` marks a failed partition it published again, holding when (Unix
/// ms): the collector lets the retry's outcome replace the failed copy, and until it does the
/// partition is not counted as failed.
pub fn retrying_key(job: &str, partition: u32) -> String {
    format!("{}{partition:06}", retrying_prefix(job))
}

/// Where the job's retry marks are.
pub fn retrying_prefix(job: &str) -> String {
    format!("jobs/{job}/retrying/")
}

/// The vectors (embeddings) of partition `partition`'s images, written by the worker that
/// scored it (see [`VectorColumn`] for the layout), read by the collector into the partition's
/// Parquet file: large outputs travel through the store, and the message only says they are
/// there.
pub fn vectors_key(job: &str, partition: u32) -> String {
    format!("{}{partition:06}.bin", vectors_prefix(job))
}

/// Where the job's vectors blobs are.
pub fn vectors_prefix(job: &str) -> String {
    format!("jobs/{job}/vectors/")
}

/// The partition number in a key made by [`failed_key`], [`retrying_key`] or
/// [`dead_letter_key`].
pub fn partition_of(key: &str) -> Option<u32> {
    key.rsplit('/').next()?.parse().ok()
}

/// What a collection job was scored from: a line per image published, `key<TAB>size<TAB>version`
/// (see `fleet_storage::Listed`), in name order, which is the order of its rows. An incremental
/// job reads it back from the earlier jobs of its scope.
pub fn listing_key(job: &str) -> String {
    format!("jobs/{job}/listing.tsv")
}

/// Where the collection jobs of one scope (see [`Incremental::scope`]) are named, a blob each:
/// those complete are what an incremental job of the scope builds on.
pub fn index_prefix(scope: &str) -> String {
    format!("index/{scope}/")
}

/// Job `job`'s entry under [`index_prefix`].
pub fn index_key(scope: &str, job: &str) -> String {
    format!("{}{job}", index_prefix(scope))
}

/// What an incremental job (`producer --incremental`) left to earlier jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incremental {
    /// The model (its ONNX sha256 and spec) and top-k of the job: jobs of one scope give the
    /// same row for the same image.
    pub scope: String,
    /// The earlier complete jobs of the scope whose rows cover the images not scored here,
    /// oldest first.
    pub since: Vec<String>,
    /// Images listed that an earlier job scored at the same size and version: left out.
    pub unchanged: u64,
}

/// One of the job's result files (see [`files`]).
pub fn result_key(job: &str, file: &str) -> String {
    format!("results/{job}/{file}")
}

/// The Parquet file of partition `partition`'s rows, written as soon as the partition is
/// stored: the files under [`parquet_prefix`] read as one dataset.
pub fn parquet_part_key(job: &str, partition: u32) -> String {
    format!("{}part-{partition:06}.parquet", parquet_prefix(job))
}

/// The folder of the job's Parquet dataset: one file per partition.
pub fn parquet_prefix(job: &str) -> String {
    result_key(job, &format!("{}/", files::PARQUET))
}

/// Most partitions a job may have. `scores.csv` is committed as one block per partition plus
/// its header, and an Azure block blob holds at most 50,000 blocks.
pub const MAX_PARTITIONS: u32 = 49_999;

/// What the collector needs to write each partition's rows as it arrives, before it knows how
/// many partitions the job has: `jobs/<job>/plan.json`, written by the producer before it
/// publishes the first partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The job's id.
    pub job: String,
    /// Class names by model output index.
    pub classes: Vec<String>,
    /// Classes reported per image.
    pub top_k: u8,
    /// Whether several batches are scored (a tarball's `--batches all`): the rows then start
    /// with the batch's name.
    pub several_batches: bool,
    /// Partitions that may fail with the job still completing, as partial.
    #[serde(default)]
    pub max_failed_partitions: u32,
    /// The vectors each row carries in the Parquet results (the model's embeddings, and a
    /// multi-label model's class scores), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vectors: Vec<VectorColumn>,
    /// For a multi-label model (independent sigmoids): each class's threshold (one for all, or
    /// one per class). Its rows list every class over its threshold; its summary gives
    /// precision, recall, F1 and average precision per class instead of accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<Thresholds>,
    /// A job of several models: their names, in order (the first is the one the others are
    /// compared with). Each model's columns are then prefixed with its name; `vectors` holds
    /// every model's, one model after another. Empty for a job of one model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// The scores a class needs to be an image's tag: one for every class, or one per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds(pub Vec<f32>);

impl Thresholds {
    /// Class `class`'s threshold.
    pub fn of(&self, class: usize) -> f32 {
        match self.0.as_slice() {
            [one] => *one,
            each => each.get(class).copied().unwrap_or(f32::INFINITY),
        }
    }
}

/// The name of the vector column that holds a multi-label model's class scores (one per
/// class, after the sigmoid): what a user re-thresholds, and what average precision is made of.
pub const CLASS_SCORES_COLUMN: &str = "class_scores";

impl Plan {
    /// Models each image is scored with.
    pub fn model_count(&self) -> usize {
        self.models.len().max(1)
    }

    /// What model `m`'s columns start with: its name and `_` in a job of several models,
    /// nothing in a job of one.
    pub fn column_prefix(&self, m: usize) -> String {
        match self.models.len() {
            0 | 1 => String::new(),
            _ => format!("{}_", self.models[m]),
        }
    }

    /// Classes each row reports: the job's top-k, or every class of a model with fewer; none
    /// for a model with no classes (an embedding model).
    pub fn columns_top_k(&self) -> usize {
        if self.classes.is_empty() {
            return 0;
        }
        usize::from(self.top_k).min(self.classes.len()).max(1)
    }

    /// Whether the job's model is a classifier: its rows have predictions.
    pub fn has_classes(&self) -> bool {
        !self.classes.is_empty()
    }

    /// Bytes of one image's vectors in a partition's vectors blob.
    pub fn vector_bytes(&self) -> usize {
        self.vectors.iter().map(VectorColumn::bytes).sum()
    }
}

/// One vector column of a job's results: an embedding, `dim` values an image.
///
/// A partition's vectors blob ([`vectors_key`]) holds, for each image in order, each column's
/// values one after another, little-endian, in the column's precision; an image the model did
/// not score has zeros there, and no vector in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorColumn {
    /// The column's name in the results.
    pub name: String,
    /// Values an image.
    pub dim: u32,
    /// How each value is written.
    pub precision: VectorPrecision,
    /// Whether each vector was scaled to length 1 (L2) before it was written.
    pub normalized: bool,
    /// In a job of several models, the model it is of (its place in [`Plan::models`]); 0 in a
    /// job of one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub model: u8,
}

/// Whether a model's place is the first (left out of the JSON, as a job of one model has it).
fn is_zero(model: &u8) -> bool {
    *model == 0
}

impl VectorColumn {
    /// Bytes of one image's vector.
    pub fn bytes(&self) -> usize {
        self.dim as usize * self.precision.bytes()
    }
}

/// How a vector's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VectorPrecision {
    /// 32-bit floats.
    #[default]
    Float32,
    /// 16-bit floats (IEEE half precision): half the bytes, about three significant digits.
    Float16,
}

impl VectorPrecision {
    /// Bytes of one value.
    pub fn bytes(self) -> usize {
        match self {
            VectorPrecision::Float32 => 4,
            VectorPrecision::Float16 => 2,
        }
    }

    /// The name used on the command line and in specs.
    pub fn name(self) -> &'static str {
        match self {
            VectorPrecision::Float32 => "float32",
            VectorPrecision::Float16 => "float16",
        }
    }
}

/// Names of the result files, in the order the collector writes them: `summary.json` last, so
/// its presence means the set is complete.
pub mod files {
    /// One row per image.
    pub const SCORES: &str = "scores.csv";
    /// The confusion matrix (labelled jobs).
    pub const CONFUSION_CSV: &str = "confusion.csv";
    /// The confusion heat map (labelled jobs of up to 30 classes).
    pub const CONFUSION_PNG: &str = "confusion.png";
    /// Every confusion, largest first (labelled jobs).
    pub const CONFUSED_PAIRS: &str = "confused_pairs.csv";
    /// A tarball's first images with their names.
    pub const SAMPLES_PNG: &str = "samples.png";
    /// What the job came to; written last, so its presence means the set is complete.
    pub const SUMMARY: &str = "summary.json";
    /// The job to read in a browser.
    pub const REPORT: &str = "report.html";
    /// The folder of the rows as Parquet, one file per partition, written as partitions
    /// arrive (the only result written before the job completes).
    pub const PARQUET: &str = "scores.parquet";
}

/// A batch of the job as submitted: a tarball's batch, or the one "batch" of an image
/// collection (its prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// The batch's name: a tarball batch, or the collection's prefix.
    pub name: String,
    /// Images in the batch.
    pub images: u32,
    /// The batch's first partition number.
    pub first_partition: u32,
    /// Partitions of the batch.
    pub partitions: u32,
}

/// What kind of dataset a job scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// A CIFAR-10 tarball blob, decoded by the producer.
    Tarball,
    /// Image files under a prefix, fetched and decoded by the workers.
    Images,
}

/// `jobs/<job>/manifest.json`, written by the producer once every partition is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job's id.
    pub job: String,
    /// The tarball blob, or the prefix of the image collection.
    pub dataset: String,
    /// Whether the dataset is a tarball or a collection.
    pub dataset_kind: DatasetKind,
    /// Where the true labels came from (`tarball`, `folders`, a label file, `none`).
    pub labels: String,
    /// Images with a true label.
    pub labelled_images: u64,
    /// The model's name (`models/<name>.onnx`).
    pub model: String,
    /// SHA-256 of the model scored, from its spec: the job is reproducible from it.
    pub model_sha256: String,
    /// A job of several models: each one after the first, in the job's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_models: Vec<ModelRef>,
    /// Class names by model output index: a record for whoever reads the job's files. Never
    /// read back (left empty when the manifest is parsed): a model may have a million.
    #[serde(default, skip_deserializing)]
    pub classes: Vec<String>,
    /// Classes reported per image.
    pub top_k: u8,
    /// Images per partition.
    pub partition_size: u32,
    /// Partitions in the job.
    pub partitions: u32,
    /// Images in the job.
    pub images: u64,
    /// The batches scored, in job order.
    pub batches: Vec<BatchEntry>,
    /// When the producer began submitting the job.
    pub submitted_at_ms: u64,
    /// When the last partition was published (absent in manifests of older releases).
    #[serde(default)]
    pub published_at_ms: u64,
    /// Set for an incremental job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
}

/// A staged model as a job names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Its name (`models/<name>.onnx`).
    pub name: String,
    /// SHA-256 of its ONNX file, from its spec.
    pub sha256: String,
}

impl Manifest {
    /// Images in partition `partition`: each batch is cut into partitions of
    /// `partition_size`, its last one holding the rest; 0 for a partition the job does not have.
    pub fn partition_images(&self, partition: u32) -> u32 {
        let Some(batch) = self.batches.iter().find(|b| {
            partition >= b.first_partition && partition - b.first_partition < b.partitions
        }) else {
            return 0;
        };
        let before = (partition - batch.first_partition).saturating_mul(self.partition_size);
        batch.images.saturating_sub(before).min(self.partition_size)
    }

    /// Every model of the job, in order, with its SHA-256.
    pub fn models(&self) -> Vec<ModelRef> {
        let first = ModelRef {
            name: self.model.clone(),
            sha256: self.model_sha256.clone(),
        };
        std::iter::once(first)
            .chain(self.more_models.iter().cloned())
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new job id: UTC time to the second and a random suffix, e.g. `20261123-233012-7f3a9c`.
/// Sortable by submission time; two producers starting in the same second still differ.
pub fn new_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let ms = now_ms();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(ms);
    hasher.write_u32(std::process::id());
    let (y, mo, d, h, mi, s) = civil_time(ms / 1000);
    format!(
        "{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{:06x}",
        hasher.finish() & 0xff_ffff
    )
}

/// A Unix time in milliseconds as UTC, to the second: `2026-11-30T17:30:00Z`.
pub fn utc_timestamp(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil_time(ms / 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// UTC calendar time of a Unix timestamp (Howard Hinnant's days-to-civil algorithm).
fn civil_time(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_folders_and_model_names() {
        use super::{reserved, valid_model_name};
        assert_eq!(reserved("jobs/x.jpg"), Some("jobs/"));
        assert_eq!(reserved("index"), Some("index/"));
        assert_eq!(reserved("jobsite/x.jpg"), None);
        assert_eq!(reserved("photos/jobs/x.jpg"), None);
        assert!(valid_model_name("resnet50-v2.int8_a"));
        for bad in ["", ".hidden", "a,b", "a/b", "a b", &"x".repeat(101)] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(civil_time(0), (1970, 1, 1, 0, 0, 0));
        // 2026-11-23T23:30:12Z
        assert_eq!(civil_time(1_795_476_612), (2026, 11, 23, 23, 30, 12));
        // 2024-02-29T12:00:00Z
        assert_eq!(civil_time(1_709_208_000), (2024, 2, 29, 12, 0, 0));
    }

    #[test]
    fn job_ids_are_unique_and_valid_blob_names() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        // Digits, letters and dashes only: a valid blob name and queue header as it is.
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
        assert_eq!(a.len(), "20261123-233012-7f3a9c".len(), "{a}");
    }

    #[test]
    fn a_partition_holds_its_batch_share() {
        let batch = |name: &str, images, first_partition, partitions| BatchEntry {
            name: name.into(),
            images,
            first_partition,
            partitions,
        };
        let manifest = Manifest {
            job: "j".into(),
            dataset: "d".into(),
            dataset_kind: DatasetKind::Tarball,
            labels: "none".into(),
            labelled_images: 0,
            model: "m".into(),
            model_sha256: String::new(),
            more_models: Vec::new(),
            classes: Vec::new(),
            top_k: 1,
            partition_size: 4,
            // 10 images: 4, 4, 2; then 4 images: one partition of 4.
            partitions: 4,
            images: 14,
            batches: vec![batch("a", 10, 0, 3), batch("b", 4, 3, 1)],
            submitted_at_ms: 0,
            published_at_ms: 0,
            incremental: None,
        };
        let images: Vec<u32> = (0..6).map(|p| manifest.partition_images(p)).collect();
        assert_eq!(images, [4, 4, 2, 4, 0, 0]);
        assert_eq!(
            images.iter().map(|&n| u64::from(n)).sum::<u64>(),
            manifest.images
        );
    }
}
