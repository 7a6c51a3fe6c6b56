//! `producer`: stage inputs, convert CNTK models, submit and run scoring jobs.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use fleet_service::logging::LogArgs;
use fleet_storage::StoreArgs;
use producer::control::CancelArgs;
use producer::convert::ConvertArgs;
use producer::results::ResultsArgs;
use producer::run::{Completed, FleetArgs, RetryArgs, RunArgs};
use producer::stage::StageArgs;
use producer::status::StatusArgs;
use producer::submit::SubmitOptions;

/// Scores the images in a blob container (a folder of image files, or a CIFAR-10 tarball)
/// with a trained image classifier (ONNX, or CNTK converted on the way).
///
/// Without a subcommand, submits a job over a dataset in the container to the broker
/// (workers and a collector do the rest) and prints its id; --wait follows it to the end.
/// With --embedded, runs the whole job in this process instead, with no broker. Standard
/// output carries the job's id alone; everything else goes to standard error.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// What the job scores.
    #[command(flatten, next_help_heading = "What to score")]
    submit: SubmitOptions,
    /// Where the container is: before or after a subcommand.
    #[command(flatten, next_help_heading = "Store")]
    store: StoreArgs,
    /// Where the job runs.
    #[command(flatten, next_help_heading = "Where the job runs")]
    fleet: FleetArgs,
    #[command(flatten, next_help_heading = "Logging")]
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
    /// Download a complete job's results (scores, summary, report, Parquet files) into a
    /// local folder, from any store.
    Results(ResultsArgs),
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
    // Before any thread: one C heap for all of them, and ONNX Runtime keeps no usage database
    // of ours.
    fleet_service::memory::one_heap();
    fleet_inference::runtime::opt_out_of_telemetry();
    let (cli, matches): (Cli, _) = fleet_service::cli::parse_with_matches();
    if let Some((subcommand, _)) = matches.subcommand() {
        refuse_job_flags(&matches, subcommand);
    }
    fleet_service::logging::init("warn,producer=info", &cli.log);
    let runtime = || tokio::runtime::Runtime::new().context("starting the async runtime");
    let store = &cli.store;
    let completed = match cli.command {
        Some(Command::Stage(args)) => {
            producer::stage::run(store, *args).map(|()| Completed::Whole)?
        }
        Some(Command::Convert(args)) => producer::convert::run(args).map(|()| Completed::Whole)?,
        Some(Command::Status(args)) => {
            producer::status::run(store, args).map(|()| Completed::Whole)?
        }
        Some(Command::Results(args)) => {
            producer::results::run(store, args).map(|()| Completed::Whole)?
        }
        Some(Command::Cancel(args)) => runtime()?
            .block_on(producer::control::run(store, args))
            .map(|()| Completed::Whole)?,
        Some(Command::Retry(args)) => runtime()?.block_on(producer::run::retry(store, args))?,
        None => {
            let run = RunArgs {
                submit: cli.submit,
                fleet: cli.fleet,
            };
            runtime()?.block_on(producer::run::run(store, run))?
        }
    };
    if completed == Completed::Partial {
        std::process::exit(PARTIAL_EXIT);
    }
    Ok(())
}

/// Exits with a usage error when a job's own flags (those of `producer` without a subcommand)
/// were given with `subcommand`: the global ones (store, logging) go with any subcommand, the
/// job's would be ignored.
fn refuse_job_flags(matches: &clap::ArgMatches, subcommand: &str) {
    use clap::parser::ValueSource;
    let job = FleetArgs::augment_args(SubmitOptions::augment_args(clap::Command::new("job")));
    let given: Vec<String> = job
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str())))
        .collect();
    if !given.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "{} {} to a job (`producer` without a subcommand), not to `producer {subcommand}`; \
                     give them without the subcommand, or see `producer {subcommand} --help`",
                    given.join(", "),
                    if given.len() == 1 { "belongs" } else { "belong" }
                ),
            )
            .exit();
    }
}
