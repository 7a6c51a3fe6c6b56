//! What travels through the queues, and its wire format.
//!
//! Messages are serde structs encoded with `postcard` (a stable, documented, compact binary
//! format). Every message starts with a format version, checked before the body is decoded, so
//! a fleet running mixed releases rejects what it cannot read instead of misreading it.
//! Pixels travel as raw bytes (`serde_bytes`), never as text.

use serde::{Deserialize, Serialize};

use crate::dataset::{CLASS_NAMES, IMAGE_BYTES};

/// Version of the message format written by this build.
pub const MESSAGE_VERSION: u16 = 1;

/// Largest message accepted. A partition of 1,000 images is about 3 MB; anything much larger
/// is a mistake or an attack, and is refused before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A slice of one batch, scored as one model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    pub job: String,
    /// Position of this partition in the job, from 0.
    pub partition: u32,
    /// Model name: the worker loads `models/<model>.onnx` and `models/<model>.mean.xml`.
    pub model: String,
    /// Batch file the images come from (`test_batch`, ...).
    pub batch: String,
    /// Index of the first image within its batch.
    pub first_index: u32,
    pub labels: Vec<u8>,
    pub filenames: Vec<String>,
    /// `labels.len()` images of 3072 bytes: R, G, B planes of 32x32.
    #[serde(with = "serde_bytes")]
    pub pixels: Vec<u8>,
}

impl Partition {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Checks the invariants a worker relies on.
    pub fn validate(&self) -> Result<(), MessageError> {
        let n = self.labels.len();
        let bad = |what: String| {
            Err(MessageError::Invalid(format!(
                "partition {} of job {}: {what}",
                self.partition, self.job
            )))
        };
        if n == 0 {
            return bad("no images".into());
        }
        if self.pixels.len() != n * IMAGE_BYTES {
            return bad(format!("{} pixel bytes for {n} images", self.pixels.len()));
        }
        if self.filenames.len() != n {
            return bad(format!(
                "{} file names for {n} images",
                self.filenames.len()
            ));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= CLASS_NAMES.len())
        {
            return bad(format!("label {l} out of range"));
        }
        Ok(())
    }
}

/// One scored image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub label: u8,
    pub predicted: u8,
    /// Softmax probability of the predicted class.
    pub confidence: f32,
}

/// The scores of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub job: String,
    pub partition: u32,
    pub batch: String,
    pub first_index: u32,
    pub filenames: Vec<String>,
    pub scores: Vec<Score>,
    /// Which worker scored it (host and process), for the summary.
    pub worker: String,
    /// Time spent in the model call, in milliseconds.
    pub inference_ms: f64,
}

/// Sent by the producer after the last partition of a job: the collector knows the job is
/// complete when it holds this many partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    pub job: String,
    pub partitions: u32,
    pub images: u64,
    /// Unix time in milliseconds when the producer started the job.
    pub submitted_at_ms: u64,
}

/// Sent by the producer when it could not submit the whole job (a corrupt tarball found
/// half-way, say): the collector drops the job and writes no results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub job: String,
    pub reason: String,
}

/// Everything on the results queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResultMessage {
    Scored(Scored),
    Sealed(Sealed),
    Cancelled(Cancelled),
}

impl ResultMessage {
    pub fn job(&self) -> &str {
        match self {
            ResultMessage::Scored(m) => &m.job,
            ResultMessage::Sealed(m) => &m.job,
            ResultMessage::Cancelled(m) => &m.job,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message of {0} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    Oversized(usize),
    #[error(
        "message format version {0} is not understood by this build (which reads version {MESSAGE_VERSION}); upgrade the fleet to one release"
    )]
    UnknownVersion(u16),
    #[error("undecodable message: {0}")]
    Undecodable(String),
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
    let (version, body) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| MessageError::Undecodable(format!("no version header: {e}")))?;
    if version != MESSAGE_VERSION {
        return Err(MessageError::UnknownVersion(version));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| MessageError::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MessageError::Undecodable(format!(
            "{} bytes left over after the message",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        Partition {
            job: "j".into(),
            partition: 3,
            model: "m".into(),
            batch: "test_batch".into(),
            first_index: 600,
            labels: vec![1, 2],
            filenames: vec!["a.png".into(), "b.png".into()],
            pixels: (0..2 * IMAGE_BYTES).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn round_trips_with_pixels_as_raw_bytes() {
        let p = partition();
        let bytes = encode(&p);
        // Version, then a body in which the pixels take one byte each.
        assert!(bytes.len() < p.pixels.len() + 100, "{} bytes", bytes.len());
        assert_eq!(decode::<Partition>(&bytes).unwrap(), p);
        p.validate().unwrap();
    }

    #[test]
    fn other_versions_are_refused_before_decoding() {
        let mut bytes = postcard::to_stdvec(&7u16).unwrap();
        bytes.extend_from_slice(b"whatever follows");
        assert!(matches!(
            decode::<Partition>(&bytes),
            Err(MessageError::UnknownVersion(7))
        ));
    }

    #[test]
    fn garbage_oversize_and_trailing_bytes_are_refused() {
        assert!(matches!(
            decode::<Partition>(b"\x01\xff\xff"),
            Err(MessageError::Undecodable(_))
        ));
        assert!(matches!(
            decode::<Partition>(&vec![1; MAX_MESSAGE_BYTES + 1]),
            Err(MessageError::Oversized(_))
        ));
        let mut bytes = encode(&partition());
        bytes.push(0);
        assert!(matches!(
            decode::<Partition>(&bytes),
            Err(MessageError::Undecodable(_))
        ));
    }

    #[test]
    fn inconsistent_partitions_are_invalid() {
        let mut p = partition();
        p.pixels.pop();
        assert!(p.validate().is_err());
        let mut p = partition();
        p.labels[0] = 10;
        assert!(p.validate().is_err());
    }
}
