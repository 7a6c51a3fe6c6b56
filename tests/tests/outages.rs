//! Outages of the services and load, one at a time (load disturbs every fleet on the machine,
//! so these live in this test binary of their own and hold a lock). A test that takes a
//! service away takes away one started for it alone, on free ports: never the machine's.

use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use fleet_broker::amqp::{AmqpArgs, AmqpBroker};
use fleet_broker::{Broker, Queue, QueueNames};
use fleet_tests::{Fleet, Services, finish, spawn, terminate, unique};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_broker_restart_mid_job_loses_nothing() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fleet = Fleet::on(Services::with_own_broker());
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers = [spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let producer = spawn("producer", &["--wait", "--partition-size", "250"], &env);
    fleet.wait_for_stored(8);
    fleet.services.restart_broker(Duration::from_secs(5));
    let job = finish(producer);
    for worker in workers {
        let (status, stderr) = terminate(worker);
        assert!(
            status.success(),
            "a worker failed across the broker restart: {stderr}"
        );
    }
    let (status, stderr) = terminate(collector);
    assert!(
        status.success(),
        "the collector failed across the broker restart: {stderr}"
    );
    fleet.assert_matches_reference(&job);
}

#[test]
fn storage_away_during_the_final_write_is_waited_out() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fleet = Fleet::on(Services::with_own_storage());
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers = [spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let producer = spawn("producer", &["--wait", "--partition-size", "250"], &env);
    // 40 partitions: take storage away as the last ones come in, so that the collector's
    // stores and its final write of the result files meet the outage.
    fleet.wait_for_stored(36);
    fleet.services.storage_outage(Duration::from_secs(8));
    let job = finish(producer);
    for worker in workers {
        terminate(worker);
    }
    let (status, stderr) = terminate(collector);
    assert!(
        status.success(),
        "the collector failed across the storage outage: {stderr}"
    );
    fleet.assert_matches_reference(&job);
}

#[test]
fn twenty_jobs_at_once_against_two_workers_all_complete() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers = [spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let producers: Vec<Child> = (0..20)
        .map(|_| spawn("producer", &["--wait"], &env))
        .collect();
    let jobs: Vec<String> = producers.into_iter().map(finish).collect();
    for worker in workers {
        terminate(worker);
    }
    terminate(collector);
    let distinct: std::collections::BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(distinct.len(), 20, "job ids must differ");
    for job in &jobs {
        fleet.assert_matches_reference(job);
    }
}

/// Processes that start together (a collector, workers, a producer) declare the same quorum
/// queues at the same moment, and RabbitMQ before 4.0 can answer some of them with
/// INTERNAL_ERROR and close their connection. Every client must still connect and subscribe.
/// Rounds run one after another, four clients each, as a small fleet starts.
#[test]
fn clients_starting_together_all_connect_and_subscribe() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let services = Services::get();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for round in 0..8 {
        let prefix = unique("together");
        let args = AmqpArgs {
            url: services.amqp_url.clone(),
            delivery_limit: 5,
            reconnect_secs: 30,
            ca_cert: None,
            queues: QueueNames {
                partitions: format!("{prefix}.partitions"),
                results: format!("{prefix}.results"),
                dead_letter: format!("{prefix}.dead-letter"),
            },
        };
        let outcomes = runtime.block_on(async {
            let clients: Vec<_> = (0..4)
                .map(|_| {
                    let args = args.clone();
                    tokio::spawn(async move {
                        let broker = AmqpBroker::connect(args).await?;
                        broker.consume(Queue::Partitions, 1).await.map(drop)
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for client in clients {
                outcomes.push(client.await.expect("client task"));
            }
            outcomes
        });
        for (client, outcome) in outcomes.iter().enumerate() {
            assert!(
                outcome.is_ok(),
                "round {round}, client {client}: {outcome:?}"
            );
        }
        let queues = &args.queues;
        fleet_tests::delete_queues(
            &services.amqp_url,
            &[&queues.partitions, &queues.results, &queues.dead_letter],
        )
        .expect("the round's queues are deleted");
    }
}
