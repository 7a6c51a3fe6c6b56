//! The model spec: what a staged model expects of an image and what its outputs mean.
//!
//! It lies beside the model as `models/<name>.json`, written by `producer stage` from the
//! model's own signature and the user's flags. Workers build their preprocessing from it, and
//! the producer takes the class names of a job from it, so no image geometry or class count
//! is a constant anywhere in the fleet.
//!
//! The steps a worker applies, in order: decode; convert to the model's channel count (gray
//! replicated to three channels, or colour to luma); resize to the model's height and width
//! ([`Resize`]); reorder the channels ([`ChannelOrder`]); multiply by [`ModelSpec::scale`];
//! then subtract a mean image, or a per-channel mean and divide by a per-channel std
//! ([`Normalize`]); lay the result out as the model's input ([`Layout`]).

use serde::{Deserialize, Serialize};

/// Version of the spec format written by this build.
pub const SPEC_VERSION: u32 = 1;

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

/// How an image of another size is brought to the model's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Both sides scaled to the model's, bilinear, aspect ratio not kept (CNTK's `Scale`
    /// transform).
    Stretch,
    /// Shorter side scaled to the model's, then the centre cut out (the usual ImageNet
    /// evaluation transform).
    CenterCrop,
}

/// What is subtracted (and divided) after scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Normalize {
    /// Nothing: the model takes scaled pixels as they are.
    None,
    /// `(x - mean[c]) / std[c]` per channel, in the model's channel order.
    PerChannel { mean: Vec<f32>, std: Vec<f32> },
    /// A mean image of the model's size, in the container (OpenCV XML, HWC, in the model's
    /// channel order as OpenCV writes it), subtracted pixel by pixel.
    MeanImage { key: String },
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
    pub version: u32,
    /// Name of the model's image input.
    pub input: String,
    /// Name of the output that is the classifier's, for a model with several (`--output-node`);
    /// absent for a model with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub layout: Layout,
    /// 1 (grayscale) or 3 (colour).
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub channel_order: ChannelOrder,
    pub resize: Resize,
    /// Pixels (0..255) are multiplied by this first.
    pub scale: f32,
    pub normalize: Normalize,
    pub outputs: Outputs,
    /// Number of classes: the length of the model's output row.
    pub class_count: u32,
    /// Class names by output index, when the user gave them (`--classes`).
    pub classes: Option<Vec<String>>,
    pub provenance: Provenance,
}

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("model spec {key}: {reason}")]
    Invalid { key: String, reason: String },
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
        if spec.version != SPEC_VERSION {
            return Err(invalid(format!(
                "format version {} is not understood by this build (which reads {SPEC_VERSION}); stage the model again",
                spec.version
            )));
        }
        spec.validate().map_err(invalid)?;
        Ok(spec)
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
        if self.class_count == 0 {
            return Err("the model has no classes".into());
        }
        if !(self.scale.is_finite() && self.scale != 0.0) {
            return Err(format!("scale {} is not a usable factor", self.scale));
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
        Ok(())
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

    /// Class names by output index: the given names, or `class_0`, `class_1`, ...
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

/// Reads a class-names file: one name per line, in output order; blank lines and surrounding
/// white space are ignored. `source` names the file in errors.
pub fn parse_class_names(text: &str, source: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(format!("{source} holds no class names (one per line)"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(format!("{source} names class {dup:?} twice"));
    }
    Ok(names)
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
            scale: 1.0,
            normalize: Normalize::MeanImage {
                key: "models/resnet20.mean.xml".into(),
            },
            outputs: Outputs::Logits,
            class_count: 10,
            classes: None,
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
    fn class_name_files_parse() {
        assert_eq!(
            parse_class_names("cat\n dog \n\n", "f").unwrap(),
            vec!["cat", "dog"]
        );
        assert!(parse_class_names("\n", "f").is_err());
        assert!(
            parse_class_names("a\na\n", "f")
                .unwrap_err()
                .contains("twice")
        );
    }
}
