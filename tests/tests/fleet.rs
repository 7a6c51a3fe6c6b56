//! The fleet as separate processes against a real RabbitMQ and a real Azurite: producer,
//! two workers and a collector, compared with the embedded run on the same fixture.

use fleet_tests::{
    Fleet, JobRun, Producer, field, finish, fixture, free_port, http_get, http_get_url, metric,
    rows, run_job, run_ok, run_with, spawn, stage_fixtures, terminate,
};

#[test]
fn two_workers_and_a_collector_match_the_embedded_run() {
    let fleet = Fleet::isolated();
    fleet.stage();
    let env = fleet.env();
    // Each serves /healthz, /readyz and /metrics on a port of its own.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let collector = spawn("collector", &["--http-port", &ports[0].to_string()], &env);
    let workers: Vec<_> = (1..=2)
        .map(|i| {
            let (name, port) = (format!("worker-{i}"), ports[i].to_string());
            spawn("worker", &["--name", &name, "--http-port", &port], &env)
        })
        .collect();

    let out = run_with("producer", &["--wait", "--partition-size", "250"], &env);
    let run = JobRun::of(out, "producer --wait");
    let job = run.id.clone();
    assert!(
        run.contains("submitted 10000 images in 40 partitions"),
        "{run}"
    );

    // The metrics count what the job's rows hold: every image scored once, by one worker or
    // the other, and stored once by the collector.
    for &port in &ports {
        assert_eq!(http_get(port, "/healthz"), (200, "ok\n".into()));
        assert_eq!(http_get(port, "/readyz").0, 200);
    }
    // The collector counts once it has acked the last result, a moment after summary.json.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let collected = loop {
        let text = http_get(ports[0], "/metrics").1;
        if metric(&text, "fleet_jobs_completed_total") == 1.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector never counted the job:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        metric(&collected, "fleet_result_rows_stored_total"),
        10_000.0
    );
    assert_eq!(metric(&collected, "fleet_results_stored_total"), 40.0);
    assert_eq!(metric(&collected, "fleet_jobs_completed_total"), 1.0);
    assert_eq!(metric(&collected, "fleet_jobs_in_flight"), 0.0);
    assert_eq!(metric(&collected, "fleet_job_seconds_count"), 1.0);
    let scored: Vec<String> = ports[1..]
        .iter()
        .map(|&p| http_get(p, "/metrics").1)
        .collect();
    let total = |name: &str| scored.iter().map(|text| metric(text, name)).sum::<f64>();
    assert_eq!(total("fleet_images_scored_total"), 10_000.0);
    assert_eq!(total("fleet_partitions_scored_total"), 40.0);
    assert_eq!(total("fleet_inference_seconds_count"), 40.0);
    assert_eq!(total("fleet_dead_letters_total"), 0.0);

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
    // `--wait` says where the report is: the blob's URL, signed to read it alone, which a
    // browser opens with no credentials, as HTML. The report names both workers and shows a
    // full gallery of mistakes, gathered from thumbnails sent over the broker.
    let report_url = field(&run.said, "report");
    let (blob_url, signature) = report_url.split_once('?').expect("a signed URL");
    assert!(
        blob_url.ends_with(&format!("/results/{job}/report.html")) && signature.contains("sp=r&"),
        "{report_url}"
    );
    let (status, head, page) = http_get_url(&report_url);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("<!DOCTYPE html>"), "{page:.200}");
    // The signature reads that blob alone: the summary beside it stays closed.
    let (status, _, _) = http_get_url(&format!(
        "{}?{signature}",
        blob_url.replace("report.html", "summary.json")
    ));
    assert_eq!(
        status, 403,
        "another blob opened with the report's signature"
    );
    let report =
        String::from_utf8(store.get(&format!("results/{job}/report.html")).unwrap()).unwrap();
    for worker in per_worker.keys() {
        assert!(
            report.contains(worker.as_str()),
            "the report lacks worker {worker}"
        );
    }
    let mistakes = &report[report
        .find("id=\"mistakes\"")
        .expect("a gallery of mistakes")..];
    assert_eq!(
        mistakes[..mistakes.find("</div>").unwrap()]
            .matches("<img")
            .count(),
        fleet_protocol::gallery::GALLERY_SIZE
    );

    // The same job on the embedded default.
    let local = tempfile::tempdir().unwrap();
    stage_fixtures(local.path(), "cifar");
    let store_dir = local.path().to_str().unwrap();
    let out = Producer::embedded(store_dir, "cifar")
        .args(&["--partition-size", "250"])
        .job();
    let embedded_job = out.id;
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
    // A fleet restricted to a container that is not there says so as it starts.
    let mut listed = env.clone();
    listed.push(("FLEET_CONTAINERS", &fleet.container));
    for role in ["collector", "worker"] {
        let out = run_with(role, &[], &listed);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("container {} does not exist", fleet.container)),
            "{role}: {stderr}"
        );
    }
    // A job of a missing container is refused at submission.
    let out = run_with("producer", &[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("container {} does not exist", fleet.container)),
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

/// An image folder over RabbitMQ and Azurite: partitions of blob names, workers fetching from
/// Azurite; the first worker is SIGKILLed once the job is under way and a second one finishes
/// it. Every image has exactly one row, the same as the embedded run over the same folder,
/// file names with spaces and accents included, and a corrupt file only gets its error.
#[test]
fn an_image_folder_over_the_fleet_survives_a_killed_worker() {
    use fleet_dataset::CLASS_NAMES as CLASSES;
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    for class in CLASSES {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..150 {
            let from = fixture("cifar-10-test-jpeg")
                .join(class)
                .join(format!("{i:04}.jpg"));
            let name = if i == 0 {
                format!("Été #{i} (copy).jpg")
            } else {
                format!("{i:04}.jpg")
            };
            std::fs::copy(from, images.join(class).join(name)).unwrap();
        }
    }
    std::fs::write(images.join("cat/broken.jpg"), b"not a jpeg at all").unwrap();
    let classes = work.path().join("classes.txt");
    std::fs::write(&classes, CLASSES.join("\n")).unwrap();
    let (model, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let stage_args = [
        "stage",
        "--images",
        images.to_str().unwrap(),
        "--prefix",
        "photos",
        "--model",
        model.to_str().unwrap(),
        "--mean-image",
        mean.to_str().unwrap(),
        "--model-name",
        "cifar",
        "--classes",
        classes.to_str().unwrap(),
    ];
    let out = run_with("producer", &stage_args, &env);
    assert!(
        out.status.success(),
        "staging into Azurite failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_args = [
        "--dataset",
        "photos",
        "--model-name",
        "cifar",
        "--labels",
        "folders",
        "--partition-size",
        "20",
    ];
    let collector = spawn("collector", &[], &env);
    // One image at a time from Azurite: the first worker is still busy when it is killed.
    let mut first = spawn(
        "worker",
        &["--name", "first", "--fetch-concurrency", "1"],
        &env,
    );
    let mut wait_args = vec!["--wait"];
    wait_args.extend(job_args);
    let producer = spawn("producer", &wait_args, &env);
    let store = fleet.store();
    let started = std::time::Instant::now();
    loop {
        let stored = store
            .list("jobs/")
            .unwrap()
            .iter()
            .filter(|k| k.contains("/partitions/"))
            .count();
        if stored >= 3 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "no partition stored in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    let _ = first.wait();
    let second = spawn("worker", &["--name", "second"], &env);
    let job = finish(producer);
    terminate(second);
    terminate(collector);

    let summary: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("results/{job}/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["images"], 1501);
    assert_eq!(summary["unreadable"], 1);
    let workers = summary["workers"].as_object().unwrap();
    assert!(
        workers.contains_key("first") && workers.contains_key("second"),
        "the job was not split by the kill: {workers:?}"
    );
    let fleet_csv = fleet.scores(&job);

    // The same folder and model on the embedded default.
    let local = work.path().join("local");
    let local_store = local.to_str().unwrap();
    let mut local_stage = vec!["stage", "--store", local_store, "--container", "cifar"];
    local_stage.extend(&stage_args[1..]);
    run_ok("producer", &local_stage);
    let mut local_job = vec!["--store", local_store, "--container", "cifar", "--embedded"];
    local_job.extend(job_args);
    let out = run_job(&local_job);
    let embedded_csv =
        std::fs::read_to_string(local.join(format!("cifar/results/{}/scores.csv", out.id)))
            .unwrap();
    let by_name = |csv: &str| -> std::collections::BTreeMap<String, String> {
        csv.lines()
            .skip(1)
            .map(|line| {
                let (_, rest) = line.split_once(',').unwrap();
                let (name, rest) = rest.split_once(',').unwrap();
                (name.to_owned(), rest.to_owned())
            })
            .collect()
    };
    let (fleet_rows, embedded_rows) = (by_name(&fleet_csv), by_name(&embedded_csv));
    assert_eq!(
        fleet_csv.lines().count(),
        1502,
        "one row per image, no duplicates"
    );
    assert_eq!(fleet_rows.len(), 1501);
    assert!(
        fleet_rows.contains_key("cat/Été #0 (copy).jpg"),
        "{:?}",
        fleet_rows.keys().next()
    );
    assert!(fleet_rows["cat/broken.jpg"].contains("not an image"));
    for (name, row) in &fleet_rows {
        // Same labels, predictions and confidences up to the last printed digit.
        let cut = |r: &str| r.split(',').take(4).collect::<Vec<_>>().join(",");
        assert_eq!(cut(row), cut(&embedded_rows[name]), "{name}");
    }
}

/// A float16 ImageNet model over real photos in ImageNet's folder layout, prepared as
/// torchvision prepares them, through RabbitMQ and Azurite: the same answers as its reference.
#[test]
fn a_float16_imagenet_model_over_real_photos_over_the_fleet() {
    use fleet_tests::real_photos::{RECIPE, imagenet_layout, reference};
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let work = tempfile::tempdir().unwrap();
    let reference = reference();
    let val = imagenet_layout(work.path(), &reference);
    let model = fixture("real-photos/model/SqueezeNet_fp16.onnx");
    let classes = fixture("real-photos/synset_words.txt");
    let mut stage_args = vec![
        "stage",
        "--images",
        val.to_str().unwrap(),
        "--prefix",
        "imagenet/val",
        "--model",
        model.to_str().unwrap(),
        "--model-name",
        "squeezenet",
        "--classes",
        classes.to_str().unwrap(),
    ];
    stage_args.extend(RECIPE);
    let out = run_with("producer", &stage_args, &env);
    assert!(
        out.status.success(),
        "staging into Azurite failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &["--name", "photos"], &env);
    let producer = spawn(
        "producer",
        &[
            "--wait",
            "--dataset",
            "imagenet/val",
            "--model-name",
            "squeezenet",
            "--labels",
            "folders",
            "--partition-size",
            "40",
        ],
        &env,
    );
    let job = finish(producer);
    terminate(worker);
    terminate(collector);
    let store = fleet.store();
    let summary: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("results/{job}/summary.json")).unwrap())
            .unwrap();
    // Each photo lies in the folder of its reference answer: every one is correct.
    assert_eq!(summary["images"], reference.len());
    assert_eq!(summary["unreadable"], 0);
    assert_eq!(summary["correct"], reference.len(), "{summary}");
    assert_eq!(summary["classes"][0], "tench");
}
