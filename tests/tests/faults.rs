//! Faults injected into a running fleet (real RabbitMQ and Azurite): every job must still end
//! with exactly one row per image, the same rows as an undisturbed run. And poison messages end
//! in the dead-letter queue with their reason.

use std::process::Child;
use std::time::{Duration, Instant};

use fleet_broker::amqp::AmqpBroker;
use fleet_broker::{Broker, Consumer, Delivery, Queue};
use fleet_protocol::message::{self, Images, MAX_MESSAGE_BYTES, Partition};
use fleet_tests::{
    Fleet, PROCESS_DEADLINE, finish, job_of, run_with, spawn, stop, terminate, wait_output,
};

fn kill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// Starts `producer --wait` in the background.
fn submit(fleet: &Fleet) -> Child {
    spawn(
        "producer",
        &["--wait", "--partition-size", "250"],
        &fleet.env(),
    )
}

#[test]
fn workers_killed_mid_partition_lose_nothing() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    // Every other worker scores up to three partitions in one model call, so some die
    // holding several partitions at once.
    let worker = |n: usize| match n % 2 {
        0 => spawn("worker", &[], &env),
        _ => spawn("worker", &["--partitions-per-call", "3"], &env),
    };
    let mut workers = vec![worker(0), worker(1)];
    let producer = submit(&fleet);
    // Five times during the job: SIGKILL a worker (whatever it holds is unacked) and start
    // a replacement.
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(2500));
        let mut victim = workers.remove(round % workers.len());
        kill(&mut victim);
        workers.push(worker(round));
    }
    let job = finish(producer);
    for worker in workers {
        terminate(worker);
    }
    terminate(collector);
    fleet.assert_matches_reference(&job);
}

/// A worker whose host cannot score (no ONNX Runtime library; CUDA asked for where there is
/// none) stops at start-up and says why, before it takes a partition: the queued job is left
/// whole for workers that can score it, and nothing is dead-lettered.
#[test]
fn workers_that_cannot_score_stop_at_start_up_and_take_nothing() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let producer = submit(&fleet);
    std::thread::sleep(Duration::from_secs(2)); // the job's partitions are queued
    let mut no_library = env.clone();
    no_library.push(("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"));
    let mut hosts = vec![(run_with("worker", &[], &no_library), "ORT_DYLIB_PATH")];
    // With a GPU and a CUDA build this worker could score: the case is for hosts without.
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        hosts.push((
            run_with("worker", &["--provider", "cuda"], &env),
            "the CUDA provider was asked for",
        ));
    }
    for (out, reason) in hosts {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("cannot score on this host") && stderr.contains(reason),
            "{stderr}"
        );
        // Stopped before taking one: a worker that fails on a partition hands it back and
        // logs that it did.
        assert!(
            !stderr.contains("the partition stays in the queue"),
            "{stderr}"
        );
    }
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &[], &env);
    let job = finish(producer);
    terminate(worker);
    terminate(collector);
    fleet.assert_matches_reference(&job);
}

#[test]
fn a_collector_killed_mid_job_and_restarted_finishes_it() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let mut collector = spawn("collector", &[], &env);
    let workers = vec![spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let producer = submit(&fleet);
    // Kill it once some partitions are stored, restart it.
    fleet.wait_for_stored(5);
    kill(&mut collector);
    let collector = spawn("collector", &[], &env);
    let job = finish(producer);
    for worker in workers {
        terminate(worker);
    }
    terminate(collector);
    fleet.assert_matches_reference(&job);
}

/// Two collectors on one results queue: the broker makes one active and keeps the other as a
/// standby (single active consumer). SIGKILL the active one mid-job: the standby takes over,
/// takes in what the first one stored, and completes the job with one row per image.
#[test]
fn the_standby_collector_takes_over_from_a_killed_active_one() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let mut active = spawn("collector", &[], &env);
    // The first consumer on the queue is the active one: let it subscribe before the standby.
    std::thread::sleep(Duration::from_secs(2));
    let standby = spawn("collector", &[], &env);
    let workers = vec![spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let producer = submit(&fleet);
    fleet.wait_for_stored(5);
    kill(&mut active);
    let job = finish(producer);
    for worker in workers {
        terminate(worker);
    }
    // The standby wrote the results: its completion line names the job.
    let output = stop(standby);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("job {job}: Correctly predicted")),
        "the standby did not complete the job:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    fleet.assert_matches_reference(&job);
}

/// A stored partition that cannot be read (a damaged blob: its scores were acked, no one will
/// send them again) cancels its job with the reason, which `producer --wait` reports; no result
/// files are written.
#[test]
fn an_unreadable_stored_partition_cancels_the_job_with_its_reason() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let mut producer = submit(&fleet);
    let job = job_of(&mut producer);
    // The last partition's blob, damaged before any collector or worker runs: the collector
    // finds it when it takes the job in, as one restarted mid-job would.
    let damaged = fleet_protocol::job::partition_key(&job, 39);
    fleet.store().put(&damaged, b"not a partition").unwrap();
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &[], &env);
    let out = wait_output(producer, "producer --wait", PROCESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    terminate(worker);
    terminate(collector);
    assert!(
        !out.status.success(),
        "--wait succeeded on a job that cannot complete"
    );
    assert!(
        stderr.contains(&format!(
            "job {job} was cancelled: stored partition {damaged} cannot be read"
        )) && stderr.contains("submit the job again"),
        "{stderr}"
    );
    let store = fleet.store();
    assert!(store.list(&format!("results/{job}/")).unwrap().is_empty());
    assert!(
        store
            .list(&fleet_protocol::job::partitions_prefix(&job))
            .unwrap()
            .is_empty()
    );
}

/// Checks that `producer --wait` (its output `out`, waited for since `started`) failed within a
/// minute because job `job` had dead-lettered partitions; returns its standard error.
fn assert_wait_failed_on_dead_letters(
    out: &std::process::Output,
    started: Instant,
    job: &str,
) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "--wait succeeded on a dead-lettered job"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "--wait took {:?} to notice",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!(
            "job {job} cannot complete: partitions were dead-lettered"
        )) && stderr.contains("the rows scored so far are in http://"),
        "{stderr}"
    );
    stderr
}

/// Takes `count` messages off the dead-letter queue (each within a minute), acks them, and
/// returns why each was dead-lettered.
async fn dead_letter_reasons(broker: &AmqpBroker, count: usize) -> Vec<String> {
    let prefetch = u16::try_from(count).unwrap_or(u16::MAX);
    let mut dead = broker.consume(Queue::DeadLetter, prefetch).await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(60), dead.next())
            .await
            .expect("dead letter in time")
            .unwrap()
            .unwrap();
        reasons.push(delivery.dead_letter_reason().unwrap_or_default());
        delivery.ack().await.unwrap();
    }
    reasons
}

/// `producer --wait` of a job whose partitions a worker dead-letters (here: the model was
/// deleted after submission) exits non-zero with the reason, instead of waiting out its hour.
#[test]
fn wait_reports_dead_lettered_partitions_and_fails() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let mut producer = submit(&fleet);
    let job = job_of(&mut producer);
    fleet.store().delete("models/resnet20.onnx").unwrap();
    let started = Instant::now();
    let worker = spawn("worker", &[], &env);
    let out = wait_output(producer, "producer --wait", PROCESS_DEADLINE);
    terminate(worker);
    terminate(collector);
    let stderr = assert_wait_failed_on_dead_letters(&out, started, &job);
    assert!(
        stderr.contains("models/resnet20.onnx")
            && stderr.contains("stage it with `producer stage`"),
        "{stderr}"
    );
    // `producer status JOB`, from the container alone, says the same.
    let out = run_with("producer", &["status", &job], &env);
    let details = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        details.contains("state: stuck") && details.contains("dead-lettered partition"),
        "{details}"
    );
}

/// A partition whose workers all die holding it (killed here; out of memory or a crash in the
/// wild) is not handed to worker after worker until the broker drops it silently: the worker
/// that takes it past `--max-attempts` dead-letters it with a note, and `producer --wait` says
/// what happened instead of waiting out its hour.
#[test]
fn a_partition_whose_workers_keep_dying_is_dead_lettered_with_the_reason() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    // One partition: whichever worker takes it holds it.
    let mut producer = spawn("producer", &["--wait", "--partition-size", "10000"], &env);
    let job = job_of(&mut producer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(AmqpBroker::connect(fleet.amqp_args()))
        .unwrap();
    let ready = || {
        runtime
            .block_on(broker.ready_count(Queue::Partitions))
            .unwrap()
    };
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let worker = || spawn("worker", &["--max-attempts", "2"], &env);
    // Two workers die holding it: SIGKILL each once it has the partition.
    for _ in 0..2 {
        wait_until("the partition is queued", &|| ready() == 1);
        let mut victim = worker();
        wait_until("a worker takes the partition", &|| ready() == 0);
        kill(&mut victim);
    }
    let started = Instant::now();
    let third = worker();
    let out = wait_output(producer, "producer --wait", PROCESS_DEADLINE);
    let (status, worker_log) = terminate(third);
    terminate(collector);
    let stderr = assert_wait_failed_on_dead_letters(&out, started, &job);
    assert!(
        stderr.contains("partition 0: delivered 2 times without a result"),
        "{stderr}"
    );
    // The third worker gave up on it without trying it, and goes on.
    assert!(status.success(), "{worker_log}");
    assert!(
        worker_log.contains("giving up on partition"),
        "{worker_log}"
    );
    // It is in the dead-letter queue, with the same reason.
    let reasons = runtime.block_on(dead_letter_reasons(&broker, 1));
    assert!(reasons[0].starts_with("delivered 2 times"), "{reasons:?}");
}

#[test]
fn a_worker_stopped_with_sigterm_drains_and_exits() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let leaving = spawn("worker", &["--name", "leaving"], &env);
    let staying = spawn("worker", &["--name", "staying"], &env);
    let producer = submit(&fleet);
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let (status, stderr) = terminate(leaving);
    assert!(
        status.success(),
        "worker did not exit cleanly after SIGTERM: {status}\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "draining took {:?}",
        started.elapsed()
    );
    let job = finish(producer);
    terminate(staying);
    terminate(collector);
    fleet.assert_matches_reference(&job);
}

#[test]
fn the_same_job_submitted_twice_gives_two_complete_result_sets() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers = vec![spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let (first, second) = (submit(&fleet), submit(&fleet));
    let (a, b) = (finish(first), finish(second));
    assert_ne!(a, b);
    for worker in workers {
        terminate(worker);
    }
    terminate(collector);
    fleet.assert_matches_reference(&a);
    fleet.assert_matches_reference(&b);
}

#[test]
fn poison_messages_end_in_the_dead_letter_queue_with_their_reason() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let args = fleet.amqp_args();
    let worker = spawn("worker", &[], &env);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reasons = runtime.block_on(async {
        let broker = AmqpBroker::connect(args).await.unwrap();
        let mut future_version = postcard_u16(9);
        future_version.extend_from_slice(b"a body from a newer release");
        let inconsistent = message::encode(&Partition {
            container: fleet.container.clone(),
            job: "j".into(),
            partition: 0,
            models: vec!["resnet20".into()],
            batch: "test_batch".into(),
            first_index: 0,
            images: Images::Planes {
                height: 32,
                width: 32,
                names: vec!["a.png".into()],
                pixels: vec![0; 100],
            },
            labels: vec![Some(1)],
            tags: Vec::new(),
            top_k: 1,
            published_at_ms: 0,
        });
        let poison = [
            // This build's version header, then bytes that are no partition.
            vec![message::MESSAGE_VERSION as u8, 0xff, 0xff, 0xff, 0xff, 0xff],
            // Text is not a message either; its first byte reads as an unknown version.
            b"not a message at all".to_vec(),
            future_version,
            vec![1; MAX_MESSAGE_BYTES + 1],
            inconsistent,
        ];
        for payload in &poison {
            broker
                .publish(Queue::Partitions, payload.clone())
                .await
                .unwrap();
        }
        dead_letter_reasons(&broker, poison.len()).await
    });
    terminate(worker);
    let joined = reasons.join("\n");
    for expected in [
        "undecodable message",
        "message format version 110",
        "message format version 9",
        "larger than the",
        "100 pixel bytes for 1 images of 32x32",
    ] {
        assert!(
            joined.contains(expected),
            "no dead letter says `{expected}`:\n{joined}"
        );
    }
}

fn postcard_u16(v: u16) -> Vec<u8> {
    // A postcard u16 is a LEB128 varint; 9 fits in one byte.
    assert!(v < 0x80);
    vec![v as u8]
}
