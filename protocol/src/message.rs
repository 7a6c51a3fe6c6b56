//! What travels through the queues, and its wire format.
//!
//! Messages are serde structs encoded with `postcard` (a stable, documented, compact binary
//! format). Every message starts with a format version, checked before the body is decoded, so
//! a fleet running mixed releases rejects what it cannot read instead of misreading it.
//! Pixels travel as raw bytes (`serde_bytes`), never as text.

use serde::{Deserialize, Serialize};

/// Version of the message format written by this build.
pub const MESSAGE_VERSION: u16 = 8;

/// Largest message accepted. A partition of 1,000 CIFAR images is about 3 MB, one of 1,000
/// blob names a few tens of kB; anything much larger is a mistake or an attack, and is refused
/// before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Largest top-k a job may ask for.
pub const MAX_TOP_K: u8 = 20;

/// Most models one job scores each image with.
pub const MAX_MODELS: usize = 8;

/// The images of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Images {
    /// Decoded pixels from a tarball: `names.len()` images of `3 * height * width` bytes each,
    /// as R, G and B planes.
    Planes {
        /// Height of each image, in pixels.
        height: u32,
        /// Width of each image, in pixels.
        width: u32,
        /// Each image's file name in the tarball.
        names: Vec<String>,
        /// The images' bytes, one after another.
        #[serde(with = "serde_bytes")]
        pixels: Vec<u8>,
    },
    /// Blobs of the container, fetched and decoded by the worker (the claim check): blob `i`
    /// is `prefix` followed by `names[i]`.
    Blobs {
        /// The collection's prefix in the container.
        prefix: String,
        /// Each image's name under the prefix.
        names: Vec<String>,
    },
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            Images::Planes { names, .. } | Images::Blobs { names, .. } => names.len(),
        }
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images' names, as `scores.csv` shows them.
    pub fn names(&self) -> &[String] {
        match self {
            Images::Planes { names, .. } | Images::Blobs { names, .. } => names,
        }
    }
}

/// A slice of one dataset, scored as one model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// The job's id.
    pub job: String,
    /// The container the job lives in (its images, models and results): one fleet serves
    /// every container of its storage account.
    pub container: String,
    /// Position of this partition in the job, from 0.
    pub partition: u32,
    /// The job's models, in order (one, or several compared over the same images): for each
    /// name, the worker loads `models/<name>.onnx` and `models/<name>.json`, and each image is
    /// read once and prepared for each model by its own spec.
    pub models: Vec<String>,
    /// Part of the dataset the images come from: a tarball's batch (`test_batch`), or the
    /// prefix of an image collection.
    pub batch: String,
    /// Index of the first image within its batch.
    pub first_index: u64,
    /// What to score.
    pub images: Images,
    /// True label of each image (an index into the model's classes), if known.
    pub labels: Vec<Option<u32>>,
    /// For a multi-label job, the true classes of each image (its tags), if known: an image
    /// may have several, or none. Empty for a single-label job.
    pub tags: Vec<Option<Vec<u32>>>,
    /// Classes to report per image, best first.
    pub top_k: u8,
    /// Unix time in milliseconds when the producer published it (the report's queueing time).
    pub published_at_ms: u64,
}

impl Partition {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the partition holds no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Checks the invariants a worker relies on before any model is loaded (label ranges are
    /// checked against the model's class count by the worker).
    pub fn validate(&self) -> Result<(), MessageError> {
        let n = self.len();
        let bad = |what: String| {
            Err(MessageError::Invalid(format!(
                "partition {} of job {}: {what}",
                self.partition, self.job
            )))
        };
        if n == 0 {
            return bad("no images".into());
        }
        if self.models.is_empty() || self.models.len() > MAX_MODELS {
            return bad(format!(
                "{} models, where a job has 1 to {MAX_MODELS}",
                self.models.len()
            ));
        }
        if let Some(twice) =
            (1..self.models.len()).find(|&i| self.models[..i].contains(&self.models[i]))
        {
            return bad(format!("model {} named twice", self.models[twice]));
        }
        if self.labels.len() != n {
            return bad(format!("{} labels for {n} images", self.labels.len()));
        }
        if !self.tags.is_empty() && self.tags.len() != n {
            return bad(format!("{} tag sets for {n} images", self.tags.len()));
        }
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return bad(format!("top-k {} is not in 1..={MAX_TOP_K}", self.top_k));
        }
        if let Images::Planes {
            height,
            width,
            pixels,
            ..
        } = &self.images
        {
            let image_bytes = 3 * *height as usize * *width as usize;
            if image_bytes == 0 || pixels.len() != n * image_bytes {
                return bad(format!(
                    "{} pixel bytes for {n} images of {height}x{width}",
                    pixels.len()
                ));
            }
        }
        Ok(())
    }
}

/// One scored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// True label, if known.
    pub label: Option<u32>,
    /// The `top_k` most probable classes with their probabilities, best first; empty when
    /// the image could not be scored.
    pub top: Vec<(u32, f32)>,
    /// Why the image could not be scored (unreadable, unsupported, too large, ...), or, beside
    /// a prediction, what was wrong with an image scored all the same ("scored despite: ...").
    pub error: Option<String>,
    /// Whether the model ran on the image: its vectors (the job's [`crate::job::Plan::vectors`],
    /// if any) are in the partition's vectors blob.
    pub scored: bool,
    /// For a multi-label job: every class whose score reached its threshold, with its score,
    /// best first (the image's predicted tags).
    pub tags: Vec<(u32, f32)>,
    /// For a multi-label job: the image's true classes, if known.
    pub true_tags: Option<Vec<u32>>,
}

impl Score {
    /// The predicted class and its probability.
    pub fn predicted(&self) -> Option<(u32, f32)> {
        self.top.first().copied()
    }
}

/// The scores of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The job's id.
    pub job: String,
    /// The job's container ([`Partition::container`]).
    pub container: String,
    /// The partition's number in the job.
    pub partition: u32,
    /// The batch it belongs to.
    pub batch: String,
    /// Index of its first image in the job.
    pub first_index: u64,
    /// Each image's name, in order.
    pub filenames: Vec<String>,
    /// Each image's score by the job's first model, in the same order.
    pub scores: Vec<Score>,
    /// For a job of several models, each further model's scores of the same images, in the
    /// job's order of models ([`crate::job::Plan::models`]); empty for one model.
    pub more: Vec<Vec<Score>>,
    /// Which worker scored it (host and process), for the summary.
    pub worker: String,
    /// Time spent in the model calls, in milliseconds (every model's).
    pub inference_ms: f64,
    /// For a job of several models, each model's share of `inference_ms`, in the job's order.
    pub model_ms: Vec<f64>,
    /// Time spent fetching, decoding and preprocessing the images, in milliseconds.
    pub preprocess_ms: f64,
    /// The partition's [`Partition::published_at_ms`].
    pub published_at_ms: u64,
    /// Unix times in milliseconds when the worker began and finished scoring it.
    pub started_at_ms: u64,
    /// When the worker finished scoring it.
    pub finished_at_ms: u64,
    /// ONNX Runtime execution provider that ran the model (`CPU`, `CUDA`).
    pub provider: String,
    /// The JPEG decoder the worker runs (`fleet_imaging::jpeg_decoder`): with SIMD or without.
    pub decoder: String,
    /// Small copies of the images the job report may show (see
    /// [`crate::gallery::pick_thumbnails`]).
    pub thumbnails: Vec<Thumbnail>,
    /// Why the partition could not be scored at all, when a worker gave up on it: every score
    /// then carries this reason, and the job counts it against its error budget.
    pub failed: Option<String>,
    /// Whether the worker wrote the partition's vectors to the store
    /// ([`crate::job::vectors_key`]): a job whose plan has vectors gets them there, never in
    /// the message, so that a message stays small whatever the vectors' size.
    pub vectors: bool,
}

impl Scored {
    /// Each model's scores of the partition's images, in the job's order of models.
    pub fn by_model(&self) -> impl Iterator<Item = &[Score]> {
        std::iter::once(self.scores.as_slice()).chain(self.more.iter().map(Vec::as_slice))
    }

    /// Checks what the collector relies on: a name per score, a partition number a job can
    /// have, thumbnails of images the partition holds.
    pub fn validate(&self) -> Result<(), MessageError> {
        let bad = |what: String| {
            Err(MessageError::Invalid(format!(
                "scores of partition {} of job {}: {what}",
                self.partition, self.job
            )))
        };
        if self.filenames.len() != self.scores.len() {
            return bad(format!(
                "{} file names for {} scores",
                self.filenames.len(),
                self.scores.len()
            ));
        }
        if let Some(other) = self.more.iter().find(|m| m.len() != self.scores.len()) {
            return bad(format!(
                "{} scores of a further model for {} images",
                other.len(),
                self.scores.len()
            ));
        }
        if self.partition >= crate::job::MAX_PARTITIONS {
            return bad(format!(
                "partition number {} is beyond the {} a job may have",
                self.partition,
                crate::job::MAX_PARTITIONS
            ));
        }
        if let Some(t) = self
            .thumbnails
            .iter()
            .find(|t| t.position as usize >= self.scores.len())
        {
            return bad(format!(
                "a thumbnail of image {} of {}",
                t.position,
                self.scores.len()
            ));
        }
        let models = 1 + self.more.len();
        if let Some(t) = (self.thumbnails.iter()).find(|t| {
            t.top.len() > models
                || t.top
                    .iter()
                    .any(|top| top.len() > crate::gallery::SHOWN_TOP)
        }) {
            return bad(format!(
                "the thumbnail of image {} ranks {} models' classes, of a job of {models}",
                t.position,
                t.top.len()
            ));
        }
        Ok(())
    }
}

/// A small PNG copy of one image of a partition, for the job report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// The image's position in its partition.
    pub position: u32,
    /// The thumbnail as a PNG file.
    #[serde(with = "serde_bytes")]
    pub png: Vec<u8>,
    /// The image's best classes by each of the job's models, in the job's order, best first:
    /// up to [`crate::gallery::SHOWN_TOP`], whatever the job's top-k (the report shows them
    /// under the picture); empty for a model that did not score it.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// Sent by the producer after the last partition of a job: the collector knows the job is
/// complete when it holds this many partitions. What the rows look like was said before the
/// first partition, in the job's [`crate::job::Plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    /// The job's id.
    pub job: String,
    /// The job's container ([`Partition::container`]).
    pub container: String,
    /// Partitions published for the job.
    pub partitions: u32,
    /// Images in the job.
    pub images: u64,
    /// Whether the job's images carry true labels (accuracy is reported only then).
    pub labelled: bool,
    /// Unix time in milliseconds when the producer started the job.
    pub submitted_at_ms: u64,
    /// Unix time in milliseconds when its last partition was published.
    pub published_at_ms: u64,
}

/// Sent by the producer when it could not submit the whole job (a corrupt tarball found
/// half-way, say): the collector drops the job and writes no results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The job's id.
    pub job: String,
    /// The job's container ([`Partition::container`]).
    pub container: String,
    /// Why it was cancelled.
    pub reason: String,
}

/// Everything on the results queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResultMessage {
    /// A partition's scores (boxed: by far the largest message).
    Scored(Box<Scored>),
    /// The job is fully published: it completes when every partition is in.
    Sealed(Sealed),
    /// The job will not complete: drop it.
    Cancelled(Cancelled),
}

impl ResultMessage {
    /// The job the message is about.
    pub fn job(&self) -> &str {
        match self {
            ResultMessage::Scored(m) => &m.job,
            ResultMessage::Sealed(m) => &m.job,
            ResultMessage::Cancelled(m) => &m.job,
        }
    }

    /// The container of the job the message is about.
    pub fn container(&self) -> &str {
        match self {
            ResultMessage::Scored(m) => &m.container,
            ResultMessage::Sealed(m) => &m.container,
            ResultMessage::Cancelled(m) => &m.container,
        }
    }
}

/// Why bytes are not a message this build can use.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    Oversized(usize),
    #[error(
        "message format version {0} is not understood by this build (which reads version {MESSAGE_VERSION}); upgrade the fleet to one release"
    )]
    /// Written by a build with another format version.
    UnknownVersion(u16),
    /// The bytes are not a message of this format.
    #[error("undecodable message: {detail}")]
    Undecodable {
        /// What of it does not decode.
        detail: String,
        /// The decoder's error, where there is one.
        #[source]
        source: Option<postcard::Error>,
    },
    /// A message that decodes but cannot be right (e.g. its lengths disagree).
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Encodes `body` behind the version number.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(&MESSAGE_VERSION).expect("a u16 always encodes");
    postcard::to_io(body, &mut bytes).expect("writing to a Vec cannot fail");
    bytes
}

/// Checks size and version, then decodes the body.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MessageError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::Oversized(bytes.len()));
    }
    let (version, body) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|e| MessageError::Undecodable {
            detail: "no version header".into(),
            source: Some(e),
        })?;
    if version != MESSAGE_VERSION {
        return Err(MessageError::UnknownVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| MessageError::Undecodable {
        detail: "the body is not a message of this kind".into(),
        source: Some(e),
    })?;
    if !rest.is_empty() {
        return Err(MessageError::Undecodable {
            detail: format!("{} bytes left over after the message", rest.len()),
            source: None,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        Partition {
            container: "ctr".into(),
            job: "j".into(),
            partition: 3,
            models: vec!["m".into()],
            batch: "test_batch".into(),
            first_index: 600,
            images: Images::Planes {
                height: 32,
                width: 32,
                names: vec!["a.png".into(), "b.png".into()],
                pixels: (0..2 * 3072).map(|i| i as u8).collect(),
            },
            labels: vec![Some(1), None],
            tags: Vec::new(),
            top_k: 1,
            published_at_ms: 0,
        }
    }

    #[test]
    fn round_trips_with_pixels_as_raw_bytes() {
        let p = partition();
        let bytes = encode(&p);
        // Version, then a body in which the pixels take one byte each.
        assert!(bytes.len() < 2 * 3072 + 100, "{} bytes", bytes.len());
        assert_eq!(decode::<Partition>(&bytes).unwrap(), p);
        p.validate().unwrap();
    }

    #[test]
    fn blob_partitions_carry_names_not_pixels() {
        let p = Partition {
            images: Images::Blobs {
                prefix: "datasets/photos/".into(),
                names: vec!["cat/1.jpg".into(), "dog/2.png".into()],
            },
            ..partition()
        };
        let bytes = encode(&p);
        assert!(bytes.len() < 100, "{} bytes", bytes.len());
        assert_eq!(decode::<Partition>(&bytes).unwrap(), p);
        p.validate().unwrap();
    }

    #[test]
    fn other_versions_are_refused_before_decoding() {
        for other in [MESSAGE_VERSION - 1, MESSAGE_VERSION + 1] {
            let mut bytes = postcard::to_stdvec(&other).unwrap();
            bytes.extend_from_slice(b"whatever follows");
            assert!(matches!(
                decode::<Partition>(&bytes),
                Err(MessageError::UnknownVersion(v)) if v == other
            ));
        }
    }

    #[test]
    fn garbage_oversize_and_trailing_bytes_are_refused() {
        // This build's version (a varint below 128 is one byte), then no partition.
        assert!(matches!(
            decode::<Partition>(&[MESSAGE_VERSION as u8, 0xff, 0xff]),
            Err(MessageError::Undecodable { .. })
        ));
        assert!(matches!(
            decode::<Partition>(&vec![1; MAX_MESSAGE_BYTES + 1]),
            Err(MessageError::Oversized(_))
        ));
        let mut bytes = encode(&partition());
        bytes.push(0);
        assert!(matches!(
            decode::<Partition>(&bytes),
            Err(MessageError::Undecodable { .. })
        ));
    }

    #[test]
    fn scores_the_collector_cannot_write_are_invalid() {
        let scored = Scored {
            container: "ctr".into(),
            job: "j".into(),
            partition: 0,
            batch: "b".into(),
            first_index: 0,
            filenames: vec!["a.png".into()],
            scores: vec![Score {
                label: None,
                top: vec![(0, 1.0)],
                error: None,
                scored: true,
                tags: Vec::new(),
                true_tags: None,
            }],
            more: Vec::new(),
            worker: "w".into(),
            inference_ms: 0.0,
            model_ms: Vec::new(),
            preprocess_ms: 0.0,
            published_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: Vec::new(),
            failed: None,
            vectors: false,
        };
        assert!(scored.validate().is_ok());
        let invalid = |change: fn(&mut Scored)| {
            let mut s = scored.clone();
            change(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(invalid(|s| s.filenames.clear()).contains("0 file names for 1 scores"));
        assert!(invalid(|s| s.more.push(Vec::new())).contains("0 scores of a further model"));
        assert!(invalid(|s| s.partition = crate::job::MAX_PARTITIONS).contains("beyond"));
        assert!(
            invalid(|s| s.thumbnails.push(Thumbnail {
                position: 1,
                png: vec![],
                top: vec![]
            }))
            .contains("a thumbnail of image 1 of 1")
        );
        assert!(
            invalid(|s| s.thumbnails.push(Thumbnail {
                position: 0,
                png: vec![],
                top: vec![vec![(0, 1.0)], vec![(1, 0.5)]]
            }))
            .contains("ranks 2 models' classes, of a job of 1")
        );
    }

    #[test]
    fn inconsistent_partitions_are_invalid() {
        let mut p = partition();
        if let Images::Planes { pixels, .. } = &mut p.images {
            pixels.pop();
        }
        assert!(p.validate().is_err());
        let mut p = partition();
        p.labels.pop();
        assert!(p.validate().is_err());
        let mut p = partition();
        p.top_k = 0;
        assert!(p.validate().is_err());
        let mut p = partition();
        p.models.push("m".into());
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("model m named twice")
        );
        p.models.clear();
        assert!(p.validate().is_err());
    }
}
