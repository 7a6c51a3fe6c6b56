//! The fleet as separate processes against a real RabbitMQ and a real Azurite: producer,
//! two workers and a collector, compared with the embedded run on the same fixture.

use fleet_tests::{
    Fleet, field, fixture, rows, run_ok, run_with, spawn, stage_fixtures, terminate,
};

#[test]
fn two_workers_and_a_collector_match_the_embedded_run() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    let collector = spawn("collector", &[], &env);
    let workers: Vec<_> = (1..=2)
        .map(|i| spawn("worker", &["--name", &format!("worker-{i}")], &env))
        .collect();

    let out = run_with("producer", &["--wait", "--partition-size", "250"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "producer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = field(&stdout, "job");
    assert!(
        stdout.contains("submitted 10000 images in 40 partitions"),
        "{stdout}"
    );

    // SIGTERM: each process drains and exits cleanly.
    for worker in workers {
        let (status, stderr) = terminate(worker);
        assert!(
            status.success(),
            "worker did not exit cleanly: {status}\n{stderr}"
        );
    }
    let (status, stderr) = terminate(collector);
    assert!(
        status.success(),
        "collector did not exit cleanly: {status}\n{stderr}"
    );

    let store = fleet.store();
    let fleet_csv =
        String::from_utf8(store.get(&format!("results/{job}/scores.csv")).unwrap()).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("results/{job}/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["images"], 10_000);
    let per_worker = summary["workers"].as_object().unwrap();
    assert_eq!(
        per_worker.len(),
        2,
        "both workers should have scored partitions: {per_worker:?}"
    );
    for name in ["confusion.csv", "confusion.png", "samples.png"] {
        assert!(
            store.exists(&format!("results/{job}/{name}")).unwrap(),
            "{name} missing"
        );
    }

    // The same job on the embedded default.
    let local = tempfile::tempdir().unwrap();
    stage_fixtures(local.path(), "cifar");
    let store_dir = local.path().to_str().unwrap();
    let out = run_ok(
        "producer",
        &[
            "--store",
            store_dir,
            "--container",
            "cifar",
            "--embedded",
            "--partition-size",
            "250",
        ],
    );
    let embedded_job = field(&out, "job");
    let embedded_csv = std::fs::read_to_string(
        local
            .path()
            .join(format!("cifar/results/{embedded_job}/scores.csv")),
    )
    .unwrap();

    let (fleet_rows, embedded_rows) = (rows(&fleet_csv), rows(&embedded_csv));
    assert_eq!(fleet_rows.len(), 10_000);
    assert_eq!(
        fleet_rows.keys().collect::<Vec<_>>(),
        embedded_rows.keys().collect::<Vec<_>>()
    );
    for (index, (a, b)) in fleet_rows.values().zip(embedded_rows.values()).enumerate() {
        assert_eq!(
            (&a.0, &a.1, &a.2),
            (&b.0, &b.1, &b.2),
            "row {index} differs"
        );
        assert!(
            (a.3 - b.3).abs() < 1e-4,
            "row {index}: confidence {} vs {}",
            a.3,
            b.3
        );
    }
    println!("fleet job {job}: {}", summary["accuracy"]);
}

#[test]
fn wrong_broker_url_and_credentials_are_named() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let mut env = fleet.env();
    env.retain(|(k, _)| *k != "AMQP_URL");

    let mut refused = env.clone();
    refused.push(("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"));
    let out = run_with("worker", &[], &refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to the message broker at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );

    let mut wrong = env.clone();
    let bad_credentials =
        fleet
            .services
            .amqp_url
            .replacen("guest:guest", "guest:not-the-password", 1);
    wrong.push(("AMQP_URL", bad_credentials.as_str()));
    let out = run_with("producer", &[], &wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password"),
        "the password leaked into the error: {stderr}"
    );
}

#[test]
fn missing_container_and_missing_blob_are_named() {
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let out = run_with("collector", &[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("container {} does not exist", fleet.container)),
        "{stderr}"
    );

    // A container with the model but no dataset: the job is refused and cancelled.
    let (model, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let staged = run_with(
        "producer",
        &[
            "stage",
            "--model",
            model.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
            "--only",
            "model,mean-image",
        ],
        &env,
    );
    assert!(
        staged.status.success(),
        "{}",
        String::from_utf8_lossy(&staged.stderr)
    );
    let out = run_with("producer", &[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no blob cifar-10-python.tar.gz"),
        "{stderr}"
    );
}
