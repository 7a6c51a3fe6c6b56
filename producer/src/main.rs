//! `producer`: stage inputs, convert CNTK models, submit and run scoring jobs.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fleet_service::logging::LogArgs;
use producer::control::CancelArgs;
use producer::convert::ConvertArgs;
use producer::run::{Completed, RetryArgs, RunArgs};
use producer::stage::StageArgs;
use producer::status::StatusArgs;

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
    /// List the container's jobs and where each stands (submitting, running, stuck on failed
    /// partitions, partial, complete, cancelled), or everything known of one job.
    Status(StatusArgs),
    /// Cancel a submitted job: workers drop its partitions unscored, the collector deletes
    /// what it stored and writes no result; `producer status` says who cancelled it and when.
    Cancel(CancelArgs),
    /// Score a job's failed (dead-lettered) partitions again, once their cause is fixed, so
    /// that the same job completes: over the fleet, or with --embedded in this process.
    /// Refused for a complete or cancelled job, or one whose model was restaged with another.
    Retry(RetryArgs),
}

/// Exit status of a job that completed partial, within its error budget (`--max-failed-
/// partitions`): results written, some partitions without scores.
const PARTIAL_EXIT: i32 = 3;

fn main() -> Result<()> {
    // Before any thread: ONNX Runtime keeps no usage database of ours.
    fleet_inference::runtime::opt_out_of_telemetry();
    let cli: Cli = fleet_service::cli::parse();
    fleet_service::logging::init("warn,producer=info", &cli.log);
    let runtime = || tokio::runtime::Runtime::new().context("starting the async runtime");
    let completed = match cli.command {
        Some(Command::Stage(args)) => producer::stage::run(*args).map(|()| Completed::Whole)?,
        Some(Command::Convert(args)) => producer::convert::run(args).map(|()| Completed::Whole)?,
        Some(Command::Status(args)) => producer::status::run(args).map(|()| Completed::Whole)?,
        Some(Command::Cancel(args)) => runtime()?
            .block_on(producer::control::run(args))
            .map(|()| Completed::Whole)?,
        Some(Command::Retry(args)) => runtime()?.block_on(producer::run::retry(args))?,
        None => runtime()?.block_on(producer::run::run(cli.run))?,
    };
    if completed == Completed::Partial {
        std::process::exit(PARTIAL_EXIT);
    }
    Ok(())
}
