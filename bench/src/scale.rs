//! The collector at scale: synthetic results of one job (`--scale 1000,5000,20000` partitions
//! of `--scale-images` images each) through the real collector code, over the in-process
//! broker and a local directory, and over RabbitMQ and Azurite. No model and no image: what is
//! measured is the fan-in alone.
//!
//! For each size: the collector's seconds from the first result published to the job's
//! completion, its store operations per partition (counted by a wrapper around the real
//! store), and the peak RSS of the process (the collector and the publisher of the synthetic
//! results together; the peak is reset before each size).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use collector::{CollectorOptions, Event};
use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_broker::memory::MemoryBroker;
use fleet_broker::{Broker, Queue};
use fleet_protocol::gallery::pick_thumbnails;
use fleet_protocol::job::{self, Plan, files, now_ms};
use fleet_protocol::message::{self, ResultMessage, Score, Scored, Sealed, Thumbnail};
use fleet_service::shutdown::Shutdown;
use fleet_storage::{AccountArgs, BlobStore, Containers, StoreError};
use tokio::sync::mpsc;

/// Classes of the synthetic model: ImageNet's count, so the confusion matrix is sparse.
const CLASSES: u32 = 1_000;

/// One size's figures.
pub struct ScaleRow {
    /// What the results went through.
    pub over: &'static str,
    /// Partitions in the job.
    pub partitions: u32,
    /// Images in the job.
    pub images: u64,
    /// From the first result published to the job's completion (`summary.json` written).
    pub seconds: f64,
    /// Deleting the job's intermediate blobs, after its completion.
    pub tidy_up_seconds: f64,
    /// Store operations, by kind: how many, and the seconds they took together.
    pub operations: BTreeMap<&'static str, (u64, f64)>,
    /// Peak RSS of the process, in MiB.
    pub peak_rss_mib: f64,
}

impl ScaleRow {
    /// Store operations per partition, all kinds together.
    pub fn operations_per_partition(&self) -> f64 {
        self.operations.values().map(|o| o.0).sum::<u64>() as f64 / f64::from(self.partitions)
    }
}

/// The scale rows: each size over the in-process broker and a local directory, then, with
/// `fleet` given, each size up to `fleet_max` over RabbitMQ and Azurite.
pub fn rows(
    sizes: &[u32],
    images: u32,
    fleet: Option<(&AmqpArgs, &str)>,
    fleet_max: u32,
) -> Result<Vec<ScaleRow>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &partitions in sizes {
        let dir = tempfile::tempdir()?;
        let store = fleet_storage::local::LocalStore::create(dir.path(), "scale")?;
        let broker = MemoryBroker::new(64, 5);
        rows.push(runtime.block_on(one_job(
            "in-process broker, local directory",
            broker,
            Arc::new(store),
            partitions,
            images,
        ))?);
    }
    if let Some((amqp, connection)) = fleet {
        for &partitions in sizes.iter().filter(|&&n| n <= fleet_max) {
            let id = format!("scale-{}-{partitions}", std::process::id());
            let mut amqp = amqp.clone();
            amqp.queues.partitions = format!("{id}.partitions");
            amqp.queues.results = format!("{id}.results");
            amqp.queues.dead_letter = format!("{id}.dead-letter");
            let store = AccountArgs::new(connection).open(&id, true)?;
            let broker = runtime.block_on(AmqpBroker::connect(amqp))?;
            let row = runtime.block_on(one_job(
                "RabbitMQ, Azurite",
                broker,
                store.clone(),
                partitions,
                images,
            ))?;
            rows.push(row);
            for key in store.list("")? {
                store.delete(&key)?;
            }
        }
    }
    Ok(rows)
}

/// Publishes one job's synthetic results and runs the collector until it completes the job.
async fn one_job<B: Broker + Clone>(
    over: &'static str,
    broker: B,
    store: Arc<dyn BlobStore>,
    partitions: u32,
    images: u32,
) -> Result<ScaleRow> {
    let job = format!("scale-{partitions}");
    let plan = Plan {
        job: job.clone(),
        classes: (0..CLASSES).map(|c| format!("class {c:04}")).collect(),
        top_k: 1,
        several_batches: false,
        max_failed_partitions: 0,
        vectors: Vec::new(),
        multi_label: None,
        models: Vec::new(),
    };
    store.put(&job::plan_key(&job), &serde_json::to_vec(&plan)?)?;
    let counted = Arc::new(Counted {
        inner: store.clone(),
        counts: Mutex::default(),
    });
    reset_peak_rss();
    let (shutdown, trigger) = Shutdown::manual();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let container = store.container().to_owned();
    let served = Containers::one(&container, counted.clone() as Arc<dyn BlobStore>);
    let collector = tokio::spawn(collector::run(
        broker.clone(),
        Arc::new(served),
        CollectorOptions {
            prefetch: 8,
            store_retry_secs: 30,
        },
        shutdown,
        Some(events_tx),
    ));
    let started = Instant::now();
    let publisher = {
        let (broker, job) = (broker.clone(), job.clone());
        tokio::spawn(async move {
            for partition in 0..partitions {
                let scored = synthetic(&job, &container, partition, images);
                broker
                    .publish(
                        Queue::Results,
                        message::encode(&ResultMessage::Scored(Box::new(scored))),
                    )
                    .await?;
            }
            let sealed = Sealed {
                job,
                container,
                partitions,
                images: u64::from(partitions) * u64::from(images),
                labelled: true,
                submitted_at_ms: now_ms(),
                published_at_ms: now_ms(),
            };
            broker
                .publish(
                    Queue::Results,
                    message::encode(&ResultMessage::Sealed(sealed)),
                )
                .await
        })
    };
    let summary = loop {
        match events.recv().await {
            Some(Event::Completed(summary)) => break summary,
            Some(Event::Cancelled { reason, .. }) => bail!("the job was cancelled: {reason}"),
            Some(Event::Stored { .. } | Event::TidiedUp { .. }) => {}
            None => bail!("the collector stopped before the job completed"),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let tidy_up_seconds = loop {
        match events.recv().await {
            Some(Event::TidiedUp { seconds, .. }) => break seconds,
            Some(_) => {}
            None => bail!("the collector stopped before it tidied up"),
        }
    };
    let peak_rss_mib = peak_rss_kib()? as f64 / 1024.0;
    publisher.await??;
    trigger.fire();
    collector.await??;
    let images_total = u64::from(partitions) * u64::from(images);
    if summary.images != images_total {
        bail!(
            "the summary counts {} images of {images_total}",
            summary.images
        );
    }
    let rows = store.open(&job::result_key(&job, files::SCORES))?;
    let lines = std::io::BufRead::lines(std::io::BufReader::new(rows)).count() as u64;
    if lines != images_total + 1 {
        bail!("scores.csv has {lines} lines for {images_total} images");
    }
    let operations = counted
        .counts
        .lock()
        .expect("no panic holds the counts")
        .clone();
    Ok(ScaleRow {
        over,
        partitions,
        images: images_total,
        seconds,
        tidy_up_seconds,
        operations,
        peak_rss_mib,
    })
}

/// Partition `partition` as a worker would send it: `images` rows with a label and a top-1
/// class (most right, some wrong, spread over the classes), file names of a realistic length,
/// and the thumbnails the report may show (8x8 PNGs).
fn synthetic(job: &str, container: &str, partition: u32, images: u32) -> Scored {
    let first = u64::from(partition) * u64::from(images);
    let scores: Vec<Score> = (0..u64::from(images))
        .map(|i| {
            let index = first + i;
            let label = (index % u64::from(CLASSES)) as u32;
            let wrong = index % 10 == 3;
            let predicted = if wrong {
                (label + 1 + (index % 7) as u32) % CLASSES
            } else {
                label
            };
            Score {
                label: Some(label),
                top: vec![(predicted, 0.5 + (index % 50) as f32 / 100.0)],
                error: None,
                scored: true,
                tags: Vec::new(),
                true_tags: None,
            }
        })
        .collect();
    let png = fleet_figures::rgb_png(8, 8, &[90; 8 * 8 * 3]);
    let thumbnails = pick_thumbnails(partition, &scores, &[])
        .into_iter()
        .map(|position| Thumbnail {
            position: position as u32,
            png: png.clone(),
            top: Vec::new(),
        })
        .collect();
    Scored {
        job: job.into(),
        container: container.into(),
        partition,
        batch: "photos/".into(),
        first_index: first,
        filenames: (0..u64::from(images))
            .map(|i| format!("camera-{:03}/IMG_{:08}.jpg", (first + i) % 997, first + i))
            .collect(),
        scores,
        more: Vec::new(),
        worker: format!("worker-{}", partition % 4),
        inference_ms: 100.0,
        model_ms: Vec::new(),
        preprocess_ms: 50.0,
        published_at_ms: now_ms(),
        started_at_ms: now_ms(),
        finished_at_ms: now_ms(),
        provider: "CPU".into(),
        decoder: String::new(),
        thumbnails,
        failed: None,
        vectors: false,
    }
}

/// Starts a new peak for this process's VmHWM (Linux: `echo 5 > /proc/self/clear_refs`).
pub fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::warn!(error = %e, "the peak RSS cannot be reset: it covers every size so far");
    }
}

/// This process's peak RSS since the last reset, in KiB.
pub fn peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// The real store, counting the operations asked of it and timing them.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn BlobStore>,
    counts: Mutex<BTreeMap<&'static str, (u64, f64)>>,
}

impl Counted {
    fn count<T>(&self, operation: &'static str, run: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let outcome = run();
        let seconds = started.elapsed().as_secs_f64();
        let mut counts = self.counts.lock().expect("no panic holds the counts");
        let entry = counts.entry(operation).or_default();
        entry.0 += 1;
        entry.1 += seconds;
        outcome
    }
}

impl BlobStore for Counted {
    fn open(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
        self.count("get", || self.inner.open(key))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.count("put", || self.inner.put(key, bytes))
    }

    fn put_file(&self, key: &str, path: &std::path::Path) -> Result<(), StoreError> {
        self.count("put", || self.inner.put_file(key, path))
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.count("exists", || self.inner.exists(key))
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<fleet_storage::Listed>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        // Counted as one request per page, as Azure lists.
        let mut pages = 0;
        let listed = self.count("list page", || {
            self.inner.list_pages(prefix, &mut |page| {
                pages += 1;
                each(page)
            })
        });
        let mut counts = self.counts.lock().expect("no panic holds the counts");
        counts.entry("list page").or_default().0 += pages.max(1) - 1;
        listed
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count("delete", || self.inner.delete(key))
    }

    fn stage_block(&self, key: &str, block: u32, bytes: &[u8]) -> Result<(), StoreError> {
        self.count("stage block", || self.inner.stage_block(key, block, bytes))
    }

    fn commit_blocks(&self, key: &str, blocks: &[u32]) -> Result<(), StoreError> {
        self.count("commit blocks", || self.inner.commit_blocks(key, blocks))
    }

    fn discard_blocks(&self, key: &str) -> Result<(), StoreError> {
        self.count("discard blocks", || self.inner.discard_blocks(key))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    fn container(&self) -> &str {
        self.inner.container()
    }

    fn shareable(&self, key: &str, lifetime: std::time::Duration) -> Option<String> {
        self.inner.shareable(key, lifetime)
    }
}

/// The scale rows as a Markdown table, and the store operations of each in a second one.
pub fn print_table(rows: &[ScaleRow]) {
    println!(
        "| over | partitions | images | to results (s) | ms per partition | tidy-up after (s) | store ops per partition | peak RSS (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.0} |",
            row.over,
            row.partitions,
            row.images,
            row.seconds,
            1000.0 * row.seconds / f64::from(row.partitions),
            row.tidy_up_seconds,
            row.operations_per_partition(),
            row.peak_rss_mib
        );
    }
    println!();
    println!("Store operations per partition, and their mean time (ms):");
    println!();
    println!("| over | partitions | operations |");
    println!("|---|---:|---|");
    for row in rows {
        let operations: Vec<String> = row
            .operations
            .iter()
            .map(|(kind, &(n, seconds))| {
                format!(
                    "{kind} {:.2} ({:.2} ms)",
                    n as f64 / f64::from(row.partitions),
                    1000.0 * seconds / n.max(1) as f64
                )
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            row.over,
            row.partitions,
            operations.join(", ")
        );
    }
}
