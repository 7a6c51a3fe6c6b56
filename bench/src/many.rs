//! An embedded job over many small images (`--embedded-images N`): the fixture's ten MNIST
//! digits, each linked (hard links, not copies) N/10 times under `digits/<digit>/` in a local
//! container, scored by the fixture's MNIST model with folder labels. The model is cheap on
//! purpose: what is measured is the job's machinery at that size (listing, partitions, the
//! collector), in one process, with its wall time and peak RSS.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{Row, run, run_measured};

/// The rows over `images` images: the producer submitting them alone, then the embedded job.
pub fn rows(fixtures: &Path, bin_dir: &Path, images: u64) -> Result<Vec<Row>> {
    let root = tempfile::tempdir()?;
    let store = root
        .path()
        .to_str()
        .context("a UTF-8 temporary directory")?;
    let models = fixtures.join("cntk-models");
    let classes = root.path().join("digits.txt");
    std::fs::write(
        &classes,
        (0..10).map(|d| format!("{d}\n")).collect::<String>(),
    )?;
    let producer = bin_dir.join("producer");
    let model = models.join("MNISTConvolution.model");
    run(
        &producer,
        &[
            "stage",
            "--store",
            store,
            "--container",
            "many",
            "--model",
            model.to_str().context("a UTF-8 fixtures path")?,
            "--model-name",
            "mnist",
            "--classes",
            classes.to_str().context("a UTF-8 temporary directory")?,
        ],
        &[],
    )?;
    let linking = Instant::now();
    link_digits(
        &models.join("mnist-digits"),
        &root.path().join("many/digits"),
        images,
    )?;
    eprintln!(
        "linked {images} images in {:.0} s",
        linking.elapsed().as_secs_f64()
    );
    let submission = submission_row(root.path(), images)?;
    let started = Instant::now();
    let ran = run_measured(
        &producer,
        &[
            "--store",
            store,
            "--container",
            "many",
            "--embedded",
            "--dataset",
            "digits",
            "--model-name",
            "mnist",
            "--labels",
            "folders",
        ],
        &[],
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let (said, peak_kib) = (&ran.stderr, ran.peak_kib);
    let accuracy = said
        .lines()
        .find(|l| l.starts_with("Correctly predicted"))
        .with_context(|| format!("no accuracy line in what the job said:\n{said}"))?;
    let expected = format!("Correctly predicted {images} of {images} images");
    if !accuracy.starts_with(&expected) {
        bail!("the job's answer changed: {accuracy} (expected {expected})");
    }
    let job = Row {
        what: format!("embedded job, {images} MNIST digits (folder labels, local container)"),
        images,
        seconds,
        note: format!("peak RSS {:.0} MiB; {accuracy}", peak_kib as f64 / 1024.0),
    };
    Ok(vec![submission, job])
}

/// The producer alone submitting the digits: listing the container and publishing partitions
/// to the in-process broker, whose partitions are taken and dropped as they come (nothing
/// scores them). Its peak is this process's (the bench's own few MiB included).
fn submission_row(root: &Path, images: u64) -> Result<Row> {
    use fleet_broker::memory::MemoryBroker;
    use fleet_broker::{Broker, Consumer, Delivery, Queue};
    use fleet_dataset::collection;
    use producer::submit::{SubmitOptions, submit};

    let store = fleet_storage::local::LocalStore::open(root, "many")?;
    let options = SubmitOptions {
        dataset: "digits".into(),
        models: vec!["mnist".into()],
        labels: collection::LabelSource::Folders,
        ..fleet_service::cli::defaults::<SubmitOptions>()?
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let broker = MemoryBroker::new(64, 5);
    super::scale::reset_peak_rss();
    let started = Instant::now();
    let manifest = runtime.block_on(async {
        let drains: Vec<_> = [Queue::Partitions, Queue::Results]
            .into_iter()
            .map(|queue| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    let mut consumer = broker.consume(queue, 64).await?;
                    while let Some(delivery) = consumer.next().await? {
                        delivery.ack().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        let submitted = submit(
            &broker,
            std::sync::Arc::new(store),
            &options,
            "submission",
            |_| {},
        )
        .await;
        broker.close();
        for drain in drains {
            drain.await??;
        }
        anyhow::Ok(submitted?)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_mib = super::scale::peak_rss_kib()? as f64 / 1024.0;
    if manifest.images != images {
        bail!("{} images submitted of {images}", manifest.images);
    }
    Ok(Row {
        what: format!("producer alone: listing {images} names and publishing their partitions"),
        images,
        seconds,
        note: format!(
            "{} partitions ({:.0}/s); peak RSS of the process {peak_mib:.0} MiB",
            manifest.partitions,
            f64::from(manifest.partitions) / seconds
        ),
    })
}

/// Links digit `i % 10`'s image as `<dir>/<digit>/<i>.png` for every `i` below `images`.
fn link_digits(digits: &Path, dir: &Path, images: u64) -> Result<()> {
    for digit in 0..10 {
        std::fs::create_dir_all(dir.join(digit.to_string()))?;
    }
    for i in 0..images {
        let digit = i % 10;
        let source = digits.join(format!("digit_{digit}.png"));
        let target = dir.join(digit.to_string()).join(format!("{i:08}.png"));
        if std::fs::hard_link(&source, &target).is_err() {
            // Another file system: a copy (a few hundred bytes) does as well.
            std::fs::copy(&source, &target)
                .with_context(|| format!("cannot link or copy {}", source.display()))?;
        }
    }
    Ok(())
}
