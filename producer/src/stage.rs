//! Staging: puts datasets, models (with their spec) and mean images into a container, checking
//! each on the way in, so a job never starts on inputs that cannot work. A CNTK model is
//! converted to ONNX here.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::source::{Source, SourceError};
use fleet_dataset::collection::{self, is_image};
use fleet_dataset::{self as dataset, BatchSelection, DatasetError, HEIGHT, IMAGE_BYTES, WIDTH};
use fleet_imaging::Preprocessor;
use fleet_imaging::mean_image::{MeanImage, MeanImageError};
use fleet_inference::{Fit, InferenceError, InferenceOptions, InputSize, Scorer, Signature};
use fleet_protocol::job;
use fleet_protocol::job::{Thresholds, VectorColumn, VectorPrecision};
use fleet_service::concurrent;
use fleet_spec::{
    ChannelOrder, ClassList, Embedding, Filter, ModelSpec, Normalize, Outputs, Preset, Provenance,
    Recipe, Resize, SPEC_VERSION, SpecError, parse_class_list, plain_recipe, sha256_hex,
    shorter_side_for,
};
use fleet_storage::{BlobStore, StoreArgs, StoreError, check_key, printable};
use indicatif::{ProgressBar, ProgressStyle};
use model_tools::expose::{ExposeError, expose};
use model_tools::import::{Head, ImportError, ImportedModel, SourceFormat, head_of, import};
use model_tools::quantize::{CALIBRATION_IMAGES, QuantizeError, quantize};

/// The walkthrough's inputs, staged when no input is named.
pub const DEFAULT_DATASET_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz";
/// The walkthrough's model: a ResNet-20 trained on CIFAR-10, saved by CNTK 2.
pub const DEFAULT_MODEL_URL: &str = "https://github.com/Azure-Samples/hdinsight-pyspark-cntk-integration/raw/master/resnet20_meanimage_159.dnn";
/// The walkthrough's mean image, subtracted from every input of its model.
pub const DEFAULT_MEAN_IMAGE_URL: &str = "https://raw.githubusercontent.com/Azure-Samples/hdinsight-pyspark-cntk-integration/master/CIFAR-10_mean.xml";

/// What `producer stage` puts into a container.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// CIFAR-10 tarball: a file or an http(s) URL, staged as --tarball-blob.
    #[arg(long)]
    pub tarball: Option<Source>,
    /// A local folder of images (sub-folders kept, e.g. one per class), uploaded under --prefix.
    #[arg(long, requires = "prefix")]
    pub images: Option<PathBuf>,
    /// Where --images go in the container; score them with `--dataset <prefix>`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Files uploaded at once with --images.
    #[arg(
        long = "upload-concurrency",
        env = "UPLOAD_CONCURRENCY",
        default_value_t = 16
    )]
    pub upload_concurrency: usize,
    /// Upload every file of --images, even those already in the container with the same
    /// size (a file edited in place keeps its size: without this its old bytes stay).
    #[arg(long, requires = "images")]
    pub force: bool,
    /// Model: ONNX, or CNTK (v2, or v1 from BrainScript: `.dnn`, `.model`, `.cmf`), a file or
    /// an http(s) URL.
    #[arg(long)]
    pub model: Option<Source>,
    /// Name the model is staged under (`models/<name>.onnx`, `models/<name>.json`) [default:
    /// --model's file name without its extension; with only --mean-image or --quantize, the
    /// container's only staged model].
    #[arg(long = "model-name", env = "MODEL_NAME")]
    pub model_name: Option<String>,
    /// How the model's images are prepared.
    #[command(flatten, next_help_heading = "How the model's images are prepared")]
    pub spec: SpecArgs,
    /// Blob name of the tarball in the container (what a job's `--dataset` names).
    #[arg(long = "tarball-blob", env = "TARBALL_BLOB", default_value = job::DATASET_BLOB)]
    pub tarball_blob: String,
    /// Also stage an int8 version of the model as `<name>-int8`, calibrated on the staged
    /// tarball (faster on CPUs with integer dot products; check its accuracy on your data).
    #[arg(long)]
    pub quantize: bool,
    /// Stage only these of the walkthrough's inputs, from their public URLs unless given.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Input>,
    /// How the model is loaded, to check it.
    #[command(flatten, next_help_heading = "How the model is loaded")]
    pub inference: InferenceOptions,
}

/// One of the walkthrough's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Input {
    /// The CIFAR-10 tarball.
    Tarball,
    /// The ResNet-20 model.
    Model,
    /// Its mean image.
    MeanImage,
}

/// `producer stage`: stages what `args` names (the walkthrough's inputs when it names
/// nothing), printing a line for each input staged.
pub fn run(store: &StoreArgs, mut args: StageArgs) -> Result<(), StageError> {
    let store = store.open(true)?;
    let named = args.tarball.is_some()
        || args.images.is_some()
        || args.model.is_some()
        || args.spec.mean_image.is_some()
        || args.spec.classes.is_some();
    // The walkthrough's inputs: all three when nothing is named, or those --only lists.
    let defaults: Vec<Input> = if !args.only.is_empty() {
        args.only.clone()
    } else if !named && !args.quantize {
        vec![Input::Tarball, Input::Model, Input::MeanImage]
    } else {
        Vec::new()
    };
    let url = |url: &str| Source::from_str(url).expect("the walkthrough's URLs parse");
    for input in defaults {
        match input {
            Input::Tarball => {
                args.tarball.get_or_insert_with(|| url(DEFAULT_DATASET_URL));
            }
            Input::Model => {
                args.model.get_or_insert_with(|| url(DEFAULT_MODEL_URL));
            }
            Input::MeanImage => {
                args.spec
                    .mean_image
                    .get_or_insert_with(|| url(DEFAULT_MEAN_IMAGE_URL));
            }
        }
    }
    if let Some(tarball) = &args.tarball {
        println!(
            "{}",
            stage_dataset(store.as_ref(), tarball, &args.tarball_blob)?
        );
    }
    if let (Some(images), Some(prefix)) = (&args.images, &args.prefix) {
        println!(
            "{}",
            stage_images(
                store.as_ref(),
                images,
                prefix,
                args.upload_concurrency,
                args.force
            )?
        );
    }
    let mut model_name = match &args.model {
        Some(model) => Some(
            args.model_name
                .clone()
                .unwrap_or_else(|| crate::models::name_from_file(&model.file_name())),
        ),
        None => args.model_name.clone(),
    };
    let mut chosen_name = || -> Result<String, StageError> {
        let name = crate::models::chosen(store.as_ref(), model_name.as_deref())?;
        Ok(model_name.insert(name).clone())
    };
    match (&args.model, &args.spec.mean_image) {
        (Some(model), _) => println!(
            "{}",
            stage_model(
                store.as_ref(),
                model,
                &chosen_name()?,
                &args.spec,
                &args.inference
            )?
        ),
        (None, mean) => {
            if let Some(mean) = mean {
                let staged = stage_mean_image(store.as_ref(), mean, &chosen_name()?)?;
                println!("{staged}");
            }
            if let Some(classes) = &args.spec.classes {
                let staged = stage_classes(store.as_ref(), classes, &chosen_name()?)?;
                println!("{staged}");
            }
        }
    }
    if args.quantize {
        let staged = stage_quantized(
            store.as_ref(),
            &chosen_name()?,
            &args.tarball_blob,
            &args.inference,
        )?;
        println!("{staged}");
    }
    Ok(())
}

/// Why an input cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An input cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// No model is named and the container holds none or several.
    #[error(transparent)]
    Choice(#[from] crate::models::ChoiceError),
    /// The container cannot be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tarball is not a CIFAR-10 tarball.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The mean image does not fit the model.
    #[error(transparent)]
    MeanImage(#[from] MeanImageError),
    /// The model file cannot be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A tensor asked for as an embedding is not in the model.
    #[error(transparent)]
    Expose(#[from] ExposeError),
    /// ONNX Runtime refuses the model, or it is no image classifier.
    #[error(transparent)]
    Model(#[from] InferenceError),
    /// The model's spec cannot be made or read.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A flag or an input the model cannot be staged with.
    #[error("{0}")]
    Invalid(String),
    /// A folder of images cannot be read.
    #[error("cannot read {path}")]
    Folder {
        /// The folder or file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A download cannot be buffered.
    #[error("cannot buffer the download in a temporary file")]
    Temp(#[source] std::io::Error),
    /// The int8 model cannot be made.
    #[error(
        "model {model} is staged, but no int8 version of it could be made (the reason follows); \
         score it with --model-name {model}"
    )]
    Quantize {
        /// The model staged.
        model: String,
        /// Why no int8 version was made.
        #[source]
        source: QuantizeError,
    },
}

/// A pixel scale factor: a number or a fraction (`1/255`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale(pub f32);

impl FromStr for Scale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            t.trim()
                .parse::<f32>()
                .map_err(|_| format!("`{s}` is not a number or a fraction like 1/255"))
        };
        let value = match s.split_once('/') {
            Some((a, b)) => number(a)? / number(b)?,
            None => number(s)?,
        };
        if value.is_finite() && value != 0.0 {
            Ok(Scale(value))
        } else {
            Err(format!("scale `{s}` is not a usable factor"))
        }
    }
}

/// How a model's images are prepared: written into its spec. Part of `producer stage`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpecArgs {
    /// Class names, one per line in the model's output order (a file or URL); without it,
    /// classes are named class_0, class_1, ... (a CIFAR-10 tarball job names its 10 classes).
    #[arg(long)]
    pub classes: Option<Source>,
    /// How the ecosystem the model comes from prepares images, in one word: torchvision
    /// (RGB, shorter side to 256 for a 224 crop with Pillow's bilinear, centre crop, /255,
    /// ImageNet mean/std), timm (the same, bicubic), keras-caffe (BGR, squashed, ImageNet mean
    /// subtracted from 0..255), keras-tf (RGB, squashed, -1..1), cntk (BGR, squashed in float,
    /// raw 0..255). The flags below override its fields [default: cntk for CNTK models; for
    /// ONNX models, RGB, squashed with Pillow's bilinear, raw 0..255].
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Channel order the model was trained on [default: the preset's].
    #[arg(long = "channel-order", value_enum)]
    pub channel_order: Option<ChannelOrder>,
    /// How images of another size are brought to the model's: both sides scaled (stretch), or
    /// the shorter side scaled and the centre cut out (center-crop) [default: the preset's].
    #[arg(long, value_enum)]
    pub resize: Option<Resize>,
    /// With center-crop: the length the shorter side is scaled to before the crop (256 for a
    /// 224 crop as torchvision evaluates) [default: the preset's (the crop / 0.875); without a
    /// preset, just enough to cover the crop].
    #[arg(long = "shorter-side", value_name = "PIXELS")]
    pub shorter_side: Option<u32>,
    /// How pixels are sampled when resizing, as the named library does it to the value
    /// [default: the preset's].
    #[arg(long, value_enum)]
    pub filter: Option<Filter>,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 of their size (libjpeg's DCT-domain scaling, as
    /// Pillow's `draft`), as far as they stay at least the resized size, then resize them with
    /// the filter: several times faster on camera photos, but the model's answer changes on
    /// some of them (BENCHMARKS.md states how many). Off unless given.
    #[arg(long = "fast-jpeg")]
    pub fast_jpeg: bool,
    /// Factor applied to pixel values (0..255) before normalisation: `1/255` for models
    /// trained on 0..1 [default: the preset's].
    #[arg(long)]
    pub scale: Option<Scale>,
    /// Per-channel mean subtracted after scaling, in the model's channel order
    /// (`0.485,0.456,0.406`) [default: the preset's].
    #[arg(long, value_delimiter = ',', conflicts_with = "mean_image")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after the mean [default: 1 per channel].
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Vec<f32>,
    /// Mean image (OpenCV XML of the model's size, HWC in its channel order), a file or URL:
    /// subtracted after scaling. Given without --model, it replaces the mean image of the
    /// staged model --model-name.
    #[arg(long = "mean-image")]
    pub mean_image: Option<Source>,
    /// The height and width to feed a model that leaves them free (`224x224`: the size it was
    /// trained at); a model that fixes them must agree.
    #[arg(long = "input-size", value_name = "HEIGHTxWIDTH")]
    pub input_size: Option<InputSize>,
    /// The classifier's output: of an ONNX model with several outputs, the output's name; of a
    /// CNTK model, the node (v1) or function (v2) whose output it is, when the model saved
    /// another one first [default: an ONNX model's only output; a CNTK model's saved output
    /// nodes, or its first output that is not a loss or metric].
    #[arg(long = "output-node", value_name = "NAME")]
    pub output_node: Option<String>,
    /// A tensor of the model written as a vector an image (an embedding), a column of the
    /// Parquet results: one of its outputs, or any tensor inside its graph (made an output as
    /// the model is staged). Repeat it for several; NAME=TENSOR names the column [default
    /// column: `embedding`, or the tensor's name beside others].
    #[arg(long = "embedding", value_name = "[NAME=]TENSOR")]
    pub embeddings: Vec<String>,
    /// The model is no classifier (a CLIP or DINOv2 image encoder, say): its rows carry no
    /// predictions, only its embeddings; with no --embedding, its only output is the
    /// embedding.
    #[arg(long = "embedding-only")]
    pub embedding_only: bool,
    /// How embeddings are written: float32, or float16 (half the bytes, about three
    /// significant digits).
    #[arg(long = "embedding-precision", value_name = "float32|float16", value_parser = precision, default_value = "float32")]
    pub embedding_precision: VectorPrecision,
    /// Scale each embedding to length 1 (L2) before it is written: cosine similarity is then a
    /// dot product.
    #[arg(long = "normalize-embeddings")]
    pub normalize_embeddings: bool,
    /// The model is a multi-label classifier (independent sigmoids: a photo is "dog" and
    /// "grass" and "outdoor"): each image gets every class whose score reaches its threshold,
    /// and jobs report precision, recall, F1 and average precision per class. A model whose
    /// graph ends in a Sigmoid is one without this flag.
    #[arg(long = "multi-label")]
    pub multi_label: bool,
    /// The score (0 to 1) a class needs to be a multi-label image's tag [default: 0.5].
    #[arg(long, conflicts_with = "thresholds")]
    pub threshold: Option<f32>,
    /// A file of each class's threshold, one score a line in the model's class order (a file
    /// or URL), for a multi-label model.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<Source>,
}

/// `--embedding-precision`'s parser.
fn precision(value: &str) -> Result<VectorPrecision, String> {
    match value {
        "float32" => Ok(VectorPrecision::Float32),
        "float16" => Ok(VectorPrecision::Float16),
        other => Err(format!("`{other}` is not float32 or float16")),
    }
}

/// A multi-label model's threshold when none is given: a class is a tag when it is more likely
/// than not.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

impl SpecArgs {
    /// A multi-label model's thresholds (for one whose classifier output is made by `head`,
    /// of `classes` classes), or `None` for a single-label model.
    fn multi_label(&self, head: Head, classes: usize) -> Result<Option<Thresholds>, StageError> {
        let asked = self.multi_label || self.threshold.is_some() || self.thresholds.is_some();
        match head {
            Head::Sigmoid => {}
            Head::Softmax if asked => {
                return Err(StageError::Invalid(
                    "the model's classifier output is made by a Softmax, whose scores compete \
                     for one class: it is no multi-label model (leave out --multi-label and \
                     the thresholds)"
                        .into(),
                ));
            }
            Head::Softmax | Head::Logits if !asked => return Ok(None),
            Head::Logits if !self.multi_label => {
                return Err(StageError::Invalid(
                    "thresholds are for a multi-label model: give --multi-label too (its scores \
                     are then the sigmoid of its outputs)"
                        .into(),
                ));
            }
            Head::Softmax | Head::Logits => {}
        }
        if classes == 0 {
            return Err(StageError::Invalid(
                "--multi-label is for a classifier, and the model has no classes".into(),
            ));
        }
        let thresholds = match &self.thresholds {
            Some(file) => {
                let text = fleet_dataset::text::utf8(&file.read_all()?, &file.to_string())
                    .map_err(StageError::Invalid)?;
                let values: Vec<f32> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .enumerate()
                    .map(|(i, line)| {
                        line.trim().parse::<f32>().map_err(|_| {
                            StageError::Invalid(format!(
                                "{file}: line {} ({:?}) is not a number",
                                i + 1,
                                line.trim()
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                if values.len() != classes {
                    return Err(StageError::Invalid(format!(
                        "{file} holds {} thresholds, but the model has {classes} classes: give \
                         one a line, in class order",
                        values.len()
                    )));
                }
                values
            }
            None => vec![self.threshold.unwrap_or(DEFAULT_THRESHOLD)],
        };
        Ok(Some(Thresholds(thresholds)))
    }

    /// The embeddings asked for: each column's name and its tensor.
    fn embedding_columns(&self) -> Result<Vec<(String, String)>, StageError> {
        let several = self.embeddings.len() > 1;
        let columns: Vec<(String, String)> = self
            .embeddings
            .iter()
            .map(|arg| match arg.split_once('=') {
                Some((name, tensor)) => (name.to_owned(), tensor.to_owned()),
                None if several => (column_name(arg), arg.clone()),
                None => ("embedding".to_owned(), arg.clone()),
            })
            .collect();
        for (name, _) in &columns {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || RESERVED_COLUMNS.contains(&name.as_str()) {
                return Err(StageError::Invalid(format!(
                    "`{name}` cannot name an embedding column: use letters, digits and `_`, \
                     starting with a letter, and none of {}",
                    RESERVED_COLUMNS.join(", ")
                )));
            }
        }
        Ok(columns)
    }
}

/// Columns the results have of their own: an embedding cannot take their names.
const RESERVED_COLUMNS: [&str; 8] = [
    "batch",
    "index",
    "filename",
    "true_label",
    "predicted_label",
    "true_class",
    "predicted_class",
    "error",
];

/// A column name made of a tensor's name: `pool5/7x7_s1` becomes `pool5_7x7_s1`.
fn column_name(tensor: &str) -> String {
    let name: String = tensor
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => name,
        _ => format!("embedding_{name}"),
    }
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
            std::io::copy(&mut reader, &mut file).map_err(|e| source.failed_reading(e))?;
            file.flush().map_err(StageError::Temp)?;
            let path = file.path().to_path_buf();
            _download = Some(file);
            path
        }
    };
    let file = std::fs::File::open(&path).map_err(|e| SourceError::File {
        path: printable(&path),
        source: e,
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

/// Uploads every file of the local folder `dir` under `prefix` (sub-folders kept), several at
/// once, skipping blobs already there with the same size unless `force`. Hidden files are
/// left out.
pub fn stage_images(
    store: &dyn BlobStore,
    dir: &Path,
    prefix: &str,
    concurrency: usize,
    force: bool,
) -> Result<String, StageError> {
    let prefix = collection::normalize_prefix(prefix);
    let Walked {
        files,
        skipped: mut left_out,
    } = walk(dir)?;
    // Check every name at the door. A file whose name no blob can have (a control character,
    // a backslash, over 1,024 bytes) is left out and named; a reserved folder refuses the
    // whole folder, since every file under it would land among the product's own blobs.
    let mut uploads = Vec::with_capacity(files.len());
    for (path, relative, size) in files {
        let key = format!("{prefix}{relative}");
        if let Err(e) = check_key(&key) {
            left_out.push(format!("{} ({e})", printable(&path)));
            continue;
        }
        if let Some(reserved) = job::reserved(&key) {
            return Err(StageError::Invalid(format!(
                "cannot stage {} as {key}: {reserved} is where the product keeps its own \
                 blobs; give another --prefix",
                printable(&path)
            )));
        }
        uploads.push((path, key, size));
    }
    let images = uploads.iter().filter(|(_, key, _)| is_image(key)).count();
    if images == 0 {
        return Err(StageError::Invalid(format!(
            "{} holds no image files ({})",
            printable(dir),
            collection::IMAGE_EXTENSIONS.join(", ")
        )));
    }
    let present: std::collections::HashMap<String, u64> =
        store.list_sized(&prefix)?.into_iter().collect();
    let total = uploads.len();
    if !force {
        uploads.retain(|(_, key, size)| present.get(key) != Some(size));
    }
    let skipped = total - uploads.len();
    let bar = ProgressBar::new(uploads.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} uploading {bar:40} {pos}/{len} files ({per_sec}, {eta})",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let threads = concurrency.clamp(1, 64).min(uploads.len());
    let uploaded = concurrent::try_for_each(uploads.iter(), threads, |(path, key, _)| {
        store.put_file(key, path)?;
        bar.inc(1);
        Ok::<_, StoreError>(())
    });
    bar.finish_and_clear();
    uploaded?;
    let mut summary = format!(
        "images {} -> {prefix} ({total} files, {images} images: {} uploaded, {skipped} already there)",
        printable(dir),
        total - skipped
    );
    if !left_out.is_empty() {
        let _ = write!(summary, "; not staged: {}", left_out.join(", "));
    }
    Ok(summary)
}

/// What [`walk`] found under a folder.
struct Walked {
    /// Every regular file: path, name relative to the folder (with `/`), size.
    files: Vec<(PathBuf, String, u64)>,
    /// What was left out, and why: links that lead out of the folder, names that are not
    /// UTF-8 (blob names are, and a lossy conversion would merge two files into one blob).
    skipped: Vec<String>,
}

/// Every regular file under `dir`, hidden ones left out. Links are followed only where they
/// lead inside `dir` (each folder walked once, so a link to a parent does not loop).
fn walk(dir: &Path) -> Result<Walked, StageError> {
    let io = |path: &Path| {
        let path = printable(path);
        move |source| StageError::Folder { path, source }
    };
    let root = std::fs::canonicalize(dir).map_err(io(dir))?;
    let mut walked = Walked {
        files: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen = std::collections::HashSet::from([root.clone()]);
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    while let Some((current, relative_dir)) = dirs.pop() {
        for entry in std::fs::read_dir(&current).map_err(io(&current))? {
            let entry = entry.map_err(io(&current))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                walked
                    .skipped
                    .push(format!("{} (its name is not UTF-8)", printable(&path)));
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if entry.file_type().map_err(io(&path))?.is_symlink() {
                let inside = std::fs::canonicalize(&path).is_ok_and(|t| t.starts_with(&root));
                if !inside {
                    walked
                        .skipped
                        .push(format!("{} (a link out of the folder)", printable(&path)));
                    continue;
                }
            }
            let metadata = std::fs::metadata(&path).map_err(io(&path))?;
            let relative = format!("{relative_dir}{name}");
            if metadata.is_dir() {
                if seen.insert(std::fs::canonicalize(&path).map_err(io(&path))?) {
                    dirs.push((path, format!("{relative}/")));
                }
            } else if metadata.is_file() {
                walked.files.push((path, relative, metadata.len()));
            }
        }
    }
    walked.files.sort();
    walked.skipped.sort();
    Ok(walked)
}

/// Stages a model as `models/<name>.onnx` with its spec `models/<name>.json` (and its mean
/// image as `models/<name>.mean.xml`), converting a CNTK model, after checking that ONNX
/// Runtime loads it as an image classifier and that the spec fits it.
pub fn stage_model(
    store: &dyn BlobStore,
    source: &Source,
    name: &str,
    spec_args: &SpecArgs,
    inference: &InferenceOptions,
) -> Result<String, StageError> {
    if !job::valid_model_name(name) {
        return Err(StageError::Invalid(format!(
            "model name {name:?}: use 1 to 100 letters, digits, '.', '-' and '_' (it names the \
             model's blobs and, in a job of several models, its columns)"
        )));
    }
    let file_name = source.file_name();
    let (imported, signature, output) = import_and_load(source, spec_args, inference)?;
    let classes = match (&spec_args.classes, spec_args.embedding_only) {
        (Some(_), true) => {
            return Err(StageError::Invalid(
                "--classes names the classes of a classifier, and --embedding-only says the \
                 model is none: give one or the other"
                    .into(),
            ));
        }
        (Some(classes), false) => Some(class_list(classes, signature.classes(), &file_name)?),
        (None, _) => None,
    };
    let columns = spec_args.embedding_columns()?;
    let embeddings = (signature.embeddings.iter())
        .zip(
            columns
                .iter()
                .map(|(name, _)| name.clone())
                .chain(std::iter::repeat("embedding".to_owned())),
        )
        .map(|(output, name)| Embedding {
            tensor: output.name.clone(),
            column: VectorColumn {
                name,
                dim: output.len as u32,
                precision: spec_args.embedding_precision,
                normalized: spec_args.normalize_embeddings,
                model: 0,
            },
        })
        .collect();
    let recipe = match (spec_args.preset, imported.format) {
        (Some(preset), _) => preset.recipe(),
        (None, SourceFormat::CntkV1 | SourceFormat::CntkV2) => Preset::Cntk.recipe(),
        (None, SourceFormat::Onnx) => plain_recipe(),
    };
    let preparation = resolve_preparation(
        spec_args,
        &recipe,
        signature.channels,
        (signature.height as u32, signature.width as u32),
    )
    .map_err(|reason| StageError::Invalid(format!("model {name}: {reason}")))?;
    let head = match &signature.classifier {
        Some(classifier) => head_of(&imported.onnx, &classifier.name),
        None => Head::Logits,
    };
    let multi_label = spec_args.multi_label(head, signature.classes())?;
    let mean_key = job::mean_image_key(name);
    let (normalize, mean_xml) = match &spec_args.mean_image {
        Some(mean) => (
            Normalize::MeanImage {
                key: mean_key.clone(),
            },
            Some((mean.read_all()?, mean.file_name())),
        ),
        None => (preparation.normalize, None),
    };
    let mut spec = ModelSpec {
        version: SPEC_VERSION,
        input: signature.input.clone(),
        output,
        layout: signature.layout,
        channels: signature.channels as u32,
        height: signature.height as u32,
        width: signature.width as u32,
        channel_order: preparation.channel_order,
        resize: preparation.resize,
        shorter_side: preparation.shorter_side,
        filter: preparation.filter,
        fast_jpeg: spec_args.fast_jpeg,
        scale: preparation.scale,
        normalize,
        outputs: head.outputs(),
        class_count: signature.classes() as u32,
        class_ids: classes.as_ref().and_then(|list| list.ids.clone()),
        classes: classes.map(|list| list.names),
        embeddings,
        multi_label,
        provenance: Provenance {
            source: source.to_string(),
            format: imported.format.as_str().into(),
            source_sha256: imported.source_sha256.clone(),
            onnx_sha256: imported.onnx_sha256.clone(),
        },
    };
    // The oldest format that says it all: a fleet of an earlier release still reads a plain
    // classifier's spec.
    spec.version = spec.oldest_version();
    spec.validate()
        .map_err(|reason| StageError::Invalid(format!("model {name}: {reason}")))?;
    if let Some((xml, file_name)) = &mean_xml {
        check_mean_image(&spec, xml, file_name)?;
    }
    // The spec names the model and the mean image: it goes last, so a reader that finds it
    // finds both.
    store.put(&job::model_key(name), &imported.onnx)?;
    if let Some((xml, _)) = &mean_xml {
        store.put(&mean_key, xml)?;
    }
    put_spec(store, name, &spec)?;
    Ok(staged_model_line(
        source,
        name,
        &imported.description,
        &spec,
        spec_args.preset,
    ))
}

/// What `producer stage` prints for a staged model: where it went, what it is, and how its
/// images are prepared.
fn staged_model_line(
    source: &Source,
    name: &str,
    description: &str,
    spec: &ModelSpec,
    preset: Option<Preset>,
) -> String {
    let preset = preset.map_or_else(
        || "the default".to_owned(),
        |p| format!("--preset {}", p.name()),
    );
    let mut line = format!(
        "model {source} -> {} ({description}; input {}x{}x{} {:?}, {})\n  images prepared as \
         {preset}: {}",
        job::model_key(name),
        spec.channels,
        spec.height,
        spec.width,
        spec.layout,
        match (spec.class_count, &spec.multi_label) {
            (0, _) => "no classes".to_owned(),
            (n, None) => format!("{n} classes, {:?}", spec.outputs),
            (n, Some(Thresholds(thresholds))) => format!(
                "{n} classes, multi-label ({}), {}",
                match spec.outputs {
                    Outputs::Logits => "sigmoid of its outputs",
                    Outputs::Probabilities => "its outputs are the scores",
                },
                match thresholds.as_slice() {
                    [one] => format!("threshold {one}"),
                    each => format!(
                        "a threshold per class ({} to {})",
                        each.iter().copied().fold(f32::INFINITY, f32::min),
                        each.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    ),
                }
            ),
        },
        spec.preparation()
    );
    for embedding in &spec.embeddings {
        let column = &embedding.column;
        let _ = write!(
            line,
            "\n  column {} <- tensor {}: {} values an image, {}{}",
            column.name,
            embedding.tensor,
            column.dim,
            column.precision.name(),
            if column.normalized {
                ", L2-normalised"
            } else {
                ""
            }
        );
    }
    line
}

/// The model file as ONNX (a CNTK model converted), loaded by ONNX Runtime as the flags fit
/// it: the import, the model's signature, and the output its spec must name.
fn import_and_load(
    source: &Source,
    spec_args: &SpecArgs,
    inference: &InferenceOptions,
) -> Result<(ImportedModel, Signature, Option<String>), StageError> {
    let file_name = source.file_name();
    let options = cntk_onnx::Options {
        output: spec_args.output_node.clone(),
    };
    let mut imported = import(source.read_all()?, &file_name, &options)?;
    // The importer chose a CNTK model's output (the ONNX it writes has one); an ONNX model's
    // is chosen when it is run.
    let mut output = match imported.format {
        SourceFormat::Onnx => spec_args.output_node.clone(),
        SourceFormat::CntkV1 | SourceFormat::CntkV2 => None,
    };
    // Tensors inside the graph asked for as embeddings become outputs of the staged model.
    let tensors: Vec<String> = (spec_args.embedding_columns()?.into_iter())
        .map(|(_, tensor)| tensor)
        .collect();
    let exposed = expose(&imported.onnx, &tensors)?;
    if !exposed.added.is_empty() {
        // The classifier of a model with one output is still that one.
        if let ([only], None, false) = (
            exposed.outputs.as_slice(),
            &output,
            spec_args.embedding_only,
        ) {
            output = Some(only.clone());
        }
        imported.onnx_sha256 = sha256_hex(&exposed.onnx);
        imported.onnx = exposed.onnx;
        imported.description.push_str(&format!(
            "; {} made an output for its embedding",
            exposed.added.join(", ")
        ));
    }
    let fit = Fit {
        size: spec_args.input_size,
        output: output.clone(),
        no_classes: spec_args.embedding_only,
        embeddings: tensors,
    };
    let scorer = Scorer::load_fitted(&imported.onnx, &file_name, inference, &fit)?;
    let signature = scorer.signature().clone();
    Ok((imported, signature, output))
}

/// The class list in `source`, which must name as many classes as `model` has.
fn class_list(source: &Source, classes: usize, model: &str) -> Result<ClassList, StageError> {
    let text = fleet_dataset::text::utf8(&source.read_all()?, &source.to_string())
        .map_err(StageError::Invalid)?;
    let list = parse_class_list(&text, &source.to_string()).map_err(StageError::Invalid)?;
    if list.names.len() != classes {
        return Err(StageError::Invalid(format!(
            "{source} names {} classes, but model {model} has {classes}",
            list.names.len(),
        )));
    }
    Ok(list)
}

/// The preparation fields of a spec: the flags given, else the recipe's.
#[derive(Debug, Clone, PartialEq)]
struct Preparation {
    channel_order: ChannelOrder,
    resize: Resize,
    shorter_side: Option<u32>,
    filter: Filter,
    scale: f32,
    normalize: Normalize,
}

/// Resolves the preparation of a model with `channels` channels and input `(height, width)`:
/// each flag of `args` given, else `recipe`'s value.
fn resolve_preparation(
    args: &SpecArgs,
    recipe: &Recipe,
    channels: usize,
    (height, width): (u32, u32),
) -> Result<Preparation, String> {
    let resize = args.resize.unwrap_or(recipe.resize);
    let shorter_side = match resize {
        Resize::CenterCrop => args.shorter_side.or_else(|| {
            recipe
                .crop_fraction
                .map(|fraction| shorter_side_for(height.max(width), fraction))
        }),
        Resize::Stretch if args.shorter_side.is_some() => {
            return Err(
                "--shorter-side is for --resize center-crop; a stretched image has \
                        both sides set to the model's"
                    .into(),
            );
        }
        Resize::Stretch => None,
    };
    let normalize = if args.mean_image.is_some() {
        // Replaced by the mean image.
        Normalize::None
    } else if !args.mean.is_empty() {
        let std = if args.std.is_empty() {
            vec![1.0; args.mean.len()]
        } else {
            args.std.clone()
        };
        Normalize::PerChannel {
            mean: args.mean.clone(),
            std,
        }
    } else {
        match recipe.normalize {
            Some(_) if channels != 3 => {
                return Err(format!(
                    "the preset normalises 3 colour channels, but the model takes {channels}: \
                     give --mean and --std with {channels} value(s)"
                ));
            }
            Some((mean, std)) => Normalize::PerChannel {
                mean: mean.to_vec(),
                std: std.to_vec(),
            },
            None => Normalize::None,
        }
    };
    Ok(Preparation {
        channel_order: args.channel_order.unwrap_or(recipe.channel_order),
        resize,
        shorter_side,
        filter: args.filter.unwrap_or(recipe.filter),
        scale: args.scale.map_or(recipe.scale, |s| s.0),
        normalize,
    })
}

/// Replaces the mean image of the staged model `name`, after checking it fits the model.
pub fn stage_mean_image(
    store: &dyn BlobStore,
    source: &Source,
    name: &str,
) -> Result<String, StageError> {
    let mut spec = read_spec(store, name)?;
    let bytes = source.read_all()?;
    check_mean_image(&spec, &bytes, &source.file_name())?;
    let key = job::mean_image_key(name);
    store.put(&key, &bytes)?;
    spec.normalize = Normalize::MeanImage { key: key.clone() };
    put_spec(store, name, &spec)?;
    Ok(format!("mean image {source} -> {key}"))
}

/// Names the classes of the staged model `name` (the fix a job's label check suggests, with no
/// need to stage the model file again): the list must name each class of the model, in order.
pub fn stage_classes(
    store: &dyn BlobStore,
    source: &Source,
    name: &str,
) -> Result<String, StageError> {
    let mut spec = read_spec(store, name)?;
    if spec.class_count == 0 {
        return Err(StageError::Invalid(format!(
            "model {name} was staged with --embedding-only: it has no classes to name"
        )));
    }
    let list = class_list(source, spec.class_count as usize, name)?;
    let count = list.names.len();
    spec.class_ids = list.ids;
    spec.classes = Some(list.names);
    spec.validate().map_err(StageError::Invalid)?;
    put_spec(store, name, &spec)?;
    Ok(format!(
        "classes {source} -> {} ({count} classes)",
        job::spec_key(name)
    ))
}

fn check_mean_image(spec: &ModelSpec, xml: &[u8], source_name: &str) -> Result<(), StageError> {
    let mean = MeanImage::from_xml(xml, source_name)?;
    mean.fit(
        spec.channels as usize,
        spec.height as usize,
        spec.width as usize,
        source_name,
    )?;
    Ok(())
}

fn read_spec(store: &dyn BlobStore, name: &str) -> Result<ModelSpec, StageError> {
    let key = job::spec_key(name);
    match store.get(&key) {
        Ok(bytes) => Ok(ModelSpec::from_json(&bytes, &key)?),
        Err(e) if e.is_not_found() => Err(StageError::Invalid(format!(
            "model {name} is not staged in {} (no {key}): stage it with --model first",
            store.describe()
        ))),
        Err(e) => Err(e.into()),
    }
}

fn put_spec(store: &dyn BlobStore, name: &str, spec: &ModelSpec) -> Result<(), StageError> {
    let json = serde_json::to_vec_pretty(spec).expect("a spec always serializes");
    store.put(&job::spec_key(name), &json)?;
    Ok(())
}

/// Stages an int8 version of the staged model `name` as `<name>-int8`, calibrated on the
/// first images of the staged tarball `dataset_blob` prepared as the model's spec says, and
/// checks that ONNX Runtime loads it.
pub fn stage_quantized(
    store: &dyn BlobStore,
    name: &str,
    dataset_blob: &str,
    inference: &InferenceOptions,
) -> Result<String, StageError> {
    let spec = read_spec(store, name)?;
    let onnx = store.get(&job::model_key(name))?;
    let mean = spec
        .mean_image_key()
        .map(|key| store.get(key))
        .transpose()?;
    let preprocessor = Preprocessor::new(&spec, mean.as_deref())?;
    let mut pixels = Vec::new();
    let result = dataset::read_tarball(
        store.open(dataset_blob)?,
        dataset_blob,
        &BatchSelection::All,
        |batch| {
            let n = batch.len().min(CALIBRATION_IMAGES);
            pixels = batch.pixels[..n * IMAGE_BYTES].to_vec();
            // One batch is enough: stop reading the tarball.
            Err(DatasetError::Stopped("calibration images read"))
        },
    );
    match result {
        Err(DatasetError::Stopped(_)) | Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    let images = pixels.len() / IMAGE_BYTES;
    let mut input = vec![0.0; images * preprocessor.input_len()];
    preprocessor.write_planes(&pixels, HEIGHT, WIDTH, &mut input);
    let (c, h, w) = (
        spec.channels as usize,
        spec.height as usize,
        spec.width as usize,
    );
    let shape = match spec.layout {
        fleet_spec::Layout::Nchw => [c, h, w],
        fleet_spec::Layout::Nhwc => [h, w, c],
    };
    let quantized = quantize(&onnx, &input, shape).map_err(|source| StageError::Quantize {
        model: name.into(),
        source,
    })?;
    let int8_name = format!("{name}-int8");
    Scorer::load_fitted(&quantized, &int8_name, inference, &Fit::of(&spec))?;
    let mut int8_spec = spec.clone();
    int8_spec.provenance.onnx_sha256 = sha256_hex(&quantized);
    int8_spec.provenance.format = format!("{} (int8)", spec.provenance.format);
    store.put(&job::model_key(&int8_name), &quantized)?;
    put_spec(store, &int8_name, &int8_spec)?;
    Ok(format!(
        "model {} -> {} (int8, calibrated on {images} images of {dataset_blob}; score with --model-name {int8_name})",
        job::model_key(name),
        job::model_key(&int8_name),
    ))
}

#[cfg(test)]
mod tests {
    use super::Scale;

    #[test]
    fn scales_parse_as_numbers_or_fractions() {
        assert_eq!("1".parse::<Scale>().unwrap().0, 1.0);
        assert!(("1/255".parse::<Scale>().unwrap().0 - 1.0 / 255.0).abs() < 1e-9);
        assert!("0".parse::<Scale>().is_err());
        assert!("1/0".parse::<Scale>().is_err());
        assert!("x".parse::<Scale>().is_err());
    }
}
