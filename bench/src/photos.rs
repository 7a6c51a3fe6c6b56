//! The real-photo rows: each photo of `real-photos/photos/` decoded and prepared for a 224x224
//! ImageNet model by every filter convention, one thread, beside Pillow preparing the same
//! photos as torchvision does (`bench/python/photos_peer.py`) in the same run; then the whole
//! embedded job scoring the photos (seven copies of each) with the fixture's float16
//! SqueezeNet, against the engine alone on the same tensors and a Python peer (Pillow + ONNX
//! Runtime, one process per core: `bench/python/photos_job_peer.py`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use fleet_imaging::{DecodeLimits, Preprocessor, decode};
use fleet_inference::{InferenceOptions, Scorer};
use fleet_spec::{
    ChannelOrder, Filter, IMAGENET_MEAN, IMAGENET_STD, Layout, ModelSpec, Normalize, Outputs,
    Provenance, Resize, SPEC_VERSION,
};

use crate::{Row, repeated, run, run_measured};

/// Copies of each photo in the job rows: about a thousand images, several partitions.
const COPIES: usize = 7;

/// How the fixture's SqueezeNet is staged, besides its filter: BGR, raw 0..255 (its recipe's
/// default), torchvision's shorter side of 256 then the centre crop.
pub(crate) const TORCHVISION_PREPARATION: [&str; 6] = [
    "--channel-order",
    "bgr",
    "--resize",
    "center-crop",
    "--shorter-side",
    "256",
];

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

/// A 224x224 RGB ImageNet spec with `convention`'s resizing, torchvision's values, large JPEGs
/// decoded reduced when `fast_jpeg`.
fn spec(resize: Resize, shorter_side: Option<u32>, filter: Filter, fast_jpeg: bool) -> ModelSpec {
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
        fast_jpeg,
        scale: 1.0 / 255.0,
        normalize: Normalize::PerChannel {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        },
        outputs: Outputs::Logits,
        class_count: 1000,
        classes: None,
        class_ids: None,
        embeddings: Vec::new(),
        multi_label: None,
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
    let fast = (
        "torchvision, --fast-jpeg",
        Resize::CenterCrop,
        Some(256),
        Filter::PillowBilinear,
    );
    for (name, resize, shorter_side, filter) in CONVENTIONS.into_iter().chain([fast]) {
        let fast_jpeg = name == fast.0;
        let spec = spec(resize, shorter_side, filter, fast_jpeg);
        let preprocessor = Preprocessor::new(&spec, None)?;
        let mut input = vec![0.0; preprocessor.input_len()];
        let (seconds, _) = repeated(runs, || {
            let started = Instant::now();
            for bytes in &encoded {
                preprocessor.write(&preprocessor.decode(bytes, unlimited())?.0, &mut input);
            }
            Ok((started.elapsed().as_secs_f64(), ()))
        })?;
        let note = if fast_jpeg {
            format!(
                "large JPEGs decoded reduced; {:.2} x the exact torchvision row",
                torchvision / seconds
            )
        } else {
            format!(
                "{} photos, {megapixels:.0} megapixels; {}",
                encoded.len(),
                filter.name()
            )
        };
        if filter == Filter::PillowBilinear && resize == Resize::CenterCrop && !fast_jpeg {
            torchvision = seconds;
        }
        rows.push(Row {
            what: format!("real photos: decode + resize + preprocess to 224x224, {name}, 1 thread"),
            images: encoded.len() as u64,
            seconds,
            note,
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

/// The job rows: the embedded job over `COPIES` copies of every photo with the fixture's
/// SqueezeNet (float16, fixed batch 1; BGR, raw 0..255, torchvision's crop), as it runs and
/// with glibc's mmap threshold fixed, beside the engine alone on the same tensors and the
/// Python peer.
pub(crate) fn job_rows(
    fixtures: &Path,
    bin_dir: &Path,
    runs: usize,
    inference: &InferenceOptions,
    python: Option<&Path>,
) -> Result<Vec<Row>> {
    let photos = fixtures.join("real-photos/photos");
    let model = fixtures.join("real-photos/model/SqueezeNet_fp16.onnx");
    let work = tempfile::tempdir()?;
    let folder = work.path().join("photos");
    std::fs::create_dir(&folder)?;
    let mut encoded = Vec::new();
    for entry in std::fs::read_dir(&photos)? {
        let path = entry?.path();
        let name = path.file_name().context("a file name")?.to_string_lossy();
        for copy in 0..COPIES {
            std::fs::copy(&path, folder.join(format!("{copy}-{name}")))?;
        }
        encoded.push(std::fs::read(&path)?);
    }
    let images = (encoded.len() * COPIES) as u64;
    let store = work.path().join("store");
    let producer = bin_dir.join("producer");
    let stage = |extra: &[&str]| {
        let mut args = vec![
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "photos",
        ];
        args.extend_from_slice(extra);
        run(&producer, &args, &[]).map(drop)
    };
    stage(&["--images", folder.to_str().unwrap(), "--prefix", "photos"])?;
    let model_args = [
        &["--model", model.to_str().unwrap()][..],
        &TORCHVISION_PREPARATION,
        &["--filter", "pillow-bilinear"],
    ]
    .concat();
    stage(&[&model_args[..], &["--model-name", "squeezenet"]].concat())?;
    stage(
        &[
            &model_args[..],
            &["--model-name", "squeezenet-fast", "--fast-jpeg"],
        ]
        .concat(),
    )?;

    // The engine alone, on the tensors the job makes (each unique photo once, scored
    // `COPIES` times).
    let tensors = |fast_jpeg| -> Result<Vec<f32>> {
        let mut bgr = spec(
            Resize::CenterCrop,
            Some(256),
            Filter::PillowBilinear,
            fast_jpeg,
        );
        bgr.channel_order = ChannelOrder::Bgr;
        bgr.scale = 1.0;
        bgr.normalize = Normalize::None;
        let preprocessor = Preprocessor::new(&bgr, None)?;
        let len = preprocessor.input_len();
        let mut tensors = vec![0.0; encoded.len() * len];
        for (bytes, slot) in encoded.iter().zip(tensors.chunks_exact_mut(len)) {
            preprocessor.write(&preprocessor.decode(bytes, unlimited())?.0, slot);
        }
        Ok(tensors)
    };
    let (tensors, fast_tensors) = (tensors(false)?, tensors(true)?);
    let mut scorer = Scorer::load(&std::fs::read(&model)?, "squeezenet", inference)?;
    // How often --fast-jpeg leaves the model's answer as it is.
    let top1 = |scorer: &mut Scorer, tensors: &[f32]| -> Result<Vec<usize>> {
        let mut outputs = Vec::new();
        scorer.score(tensors, encoded.len(), &mut outputs)?;
        Ok(outputs
            .chunks_exact(scorer.classes())
            .map(|row| {
                // The first of equal maxima, as argmax takes it.
                (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
            })
            .collect())
    };
    let (exact, fast) = (
        top1(&mut scorer, &tensors)?,
        top1(&mut scorer, &fast_tensors)?,
    );
    let agreeing = exact.iter().zip(&fast).filter(|(a, b)| a == b).count();
    let mut outputs = Vec::new();
    let (engine, _) = repeated(runs, || {
        let started = Instant::now();
        for _ in 0..COPIES {
            scorer.score(&tensors, encoded.len(), &mut outputs)?;
        }
        Ok((started.elapsed().as_secs_f64(), ()))
    })?;
    drop(scorer);
    let mut rows = vec![Row {
        what: "real photos: ONNX Runtime alone, SqueezeNet float16 (batch fixed at 1)".into(),
        images,
        seconds: engine,
        note: "on the tensors the job makes".into(),
    }];

    let job_args = [
        "--store",
        store.to_str().unwrap(),
        "--container",
        "photos",
        "--embedded",
        "--dataset",
        "photos",
        "--model-name",
        "squeezenet",
    ];
    let threads = inference.intra_threads.to_string();
    let mut job = |what: &str, env: &[(&str, &str)]| -> Result<f64> {
        let mut envs = vec![("INTRA_OP_THREADS", threads.as_str())];
        envs.extend_from_slice(env);
        let (seconds, peaks) = repeated(runs, || {
            let started = Instant::now();
            let peak = run_measured(&producer, &job_args, &envs)?.peak_kib;
            Ok((started.elapsed().as_secs_f64(), peak))
        })?;
        rows.push(Row {
            what: format!("real photos: embedded job, whole process (1 worker){what}"),
            images,
            seconds,
            note: format!(
                "{:.2} x engine; peak RSS {} MB",
                seconds / engine,
                peaks.iter().max().unwrap_or(&0) / 1024
            ),
        });
        Ok(seconds)
    };
    let job_seconds = job("", &[])?;
    job(
        ", MALLOC_MMAP_THRESHOLD_=131072",
        &[("MALLOC_MMAP_THRESHOLD_", "131072")],
    )?;
    let fast_args = [&job_args[..job_args.len() - 1], &["squeezenet-fast"]].concat();
    let (seconds, _) = repeated(runs, || {
        let started = Instant::now();
        let peak = run_measured(
            &producer,
            &fast_args,
            &[("INTRA_OP_THREADS", threads.as_str())],
        )?
        .peak_kib;
        Ok((started.elapsed().as_secs_f64(), peak))
    })?;
    rows.push(Row {
        what: "real photos: embedded job, --fast-jpeg (opt-in)".into(),
        images,
        seconds,
        note: format!(
            "{:.2} x the exact job's throughput; top-1 as the exact path's on {agreeing} of {} photos",
            job_seconds / seconds,
            encoded.len()
        ),
    });
    if let Some(python) = python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join("photos_job_peer.py");
        let (seconds, _) = repeated(runs, || {
            let started = Instant::now();
            run(
                python,
                &[
                    script.to_str().unwrap(),
                    folder.to_str().unwrap(),
                    model.to_str().unwrap(),
                ],
                &[],
            )?;
            Ok((started.elapsed().as_secs_f64(), ()))
        })?;
        rows.push(Row {
            what: "real photos: Python peer, Pillow + ONNX Runtime, one process per core".into(),
            images,
            seconds,
            note: format!(
                "whole process; the embedded job's throughput is {:.2} x this",
                seconds / job_seconds
            ),
        });
    }
    Ok(rows)
}

fn unlimited() -> DecodeLimits {
    DecodeLimits {
        max_pixels: u64::MAX,
        max_scans: u32::MAX,
    }
}
