//! Controlling a running job over RabbitMQ and Azurite: `producer cancel`.

use std::time::{Duration, Instant};

use fleet_broker::Broker;
use fleet_broker::Queue;
use fleet_broker::amqp::AmqpBroker;
use fleet_protocol::job;
use fleet_tests::{Fleet, PROCESS_DEADLINE, job_of, run_with, spawn, terminate, wait_output};

/// Polls `done` every 100 ms until it holds or `within` passes; whether it held.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A job cancelled while a worker scores it: `--wait` ends with the reason and who gave it,
/// the worker drops the rest of its partitions unscored (none is left in the queue, none is
/// dead-lettered), the collector deletes what it stored, and no result file is written.
#[test]
fn a_job_cancelled_mid_way_leaves_no_partition_and_no_result() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    // Its closing line counts the partitions it dropped.
    let mut worker_env = env.clone();
    worker_env.push(("RUST_LOG", "warn,worker=info"));
    let worker = spawn("worker", &[], &worker_env);
    // 500 partitions: the job is far from done when it is cancelled.
    let mut producer = spawn("producer", &["--wait", "--partition-size", "20"], &env);
    let job = job_of(&mut producer);
    fleet.wait_for_stored(3);

    let out = run_with(
        "producer",
        &["cancel", &job, "--reason", "scored with the wrong model"],
        &env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("job {job}: cancelled by ")),
        "{stdout}"
    );

    let waited = wait_output(producer, "producer --wait", PROCESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(
        !waited.status.success(),
        "--wait succeeded on a cancelled job"
    );
    assert!(
        stderr.contains(&format!("job {job} was cancelled: cancelled by "))
            && stderr.contains("scored with the wrong model"),
        "{stderr}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(AmqpBroker::connect(fleet.amqp_args()))
        .unwrap();
    let ready = |queue| runtime.block_on(broker.ready_count(queue)).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || ready(Queue::Partitions) == 0),
        "partitions left in the queue: {}",
        ready(Queue::Partitions)
    );
    let store = fleet.store();
    let results = || store.list(&format!("results/{job}/")).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || results().is_empty()),
        "result files of a cancelled job: {:?}",
        results()
    );
    assert!(
        store
            .list(&job::partitions_prefix(&job))
            .unwrap()
            .is_empty()
    );
    assert_eq!(ready(Queue::DeadLetter), 0, "a partition was dead-lettered");

    let (_, worker_log) = terminate(worker);
    let dropped: u64 = worker_log
        .split("dropped=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of dropped partitions:\n{worker_log}"));
    assert!(
        dropped > 0,
        "the worker scored every partition:\n{worker_log}"
    );
    terminate(collector);

    let out = run_with("producer", &["status", &job], &env);
    let details = String::from_utf8_lossy(&out.stdout);
    assert!(
        details.contains("state: cancelled") && details.contains("scored with the wrong model"),
        "{details}"
    );
    let again = run_with("producer", &["cancel", &job], &env);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is cancelled already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
