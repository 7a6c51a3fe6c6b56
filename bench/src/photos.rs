//! The real-photo rows: each photo of `real-photos/photos/`, and a small copy of each, decoded
//! alone and decoded and prepared for a 224x224 ImageNet model by every filter convention, one
//! thread, beside Pillow decoding and preparing the same photos as torchvision does
//! (`bench/python/photos_peer.py`) in the same run; then the whole
//! embedded job scoring the photos (seven copies of each) with the fixture's float16
//! SqueezeNet, against the engine alone on the same tensors and a Python peer (Pillow + ONNX
//! Runtime, one process per core: `bench/python/photos_job_peer.py`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use fleet_imaging::resize::{Geometry, resize_u8};
use fleet_imaging::{DecodeLimits, Image, Preprocessor, decode, decode_jpeg, encode_jpeg};
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

/// The longer side of the small photos: ImageNet's photos are mostly 500x375.
const SMALL_SIDE: usize = 500;

/// The preparation rows, on the fixture photos that are JPEGs and on small copies of them
/// (longer side [`SMALL_SIDE`], baseline JPEG at quality 90): libjpeg-turbo's decode alone, the product's
/// decode + prepare by each convention, and Pillow's decode alone and torchvision preparation
/// when `python` is given; each row says how far it is from the decode alone.
pub(crate) fn rows(photos: &Path, runs: usize, python: Option<&Path>) -> Result<Vec<Row>> {
    let mut paths: Vec<_> = std::fs::read_dir(photos)
        .with_context(|| photos.display().to_string())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    // The JPEGs alone, in a folder of their own for the Python peer: the decode alone is
    // libjpeg's.
    let jpeg_folder = tempfile::tempdir()?;
    let mut encoded = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            std::fs::write(
                jpeg_folder.path().join(path.file_name().context("a name")?),
                &bytes,
            )?;
            encoded.push(bytes);
        }
    }
    let small_folder = tempfile::tempdir()?;
    let small = small_photos(&encoded, small_folder.path())?;
    let mut rows = preparation_rows(
        "real photos (JPEG)",
        jpeg_folder.path(),
        &encoded,
        runs,
        python,
        true,
    )?;
    rows.extend(preparation_rows(
        &format!("small photos ({SMALL_SIDE} px)"),
        small_folder.path(),
        &small,
        runs,
        python,
        false,
    )?);
    Ok(rows)
}

/// Each photo upright, shrunk to a longer side of [`SMALL_SIDE`] (Pillow's bilinear; smaller
/// ones kept at their size) and stored as a baseline JPEG at quality 90, as photo collections
/// are; written to `folder` too, for the Python peer.
fn small_photos(encoded: &[Vec<u8>], folder: &Path) -> Result<Vec<Vec<u8>>> {
    let mut small = Vec::with_capacity(encoded.len());
    for (i, bytes) in encoded.iter().enumerate() {
        let image = decode(bytes, unlimited())?;
        let (height, width) = (image.height, image.width);
        let scale = (SMALL_SIDE as f64 / height.max(width) as f64).min(1.0);
        let size = (
            ((height as f64 * scale).round() as usize).max(1),
            ((width as f64 * scale).round() as usize).max(1),
        );
        let geometry = Geometry::new((height, width), size, Resize::Stretch, None);
        let shrunk = Image {
            width: size.1,
            height: size.0,
            channels: image.channels,
            data: resize_u8(
                &image.data,
                image.channels,
                &geometry,
                Filter::PillowBilinear,
            ),
        };
        let jpeg = encode_jpeg(&shrunk, 90);
        std::fs::write(folder.join(format!("{i:03}.jpg")), &jpeg)?;
        small.push(jpeg);
    }
    Ok(small)
}

/// The rows of one photo set (`encoded`, the files of `folder`): see [`rows`]. With
/// `fast_jpeg`, a row of the torchvision preparation decoding large JPEGs reduced.
fn preparation_rows(
    set: &str,
    folder: &Path,
    encoded: &[Vec<u8>],
    runs: usize,
    python: Option<&Path>,
    fast_jpeg: bool,
) -> Result<Vec<Row>> {
    let megapixels: f64 = encoded
        .iter()
        .map(|bytes| decode(bytes, unlimited()).map(|i| (i.width * i.height) as f64 / 1e6))
        .sum::<Result<f64, _>>()?;
    let photos = format!("{} photos, {megapixels:.0} megapixels", encoded.len());
    let (decode_alone, _) = repeated(runs, || {
        let started = Instant::now();
        for bytes in encoded {
            std::hint::black_box(decode_jpeg(bytes, unlimited())?);
        }
        Ok((started.elapsed().as_secs_f64(), ()))
    })?;
    let mut rows = vec![Row {
        what: format!("{set}: libjpeg-turbo decode alone, to RGB, 1 thread"),
        images: encoded.len() as u64,
        seconds: decode_alone,
        note: format!("{photos}; {}", fleet_imaging::jpeg_decoder()),
    }];
    let mut torchvision = 0.0;
    let fast = (
        "torchvision, --fast-jpeg",
        Resize::CenterCrop,
        Some(256),
        Filter::PillowBilinear,
    );
    let fast = fast_jpeg.then_some(fast);
    for (name, resize, shorter_side, filter) in CONVENTIONS.into_iter().chain(fast) {
        let reduced = fast.is_some_and(|fast| name == fast.0);
        let spec = spec(resize, shorter_side, filter, reduced);
        let preprocessor = Preprocessor::new(&spec, None)?;
        let mut input = vec![0.0; preprocessor.input_len()];
        let (seconds, _) = repeated(runs, || {
            let started = Instant::now();
            for bytes in encoded {
                preprocessor.write(&preprocessor.decode(bytes, unlimited())?.0, &mut input);
            }
            Ok((started.elapsed().as_secs_f64(), ()))
        })?;
        let note = if reduced {
            format!(
                "large JPEGs decoded reduced; {:.2} x the exact torchvision row",
                torchvision / seconds
            )
        } else {
            format!(
                "{:.2} x the decode alone's speed; {}",
                decode_alone / seconds,
                filter.name()
            )
        };
        if filter == Filter::PillowBilinear && resize == Resize::CenterCrop && !reduced {
            torchvision = seconds;
        }
        rows.push(Row {
            what: format!("{set}: decode + resize + preprocess to 224x224, {name}, 1 thread"),
            images: encoded.len() as u64,
            seconds,
            note,
        });
    }
    if let Some(python) = python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join("photos_peer.py");
        let (seconds, decode_seconds) = repeated(runs, || {
            let out = run(
                python,
                &[script.to_str().unwrap(), folder.to_str().unwrap()],
                &[],
            )?;
            let line = out
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("the photo peer printed no result line")?;
            let report: serde_json::Value = serde_json::from_str(line)?;
            let seconds = |key: &str| {
                report[key]
                    .as_f64()
                    .with_context(|| format!("no {key} in the photo peer's line"))
            };
            Ok((seconds("seconds")?, seconds("decode_seconds")?))
        })?;
        let mut decode_seconds = decode_seconds;
        decode_seconds.sort_by(f64::total_cmp);
        let pillow_decode = decode_seconds[decode_seconds.len() / 2];
        rows.push(Row {
            what: format!("{set}: Pillow decode alone, 1 process"),
            images: encoded.len() as u64,
            seconds: pillow_decode,
            note: format!(
                "Image.open + load, files in memory; libjpeg-turbo's decode alone is {:.2} x as \
                 fast",
                pillow_decode / decode_alone
            ),
        });
        rows.push(Row {
            what: format!("{set}: Pillow decode + torchvision preprocessing, 1 process"),
            images: encoded.len() as u64,
            seconds,
            note: format!(
                "{:.2} x Pillow's decode alone's speed; the product's torchvision row is {:.2} x \
                 as fast",
                pillow_decode / seconds,
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
