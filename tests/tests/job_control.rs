//! Controlling a job: `producer cancel`, the error budget (`--max-failed-partitions`) and
//! `producer retry`, embedded and over RabbitMQ and Azurite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_broker::Broker;
use fleet_broker::Queue;
use fleet_broker::amqp::AmqpBroker;
use fleet_dataset::collection::LabelSource;
use fleet_protocol::job;
use fleet_storage::local::LocalStore;
use fleet_storage::{BlobStore, StoreError};
use fleet_tests::{
    Fleet, InjectedStore, PROCESS_DEADLINE, Producer, StoreCall, fixture, job_of, run_err,
    run_with, spawn, terminate, wait_output,
};
use producer::embedded::{EmbeddedError, EmbeddedRun};
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

/// The digits' container in `root` with an outage of the blobs of partition 1 while `outage`
/// holds: the store answers every read of `mnist/digit_2.png` and `mnist/digit_3.png` as an
/// outage would, so the partition holding them is retried, then dead-lettered.
fn digits_with_outage(root: &std::path::Path, outage: Arc<AtomicBool>) -> Arc<dyn BlobStore> {
    digits_with_faults(root, outage, &["mnist/digit_2.png", "mnist/digit_3.png"])
}

/// The digits' container in `root` where every read of the blobs `keys` fails, as in an outage,
/// while `outage` holds.
fn digits_with_faults(
    root: &std::path::Path,
    outage: Arc<AtomicBool>,
    keys: &'static [&'static str],
) -> Arc<dyn BlobStore> {
    let inner: Arc<dyn BlobStore> = Arc::new(LocalStore::open(root, "ctr").unwrap());
    let local = inner.describe();
    Arc::new(InjectedStore {
        inner,
        fault: Box::new(move |call, key| {
            (outage.load(Ordering::SeqCst) && call == StoreCall::Open && keys.contains(&key)).then(
                || StoreError::Io {
                    store: local.clone(),
                    operation: "reading",
                    key: key.into(),
                    source: "injected outage of this blob".into(),
                },
            )
        }),
    })
}

/// An embedded job over the digits in partitions of two, with an error budget of `budget`.
fn digits_job(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn BlobStore>,
    budget: u32,
) -> (String, Result<EmbeddedRun, EmbeddedError>) {
    let options = SubmitOptions {
        dataset: "mnist".into(),
        models: vec!["mnist".into()],
        labels: LabelSource::None,
        partition_size: Some(2),
        max_failed_partitions: budget,
        ..fleet_service::cli::defaults().unwrap()
    };
    let id = job::new_job_id();
    let run = runtime.block_on(producer::embedded::run(
        store.clone(),
        &options,
        1,
        worker_defaults(),
        &id,
    ));
    (id, run)
}

fn worker_defaults() -> worker::WorkerOptions {
    fleet_service::cli::defaults().unwrap()
}

fn scores_csv(store: &dyn BlobStore, job: &str) -> String {
    String::from_utf8(
        store
            .get(&job::result_key(job, job::files::SCORES))
            .unwrap(),
    )
    .unwrap()
}

/// One blob the store fails to read however often it is asked, beside readable ones: after the
/// partition's attempts, that image gets its own error row and its neighbour is scored; the job
/// completes whole.
#[test]
fn one_blob_that_cannot_be_read_costs_only_its_own_row() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    let store = digits_with_faults(
        root.path(),
        Arc::new(AtomicBool::new(true)),
        &["mnist/digit_3.png"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (id, run) = digits_job(&runtime, &store, 0);
    let summary = run.expect("the job completes").summary;
    assert!(summary.partial.is_none(), "{:?}", summary.partial);
    assert_eq!(
        (summary.images, summary.scored, summary.unreadable),
        (10, 9, 1)
    );
    let csv = scores_csv(store.as_ref(), &id);
    let row = |name: &str| {
        csv.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row of {name}: {csv}"))
            .to_owned()
    };
    assert!(
        row("digit_3.png").contains("the store failed to read it on every attempt")
            && row("digit_3.png").contains("injected outage"),
        "{csv}"
    );
    assert!(row("digit_2.png").ends_with(','), "scored, no error: {csv}");
}

/// A partition that can never be scored: with an error budget of one the job completes
/// partial, every image in `scores.csv` (the failed partition's with the reason); with none it
/// fails, as before the budget existed.
#[test]
fn a_failed_partition_within_the_budget_completes_the_job_partial() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    let store = digits_with_outage(root.path(), Arc::new(AtomicBool::new(true)));
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let (id, run) = digits_job(&runtime, &store, 1);
    let summary = run.expect("the job completes partial").summary;
    let partial = summary.partial.as_ref().expect("a partial job");
    assert_eq!((partial.failed_partitions, partial.images), (1, 2));
    assert!(
        partial.reasons[0].contains("injected outage of this blob"),
        "{partial:?}"
    );
    assert_eq!((summary.images, summary.scored), (10, 8));
    let csv = scores_csv(store.as_ref(), &id);
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

    let (_, run) = digits_job(&runtime, &store, 0);
    let error = run.expect_err("over its budget the job fails").to_string();
    assert!(
        error.contains("1 partitions of job") && error.contains("injected outage"),
        "{error}"
    );
    // What was scored is there to read, and the message says where.
    assert!(
        error.contains("the rows scored so far are in") && error.contains("scores.parquet/"),
        "{error}"
    );
}

/// A job stuck on a failed partition: retried while the cause lasts it stays stuck (and can
/// be retried again); retried once the cause is gone, the same job completes whole, its rows
/// those of a job that never failed. A complete job is not retried.
#[test]
fn a_stuck_job_retried_after_the_fix_completes_whole() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    let outage = Arc::new(AtomicBool::new(true));
    let store = digits_with_outage(root.path(), outage.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let (id, run) = digits_job(&runtime, &store, 0);
    let error = run.expect_err("over its budget the job fails").to_string();
    assert!(
        error.contains(&format!("`producer retry {id} --embedded`")),
        "{error}"
    );
    let status = fleet_ledger::Ledger::new(store.as_ref(), &id)
        .standing()
        .unwrap()
        .unwrap();
    assert_eq!(status.state.name(), "stuck", "{status:?}");
    // Every other partition was scored before the job stopped: a retry has one to score.
    assert_eq!(status.stored, 5, "{status:?}");

    let retry = |store: &Arc<dyn BlobStore>| {
        let retry = producer::retry::prepare(store.as_ref(), &id).unwrap();
        assert_eq!(
            (retry.partitions.as_slice(), retry.waiting.len()),
            (&[1][..], 0)
        );
        runtime.block_on(producer::embedded::retry(
            store.clone(),
            &retry,
            1,
            worker_defaults(),
        ))
    };
    let error = retry(&store).expect_err("the outage lasts").to_string();
    assert!(error.contains("injected outage"), "{error}");

    outage.store(false, Ordering::SeqCst);
    let summary = retry(&store).expect("the retried job completes").summary;
    assert!(summary.partial.is_none(), "{:?}", summary.partial);
    assert_eq!(
        (summary.images, summary.scored, summary.partitions),
        (10, 10, 5)
    );
    let (clean, run) = digits_job(&runtime, &store, 0);
    run.expect("a job without the outage completes");
    assert_eq!(
        scores_csv(store.as_ref(), &id),
        scores_csv(store.as_ref(), &clean)
    );
    assert!(
        store.list(&job::failed_prefix(&id)).unwrap().is_empty()
            && store.list(&job::partitions_prefix(&id)).unwrap().is_empty()
    );
    assert!(matches!(
        producer::retry::prepare(store.as_ref(), &id),
        Err(producer::retry::RetryError::Complete { .. })
    ));
}

/// The same through the binary, over a local container where the model's file is no longer
/// the one its spec describes, so that no partition can be scored: within a budget of all five,
/// `producer --embedded` exits with status 3 and says the job completed partial, and why.
#[test]
fn a_partial_job_exits_with_status_3() {
    let root = tempfile::tempdir().unwrap();
    stage_digits(root.path());
    let model = root.path().join("ctr/models/mnist.onnx");
    let staged = std::fs::read(&model).unwrap();
    std::fs::write(&model, b"not the model").unwrap();
    let args = [
        "--dataset",
        "mnist",
        "--labels",
        "none",
        "--partition-size",
        "2",
        "--max-failed-partitions",
        "5",
    ];
    let out = Producer::embedded(root.path(), "ctr").args(&args).output();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("partial: 10 images in 5 failed partitions"),
        "{stderr}"
    );
    assert!(stderr.contains("completed partial"), "{stderr}");

    // Its results are final: a retry names the job that scores what it could not.
    let job = fleet_tests::job_id(&stdout);
    let store = root.path().to_str().unwrap();
    let err = run_err(
        "producer",
        &["retry", &job, "--store", store, "--container", "ctr"],
    );
    assert!(
        err.contains(&format!(
            "job {job} completed partial (10 images in 5 failed partitions, within its error budget)"
        )) && err.contains("run the job again with --incremental"),
        "{err}"
    );
    // The cause fixed, that job scores the images of the failed partitions, and only those.
    std::fs::write(&model, staged).unwrap();
    let again = Producer::embedded(root.path(), "ctr")
        .args(&args)
        .args(&["--incremental"])
        .job();
    let summary: fleet_protocol::Summary = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("ctr/results")
                .join(&again.id)
                .join("summary.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary.images, summary.scored, summary.partial.is_none()),
        (10, 10, true),
        "{again}"
    );
}

/// Over RabbitMQ and Azurite, with a model deleted before any worker loads it, so that every
/// partition is dead-lettered: within an error budget that covers them the job completes
/// partial (`--wait` exits 3), every image in `scores.csv` with the reason; without one `--wait`
/// fails and names the retry. Once the same model is staged again, `producer retry --wait`
/// completes that job whole with the reference's predictions, and a second retry is refused.
#[test]
fn a_job_stuck_on_a_deleted_model_completes_whole_after_a_retry() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let store = fleet.store();
    let collector = spawn("collector", &[], &env);
    let submit = |budget: &str| {
        let args = [
            "--wait",
            "--partition-size",
            "2500",
            "--max-failed-partitions",
            budget,
        ];
        let mut producer = spawn("producer", &args, &env);
        let job = job_of(&mut producer);
        (producer, job)
    };
    // Submitted (the producer checks the model is staged), then the model goes.
    let ((within, partial), (over, stuck)) = (submit("4"), submit("0"));
    let model_key = job::model_key("resnet20");
    let model = store.get(&model_key).unwrap();
    store.delete(&model_key).unwrap();
    let worker = spawn("worker", &[], &env);
    let producer = |args: &[&str]| {
        let out = run_with("producer", args, &env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        (out.status.code(), stdout, stderr)
    };

    let out = wait_output(within, "producer --wait", PROCESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("completed partial"), "{stderr}");
    let scores = fleet.scores(&partial);
    assert_eq!(scores.lines().count(), 1 + 10_000);
    assert!(
        scores
            .lines()
            .skip(1)
            .all(|l| l.contains("partition not scored: model resnet20: ")),
        "{}",
        &scores[..scores.len().min(2000)]
    );

    let out = wait_output(over, "producer --wait", PROCESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot complete") && stderr.contains(&format!("producer retry {stuck}")),
        "{stderr}"
    );
    // `--wait` saw the first dead letter: the collector stores the rest meanwhile.
    assert!(
        eventually(Duration::from_secs(60), || {
            store.list(&job::failed_prefix(&stuck)).unwrap().len() == 4
        }),
        "the failed partitions were not all stored"
    );
    let (_, details, _) = producer(&["status", &stuck]);
    assert!(
        details.contains("state: stuck") && details.contains("producer retry"),
        "{details}"
    );

    // The cause fixed: the same model staged again.
    store.put(&model_key, &model).unwrap();
    let (code, stdout, stderr) = producer(&["retry", &stuck, "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("job {stuck}: scoring 4 failed partitions again")),
        "{stderr}"
    );
    assert_eq!(
        stdout,
        format!("{stuck}\n"),
        "a retry's standard output is its job"
    );
    fleet.assert_matches_reference(&stuck);
    let summary = fleet
        .store()
        .get(&job::result_key(&stuck, job::files::SUMMARY))
        .unwrap();
    let summary: fleet_protocol::Summary = serde_json::from_slice(&summary).unwrap();
    assert!(summary.partial.is_none(), "{:?}", summary.partial);

    let (code, _, stderr) = producer(&["retry", &stuck]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&format!("job {stuck} is complete")),
        "{stderr}"
    );
    let (code, _, stderr) = producer(&["retry", &partial]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&format!("job {partial} completed partial"))
            && stderr.contains("submit the job again"),
        "{stderr}"
    );
    terminate(worker);
    terminate(collector);
}
