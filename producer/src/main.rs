//! `producer`: stage inputs, convert CNTK models, submit and run scoring jobs.

use std::io::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_broker::{Broker, Queue};
use fleet_inference::InferenceOptions;
use fleet_protocol::job;
use fleet_protocol::message::{self, Cancelled, ResultMessage};
use fleet_service::logging::LogArgs;
use fleet_storage::{BlobStore, StoreArgs};
use indicatif::{ProgressBar, ProgressStyle};
use producer::models;
use producer::source::Source;
use producer::stage::{
    self, DEFAULT_DATASET_URL, DEFAULT_MEAN_IMAGE_URL, DEFAULT_MODEL_URL, SpecArgs,
};
use producer::submit::SubmitOptions;
use worker::WorkerOptions;

/// Scores the images in a blob container (a folder of image files, or a CIFAR-10 tarball)
/// with a trained image classifier (ONNX, or CNTK converted on the way).
///
/// Without a subcommand, submits a job over a dataset in the container to the broker
/// (workers and a collector do the rest) and prints its id; --wait follows it to the end.
/// With --embedded, runs the whole job in this process instead, with no broker.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Put datasets (a folder of images, or a CIFAR-10 tarball) and models (with how their
    /// images are prepared) into a container; CNTK models are converted to ONNX on the way.
    /// With no input named, stages the walkthrough's tarball, model and mean image from their
    /// public URLs.
    Stage(Box<StageArgs>),
    /// Convert a CNTK model (v2, or v1 from BrainScript) to an ONNX file, and say what it
    /// held: input, output, and the node types of the source; or, with --inspect, show its
    /// graph.
    Convert(ConvertArgs),
    /// List the container's jobs and where each stands (complete, running, stuck on
    /// dead-lettered partitions, cancelled), or everything known of one job.
    Status(StatusArgs),
    /// Cancel a submitted job: workers drop its partitions unscored, the collector deletes
    /// what it stored and writes no result; `producer status` says who cancelled it and when.
    Cancel(CancelArgs),
    /// Score a job's failed (dead-lettered) partitions again, once their cause is fixed, so
    /// that the same job completes: over the fleet, or with --embedded in this process.
    /// Refused for a complete or cancelled job, or one whose model was restaged with another.
    Retry(RetryArgs),
}

#[derive(Debug, Args)]
struct RetryArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The job's id.
    job: String,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, Args)]
struct CancelArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The job's id.
    job: String,
    /// Why, recorded with the cancellation.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One job's id, for its details.
    job: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    submit: SubmitOptions,
}

/// Where a job's partitions are scored, and whether to wait for its end.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Run producer, workers and collector in this process (no broker needed).
    #[arg(long)]
    embedded: bool,
    /// After submitting, follow the job to its end and print the accuracy.
    #[arg(long, conflicts_with = "embedded")]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(
        long = "wait-timeout-secs",
        env = "WAIT_TIMEOUT_SECS",
        default_value_t = 3600
    )]
    wait_timeout_secs: u64,
    #[command(flatten)]
    amqp: AmqpArgs,
    /// Workers in the embedded run.
    #[arg(
        long,
        env = "EMBEDDED_WORKERS",
        default_value_t = 1,
        requires = "embedded"
    )]
    workers: usize,
    #[command(flatten)]
    worker: WorkerOptions,
}

#[derive(Debug, Args)]
struct StageArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// CIFAR-10 tarball: a file or an http(s) URL, staged as --tarball-blob.
    #[arg(long)]
    tarball: Option<Source>,
    /// A local folder of images (sub-folders kept, e.g. one per class), uploaded under --prefix.
    #[arg(long, requires = "prefix")]
    images: Option<PathBuf>,
    /// Where --images go in the container; score them with `--dataset <prefix>`.
    #[arg(long)]
    prefix: Option<String>,
    /// Files uploaded at once with --images.
    #[arg(
        long = "upload-concurrency",
        env = "UPLOAD_CONCURRENCY",
        default_value_t = 16
    )]
    upload_concurrency: usize,
    /// Upload every file of --images, even those already in the container with the same
    /// size (a file edited in place keeps its size: without this its old bytes stay).
    #[arg(long, requires = "images")]
    force: bool,
    /// Model: CNTK v2 (.dnn) or ONNX, a file or an http(s) URL.
    #[arg(long)]
    model: Option<Source>,
    /// Name the model is staged under (`models/<name>.onnx`, `models/<name>.json`) [default:
    /// --model's file name without its extension; with only --mean-image or --quantize, the
    /// container's only staged model].
    #[arg(long = "model-name", env = "MODEL_NAME")]
    model_name: Option<String>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Blob name of the tarball in the container (what a job's `--dataset` names).
    #[arg(long = "tarball-blob", env = "TARBALL_BLOB", default_value = job::DATASET_BLOB)]
    tarball_blob: String,
    /// Also stage an int8 version of the model as `<name>-int8`, calibrated on the staged
    /// tarball (faster on CPUs with integer dot products; check its accuracy on your data).
    #[arg(long)]
    quantize: bool,
    /// Stage only these of the walkthrough's inputs, from their public URLs unless given.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Input>,
    #[command(flatten)]
    inference: InferenceOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Input {
    Tarball,
    Model,
    MeanImage,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// The CNTK model file (v2 `.dnn`/`.model`, or v1 `.dnn`/`.cmf`).
    input: PathBuf,
    /// The ONNX file to write (default: the input with an .onnx extension).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The CNTK node (v1) or function (v2) whose output is the classifier's, when the model
    /// saved another one first [default: the saved output nodes, or the first output that is
    /// not a loss or metric].
    #[arg(long = "output-node", value_name = "NAME")]
    output_node: Option<String>,
    /// Print the model's graph as saved (every node the output depends on, each after its
    /// inputs, with the ones the importer does not support marked) instead of converting it.
    #[arg(long, conflicts_with = "output")]
    inspect: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    fleet_service::logging::init("warn,producer=info", &cli.log);
    match cli.command {
        Some(Command::Stage(args)) => stage(*args),
        Some(Command::Convert(args)) => convert(args),
        Some(Command::Status(args)) => status(args),
        Some(Command::Cancel(args)) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(cancel(args)),
        Some(Command::Retry(args)) => exit_as(
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(retry(args))?,
        ),
        None => exit_as(
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(run(cli.run))?,
        ),
    }
}

/// Exits with [`PARTIAL_EXIT`] for a job that completed partial.
fn exit_as(completed: Completed) -> Result<()> {
    if completed == Completed::Partial {
        std::process::exit(PARTIAL_EXIT);
    }
    Ok(())
}

/// Exit status of a job that completed partial, within its error budget (`--max-failed-
/// partitions`): results written, some partitions without scores.
const PARTIAL_EXIT: i32 = 3;

/// How a job run by `producer` ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Completed {
    /// Every partition scored, or not waited for.
    Whole,
    /// Some partitions failed within the error budget.
    Partial,
}

impl Completed {
    fn of(summary: &fleet_protocol::Summary) -> Self {
        match &summary.partial {
            Some(partial) => {
                eprintln!(
                    "job {} completed partial: {} images in {} partitions could not be scored ({}); their rows in scores.csv carry the reason",
                    summary.job,
                    partial.images,
                    partial.failed_partitions,
                    partial.reasons.join("; ")
                );
                Completed::Partial
            }
            None => Completed::Whole,
        }
    }
}

/// Marks the job cancelled in the container, then tells the collector at once.
async fn cancel(args: CancelArgs) -> Result<()> {
    let store = args.store.open_async(false).await?;
    let (job, reason) = (args.job.clone(), args.reason.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        producer::control::cancel(
            store.as_ref(),
            &job,
            &producer::control::caller(),
            reason.as_deref(),
        )
    })
    .await??;
    println!("job {}: {recorded}", args.job);
    // The marker is what counts; the message only spares the collector its next look.
    let message = ResultMessage::Cancelled(Cancelled {
        job: args.job.clone(),
        reason: recorded,
    });
    match AmqpBroker::connect(args.amqp).await {
        Ok(broker) => broker
            .publish(Queue::Results, message::encode(&message))
            .await
            .context("the job is marked cancelled; telling the collector failed (it finds the marker within seconds)")?,
        Err(e) => tracing::warn!(error = %e, "the job is marked cancelled; the collector finds the marker within seconds"),
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let store = args.store.open(false)?;
    match args.job {
        Some(job) => {
            let status = producer::status::one(store.as_ref(), &job)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has no job {job}; `producer status` lists those it has",
                    store.describe()
                )
            })?;
            print!("{}", status.details(store.as_ref()));
        }
        None => {
            let jobs = producer::status::list(store.as_ref())?;
            if jobs.is_empty() {
                println!("{} has no jobs", store.describe());
            } else {
                println!("{}", producer::status::header());
                for job in jobs {
                    println!("{}", job.line());
                }
            }
        }
    }
    Ok(())
}

fn stage(mut args: StageArgs) -> Result<()> {
    let store = args.store.open(true)?;
    let named = args.tarball.is_some()
        || args.images.is_some()
        || args.model.is_some()
        || args.spec.mean_image.is_some();
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
            stage::stage_dataset(store.as_ref(), tarball, &args.tarball_blob)?
        );
    }
    if let (Some(images), Some(prefix)) = (&args.images, &args.prefix) {
        println!(
            "{}",
            stage::stage_images(
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
                .unwrap_or_else(|| models::name_from_file(&model.file_name())),
        ),
        None => args.model_name.clone(),
    };
    let mut chosen_name = || -> Result<String> {
        let name = models::chosen(store.as_ref(), model_name.as_deref())?;
        Ok(model_name.insert(name).clone())
    };
    match (&args.model, &args.spec.mean_image) {
        (Some(model), _) => println!(
            "{}",
            stage::stage_model(
                store.as_ref(),
                model,
                &chosen_name()?,
                &args.spec,
                &args.inference
            )?
        ),
        (None, Some(mean)) => println!(
            "{}",
            stage::stage_mean_image(store.as_ref(), mean, &chosen_name()?)?
        ),
        (None, None) => {}
    }
    if args.quantize {
        let staged = stage::stage_quantized(
            store.as_ref(),
            &chosen_name()?,
            &args.tarball_blob,
            &args.inference,
        )?;
        println!("{staged}");
    }
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let name = args.input.file_name().map_or_else(
        || args.input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let options = cntk_onnx::Options {
        output: args.output_node.clone(),
    };
    if args.inspect {
        let graph = cntk_onnx::inspect(&bytes, &name, &options)?;
        // A long graph is often piped into `head` or `less`: a reader that stops early is not
        // an error.
        return match write!(std::io::stdout().lock(), "{graph}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            written => written.context("writing the graph to standard output"),
        };
    }
    let imported = cntk_onnx::import_with(&bytes, &name, &options)?;
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension("onnx"));
    std::fs::write(&output, &imported.onnx)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "{} -> {}: {} nodes, {} weights, input {:?}, output {:?}, source sha256 {}",
        args.input.display(),
        output.display(),
        imported.nodes,
        imported.parameters,
        imported.input_shape,
        imported.output_shape,
        imported.source_sha256
    );
    println!(
        "source: {}, output node {}",
        imported.source_format, imported.output
    );
    let histogram: Vec<String> = imported
        .source_ops
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!("source nodes: {}", histogram.join(", "));
    Ok(())
}

async fn run(args: RunArgs) -> Result<Completed> {
    let store = args.store.open_async(false).await?;
    let job = job::new_job_id();
    let fleet = args.fleet;
    if fleet.embedded {
        let run = producer::embedded::run(
            store.clone(),
            &args.submit,
            fleet.workers,
            fleet.worker,
            &job,
        )
        .await?;
        return Ok(embedded_done(store.as_ref(), &run));
    }
    let broker = AmqpBroker::connect(fleet.amqp).await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} publishing {pos} images ({per_sec}, {elapsed})")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let manifest =
        producer::submit::submit(&broker, store.clone(), &args.submit, &job, |n| bar.inc(n)).await;
    bar.finish_and_clear();
    let manifest = manifest?;
    println!(
        "submitted {} images in {} partitions",
        manifest.images, manifest.partitions
    );
    println!("job: {job}");
    if fleet.wait {
        let budget = args.submit.max_failed_partitions;
        return wait(store, &manifest, fleet.wait_timeout_secs, budget).await;
    }
    Ok(Completed::Whole)
}

/// Publishes a job's failed partitions again, over the fleet or in this process.
async fn retry(args: RetryArgs) -> Result<Completed> {
    let store = args.store.open_async(false).await?;
    let (found_in, job) = (store.clone(), args.job.clone());
    let retry =
        tokio::task::spawn_blocking(move || producer::retry::prepare(found_in.as_ref(), &job))
            .await??;
    if !retry.waiting.is_empty() {
        tracing::warn!(
            job = %retry.job,
            partitions = ?retry.waiting,
            "dead-lettered partitions whose rows the collector has not stored yet are left out: retry again once it has"
        );
    }
    println!(
        "job {}: scoring {} failed partitions again",
        retry.job,
        retry.partitions.len()
    );
    let fleet = args.fleet;
    if fleet.embedded {
        let run =
            producer::embedded::retry(store.clone(), &retry, fleet.workers, fleet.worker).await?;
        return Ok(embedded_done(store.as_ref(), &run));
    }
    let broker = AmqpBroker::connect(fleet.amqp).await?;
    let published = retry.publish(&broker, store.clone(), &mut |_| {}).await?;
    println!("published {published} partitions");
    if fleet.wait {
        let budget = retry.max_failed_partitions;
        return wait(store, &retry.manifest, fleet.wait_timeout_secs, budget).await;
    }
    Ok(Completed::Whole)
}

/// What an embedded run prints once its job is complete.
fn embedded_done(store: &dyn BlobStore, run: &producer::embedded::EmbeddedRun) -> Completed {
    print_summary(&run.summary);
    if let Some(peak) = peak_memory_mb() {
        // Every role ran in this process: its peak is the job's.
        println!("peak memory: {peak} MB");
    }
    println!("job: {}", run.job);
    print_report(store, &run.job);
    Completed::of(&run.summary)
}

/// Follows a job submitted to the fleet to its end, and prints its accuracy.
async fn wait(
    store: std::sync::Arc<dyn BlobStore>,
    manifest: &job::Manifest,
    timeout_secs: u64,
    max_failed_partitions: u32,
) -> Result<Completed> {
    let timeout = Duration::from_secs(timeout_secs);
    let summary =
        producer::follow::follow(store.clone(), manifest, timeout, max_failed_partitions).await?;
    print_summary(&summary);
    print_report(store.as_ref(), &manifest.job);
    Ok(Completed::of(&summary))
}

/// Where the job's report is: a path or a blob URL to open in a browser.
fn print_report(store: &dyn BlobStore, job: &str) {
    println!(
        "report: {}",
        store.location(&job::result_key(job, job::files::REPORT))
    );
}

/// This process's peak resident memory, in MB (Linux's `VmHWM`; `None` elsewhere).
fn peak_memory_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn print_summary(summary: &fleet_protocol::Summary) {
    println!("{}", summary.accuracy_line());
    println!(
        "scored {} images in {:.2}s ({:.0} images/s)",
        summary.scored, summary.timings.wall_seconds, summary.timings.images_per_second
    );
}
