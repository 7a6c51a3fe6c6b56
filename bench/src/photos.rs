//! The real-photo rows: each photo of `real-photos/photos/` decoded and prepared for a 224x224
//! ImageNet model by every filter convention, one thread, beside Pillow preparing the same
//! photos as torchvision does (`bench/python/photos_peer.py`) in the same run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use fleet_common::spec::{
    ChannelOrder, Filter, IMAGENET_MEAN, IMAGENET_STD, Layout, ModelSpec, Normalize, Outputs,
    Provenance, Resize, SPEC_VERSION,
};
use fleet_imaging::{DecodeLimits, Preprocessor, decode};

use crate::{Row, repeated, run};

/// The conventions measured: name, geometry, shorter side, filter.
const CONVENTIONS: [(&str, Resize, Option<u32>, Filter); 6] = [
    (
        "torchvision",
        Resize::CenterCrop,
        Some(256),
        Filter::PillowBilinear,
    ),
    (
        "timm (bicubic)",
        Resize::CenterCrop,
        Some(256),
        Filter::PillowBicubic,
    ),
    (
        "OpenCV INTER_LINEAR",
        Resize::CenterCrop,
        Some(256),
        Filter::OpencvLinear,
    ),
    (
        "OpenCV INTER_AREA",
        Resize::CenterCrop,
        Some(256),
        Filter::OpencvArea,
    ),
    (
        "squashed, Pillow bilinear (Keras)",
        Resize::Stretch,
        None,
        Filter::PillowBilinear,
    ),
    (
        "float bilinear (CNTK)",
        Resize::CenterCrop,
        Some(256),
        Filter::FloatLinear,
    ),
];

/// A 224x224 RGB ImageNet spec with `convention`'s resizing.
fn spec(resize: Resize, shorter_side: Option<u32>, filter: Filter) -> ModelSpec {
    ModelSpec {
        version: SPEC_VERSION,
        input: "x".into(),
        output: None,
        layout: Layout::Nchw,
        channels: 3,
        height: 224,
        width: 224,
        channel_order: ChannelOrder::Rgb,
        resize,
        shorter_side,
        filter,
        scale: 1.0 / 255.0,
        normalize: Normalize::PerChannel {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        },
        outputs: Outputs::Logits,
        class_count: 1000,
        classes: None,
        class_ids: None,
        provenance: Provenance {
            source: "bench".into(),
            format: "onnx".into(),
            source_sha256: String::new(),
            onnx_sha256: String::new(),
        },
    }
}

/// The rows: decode + resize + preprocess per convention, then Pillow's, when `python` is
/// given.
pub(crate) fn rows(photos: &Path, runs: usize, python: Option<&Path>) -> Result<Vec<Row>> {
    let mut paths: Vec<_> = std::fs::read_dir(photos)
        .with_context(|| photos.display().to_string())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let encoded: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).with_context(|| path.display().to_string()))
        .collect::<Result<_>>()?;
    let megapixels: f64 = encoded
        .iter()
        .map(|bytes| decode(bytes, unlimited()).map(|i| (i.width * i.height) as f64 / 1e6))
        .sum::<Result<f64, _>>()?;
    let mut rows = Vec::new();
    let mut torchvision = 0.0;
    for (name, resize, shorter_side, filter) in CONVENTIONS {
        let preprocessor = Preprocessor::new(&spec(resize, shorter_side, filter), None)?;
        let mut input = vec![0.0; preprocessor.input_len()];
        let (seconds, _) = repeated(runs, || {
            let started = Instant::now();
            for bytes in &encoded {
                preprocessor.write(&decode(bytes, unlimited())?, &mut input);
            }
            Ok((started.elapsed().as_secs_f64(), ()))
        })?;
        if filter == Filter::PillowBilinear && resize == Resize::CenterCrop {
            torchvision = seconds;
        }
        rows.push(Row {
            what: format!("real photos: decode + resize + preprocess to 224x224, {name}, 1 thread"),
            images: encoded.len() as u64,
            seconds,
            note: format!(
                "{} photos, {megapixels:.0} megapixels; {}",
                encoded.len(),
                filter.name()
            ),
        });
    }
    if let Some(python) = python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join("photos_peer.py");
        let (seconds, _) = repeated(runs, || {
            let out = run(
                python,
                &[script.to_str().unwrap(), photos.to_str().unwrap()],
                &[],
            )?;
            let line = out
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("the photo peer printed no result line")?;
            let report: serde_json::Value = serde_json::from_str(line)?;
            let seconds = report["seconds"]
                .as_f64()
                .context("no seconds in the photo peer's line")?;
            Ok((seconds, ()))
        })?;
        rows.push(Row {
            what: "real photos: Pillow decode + torchvision preprocessing, 1 process".into(),
            images: encoded.len() as u64,
            seconds,
            note: format!(
                "the loop alone, files in memory; the product's torchvision row is {:.2} x as \
                 fast",
                seconds / torchvision
            ),
        });
    }
    Ok(rows)
}

fn unlimited() -> DecodeLimits {
    DecodeLimits {
        max_pixels: u64::MAX,
    }
}
