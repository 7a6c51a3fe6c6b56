//! The rows of several models in one pass: the same embedded job over the fixture's real photos
//! (seven copies of each) with one 224x224 model, with another, and with both in one job, in
//! turn, run after run. The two models are the fixture's float16 SqueezeNet prepared two ways
//! (torchvision's bilinear and bicubic resizing, so that each needs its own crop): a job of
//! both reads and decodes each photo once, where two jobs read and decode it twice.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use fleet_protocol::Summary;

use crate::embeddings::{copy_photos, median};
use crate::photos::TORCHVISION_PREPARATION;
use crate::{Row, run, run_measured};

/// The two models: their names and filters.
const MODELS: [(&str, &str); 2] = [
    ("bilinear", "pillow-bilinear"),
    ("bicubic", "pillow-bicubic"),
];

/// The jobs, by their `--model-name`.
const JOBS: [&str; 3] = ["bilinear", "bicubic", "bilinear,bicubic"];

/// What one job's runs came to.
#[derive(Debug, Clone, Default)]
struct Measured {
    seconds: Vec<f64>,
    /// Reading, decoding and preparing images, and the model calls, summed over the worker's
    /// threads, from the job's summary.
    preprocess: Vec<f64>,
    inference: Vec<f64>,
    peak_kib: u64,
}

/// Runs the three jobs `runs` times each, in turn; a row each (median wall time, the split of
/// reading against model time, peak RSS), and a last row of the two single-model jobs together.
pub fn rows(fixtures: &Path, bin_dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let model = fixtures.join("real-photos/model/SqueezeNet_fp16.onnx");
    let work = tempfile::tempdir()?;
    let folder = work.path().join("photos");
    let images = copy_photos(&fixtures.join("real-photos/photos"), &folder)?;
    let store = work.path().join("store");
    let producer = bin_dir.join("producer");
    let base = ["--store", store.to_str().unwrap(), "--container", "photos"];
    let stage = |extra: &[&str]| run(&producer, &[&["stage"], &base[..], extra].concat(), &[]);
    stage(&["--images", folder.to_str().unwrap(), "--prefix", "photos"])?;
    for (name, filter) in MODELS {
        stage(
            &[
                &["--model", model.to_str().unwrap(), "--model-name", name][..],
                &TORCHVISION_PREPARATION,
                &["--filter", filter],
            ]
            .concat(),
        )?;
    }
    let mut measured = vec![Measured::default(); JOBS.len()];
    for _ in 0..runs.max(1) {
        for (models, m) in JOBS.iter().zip(&mut measured) {
            let args = [
                &base[..],
                &["--embedded", "--dataset", "photos", "--model-name", models],
            ]
            .concat();
            let started = Instant::now();
            let ran = run_measured(&producer, &args, &[])?;
            let rss = ran.peak_kib;
            m.seconds.push(started.elapsed().as_secs_f64());
            m.peak_kib = m.peak_kib.max(rss);
            // Standard output holds the job's id alone.
            let job = ran.stdout.trim();
            let summary: Summary = serde_json::from_slice(&std::fs::read(
                store.join(format!("photos/results/{job}/summary.json")),
            )?)?;
            m.preprocess.push(summary.timings.preprocess_seconds);
            m.inference.push(summary.timings.inference_seconds);
        }
    }
    let separate = median(
        &(measured[0].seconds.iter())
            .zip(&measured[1].seconds)
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>(),
    );
    let mut rows: Vec<Row> = JOBS
        .iter()
        .zip(&measured)
        .map(|(models, m)| {
            let seconds = median(&m.seconds);
            Row {
                what: format!("real photos: embedded job, --model-name {models}"),
                images,
                seconds,
                note: format!(
                    "reading {:.2} s + model {:.2} s (summed over threads); peak RSS {} MB",
                    median(&m.preprocess),
                    median(&m.inference),
                    m.peak_kib / 1024
                ),
            }
        })
        .collect();
    let together = median(&measured[2].seconds);
    rows.push(Row {
        what: "real photos: the two single-model jobs, one after the other".into(),
        images,
        seconds: separate,
        note: format!(
            "the job of both takes {:.3} x their time",
            together / separate
        ),
    });
    Ok(rows)
}
