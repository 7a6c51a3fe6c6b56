//! The embedding rows: the same embedded job over the fixture's real photos (seven copies of
//! each) with the float16 SqueezeNet, classifying only, and also writing its pooled features
//! (`pool10_1`, 1,000 floats an image) as one vector column, then as two (2,000 floats an
//! image: the size of the 2,048-float features of a ResNet-50). The three jobs run in turn,
//! run after run, so that the machine's drift falls on each alike.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::photos::TORCHVISION_PREPARATION;
use crate::{Row, run, run_measured};

/// Copies of each photo: about a thousand images, several partitions.
const COPIES: usize = 7;

/// The three jobs: what each writes, and the `producer stage` flags of its model.
const VARIANTS: [(&str, &[&str]); 3] = [
    ("classes only", &[]),
    (
        "classes + 1,000-float embedding",
        &["--embedding", "pool10_1"],
    ),
    (
        "classes + two 1,000-float embeddings",
        &["--embedding", "a=pool10_1", "--embedding", "b=pool10_1"],
    ),
];

/// Runs the three jobs `runs` times each, in turn; a row each: median wall time, peak RSS of
/// the process (producer, worker and collector together), Parquet bytes an image.
pub fn rows(fixtures: &Path, bin_dir: &Path, runs: usize) -> Result<Vec<Row>> {
    let photos = fixtures.join("real-photos/photos");
    let model = fixtures.join("real-photos/model/SqueezeNet_fp16.onnx");
    let work = tempfile::tempdir()?;
    let folder = work.path().join("photos");
    let images = copy_photos(&photos, &folder)?;
    let store = work.path().join("store");
    let producer = bin_dir.join("producer");
    let base = ["--store", store.to_str().unwrap(), "--container", "photos"];
    let stage = |extra: &[&str]| run(&producer, &[&["stage"], &base[..], extra].concat(), &[]);
    stage(&["--images", folder.to_str().unwrap(), "--prefix", "photos"])?;
    for (i, (_, flags)) in VARIANTS.iter().enumerate() {
        let name = format!("variant-{i}");
        let recipe = [
            &["--model", model.to_str().unwrap(), "--model-name", &name][..],
            &TORCHVISION_PREPARATION,
            &["--filter", "pillow-bilinear"],
            flags,
        ];
        stage(&recipe.concat())?;
    }
    let mut measured: Vec<(Vec<f64>, u64, u64)> = vec![(Vec::new(), 0, 0); VARIANTS.len()];
    for _ in 0..runs.max(1) {
        for (i, (seconds, peak, parquet)) in measured.iter_mut().enumerate() {
            let name = format!("variant-{i}");
            let args = [
                &base[..],
                &["--embedded", "--dataset", "photos", "--model-name", &name],
            ]
            .concat();
            let started = Instant::now();
            let ran = run_measured(&producer, &args, &[])?;
            let rss = ran.peak_kib;
            seconds.push(started.elapsed().as_secs_f64());
            *peak = (*peak).max(rss);
            // Standard output holds the job's id alone.
            let job = ran.stdout.trim();
            *parquet = folder_bytes(&store.join(format!("photos/results/{job}/scores.parquet")))?;
        }
    }
    let plain = median(&measured[0].0);
    Ok(VARIANTS
        .iter()
        .zip(&measured)
        .map(|((what, _), (seconds, peak, parquet))| {
            let seconds = median(seconds);
            Row {
                what: format!("real photos: embedded job, {what}"),
                images,
                seconds,
                note: format!(
                    "{:.3} x the classes-only job's time; peak RSS {} MB; Parquet {:.0} bytes an image",
                    seconds / plain,
                    peak / 1024,
                    *parquet as f64 / images as f64
                ),
            }
        })
        .collect())
}

/// Copies each photo of `photos` [`COPIES`] times into a new folder `folder`; how many images
/// it holds.
pub fn copy_photos(photos: &Path, folder: &Path) -> Result<u64> {
    std::fs::create_dir(folder)?;
    let mut images = 0u64;
    for entry in std::fs::read_dir(photos)? {
        let path = entry?.path();
        let name = path.file_name().context("a file name")?.to_string_lossy();
        for copy in 0..COPIES {
            std::fs::copy(&path, folder.join(format!("{copy}-{name}")))?;
            images += 1;
        }
    }
    Ok(images)
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Bytes of the files in `dir`.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
