//! A user's first hour, through the binaries: one fleet serving any container of its account,
//! results brought home, output a script can use, help under headings, jobs cut so that every
//! worker gets work, workers that say what they do, and a warning when one class takes most
//! predictions.

use std::path::{Path, PathBuf};

use fleet_dataset::CLASS_NAMES as CLASSES;
use fleet_tests::{
    Fleet, JobRun, Producer, fixture, run_ok, run_with, spawn, stage_fixtures, stop, terminate,
};

/// `per_class` fixture JPEGs of each CIFAR-10 class under `dir/images/<class>/`, and the class
/// list beside them; the folder and the list.
fn cifar_folder(dir: &Path, per_class: usize) -> (PathBuf, PathBuf) {
    let images = dir.join("images");
    for class in CLASSES {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..per_class {
            let name = format!("{i:04}.jpg");
            let from = fixture("cifar-10-test-jpeg").join(class).join(&name);
            std::fs::copy(from, images.join(class).join(name)).unwrap();
        }
    }
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, CLASSES.join("\n")).unwrap();
    (images, classes)
}

/// The `producer stage` arguments of the folder (as `photos`) and the walkthrough's model (as
/// `cifar`, with the class list).
fn folder_stage_args(images: &Path, classes: &Path) -> Vec<String> {
    let (model, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let paths = [images, &model, &mean, classes].map(|p| p.to_str().unwrap().to_owned());
    let [images, model, mean, classes] = paths;
    [
        "--images",
        &images,
        "--prefix",
        "photos",
        "--model",
        &model,
        "--mean-image",
        &mean,
        "--model-name",
        "cifar",
        "--classes",
        &classes,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `producer stage` of the folder and the walkthrough's model with `env`.
fn stage_folder(images: &Path, classes: &Path, env: &[(&str, &str)]) {
    let args = folder_stage_args(images, classes);
    let args: Vec<&str> = std::iter::once("stage")
        .chain(args.iter().map(String::as_str))
        .collect();
    let out = run_with("producer", &args, env);
    assert!(
        out.status.success(),
        "staging failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `producer stage` of the folder and the walkthrough's model into the local `store`.
fn stage_folder_locally(store: &Path, images: &Path, classes: &Path) {
    let args = folder_stage_args(images, classes);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Producer::stage(store, "ctr").args(&args).ok();
}

/// `env` with `FLEET_CONTAINER` set to `container`.
fn in_container<'a>(env: &[(&'a str, &'a str)], container: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<_> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "FLEET_CONTAINER")
        .collect();
    env.push(("FLEET_CONTAINER", container));
    env
}

const JOB: [&str; 7] = [
    "--wait",
    "--dataset",
    "photos",
    "--model-name",
    "cifar",
    "--labels",
    "folders",
];

/// One worker and one collector, started with no container, score the jobs of two containers
/// of their account, each job's results written into its own container. Restricted to a list
/// (`FLEET_CONTAINERS`), they refuse a job of another container, and `--wait` ends at once with
/// the reason instead of waiting for its timeout.
#[test]
fn one_fleet_serves_every_container_of_its_account() {
    let fleet = Fleet::isolated();
    // A second container of the same account (its own queues go unused).
    let other = Fleet::isolated();
    let work = tempfile::tempdir().unwrap();
    let (images, classes) = cifar_folder(work.path(), 3);
    let env = fleet.env();
    let containers = [fleet.container.as_str(), other.container.as_str()];
    for container in containers {
        stage_folder(&images, &classes, &in_container(&env, container));
    }
    // The roles get no container: each job's messages name its own.
    let roles: Vec<_> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "FLEET_CONTAINER")
        .collect();
    let mut collector_env = roles.clone();
    collector_env.push(("RUST_LOG", "warn,collector=info"));
    let collector = spawn("collector", &[], &collector_env);
    let worker = spawn("worker", &[], &roles);
    for (container, store) in containers.iter().zip([fleet.store(), other.store()]) {
        let out = run_with("producer", &JOB, &in_container(&env, container));
        let run = JobRun::of(out, &format!("a job in {container}"));
        let summary: fleet_protocol::Summary = serde_json::from_slice(
            &store
                .get(&format!("results/{}/summary.json", run.id))
                .expect("the job's results in its own container"),
        )
        .unwrap();
        assert_eq!((summary.images, summary.labelled), (30, 30), "{run}");
    }
    terminate(worker);
    let collector = stop(collector);
    let log = String::from_utf8_lossy(&collector.stderr);
    assert!(log.contains("every container of the account"), "{log}");

    // Restricted to the first container: a job of the second is refused with the reason.
    let mut listed = roles.clone();
    listed.push(("FLEET_CONTAINERS", containers[0]));
    let collector = spawn("collector", &[], &listed);
    let worker = spawn("worker", &[], &listed);
    let started = std::time::Instant::now();
    let out = run_with("producer", &JOB, &in_container(&env, containers[1]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "container {} is not served here (this fleet serves {})",
            containers[1], containers[0]
        )) && stderr.contains("FLEET_CONTAINERS"),
        "{stderr}"
    );
    assert!(
        started.elapsed().as_secs() < 120,
        "--wait took {:?} to say the job cannot run",
        started.elapsed()
    );
    // A producer that shares the fleet's settings (as a deployment's apps do) refuses such a
    // job before it publishes anything.
    // The jobs of the container, by id (the refused job's notes may still be coming in).
    let jobs = || -> std::collections::BTreeSet<String> {
        (other.store().list("jobs/").unwrap().iter())
            .filter_map(|key| key.split('/').nth(1).map(str::to_owned))
            .collect()
    };
    let jobs_before = jobs();
    let mut shared = in_container(&env, containers[1]);
    shared.push(("FLEET_CONTAINERS", containers[0]));
    let out = run_with("producer", &JOB, &shared);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "the fleet serves containers {} (FLEET_CONTAINERS), not {}",
                containers[0], containers[1]
            )),
        "{stderr}"
    );
    assert_eq!(jobs(), jobs_before, "something was submitted");
    // The listed container is still served.
    let out = run_with("producer", &JOB, &in_container(&env, containers[0]));
    JobRun::of(out, "a job in the listed container");
    terminate(worker);
    terminate(collector);
}

/// `producer results` brings a job's files home, from Azurite and from a local store, byte for
/// byte as the store has them; a job that has no results yet is refused with its state.
#[test]
fn results_come_home_from_any_store() {
    let fleet = Fleet::isolated();
    let work = tempfile::tempdir().unwrap();
    let (images, classes) = cifar_folder(work.path(), 2);
    let env = fleet.env();
    stage_folder(&images, &classes, &env);
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &[], &env);
    let run = JobRun::of(run_with("producer", &JOB, &env), "the job");
    terminate(worker);
    terminate(collector);
    let home = work.path().join("home");
    let out = run_with(
        "producer",
        &["results", &run.id, "--out", home.to_str().unwrap()],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        home.to_str().unwrap(),
        "standard output names the folder"
    );
    let store = fleet.store();
    let prefix = format!("results/{}/", run.id);
    let blobs = store.list(&prefix).unwrap();
    assert!(
        blobs.iter().any(|b| b.ends_with("report.html"))
            && blobs.iter().any(|b| b.contains("scores.parquet/part-")),
        "{blobs:?}"
    );
    for blob in &blobs {
        let local = home.join(blob.strip_prefix(&prefix).unwrap());
        assert_eq!(
            std::fs::read(&local).unwrap_or_else(|e| panic!("{}: {e}", local.display())),
            store.get(blob).unwrap(),
            "{blob}"
        );
    }

    // A local store, the results folder named after the job in the working directory.
    let root = work.path().join("local");
    stage_fixtures(&root, "cifar");
    let local = Producer::embedded(&root, "cifar").job();
    let cwd = work.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = fleet_tests::output(
        std::process::Command::new(fleet_tests::bin("producer"))
            .current_dir(&cwd)
            .args(["results", &local.id, "--store"])
            .arg(&root)
            .args(["--container", "cifar"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = root.join(format!("cifar/results/{}/summary.json", local.id));
    assert_eq!(
        std::fs::read(cwd.join(&local.id).join("summary.json")).unwrap(),
        std::fs::read(summary).unwrap()
    );
    let err = fleet_tests::run_err(
        "producer",
        &[
            "results",
            "20990101-000000-000000",
            "--store",
            root.to_str().unwrap(),
            "--container",
            "cifar",
        ],
    );
    assert!(err.contains("has no job 20990101-000000-000000"), "{err}");
}

/// What a script needs: the job id alone on standard output, `status --json`, and store
/// options before the subcommand as after it; a job's own flags given to a subcommand are
/// refused by name.
#[test]
fn output_a_script_can_use() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let store = root.path().to_str().unwrap();
    // Every job run of these tests checks its standard output is the id alone (`JobRun`).
    let run = Producer::embedded(store, "cifar").job();
    assert!(run.contains("Correctly predicted"), "{run}");
    let listed = run_ok(
        "producer",
        &["--store", store, "--container", "cifar", "status", "--json"],
    );
    let jobs: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(jobs[0]["job"], run.id.as_str(), "{listed}");
    assert_eq!(jobs[0]["state"], "complete", "{listed}");
    assert_eq!(jobs[0]["images"], 10_000, "{listed}");
    let one = run_ok(
        "producer",
        &[
            "status",
            &run.id,
            "--json",
            "--store",
            store,
            "--container",
            "cifar",
        ],
    );
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["summary"]["images"], 10_000, "{one}");
    assert!(one["accuracy"].as_f64().unwrap() > 0.5, "{one}");
    let err = fleet_tests::run_err("producer", &["--store", store, "--top-k", "3", "status"]);
    assert!(
        err.contains(
            "--top-k belongs to a job (`producer` without a subcommand), not to `producer status`"
        ),
        "{err}"
    );
}

/// `--help` is grouped under headings, what to score first, the fleet's tuning last.
#[test]
fn help_has_headings_in_the_order_a_user_needs_them() {
    let help = run_ok("producer", &["--help"]);
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(':'))
        .collect();
    assert_eq!(
        headings,
        [
            "Commands:",
            "Options:",
            "What to score:",
            "Store:",
            "Where the job runs:",
            "Broker:",
            "Embedded workers' tuning:",
            "Logging:"
        ],
        "{help}"
    );
    let first = |heading: &str| {
        let at = help.find(&format!("\n{heading}\n")).unwrap();
        help[at..].lines().nth(2).unwrap().trim().to_owned()
    };
    assert!(first("What to score:").starts_with("--dataset"), "{help}");
    assert!(first("Store:").starts_with("--container"), "{help}");
    for binary in ["worker", "collector"] {
        let help = run_ok(binary, &["--help"]);
        for heading in ["Store:", "Broker:", "Logging:"] {
            assert!(help.contains(&format!("\n{heading}\n")), "{binary}: {help}");
        }
        assert!(help.contains("--containers"), "{binary}: {help}");
    }
}

/// A small collection is cut so that every worker gets work: 40 images with the default size
/// make at least 16 partitions, and the job is the same as with one partition.
#[test]
fn a_small_job_is_cut_for_every_worker() {
    let root = tempfile::tempdir().unwrap();
    let (images, classes) = cifar_folder(root.path(), 4);
    let store = root.path().join("store");
    stage_folder_locally(&store, &images, &classes);
    let job = |extra: &[&str]| {
        let mut args = vec!["--dataset", "photos", "--labels", "folders"];
        args.extend(extra);
        Producer::embedded(&store, "ctr").args(&args).job()
    };
    let manifest = |run: &JobRun| -> fleet_protocol::job::Manifest {
        serde_json::from_slice(
            &std::fs::read(store.join(format!("ctr/jobs/{}/manifest.json", run.id))).unwrap(),
        )
        .unwrap()
    };
    let cut = job(&["--workers", "2"]);
    let whole = job(&["--partition-size", "500"]);
    let (m, w) = (manifest(&cut), manifest(&whole));
    assert_eq!((m.images, m.partition_size, m.partitions), (40, 2, 20));
    assert_eq!((w.images, w.partitions), (40, 1));
    let scores = |run: &JobRun| {
        std::fs::read_to_string(store.join(format!("ctr/results/{}/scores.csv", run.id))).unwrap()
    };
    // The same rows; a confidence may differ in its last bits with the model's batch size.
    let (cut, whole) = (scores(&cut), scores(&whole));
    assert_eq!(cut.lines().count(), 41);
    for (a, b) in cut.lines().zip(whole.lines()).skip(1) {
        let (a, b): (Vec<&str>, Vec<&str>) = (a.split(',').collect(), b.split(',').collect());
        let confidence = |row: &[&str]| row[6].parse::<f64>().unwrap();
        assert_eq!((&a[..6], &a[7..]), (&b[..6], &b[7..]));
        assert!(
            (confidence(&a) - confidence(&b)).abs() < 1e-5,
            "{a:?} {b:?}"
        );
    }
}

/// A worker says what it does: a line per partition scored, with the job, the partition, its
/// images and the seconds it took.
#[test]
fn a_working_worker_logs_each_partition() {
    let fleet = Fleet::isolated();
    let work = tempfile::tempdir().unwrap();
    let (images, classes) = cifar_folder(work.path(), 2);
    let env = fleet.env();
    stage_folder(&images, &classes, &env);
    let collector = spawn("collector", &[], &env);
    // The worker's own default filter: what an operator sees.
    let worker = spawn_with_default_log("worker", &env);
    let run = JobRun::of(run_with("producer", &JOB, &env), "the job");
    let worker = stop(worker);
    terminate(collector);
    let log = String::from_utf8_lossy(&worker.stderr);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partition scored") && l.contains(&run.id))
        .collect();
    // 20 images: partitions of one image each.
    assert_eq!(lines.len(), 20, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("images=1") && l.contains("seconds=") && l.contains("partition=")),
        "{log}"
    );
}

/// `spawn`, without the tests' `RUST_LOG`: the binary's own default filter.
fn spawn_with_default_log(name: &str, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(fleet_tests::bin(name))
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// A model fed images prepared unlike its training collapses onto one class: the job says so,
/// in its output, `summary.json` and the report, with the likely cause; the same job prepared
/// right says nothing. The report shows each picture's runners-up.
#[test]
fn a_collapsed_prediction_distribution_is_warned() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let store = root.path().to_str().unwrap();
    let right = Producer::embedded(store, "cifar").job();
    let summary = |run: &JobRun| -> fleet_protocol::Summary {
        serde_json::from_slice(
            &std::fs::read(
                root.path()
                    .join(format!("cifar/results/{}/summary.json", run.id)),
            )
            .unwrap(),
        )
        .unwrap()
    };
    assert!(summary(&right).warnings.is_empty(), "{right}");
    let report = std::fs::read_to_string(
        root.path()
            .join(format!("cifar/results/{}/report.html", right.id)),
    )
    .unwrap();
    assert!(
        report.contains("<span class=\"then\">then "),
        "no runners-up in the report"
    );
    // The same model staged again with its pixels scaled to 0..1: it sees near-black images.
    Producer::stage(store, "cifar")
        .args(&[
            "--model",
            fixture("resnet20_meanimage_159.dnn").to_str().unwrap(),
            "--model-name",
            "dim",
            "--scale",
            "0.003921569",
        ])
        .ok();
    let wrong = Producer::embedded(store, "cifar")
        .args(&["--model-name", "dim"])
        .job();
    let warnings = summary(&wrong).warnings;
    assert_eq!(warnings.len(), 1, "{wrong}");
    assert!(
        warnings[0].contains("predictions") && warnings[0].contains("--preset"),
        "{warnings:?}"
    );
    assert!(wrong.contains(&warnings[0]), "{wrong}");
    let report = std::fs::read_to_string(
        root.path()
            .join(format!("cifar/results/{}/report.html", wrong.id)),
    )
    .unwrap();
    assert!(report.contains("id=\"warning\""), "the report's warning");
}

/// A label file that labels some of the images says how many it leaves out, and which; the
/// job scores them without a label.
#[test]
fn a_label_file_leaving_images_out_says_which() {
    let root = tempfile::tempdir().unwrap();
    let (images, classes) = cifar_folder(root.path(), 1);
    let labels = root.path().join("labels.csv");
    std::fs::write(
        &labels,
        "filename,label\nairplane/0000.jpg,airplane\ncat/0000.jpg,cat\n",
    )
    .unwrap();
    let store = root.path().join("store");
    stage_folder_locally(&store, &images, &classes);
    let run = Producer::embedded(&store, "ctr")
        .args(&["--dataset", "photos", "--labels", labels.to_str().unwrap()])
        .job();
    assert!(
        run.contains("8 of the 10 images have no label in")
            && run.contains("\"automobile/0000.jpg\"")
            && run.contains("of 2 images"),
        "{run}"
    );
}
