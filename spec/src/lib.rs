#![warn(missing_docs)]
//! The model spec: what a staged model expects of an image and what its outputs mean.
//!
//! It lies beside the model as `models/<name>.json`, written by `producer stage` from the
//! model's own signature and the user's flags. Workers build their preprocessing from it, and
//! the producer takes the class names of a job from it, so no image geometry or class count
//! is a constant anywhere in the fleet.
//!
//! The steps a worker applies, in order: decode; convert to the model's channel count (gray
//! replicated to three channels, or colour to luma); resize to the model's height and width
//! ([`Resize`], with the [`Filter`] of the pipeline the model came from, rounded to 8 bits as
//! that pipeline does); reorder the channels ([`ChannelOrder`]); multiply by [`ModelSpec::scale`];
//! then subtract a mean image, or a per-channel mean and divide by a per-channel std
//! ([`Normalize`]); lay the result out as the model's input ([`Layout`]).

use fleet_protocol::job::{CLASS_SCORES_COLUMN, Thresholds, VectorColumn, VectorPrecision};
use serde::{Deserialize, Serialize};

/// Version of the spec format written by this build. Version 2 added [`ModelSpec::filter`] and
/// [`ModelSpec::shorter_side`], version 3 [`ModelSpec::embeddings`] (and models with no
/// classes): a build that reads an older version would ignore them and prepare images another
/// way, or write other results, so it must refuse the spec instead.
pub const SPEC_VERSION: u32 = 3;

/// The oldest spec format this build reads: a version-1 spec is read with the filter and
/// geometry every model had then ([`Filter::FloatLinear`], shorter side to the crop).
pub const OLDEST_SPEC_VERSION: u32 = 1;

/// How the model input tensor is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]`: CNTK, PyTorch exports.
    Nchw,
    /// `[N, H, W, C]`: TensorFlow/Keras exports.
    Nhwc,
}

/// Order of the colour channels the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Blue, green, red: how OpenCV, and so CNTK's image reader, deliver pixels.
    Bgr,
    /// Red, green, blue: how most other toolkits deliver pixels.
    Rgb,
}

/// How an image of another size is brought to the model's size: the geometry. How its pixels
/// are sampled is the [`Filter`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Both sides scaled to the model's, aspect ratio not kept (CNTK's `Scale` transform,
    /// Keras' `image_dataset_from_directory`).
    Stretch,
    /// Shorter side scaled to the spec's shorter side (torchvision's `Resize(S)`: the
    /// longer side in proportion, truncated), then the model's height and width cut from the
    /// centre (torchvision's `CenterCrop`, half-pixel offsets rounded to even). Without a
    /// shorter side, the image is scaled just enough to cover the model's input.
    CenterCrop,
}

/// How pixels are sampled when an image is resized: the filter of the pipeline the model was
/// trained and evaluated with, reproduced to the value (each keeps its library's fixed-point
/// arithmetic and its rounding to 8 bits between the passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    /// Pillow's `Image.BILINEAR`: a triangle filter widened by the shrink factor
    /// (antialiased); torchvision's `Resize` on PIL images.
    PillowBilinear,
    /// Pillow's `Image.BICUBIC` (a = -0.5), antialiased the same way: timm's usual filter.
    PillowBicubic,
    /// OpenCV's `INTER_LINEAR` on 8-bit images: two taps, no antialiasing.
    OpencvLinear,
    /// OpenCV's `INTER_AREA`: pixel areas averaged when shrinking.
    OpencvArea,
    /// OpenCV's `INTER_NEAREST`.
    OpencvNearest,
    /// Two-tap bilinear on float pixels, never rounded: CNTK's `Scale` transform (which
    /// converts to float before OpenCV's `INTER_LINEAR`), and every model staged before
    /// filters were named.
    FloatLinear,
}

impl Filter {
    /// The name used on the command line and in specs.
    pub fn name(self) -> &'static str {
        match self {
            Self::PillowBilinear => "pillow-bilinear",
            Self::PillowBicubic => "pillow-bicubic",
            Self::OpencvLinear => "opencv-linear",
            Self::OpencvArea => "opencv-area",
            Self::OpencvNearest => "opencv-nearest",
            Self::FloatLinear => "float-linear",
        }
    }

    /// The filter of specs written before filters were named (version 1).
    fn legacy() -> Self {
        Self::FloatLinear
    }
}

/// A model's image preparation as the ecosystem it came from does it, in one word. Flags given
/// beside a preset override its fields; the spec records the resolved values, never the preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// torchvision's ImageNet evaluation: RGB, shorter side to 256 (for a 224 crop) with
    /// Pillow's bilinear, centre crop, /255, ImageNet mean and std.
    Torchvision,
    /// timm's default evaluation: as torchvision, with Pillow's bicubic.
    Timm,
    /// Keras `preprocess_input` in `caffe` mode (ResNet50, VGG): BGR, 0..255 less the ImageNet
    /// mean per channel, images squashed to the model's size with Pillow's bilinear.
    KerasCaffe,
    /// Keras `preprocess_input` in `tf` mode (MobileNet, Inception, Xception): RGB scaled to
    /// -1..1 (x / 127.5 - 1), squashed with Pillow's bilinear.
    KerasTf,
    /// CNTK's image reader: BGR, raw 0..255, both sides scaled (its `Scale` transform, in
    /// float), normalised by the model's mean image when one is staged. The default for CNTK
    /// models.
    Cntk,
}

/// The fraction of the resized image a centre crop keeps in the torchvision and timm
/// evaluations (224 of 256): the shorter side is the crop's size divided by it, rounded down.
pub const IMAGENET_CROP_FRACTION: f64 = 0.875;

/// ImageNet's per-channel mean and standard deviation of 0..1 RGB values, as torchvision and
/// timm normalise.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The preparation fields a preset (or the default for a model's format) settles.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The order the model takes colour channels in.
    pub channel_order: ChannelOrder,
    /// How an image is brought to the model's size.
    pub resize: Resize,
    /// For [`Resize::CenterCrop`]: the share of the resized image the crop keeps, from which
    /// the shorter side follows for the model's size.
    pub crop_fraction: Option<f64>,
    /// How pixels are sampled when resizing.
    pub filter: Filter,
    /// Pixels (0..255) are multiplied by this first.
    pub scale: f32,
    /// Per-channel mean and std (in the model's channel order), when the recipe normalises.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Preset {
    /// What the preset prepares images with.
    pub fn recipe(self) -> Recipe {
        let imagenet = |filter| Recipe {
            channel_order: ChannelOrder::Rgb,
            resize: Resize::CenterCrop,
            crop_fraction: Some(IMAGENET_CROP_FRACTION),
            filter,
            scale: 1.0 / 255.0,
            normalize: Some((IMAGENET_MEAN, IMAGENET_STD)),
        };
        match self {
            Self::Torchvision => imagenet(Filter::PillowBilinear),
            Self::Timm => imagenet(Filter::PillowBicubic),
            Self::KerasCaffe => Recipe {
                channel_order: ChannelOrder::Bgr,
                resize: Resize::Stretch,
                crop_fraction: None,
                filter: Filter::PillowBilinear,
                scale: 1.0,
                // ImageNet's mean in BGR order, 0..255; no division.
                normalize: Some(([103.939, 116.779, 123.68], [1.0; 3])),
            },
            Self::KerasTf => Recipe {
                channel_order: ChannelOrder::Rgb,
                resize: Resize::Stretch,
                crop_fraction: None,
                filter: Filter::PillowBilinear,
                scale: 1.0 / 127.5,
                normalize: Some(([1.0; 3], [1.0; 3])),
            },
            Self::Cntk => Recipe {
                channel_order: ChannelOrder::Bgr,
                resize: Resize::Stretch,
                crop_fraction: None,
                filter: Filter::FloatLinear,
                scale: 1.0,
                normalize: None,
            },
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Timm => "timm",
            Self::KerasCaffe => "keras-caffe",
            Self::KerasTf => "keras-tf",
            Self::Cntk => "cntk",
        }
    }
}

/// The recipe of an ONNX model staged without a preset: RGB (most toolkits but CNTK), both
/// sides scaled with Pillow's antialiased bilinear, raw 0..255 values.
pub fn plain_recipe() -> Recipe {
    Recipe {
        channel_order: ChannelOrder::Rgb,
        resize: Resize::Stretch,
        crop_fraction: None,
        filter: Filter::PillowBilinear,
        scale: 1.0,
        normalize: None,
    }
}

/// The shorter side a centre crop of `crop` pixels keeps `fraction` of (256 for 224 at 0.875).
pub fn shorter_side_for(crop: u32, fraction: f64) -> u32 {
    (f64::from(crop) / fraction).floor() as u32
}

/// What is subtracted (and divided) after scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Normalize {
    /// Nothing: the model takes scaled pixels as they are.
    None,
    /// `(x - mean[c]) / std[c]` per channel, in the model's channel order.
    PerChannel {
        /// Subtracted from each channel.
        mean: Vec<f32>,
        /// Divides each channel after the mean is subtracted.
        std: Vec<f32>,
    },
    /// A mean image of the model's size, in the container (OpenCV XML, HWC, in the model's
    /// channel order as OpenCV writes it), subtracted pixel by pixel.
    MeanImage {
        /// The mean image's blob (`models/<name>.mean.xml`).
        key: String,
    },
}

/// What the model's output row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outputs {
    /// Unnormalised scores: confidences are their softmax.
    Logits,
    /// Already a probability distribution (the graph ends in a softmax): used as they are.
    Probabilities,
}

/// Where a staged model came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// File name or URL the model was staged from.
    pub source: String,
    /// `onnx`, `cntk-v2`, ...
    pub format: String,
    /// SHA-256 of the source file, hex.
    pub source_sha256: String,
    /// SHA-256 of the staged ONNX model, hex: the manifest of each job records it.
    pub onnx_sha256: String,
}

/// `models/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The spec format's version: a build refuses a newer one than it reads.
    pub version: u32,
    /// Name of the model's image input.
    pub input: String,
    /// Name of the output that is the classifier's, for a model with several (`--output-node`);
    /// absent for a model with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where the channel axis is in the model's input.
    pub layout: Layout,
    /// 1 (grayscale) or 3 (colour).
    pub channels: u32,
    /// The model's input height, in pixels.
    pub height: u32,
    /// The model's input width, in pixels.
    pub width: u32,
    /// The order the model takes colour channels in.
    pub channel_order: ChannelOrder,
    /// How an image is brought to the model's size.
    pub resize: Resize,
    /// With [`Resize::CenterCrop`]: the length the shorter side is scaled to before the crop
    /// (256 for torchvision's 224 crop); absent: just enough to cover the model's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shorter_side: Option<u32>,
    /// How pixels are sampled when resizing.
    #[serde(default = "Filter::legacy")]
    pub filter: Filter,
    /// Opt-in speed for large JPEGs: decoded at 1/2, 1/4 or 1/8 of their size by libjpeg's
    /// DCT-domain scaling (as Pillow's `draft` does), as far as they stay at least the resized
    /// size, then resized by `filter`. Several times faster on camera photos, but not the
    /// pixels the model's pipeline makes: its answers differ on some photos.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_jpeg: bool,
    /// Pixels (0..255) are multiplied by this first.
    pub scale: f32,
    /// What is done to the scaled pixels.
    pub normalize: Normalize,
    /// Whether the output row is logits or probabilities.
    pub outputs: Outputs,
    /// Number of classes: the length of the model's output row; 0 for a model staged as an
    /// embedding model only (no classifier: its rows have no predictions).
    pub class_count: u32,
    /// Class names by output index, when the user gave them (`--classes`). Two classes may
    /// share a name (ImageNet's "crane" and "maillot"): labels then name them by id or index.
    pub classes: Option<Vec<String>>,
    /// Class ids by output index, when the class list gave them (`synset_words.txt`:
    /// `n01440764 tench, Tinca tinca`): labels and class folders may name classes by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_ids: Option<Vec<String>>,
    /// Where the model came from, and the sha256 of the ONNX file this spec describes.
    pub provenance: Provenance,
    /// The model's tensors written as vectors (embeddings), a column each in the Parquet
    /// results, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<Embedding>,
    /// For a multi-label classifier (independent sigmoids: an image is "dog" and "grass" and
    /// "outdoor"): the score each class needs to be an image's tag. Its scores are the
    /// sigmoid of its outputs ([`Outputs::Logits`]) or the outputs themselves
    /// ([`Outputs::Probabilities`], a graph that ends in a sigmoid), never a softmax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<Thresholds>,
}

/// A tensor of the model written as a vector an image: the pooled features before a
/// classifier, or the whole output of an embedding model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Embedding {
    /// The model's output it is read from: one of its own, or an intermediate tensor of the
    /// graph made an output when the model was staged.
    pub tensor: String,
    /// Its column in the results, and what it is written as.
    #[serde(flatten)]
    pub column: VectorColumn,
}

/// Most values of one image's vectors, over all its embeddings: 4 MiB of float32 values.
pub const MAX_VECTOR_VALUES: u64 = 1 << 20;

/// The most bytes of vectors one partition may carry: the worker writes them as one blob, and
/// the collector reads it whole into the partition's Parquet file. Partitions of a model with
/// large vectors are cut smaller to fit.
pub const MAX_PARTITION_VECTOR_BYTES: u64 = 64 << 20;

/// The most memory one image's model input may take, as float32 values: a model that takes
/// more is refused at staging (a worker could not score even one image at a time).
pub const MAX_IMAGE_INPUT_BYTES: u64 = 1 << 30;

/// The most memory a partition's images may hold in a worker while they wait for the model
/// ([`ModelSpec::waiting_bytes`] each): partitions of a model with a large input are cut
/// smaller to fit (500 images of 3x8192x8192 would be 100 GB).
pub const MAX_PARTITION_WAITING_BYTES: u64 = 256 << 20;

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec does not parse, or says something a model cannot be scored with.
    #[error("model spec {key}: {reason}")]
    Invalid {
        /// The spec's blob, or the file it came from.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ModelSpec {
    /// Parses `models/<name>.json` and checks it; `key` names it in errors.
    pub fn from_json(bytes: &[u8], key: &str) -> Result<Self, SpecError> {
        let invalid = |reason: String| SpecError::Invalid {
            key: key.into(),
            reason,
        };
        let spec: Self = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("{e}; stage the model again with `producer stage`")))?;
        if !(OLDEST_SPEC_VERSION..=SPEC_VERSION).contains(&spec.version) {
            return Err(invalid(format!(
                "format version {} is not understood by this build (which reads \
                 {OLDEST_SPEC_VERSION} to {SPEC_VERSION}); stage the model again, or run a build \
                 as new as the one that staged it",
                spec.version
            )));
        }
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }

    /// Bytes one image holds in a worker while it waits for its model call: its 8-bit crop,
    /// or for [`Filter::FloatLinear`] its float values.
    pub fn waiting_bytes(&self) -> u64 {
        let values = u64::from(self.channels) * u64::from(self.height) * u64::from(self.width);
        if self.filter == Filter::FloatLinear {
            values * 4
        } else {
            values
        }
    }

    /// The most images of this model one partition may hold: as many as
    /// [`MAX_PARTITION_WAITING_BYTES`] holds, and as many vectors as
    /// [`MAX_PARTITION_VECTOR_BYTES`] (at least one), so that a model with a large input or
    /// large embeddings is scored in smaller partitions instead of exhausting a worker's or the
    /// collector's memory.
    pub fn max_partition_images(&self) -> u32 {
        max_partition_images(std::slice::from_ref(self))
    }

    /// The oldest spec format that holds everything this spec says: version 3 for a model with
    /// embeddings, without classes, or multi-label, else 2.
    pub fn oldest_version(&self) -> u32 {
        if self.embeddings.is_empty() && self.has_classes() && self.multi_label.is_none() {
            2
        } else {
            SPEC_VERSION
        }
    }

    /// Bytes of one image's vectors, over all its vector columns.
    pub fn vector_bytes(&self) -> usize {
        self.vector_columns().iter().map(VectorColumn::bytes).sum()
    }

    /// The columns of the vectors the model's rows carry: a multi-label model's class scores
    /// first, then its embeddings.
    pub fn vector_columns(&self) -> Vec<VectorColumn> {
        let scores = self.multi_label.as_ref().map(|_| VectorColumn {
            name: CLASS_SCORES_COLUMN.into(),
            dim: self.class_count,
            precision: VectorPrecision::Float32,
            normalized: false,
            model: 0,
        });
        (scores.into_iter())
            .chain(self.embeddings.iter().map(|e| e.column.clone()))
            .collect()
    }

    /// Whether the model is a classifier: its rows have predictions.
    pub fn has_classes(&self) -> bool {
        self.class_count > 0
    }

    /// The provenance of the spec in `bytes`, read without the rest (a spec may list a
    /// million class names); `None` if it is not a spec.
    pub fn provenance_from_json(bytes: &[u8]) -> Option<Provenance> {
        #[derive(Deserialize)]
        struct Only {
            provenance: Provenance,
        }
        serde_json::from_slice::<Only>(bytes)
            .ok()
            .map(|only| only.provenance)
    }

    /// Checks the invariants preprocessing relies on.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.channels, 1 | 3) {
            return Err(format!(
                "{} channels; images have 1 (gray) or 3 (colour)",
                self.channels
            ));
        }
        if self.height == 0 || self.width == 0 || self.height > 16_384 || self.width > 16_384 {
            return Err(format!(
                "input size {}x{} is out of range",
                self.height, self.width
            ));
        }
        if self.class_count == 0 && self.embeddings.is_empty() {
            return Err("the model has no classes and writes no embeddings".into());
        }
        let values: u64 = self
            .embeddings
            .iter()
            .map(|e| u64::from(e.column.dim))
            .sum();
        if values > MAX_VECTOR_VALUES {
            return Err(format!(
                "its embeddings hold {values} values an image, more than the {MAX_VECTOR_VALUES} \
                 a row may carry: choose a smaller tensor (a pooled one)"
            ));
        }
        if let Some(Thresholds(thresholds)) = &self.multi_label {
            if self.class_count == 0 {
                return Err("a multi-label model needs classes".into());
            }
            if thresholds.len() != 1 && thresholds.len() != self.class_count as usize {
                return Err(format!(
                    "{} thresholds for a model with {} classes: give one, or one per class",
                    thresholds.len(),
                    self.class_count
                ));
            }
            if let Some(bad) = thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
                return Err(format!("threshold {bad} is not a score between 0 and 1"));
            }
        }
        if let Some(e) = self.embeddings.iter().find(|e| e.column.dim == 0) {
            return Err(format!("embedding {} has no values", e.column.name));
        }
        let mut names: Vec<&str> = self
            .embeddings
            .iter()
            .map(|e| e.column.name.as_str())
            .collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two embeddings are named {}", twice[0]));
        }
        let input_bytes =
            4 * u64::from(self.channels) * u64::from(self.height) * u64::from(self.width);
        if input_bytes > MAX_IMAGE_INPUT_BYTES {
            return Err(format!(
                "an input of {}x{}x{} is {} MiB of values per image, more than the {} MiB a \
                 worker gives one image",
                self.channels,
                self.height,
                self.width,
                input_bytes >> 20,
                MAX_IMAGE_INPUT_BYTES >> 20
            ));
        }
        if !(self.scale.is_finite() && self.scale != 0.0) {
            return Err(format!("scale {} is not a usable factor", self.scale));
        }
        if let Some(side) = self.shorter_side {
            if self.resize != Resize::CenterCrop {
                return Err("a shorter side is given, but only center-crop uses one".into());
            }
            if side < self.height.max(self.width) || side > 65_536 {
                return Err(format!(
                    "shorter side {side} is out of range: the {}x{} crop must fit inside the \
                     resized image, so it must be at least {}",
                    self.height,
                    self.width,
                    self.height.max(self.width)
                ));
            }
        }
        if let Some(names) = &self.classes
            && names.len() != self.class_count as usize
        {
            return Err(format!(
                "{} class names for a model with {} classes",
                names.len(),
                self.class_count
            ));
        }
        for list in [&self.classes, &self.class_ids].into_iter().flatten() {
            if let Some(at) = list.iter().position(|n| n.len() > MAX_CLASS_NAME_BYTES) {
                return Err(long_name(at, list[at].len()));
            }
        }
        if let Some(ids) = &self.class_ids
            && (ids.len() != self.class_count as usize || self.classes.is_none())
        {
            return Err(format!(
                "{} class ids for a model with {} classes{}",
                ids.len(),
                self.class_count,
                if self.classes.is_none() {
                    " and no class names"
                } else {
                    ""
                }
            ));
        }
        if let Normalize::PerChannel { mean, std } = &self.normalize {
            let c = self.channels as usize;
            if mean.len() != c || std.len() != c {
                return Err(format!(
                    "per-channel mean and std need {c} values each, not {} and {}",
                    mean.len(),
                    std.len()
                ));
            }
            if std.iter().any(|s| !s.is_finite() || *s == 0.0)
                || mean.iter().any(|m| !m.is_finite())
            {
                return Err("mean and std must be finite, std non-zero".into());
            }
        }
        // Pixel values scaled and normalised in f32, as preprocessing computes them, must stay
        // numbers: `--scale 1e38` or `--std 1e-45` would feed the model infinities.
        let (multiply, subtract): (Vec<f32>, Vec<f32>) = match &self.normalize {
            Normalize::PerChannel { mean, std } => (
                std.iter().map(|s| self.scale / s).collect(),
                mean.iter().zip(std).map(|(m, s)| m / s).collect(),
            ),
            Normalize::None | Normalize::MeanImage { .. } => (vec![self.scale], vec![0.0]),
        };
        for (m, s) in multiply.iter().zip(&subtract) {
            if ![0.0f32, 255.0].iter().all(|v| (v * m - s).is_finite()) {
                return Err(format!(
                    "scale {} with this normalisation makes input values that are not finite \
                     numbers (x {m}, less {s}): check --scale, --mean and --std",
                    self.scale
                ));
            }
        }
        Ok(())
    }

    /// How images are prepared, in a line: what `producer stage` prints.
    pub fn preparation(&self) -> String {
        let geometry = match (self.resize, self.shorter_side) {
            (Resize::Stretch, _) => format!("both sides to {}x{}", self.height, self.width),
            (Resize::CenterCrop, Some(side)) => format!(
                "shorter side to {side}, centre {}x{}",
                self.height, self.width
            ),
            (Resize::CenterCrop, None) => format!(
                "shorter side to the crop, centre {}x{}",
                self.height, self.width
            ),
        };
        let order = match self.channel_order {
            ChannelOrder::Bgr => "BGR",
            ChannelOrder::Rgb => "RGB",
        };
        let normalize = match &self.normalize {
            Normalize::None => "no normalisation".to_owned(),
            Normalize::PerChannel { mean, std } => format!("mean {mean:?}, std {std:?}"),
            Normalize::MeanImage { key } => format!("mean image {key}"),
        };
        let fast = if self.fast_jpeg {
            ", large JPEGs decoded reduced (--fast-jpeg)"
        } else {
            ""
        };
        format!(
            "{geometry} ({}{fast}), {order}, x {}, {normalize}",
            self.filter.name(),
            self.scale
        )
    }

    /// The blob of the mean image this spec subtracts, if it subtracts one.
    pub fn mean_image_key(&self) -> Option<&str> {
        match &self.normalize {
            Normalize::MeanImage { key } => Some(key),
            _ => None,
        }
    }

    /// Values in one model input image.
    pub fn input_len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    /// Class names by output index: the given names, or `class_0`, `class_1`, ... (none for
    /// a model with no classes).
    pub fn class_names(&self) -> Vec<String> {
        match &self.classes {
            Some(names) => names.clone(),
            None => (0..self.class_count)
                .map(|i| format!("class_{i}"))
                .collect(),
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`: how models are identified in specs and manifests.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A class list as users have them: names by output index, and ids where the list has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    /// Class names, in output order. Names may repeat (ImageNet's own list names "crane" and
    /// "maillot" twice each).
    pub names: Vec<String>,
    /// Class ids, in output order, when every line began with one (WordNet ids such as
    /// `n01440764`, as `synset_words.txt` and ImageNet's folders name classes).
    pub ids: Option<Vec<String>>,
}

/// Longest class name or id, in bytes (UTF-8). Each is copied into every row that names the
/// class, every report and the summary: a name of megabytes would make each of them gigabytes.
/// WordNet's longest synset line is under 300.
pub const MAX_CLASS_NAME_BYTES: usize = 1024;

/// Why class `at`'s name of `len` bytes is refused.
fn long_name(at: usize, len: usize) -> String {
    format!(
        "class {at}'s name is {len} bytes, longer than the {MAX_CLASS_NAME_BYTES} a name may \
         have (it is copied into every row that names the class)"
    )
}

/// Whether `token` is a WordNet synset id: `n` and eight digits.
fn is_synset_id(token: &str) -> bool {
    token.len() == 9 && token.starts_with('n') && token[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Reads a class list: one class per line, in output order; blank lines and surrounding white
/// space are ignored. Two forms: a name per line (`imagenet_classes.txt`: `tench`), or an id
/// then the names (`synset_words.txt`: `n01440764 tench, Tinca tinca`), where the class's name
/// is the first of its names and the id is kept. `source` names the file in errors.
pub fn parse_class_list(text: &str, source: &str) -> Result<ClassList, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(format!("{source} holds no class names (one per line)"));
    }
    if let Some(at) = lines.iter().position(|l| l.len() > MAX_CLASS_NAME_BYTES) {
        return Err(format!("{source}: {}", long_name(at, lines[at].len())));
    }
    let with_ids = lines.iter().all(|line| {
        line.split_once(char::is_whitespace)
            .is_some_and(|(id, rest)| is_synset_id(id) && !rest.trim().is_empty())
    });
    if !with_ids {
        return Ok(ClassList {
            names: lines.into_iter().map(str::to_owned).collect(),
            ids: None,
        });
    }
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for line in lines {
        let (id, rest) = line.split_once(char::is_whitespace).expect("checked above");
        if !seen.insert(id) {
            return Err(format!("{source} gives class id {id} twice"));
        }
        let name = rest.split(',').next().unwrap_or(rest).trim();
        ids.push(id.to_owned());
        names.push(name.to_owned());
    }
    Ok(ClassList {
        names,
        ids: Some(ids),
    })
}

/// The most images one partition of a job scoring each image with every model of `specs` may
/// hold: each image waits once for each model, and writes each model's vectors (see
/// [`ModelSpec::max_partition_images`]).
pub fn max_partition_images(specs: &[ModelSpec]) -> u32 {
    let waiting: u64 = specs.iter().map(ModelSpec::waiting_bytes).sum();
    let vectors: u64 = specs.iter().map(|s| s.vector_bytes() as u64).sum();
    let images = (MAX_PARTITION_WAITING_BYTES / waiting.max(1))
        .min(MAX_PARTITION_VECTOR_BYTES / vectors.max(1));
    u32::try_from(images).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cifar_spec() -> ModelSpec {
        ModelSpec {
            version: SPEC_VERSION,
            input: "features".into(),
            output: None,
            layout: Layout::Nchw,
            channels: 3,
            height: 32,
            width: 32,
            channel_order: ChannelOrder::Bgr,
            resize: Resize::Stretch,
            shorter_side: None,
            filter: Filter::FloatLinear,
            fast_jpeg: false,
            scale: 1.0,
            normalize: Normalize::MeanImage {
                key: "models/resnet20.mean.xml".into(),
            },
            outputs: Outputs::Logits,
            class_count: 10,
            classes: None,
            class_ids: None,
            embeddings: Vec::new(),
            multi_label: None,
            provenance: Provenance {
                source: "m.dnn".into(),
                format: "cntk-v2".into(),
                source_sha256: "00".into(),
                onnx_sha256: "11".into(),
            },
        }
    }

    #[test]
    fn round_trips_through_json() {
        let spec = cifar_spec();
        let json = serde_json::to_vec_pretty(&spec).unwrap();
        assert_eq!(ModelSpec::from_json(&json, "k").unwrap(), spec);
        assert_eq!(spec.class_names()[9], "class_9");
    }

    #[test]
    fn a_version_1_spec_reads_with_the_filter_every_model_had_then() {
        let mut json = serde_json::to_value(cifar_spec()).unwrap();
        json["version"] = 1.into();
        let object = json.as_object_mut().unwrap();
        object.remove("filter");
        object.remove("shorter_side");
        let spec = ModelSpec::from_json(&serde_json::to_vec(&json).unwrap(), "k").unwrap();
        assert_eq!(
            (spec.filter, spec.shorter_side),
            (Filter::FloatLinear, None)
        );
        // A newer format than this build reads is refused, not half read.
        json["version"] = (SPEC_VERSION + 1).into();
        let e = ModelSpec::from_json(&serde_json::to_vec(&json).unwrap(), "k").unwrap_err();
        assert!(
            e.to_string().contains("as new as the one that staged it"),
            "{e}"
        );
    }

    #[test]
    fn a_shorter_side_must_leave_room_for_the_crop() {
        let mut spec = cifar_spec();
        spec.shorter_side = Some(36);
        assert!(spec.validate().unwrap_err().contains("only center-crop"));
        spec.resize = Resize::CenterCrop;
        assert_eq!(spec.validate(), Ok(()));
        spec.shorter_side = Some(31);
        assert!(spec.validate().unwrap_err().contains("at least 32"));
    }

    #[test]
    fn models_with_large_inputs_get_smaller_partitions_or_are_refused() {
        let mut spec = cifar_spec();
        // 32x32 float values: 12 KiB each.
        assert_eq!(spec.max_partition_images(), 21_845);
        (spec.height, spec.width, spec.filter) = (8192, 8192, Filter::PillowBilinear);
        // A 192 MiB crop each: one a partition.
        assert_eq!(spec.max_partition_images(), 1);
        assert_eq!(spec.validate(), Ok(()));
        (spec.height, spec.width) = (16_384, 16_384);
        assert!(
            spec.validate()
                .unwrap_err()
                .contains("more than the 1024 MiB")
        );
    }

    #[test]
    fn a_scale_or_std_that_makes_inputs_infinite_is_refused() {
        let mut spec = cifar_spec();
        spec.scale = 1e38;
        assert!(spec.validate().unwrap_err().contains("not finite"));
        spec.scale = 1.0 / 255.0;
        spec.normalize = Normalize::PerChannel {
            mean: IMAGENET_MEAN.to_vec(),
            std: vec![0.229, 1e-45, 0.225],
        };
        assert!(spec.validate().unwrap_err().contains("not finite"));
        spec.normalize = Normalize::PerChannel {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        };
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn inconsistent_specs_are_refused() {
        let mut spec = cifar_spec();
        spec.classes = Some(vec!["a".into()]);
        assert!(spec.validate().unwrap_err().contains("1 class names"));
        let mut spec = cifar_spec();
        spec.channels = 4;
        assert!(spec.validate().is_err());
        let mut spec = cifar_spec();
        spec.normalize = Normalize::PerChannel {
            mean: vec![0.5; 3],
            std: vec![0.0; 3],
        };
        assert!(spec.validate().is_err());
        let mut spec = cifar_spec();
        spec.version = 99;
        let json = serde_json::to_vec(&spec).unwrap();
        assert!(
            ModelSpec::from_json(&json, "k")
                .unwrap_err()
                .to_string()
                .contains("version 99")
        );
    }

    #[test]
    fn class_lists_parse_in_both_forms() {
        let plain = parse_class_list("cat\n dog \n\ncat", "f").unwrap();
        assert_eq!(plain.names, vec!["cat", "dog", "cat"]);
        assert_eq!(plain.ids, None);
        assert!(parse_class_list("\n", "f").is_err());
        let synsets = parse_class_list(
            "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\n",
            "f",
        )
        .unwrap();
        assert_eq!(synsets.names, vec!["tench", "crane", "crane"]);
        assert_eq!(
            synsets.ids.unwrap(),
            vec!["n01440764", "n02012849", "n03126707"]
        );
        // One line without an id: names as they are.
        let mixed = parse_class_list("n01440764 tench\ngoldfish", "f").unwrap();
        assert_eq!(mixed.names, vec!["n01440764 tench", "goldfish"]);
        assert!(
            parse_class_list("n01440764 a\nn01440764 b", "f")
                .unwrap_err()
                .contains("twice")
        );
    }
}
