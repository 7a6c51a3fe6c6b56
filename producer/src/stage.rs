//! Staging: puts the dataset, a model and its mean image into a container, checking each on
//! the way in, so a job never starts on inputs that cannot work. A CNTK v2 model is converted
//! to ONNX here.

use std::io::Write;

use cntk_onnx::Format;
use fleet_common::dataset::{self, BatchSelection, DatasetError};
use fleet_common::inference::quantize::CALIBRATION_IMAGES;
use fleet_common::inference::{InferenceError, InferenceOptions, Scorer};
use fleet_common::job;
use fleet_common::mean_image::{MeanImage, MeanImageError};
use fleet_common::source::{Source, SourceError};
use fleet_common::store::{BlobStore, StoreError};

/// The walkthrough's inputs, staged when no other is given.
pub const DEFAULT_DATASET_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz";
pub const DEFAULT_MODEL_URL: &str = "https://github.com/Azure-Samples/hdinsight-pyspark-cntk-integration/raw/master/resnet20_meanimage_159.dnn";
pub const DEFAULT_MEAN_IMAGE_URL: &str = "https://raw.githubusercontent.com/Azure-Samples/hdinsight-pyspark-cntk-integration/master/CIFAR-10_mean.xml";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    MeanImage(#[from] MeanImageError),
    #[error(transparent)]
    Import(#[from] cntk_onnx::ImportError),
    #[error(transparent)]
    Model(#[from] InferenceError),
    #[error("{0} is neither a CNTK v2 model (.dnn) nor an ONNX model")]
    UnknownModel(String),
    #[error("cannot buffer the download in a temporary file: {0}")]
    Temp(std::io::Error),
}

/// What was staged, for the user.
#[derive(Debug, Default)]
pub struct StageReport {
    pub lines: Vec<String>,
}

/// Stages the dataset as `blob`, after checking that it reads as a CIFAR-10 tarball.
pub fn stage_dataset(
    store: &dyn BlobStore,
    source: &Source,
    blob: &str,
) -> Result<String, StageError> {
    // A URL is downloaded once to a temporary file: it is read twice (checked, then uploaded).
    let mut _download = None;
    let path = match source {
        Source::File(path) => path.clone(),
        Source::Url(_) => {
            let (mut reader, _) = source.open()?;
            let mut file = tempfile::NamedTempFile::new().map_err(StageError::Temp)?;
            std::io::copy(&mut reader, &mut file).map_err(|e| SourceError::Download {
                url: source.to_string(),
                reason: e.to_string(),
            })?;
            file.flush().map_err(StageError::Temp)?;
            let path = file.path().to_path_buf();
            _download = Some(file);
            path
        }
    };
    let file = std::fs::File::open(&path).map_err(|e| SourceError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut images = 0;
    let batches =
        dataset::read_tarball(file, &source.file_name(), &BatchSelection::All, |batch| {
            images += batch.len();
            Ok(())
        })?;
    store.put_file(blob, &path)?;
    Ok(format!(
        "dataset {source} -> {blob} ({} batches, {images} images: {})",
        batches.len(),
        batches.join(", ")
    ))
}

/// Stages a model as `models/<name>.onnx`, converting a CNTK model, and checks that ONNX
/// Runtime loads it and that it takes CIFAR images.
pub fn stage_model(
    store: &dyn BlobStore,
    source: &Source,
    name: &str,
    inference: &InferenceOptions,
) -> Result<String, StageError> {
    let bytes = source.read_all()?;
    let file_name = source.file_name();
    let (onnx, how) = match cntk_onnx::sniff(&bytes) {
        Format::CntkV2 => {
            let imported = cntk_onnx::import(&bytes, &file_name)?;
            let how = format!(
                "converted from CNTK v2: {} nodes, {} weights",
                imported.nodes, imported.parameters
            );
            (imported.onnx, how)
        }
        Format::Onnx => (bytes, "ONNX".to_owned()),
        Format::Unknown => {
            // Let the importer explain what it found (v1 model, not a model at all, ...).
            cntk_onnx::import(&bytes, &file_name)?;
            return Err(StageError::UnknownModel(file_name));
        }
    };
    let scorer = Scorer::load(&onnx, &file_name, inference)?;
    let key = job::model_key(name);
    store.put(&key, &onnx)?;
    Ok(format!(
        "model {source} -> {key} ({how}; {} classes)",
        scorer.classes()
    ))
}

/// Stages a mean image as `models/<name>.mean.xml`, after checking its shape.
pub fn stage_mean_image(
    store: &dyn BlobStore,
    source: &Source,
    name: &str,
) -> Result<String, StageError> {
    let bytes = source.read_all()?;
    MeanImage::from_xml(&bytes, &source.file_name())?;
    let key = job::mean_image_key(name);
    store.put(&key, &bytes)?;
    Ok(format!("mean image {source} -> {key}"))
}

/// Stages an int8 version of the staged model `name` as `<name>-int8`, calibrated on the
/// staged dataset blob, and checks that ONNX Runtime loads it.
pub fn stage_quantized(
    store: &dyn BlobStore,
    name: &str,
    dataset_blob: &str,
    inference: &InferenceOptions,
) -> Result<String, StageError> {
    let onnx = store.get(&job::model_key(name))?;
    let mean_xml = store.get(&job::mean_image_key(name))?;
    let mean = MeanImage::from_xml(&mean_xml, &job::mean_image_key(name))?;
    let mut pixels = Vec::new();
    let result = dataset::read_tarball(
        store.open(dataset_blob)?,
        dataset_blob,
        &BatchSelection::All,
        |batch| {
            let n = batch.len().min(CALIBRATION_IMAGES);
            pixels = batch.pixels[..n * fleet_common::dataset::IMAGE_BYTES].to_vec();
            // One batch is enough: stop reading the tarball.
            Err(DatasetError::Stopped("calibration images read".into()))
        },
    );
    match result {
        Err(DatasetError::Stopped(_)) => {}
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let mut input = Vec::new();
    fleet_common::preprocess::preprocess_into(&pixels, &mean, &mut input);
    let quantized = fleet_common::inference::quantize::quantize(&onnx, &input)?;
    let int8_name = format!("{name}-int8");
    Scorer::load(&quantized, &int8_name, inference)?;
    store.put(&job::model_key(&int8_name), &quantized)?;
    store.put(&job::mean_image_key(&int8_name), &mean_xml)?;
    Ok(format!(
        "model {} -> {} (int8, calibrated on {} images of {dataset_blob}; score with --model-name {int8_name})",
        job::model_key(name),
        job::model_key(&int8_name),
        pixels.len() / fleet_common::dataset::IMAGE_BYTES
    ))
}
