//! Controlling a job: `producer cancel` over RabbitMQ and Azurite, and the error budget
//! (`--max-failed-partitions`) of an embedded job.

use std::time::{Duration, Instant};

use fleet_broker::Broker;
use fleet_broker::Queue;
use fleet_broker::amqp::AmqpBroker;
use fleet_dataset::collection::LabelSource;
use fleet_protocol::job;
use fleet_storage::local::LocalStore;
use fleet_storage::{BlobStore, StoreError};
use fleet_tests::{
    Fleet, InjectedStore, PROCESS_DEADLINE, Producer, StoreCall, fixture, job_of, run_with, spawn,
    terminate, wait_output,
};
use producer::submit::SubmitOptions;

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

/// Stages the fixture's MNIST digits under `mnist/` in container `ctr` of `root`, with the
/// fixture's MNIST model (as `mnist`) and the class names 0 to 9.
fn stage_digits(root: &std::path::Path) {
    let classes = root.join("digits.txt");
    std::fs::write(
        &classes,
        (0..10).map(|d| format!("{d}\n")).collect::<String>(),
    )
    .unwrap();
    Producer::stage(root, "ctr")
        .args(&[
            "--images",
            fixture("cntk-models/mnist-digits").to_str().unwrap(),
            "--prefix",
            "mnist",
            "--model",
            fixture("cntk-models/MNISTConvolution.model")
                .to_str()
                .unwrap(),
            "--model-name",
            "mnist",
            "--classes",
            classes.to_str().unwrap(),
        ])
        .ok();
}

/// A partition that can never be scored: with an error budget of one the job completes
/// partial, every image in `scores.csv` (the failed partition's with the reason); with none it
/// fails, as before the budget existed.
#[test]
fn a_failed_partition_within_the_budget_completes_the_job_partial() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    // One blob cannot be read: the store answers as an outage would, every time. The
    // partition holding it is retried, then dead-lettered.
    let inner: std::sync::Arc<dyn BlobStore> =
        std::sync::Arc::new(LocalStore::open(root.path(), "ctr").unwrap());
    let local = inner.describe();
    let store: std::sync::Arc<dyn BlobStore> = std::sync::Arc::new(InjectedStore {
        inner,
        fault: Box::new(move |call, key| {
            (call == StoreCall::Open && key == "mnist/digit_3.png").then(|| StoreError::Io {
                store: local.clone(),
                key: key.into(),
                reason: "injected outage of this blob".into(),
            })
        }),
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let job = |budget: u32| {
        let options = SubmitOptions {
            dataset: "mnist".into(),
            model: Some("mnist".into()),
            labels: LabelSource::None,
            partition_size: 2,
            max_failed_partitions: budget,
            ..fleet_service::cli::defaults().unwrap()
        };
        let worker = fleet_service::cli::defaults::<worker::WorkerOptions>().unwrap();
        let id = fleet_protocol::job::new_job_id();
        let run = runtime.block_on(producer::embedded::run(
            store.clone(),
            &options,
            1,
            worker,
            &id,
        ));
        (id, run)
    };

    let (id, run) = job(1);
    let summary = run.expect("the job completes partial").summary;
    let partial = summary.partial.as_ref().expect("a partial job");
    assert_eq!((partial.failed_partitions, partial.images), (1, 2));
    assert!(
        partial.reasons[0].contains("injected outage of this blob"),
        "{partial:?}"
    );
    assert_eq!((summary.images, summary.scored), (10, 8));
    let csv = String::from_utf8(
        store
            .get(&fleet_protocol::job::result_key(&id, "scores.csv"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(csv.lines().count(), 1 + 10, "{csv}");
    let failed: Vec<&str> = csv
        .lines()
        .filter(|l| l.contains("partition not scored: "))
        .collect();
    assert_eq!(failed.len(), 2, "{csv}");
    assert!(
        failed[0].starts_with("2,digit_2.png,") && failed[1].starts_with("3,digit_3.png,"),
        "{csv}"
    );

    let (_, run) = job(0);
    let error = run.expect_err("over its budget the job fails").to_string();
    assert!(
        error.contains("1 partitions could not be scored") && error.contains("injected outage"),
        "{error}"
    );
    // What was scored is there to read, and the message says where.
    assert!(
        error.contains("the rows scored so far are in") && error.contains("scores.parquet/"),
        "{error}"
    );
}

/// The same through the binary, over a local container where one image is a link to a file
/// that cannot be read (`/proc/self/mem` fails every read at its start): `producer --embedded`
/// exits with status 3 and says the job completed partial, and why.
#[cfg(target_os = "linux")]
#[test]
fn a_partial_job_exits_with_status_3() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    let unreadable = root.path().join("ctr/mnist/digit_3.png");
    std::fs::remove_file(&unreadable).unwrap();
    std::os::unix::fs::symlink("/proc/self/mem", &unreadable).unwrap();
    let args = [
        "--dataset",
        "mnist",
        "--labels",
        "none",
        "--partition-size",
        "2",
        "--max-failed-partitions",
        "1",
    ];
    let out = Producer::embedded(root.path(), "ctr").args(&args).output();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("partial: 2 images in 1 failed partitions"),
        "{stdout}"
    );
    assert!(stderr.contains("completed partial"), "{stderr}");
}
