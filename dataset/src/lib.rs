#![warn(missing_docs)]
//! Datasets: the CIFAR-10 tarballs, decoded here, and image collections ([`collection`]),
//! listed here and decoded by the workers.
//!
//! The CIFAR-10 tarballs as distributed: `cifar-10-python.tar.gz` (pickled numpy arrays) and
//! `cifar-10-binary.tar.gz` (fixed-size records).
//!
//! The tarball is streamed: gunzip and tar read it front to back, and only the members that
//! hold a chosen batch are read into memory, one at a time. A batch is handed to the caller
//! before the next one is read.

pub mod collection;
mod pickle;
pub mod text;

use std::io::{BufRead, BufReader, Read};
use std::str::FromStr;

/// Colour channels of a CIFAR-10 image.
pub const CHANNELS: usize = 3;
/// Height of a CIFAR-10 image, in pixels.
pub const HEIGHT: usize = 32;
/// Width of a CIFAR-10 image, in pixels.
pub const WIDTH: usize = 32;
/// Bytes of one image: the R, G and B planes of 32x32, in that order.
pub const IMAGE_BYTES: usize = CHANNELS * HEIGHT * WIDTH;

/// CIFAR-10 class names, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A batch member larger than this is refused before it is read: the real ones are 30 MB.
const MAX_BATCH_BYTES: u64 = 512 << 20;

/// One batch file of the tarball, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `test_batch`, `data_batch_1`, ...: the member's file name without `.bin`.
    pub name: String,
    /// Each image's label, a CIFAR-10 class index.
    pub labels: Vec<u8>,
    /// Each image's file name, as the batch records it.
    pub filenames: Vec<String>,
    /// `labels.len()` images of [`IMAGE_BYTES`] each, rows as in the file.
    pub pixels: Vec<u8>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Which batches of the tarball to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchSelection {
    /// Every batch of the tarball.
    All,
    /// These batches, by name.
    Named(Vec<String>),
}

impl Default for BatchSelection {
    /// The walkthrough scores the test batch.
    fn default() -> Self {
        BatchSelection::Named(vec!["test_batch".into()])
    }
}

impl FromStr for BatchSelection {
    type Err = String;

    /// `all`, or a comma-separated list of batch names (`test_batch,data_batch_1`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "all" {
            return Ok(BatchSelection::All);
        }
        let names: Vec<String> = s
            .split(',')
            .map(|n| n.trim().trim_end_matches(".bin").to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err("name at least one batch (test_batch, data_batch_1, ...) or `all`".into());
        }
        Ok(BatchSelection::Named(names))
    }
}

impl BatchSelection {
    fn wants(&self, name: &str) -> bool {
        match self {
            BatchSelection::All => true,
            BatchSelection::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Why a dataset cannot be read or labelled.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The tarball does not decompress or unpack, or holds fewer images than it did.
    #[error(
        "{source_name} is corrupt or truncated{detail}; download it again (it should be the \
         CIFAR-10 python or binary tarball)"
    )]
    Corrupt {
        /// The tarball's name.
        source_name: String,
        /// What is wrong, where more is known than the cause says (empty, or starting with
        /// `: `).
        detail: String,
        /// What the decompressor or the reader said.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A batch of the tarball is not what CIFAR-10's batches are.
    #[error("{source_name}: batch {batch} is malformed: {detail}")]
    BadBatch {
        /// The tarball's name.
        source_name: String,
        /// The batch's name.
        batch: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A batch asked for is not in the tarball.
    #[error("{source_name} has no batch named {missing}; it holds: {present}")]
    MissingBatch {
        /// The tarball's name.
        source_name: String,
        /// The batch asked for.
        missing: String,
        /// The batches there are.
        present: String,
    },
    /// The tarball holds no CIFAR-10 batch.
    #[error(
        "{source_name} holds no CIFAR-10 batches (expected cifar-10-batches-py/ or cifar-10-batches-bin/)"
    )]
    NotCifar {
        /// The tarball's name.
        source_name: String,
    },
    /// The dataset named is neither a blob nor a prefix of images.
    #[error(
        "{store} has no blob {name} and no images under {prefix} ({blobs} other blobs there): \
         stage a CIFAR-10 tarball with `producer stage --tarball FILE`, or a folder of images \
         with `producer stage --images DIR --prefix {name}`"
    )]
    NoImages {
        /// The store, as it describes itself.
        store: String,
        /// The dataset named.
        name: String,
        /// The prefix listed.
        prefix: String,
        /// Other blobs under the prefix.
        blobs: usize,
    },
    /// The labels cannot be resolved.
    #[error("labels from {source_name}: {detail}")]
    Labels {
        /// The label source: `folders`, or the label file's name.
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] fleet_storage::StoreError),
    /// The consumer of the batches or pages stopped taking them (its own error says why).
    #[error("reading stopped: {0}")]
    Stopped(&'static str),
}

/// Streams the tarball from `reader` and calls `visit` with each chosen batch, in tarball order.
/// `source_name` names the tarball in errors. Returns the names of the batches visited.
pub fn read_tarball(
    reader: impl Read,
    source_name: &str,
    selection: &BatchSelection,
    mut visit: impl FnMut(Batch) -> Result<(), DatasetError>,
) -> Result<Vec<String>, DatasetError> {
    let corrupt = |e: std::io::Error| DatasetError::Corrupt {
        source_name: source_name.into(),
        detail: String::new(),
        source: Some(e),
    };
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let gzipped = buffered
        .fill_buf()
        .map_err(corrupt)?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzipped {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(stream);
    let mut present = Vec::new();
    let mut visited = Vec::new();
    let mut saw_cifar = false;
    let mut entries = archive.entries().map_err(corrupt)?;
    while let Some(entry) = entries.next() {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let Some((format, name)) = member(&path) else {
            continue;
        };
        saw_cifar = true;
        present.push(name.clone());
        if !selection.wants(&name) {
            continue;
        }
        let size = entry.header().size().map_err(corrupt)?;
        if size > MAX_BATCH_BYTES {
            return Err(DatasetError::BadBatch {
                source_name: source_name.into(),
                batch: name,
                detail: format!("{size} bytes is too large for a CIFAR batch"),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        if (bytes.len() as u64) < size {
            return Err(corrupt(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let decoded = match format {
            Format::Python => decode_python(&bytes, &name),
            Format::Binary => decode_binary(&bytes, &name),
        };
        let batch = match decoded {
            Ok(batch) => batch,
            Err(detail) => {
                // gzip checks its CRC only at the end of the stream: read on, so that damage to
                // the file is reported as such rather than as a strange batch.
                drop(entry);
                for rest in entries.by_ref() {
                    std::io::copy(&mut rest.map_err(corrupt)?, &mut std::io::sink())
                        .map_err(corrupt)?;
                }
                return Err(DatasetError::BadBatch {
                    source_name: source_name.into(),
                    batch: name,
                    detail,
                });
            }
        };
        drop(bytes);
        visited.push(batch.name.clone());
        visit(batch)?;
    }
    if !saw_cifar {
        return Err(DatasetError::NotCifar {
            source_name: source_name.into(),
        });
    }
    if let BatchSelection::Named(names) = selection
        && let Some(missing) = names.iter().find(|n| !visited.contains(n))
    {
        return Err(DatasetError::MissingBatch {
            source_name: source_name.into(),
            missing: missing.clone(),
            present: present.join(", "),
        });
    }
    Ok(visited)
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Python,
    Binary,
}

/// Recognises batch members: `cifar-10-batches-py/test_batch`, `cifar-10-batches-bin/data_batch_1.bin`.
fn member(path: &str) -> Option<(Format, String)> {
    let (dir, file) = path.trim_start_matches("./").rsplit_once('/')?;
    let is_batch = |n: &str| n.starts_with("data_batch") || n.starts_with("test_batch");
    match dir.rsplit('/').next()? {
        "cifar-10-batches-py" if is_batch(file) => Some((Format::Python, file.to_owned())),
        "cifar-10-batches-bin" if is_batch(file) && file.ends_with(".bin") => {
            Some((Format::Binary, file.trim_end_matches(".bin").to_owned()))
        }
        _ => None,
    }
}

fn check_labels(labels: &[u8]) -> Result<(), String> {
    match labels.iter().position(|&l| l as usize >= CLASS_NAMES.len()) {
        Some(i) => Err(format!("label {} of image {i} is outside 0..=9", labels[i])),
        None => Ok(()),
    }
}

fn decode_python(bytes: &[u8], name: &str) -> Result<Batch, String> {
    let root = pickle::parse(bytes).map_err(|e| format!("not a readable pickle: {e}"))?;
    let field = |key: &str| {
        root.get(bytes, key)
            .ok_or_else(|| format!("the pickled dict has no `{key}`"))
    };
    let array = pickle::ndarray_u8(field("data")?, bytes).map_err(|e| format!("`data`: {e}"))?;
    let [count, row] = array.shape[..] else {
        return Err(format!(
            "`data` has shape {:?}, expected [N, 3072]",
            array.shape
        ));
    };
    if row != IMAGE_BYTES {
        return Err(format!(
            "`data` has shape {:?}, expected [N, 3072]",
            array.shape
        ));
    }
    let labels = field("labels")?
        .items()
        .ok_or("`labels` is not a list")?
        .iter()
        .map(|v| match v {
            pickle::Value::Int(l) => {
                u8::try_from(*l).map_err(|_| format!("label {l} is outside 0..=9"))
            }
            _ => Err("`labels` holds a non-integer".to_owned()),
        })
        .collect::<Result<Vec<u8>, _>>()?;
    check_labels(&labels)?;
    let filenames = match root.get(bytes, "filenames") {
        Some(list) => list
            .items()
            .ok_or("`filenames` is not a list")?
            .iter()
            .map(|v| {
                v.text(bytes)
                    .ok_or_else(|| "`filenames` holds a non-string".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => synthetic_filenames(name, count),
    };
    if labels.len() != count || filenames.len() != count {
        return Err(format!(
            "{count} images but {} labels and {} file names",
            labels.len(),
            filenames.len()
        ));
    }
    Ok(Batch {
        name: name.into(),
        labels,
        filenames,
        pixels: bytes[array.data].to_vec(),
    })
}

fn decode_binary(bytes: &[u8], name: &str) -> Result<Batch, String> {
    const RECORD: usize = 1 + IMAGE_BYTES;
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format!(
            "{} bytes is not a whole number of {RECORD}-byte records",
            bytes.len()
        ));
    }
    let count = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(count);
    let mut pixels = Vec::with_capacity(count * IMAGE_BYTES);
    for record in bytes.chunks_exact(RECORD) {
        labels.push(record[0]);
        pixels.extend_from_slice(&record[1..]);
    }
    check_labels(&labels)?;
    Ok(Batch {
        name: name.into(),
        labels,
        filenames: synthetic_filenames(name, count),
        pixels,
    })
}

/// The binary format has no file names: name each image by batch and position.
fn synthetic_filenames(batch: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{batch}_{i:05}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_selection_parses() {
        assert_eq!("all".parse(), Ok(BatchSelection::All));
        assert_eq!(
            "test_batch, data_batch_1.bin".parse(),
            Ok(BatchSelection::Named(vec![
                "test_batch".into(),
                "data_batch_1".into()
            ]))
        );
        assert!(",".parse::<BatchSelection>().is_err());
    }

    #[test]
    fn members_are_recognised() {
        assert!(
            matches!(member("cifar-10-batches-py/test_batch"), Some((Format::Python, n)) if n == "test_batch")
        );
        assert!(
            matches!(member("./cifar-10-batches-bin/data_batch_2.bin"), Some((Format::Binary, n)) if n == "data_batch_2")
        );
        assert!(member("cifar-10-batches-py/batches.meta").is_none());
        assert!(member("test_batch").is_none());
    }

    #[test]
    fn binary_records_decode() {
        let mut bytes = vec![3u8];
        bytes.extend(std::iter::repeat_n(7u8, IMAGE_BYTES));
        let batch = decode_binary(&bytes, "test_batch").unwrap();
        assert_eq!(batch.labels, vec![3]);
        assert_eq!(batch.filenames, vec!["test_batch_00000"]);
        assert_eq!(batch.pixels.len(), IMAGE_BYTES);
        bytes[0] = 10;
        assert!(
            decode_binary(&bytes, "test_batch")
                .unwrap_err()
                .contains("outside 0..=9")
        );
        assert!(decode_binary(&bytes[1..], "test_batch").is_err());
    }
}
