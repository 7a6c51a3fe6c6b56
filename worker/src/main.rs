//! `worker`: scores partitions from the broker until stopped (SIGTERM drains and exits).

use anyhow::{Context, Result};
use clap::Parser;
use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_service::logging::LogArgs;
use fleet_service::ops::{self, OpsArgs};
use fleet_service::shutdown::Shutdown;
use fleet_storage::FleetStoreArgs;
use worker::WorkerOptions;

/// Consumes partitions from RabbitMQ, scores each as one batch with ONNX Runtime, publishes
/// the scores. On SIGTERM it finishes the partition in hand and exits.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten, next_help_heading = "Store")]
    store: FleetStoreArgs,
    #[command(flatten, next_help_heading = "Broker")]
    amqp: AmqpArgs,
    #[command(flatten, next_help_heading = "Logging")]
    log: LogArgs,
    #[command(flatten, next_help_heading = "Operations endpoint")]
    ops: OpsArgs,
    #[command(flatten)]
    worker: WorkerOptions,
    /// Name of this worker in the job summary and the logs (default: host name and process id).
    #[arg(long, env = "WORKER_NAME")]
    name: Option<String>,
}

fn main() -> Result<()> {
    // Before any thread: one C heap for all of them, and ONNX Runtime keeps no usage database
    // of ours.
    fleet_service::memory::one_heap();
    fleet_inference::runtime::opt_out_of_telemetry();
    let cli: Cli = fleet_service::cli::parse();
    fleet_service::logging::init("warn,worker=info", &cli.log);
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    ops::serve(&cli.ops)
        .await
        .context("cannot serve the operations endpoint (--http-port)")?;
    if cli.amqp.delivery_limit < cli.worker.max_attempts {
        tracing::warn!(
            delivery_limit = cli.amqp.delivery_limit,
            max_attempts = cli.worker.max_attempts,
            "the broker's delivery limit is below --max-attempts: partitions whose workers keep \
             stopping are dead-lettered by the broker, with no note for `producer --wait`"
        );
    }
    cli.store.account.spec()?;
    let containers = std::sync::Arc::new(cli.store.containers());
    let checked = containers.clone();
    tokio::task::spawn_blocking(move || checked.check()).await??;
    let broker = AmqpBroker::connect(cli.amqp).await?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let name = cli.name.unwrap_or_else(default_name);
    tracing::info!(worker = %name, serves = %containers.describe(), "worker started");
    let report = worker::run(broker, containers, cli.worker, name.clone(), shutdown).await?;
    tracing::info!(
        worker = %name,
        partitions = report.partitions,
        images = report.images,
        dead_lettered = report.dead_lettered,
        dropped = report.dropped,
        "worker stopped"
    );
    Ok(())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}
