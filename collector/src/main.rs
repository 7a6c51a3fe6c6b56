//! `collector`: gathers scored partitions and writes each job's result files.

use anyhow::{Context, Result};
use clap::Parser;
use collector::{CollectorOptions, Event};
use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_service::logging::{LogArgs, LogFormat};
use fleet_service::ops::{self, OpsArgs};
use fleet_service::shutdown::Shutdown;
use fleet_storage::FleetStoreArgs;

/// Consumes scores from RabbitMQ, stores them durably, and writes `results/<job>/` when a job
/// is complete. Safe to restart at any point: it resumes from what it stored.
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
    collector: CollectorOptions,
}

fn main() -> Result<()> {
    // Before any thread: one C heap for all of them.
    fleet_service::memory::one_heap();
    let cli: Cli = fleet_service::cli::parse();
    fleet_service::logging::init("warn,collector=info", &cli.log);
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    ops::serve(&cli.ops)
        .await
        .context("cannot serve the operations endpoint (--http-port)")?;
    cli.store.account.spec()?;
    let containers = std::sync::Arc::new(cli.store.containers());
    let checked = containers.clone();
    tokio::task::spawn_blocking(move || checked.check()).await??;
    let broker = AmqpBroker::connect(cli.amqp).await?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    tracing::info!(serves = %containers.describe(), "collector started");
    // A log pipeline reading JSON gets JSON on both streams.
    let json = cli.log.log_format == LogFormat::Json;
    let logger = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let (job, outcome) = match event {
                Event::Completed(summary) => (summary.job.clone(), summary.accuracy_line()),
                Event::Cancelled { job, reason } => (job, format!("cancelled ({reason})")),
                Event::Stored { .. } | Event::TidiedUp { .. } => continue,
            };
            if json {
                println!("{}", serde_json::json!({ "job": job, "outcome": outcome }));
            } else {
                println!("job {job}: {outcome}");
            }
        }
    });
    collector::run(broker, containers, cli.collector, shutdown, Some(events_tx)).await?;
    logger.await?;
    tracing::info!("collector stopped");
    Ok(())
}
