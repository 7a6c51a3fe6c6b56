//! A submission that fails after its first partition is published cancels its job: the
//! failure is injected at each step in turn (a partition's publish, the sample grid, the
//! manifest, the seal; the seal with the broker gone for good), over the real RabbitMQ and
//! Azurite, with workers and a collector running. No failed job gets result files; the good
//! job submitted after them is complete, every row once.
//!
//! A job's Parquet files are written as its partitions arrive: a cancelled job's are deleted
//! when the collector learns of the cancellation (at once from the producer's message, within
//! seconds from the container's marker when the broker is gone).
//!
//! A failure after the manifest is written comes slowly, as a timeout does: only once the
//! collector has every partition of the job in. A collector that took the manifest for the
//! seal would complete the job meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_broker::amqp::AmqpBroker;
use fleet_broker::{Broker, BrokerError, Queue};
use fleet_protocol::job;
use fleet_protocol::message::{self, ResultMessage};
use fleet_storage::{BlobStore, StoreError};
use fleet_tests::{Fleet, InjectedStore, StoreCall, finish, run_with, spawn, terminate};
use producer::submit::{SubmitOptions, submit};

/// Where the submission fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The publish of this partition (0-based) fails.
    Partition(usize),
    /// Writing the sample grid fails.
    Samples,
    /// Writing the manifest fails.
    Manifest,
    /// Publishing the seal fails; the cancellation still goes out.
    Seal,
    /// Publishing the seal fails and so does everything after it: only the container can say
    /// the job is cancelled.
    SealAndBrokerGone,
}

const STEPS: [Step; 5] = [
    Step::Partition(2),
    Step::Samples,
    Step::Manifest,
    Step::Seal,
    Step::SealAndBrokerGone,
];

/// Partitions of each job: the test batch's 10,000 images, 2,000 a partition.
const PARTITIONS: usize = 5;
const PARTITION_SIZE: &str = "2000";

/// Waits (up to two minutes) until the collector has taken in every partition of `job`: all
/// stored, or the job completed, which deletes them.
fn until_taken_in(store: &dyn BlobStore, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && store.list(&job::partitions_prefix(job)).unwrap().len() < PARTITIONS
        && !store
            .exists(&job::result_key(job, job::files::SUMMARY))
            .unwrap()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real broker, with one failure injected.
#[derive(Debug, Clone)]
struct FaultyBroker {
    inner: AmqpBroker,
    step: Step,
    partitions: Arc<AtomicUsize>,
    /// Where the collector's progress shows, for a slow failure.
    store: Arc<dyn BlobStore>,
    job: String,
}

impl FaultyBroker {
    fn fails(&self, queue: Queue, payload: &[u8]) -> bool {
        match (self.step, queue) {
            (Step::Partition(n), Queue::Partitions) => {
                self.partitions.fetch_add(1, Ordering::SeqCst) == n
            }
            (Step::Seal | Step::SealAndBrokerGone, Queue::Results) => {
                match message::decode::<ResultMessage>(payload).unwrap() {
                    ResultMessage::Sealed(_) => true,
                    ResultMessage::Cancelled(_) => self.step == Step::SealAndBrokerGone,
                    ResultMessage::Scored(_) => false,
                }
            }
            _ => false,
        }
    }
}

impl Broker for FaultyBroker {
    type Consumer = <AmqpBroker as Broker>::Consumer;

    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError> {
        if self.fails(queue, &payload) {
            if matches!(self.step, Step::Seal | Step::SealAndBrokerGone) {
                let (store, job) = (self.store.clone(), self.job.clone());
                tokio::task::spawn_blocking(move || until_taken_in(store.as_ref(), &job))
                    .await
                    .unwrap();
            }
            return Err(BrokerError::lost(format!(
                ": injected failure at {:?}",
                self.step
            )));
        }
        self.inner.publish(queue, payload).await
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<Self::Consumer, BrokerError> {
        self.inner.consume(queue, prefetch).await
    }

    async fn ready_count(&self, queue: Queue) -> Result<u64, BrokerError> {
        self.inner.ready_count(queue).await
    }
}

#[test]
fn a_failure_at_any_submission_step_cancels_the_job_and_writes_no_results() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers = [spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let options = SubmitOptions {
        dataset: job::DATASET_BLOB.into(),
        models: vec!["resnet20".into()],
        labels: "auto".parse().unwrap(),
        batches: "test_batch".parse().unwrap(),
        partition_size: Some(PARTITION_SIZE.parse().unwrap()),
        top_k: 1,
        max_failed_partitions: 0,
        incremental: false,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(AmqpBroker::connect(fleet.amqp_args()))
        .expect("the test broker");
    let mut failed = Vec::new();
    for step in STEPS {
        let job = fleet_tests::unique("failed");
        let broker = FaultyBroker {
            inner: broker.clone(),
            step,
            partitions: Arc::default(),
            store: fleet.store(),
            job: job.clone(),
        };
        // Writing the blob whose name ends in `fail_put` fails.
        let fail_put = match step {
            Step::Samples => Some("/samples.png"),
            Step::Manifest => Some("/manifest.json"),
            _ => None,
        };
        let (inner, failing_job) = (fleet.store(), job.clone());
        let store = Arc::new(InjectedStore {
            inner: fleet.store(),
            fault: Box::new(move |call, key| {
                if call != StoreCall::Put || !fail_put.is_some_and(|s| key.ends_with(s)) {
                    return None;
                }
                // The sample grid is written after the manifest.
                if key == job::samples_key(&failing_job) {
                    until_taken_in(inner.as_ref(), &failing_job);
                }
                Some(StoreError::Io {
                    store: inner.describe(),
                    operation: "writing",
                    key: key.into(),
                    source: "injected failure".into(),
                })
            }),
        });
        let mut published = 0;
        let outcome = runtime.block_on(submit(&broker, store, &options, &job, |_| published += 1));
        let error = outcome.expect_err("the submission fails");
        // The reason recorded is the error with its causes, as one line.
        let error = fleet_service::errors::chain(&error);
        assert!(
            published > 0,
            "{step:?}: the failure came before any publish"
        );
        failed.push((step, job, error));
    }
    // A good job after them. Once it is complete, the partitions published before it have been
    // scored and taken in by the collector (one queue, taken in order).
    let good = finish(spawn(
        "producer",
        &["--wait", "--partition-size", PARTITION_SIZE],
        &env,
    ));
    let store = fleet.store();
    for (step, job, error) in &failed {
        // A job cancelled in the container alone (the broker gone) is dropped by the
        // collector's next look at its open jobs, a few seconds on: its Parquet files go then.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut results = store.list(&format!("results/{job}/")).unwrap();
        while !results.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            results = store.list(&format!("results/{job}/")).unwrap();
        }
        assert!(results.is_empty(), "{step:?}: result files {results:?}");
        let reason = String::from_utf8(store.get(&job::cancelled_key(job)).unwrap()).unwrap();
        assert_eq!(&reason, error, "{step:?}: the cancellation's reason");
        let out = run_with("producer", &["status", job], &env);
        let details = String::from_utf8_lossy(&out.stdout);
        assert!(
            details.contains("state: cancelled") && details.contains("injected failure"),
            "{step:?}: {details}"
        );
    }
    for worker in workers {
        terminate(worker);
    }
    terminate(collector);
    fleet.assert_matches_reference(&good);
}
