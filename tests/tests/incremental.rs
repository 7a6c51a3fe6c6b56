//! `producer --incremental`: a job over a collection that grew and changed scores only the
//! images new or changed since the earlier complete jobs of the same model, and names them;
//! embedded over a local directory, and over RabbitMQ and Azurite.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_protocol::Summary;
use fleet_protocol::job::{self, files};
use fleet_storage::BlobStore;
use fleet_storage::local::LocalStore;
use fleet_tests::{Fleet, Producer, fixture, job_id, rows, run_with, spawn, terminate};

/// `n` of the fixture's JPEG files from each of its ten class folders, starting at the
/// `from`th of each, as (blob name under `photos/`, bytes).
fn photos(from: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    let root = fixture("cifar-10-test-jpeg");
    let mut classes: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    let mut photos = Vec::new();
    for class in classes {
        let mut files: Vec<_> = std::fs::read_dir(&class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in &files[from..from + n] {
            let name = format!(
                "photos/{}/{}",
                class.file_name().unwrap().to_str().unwrap(),
                file.file_name().unwrap().to_str().unwrap()
            );
            photos.push((name, std::fs::read(file).unwrap()));
        }
    }
    photos
}

fn summary(store: &dyn BlobStore, job: &str) -> Summary {
    serde_json::from_slice(&store.get(&job::result_key(job, files::SUMMARY)).unwrap()).unwrap()
}

fn scores(store: &dyn BlobStore, job: &str) -> String {
    String::from_utf8(store.get(&job::result_key(job, files::SCORES)).unwrap()).unwrap()
}

/// The scenario, with `run` running a job with these arguments and returning its id: 1,000
/// images scored; then 100 added and 10 changed (other bytes under the same names), and the
/// incremental job scores exactly those 110, each as a whole job scores it, and names the
/// first job; a last incremental job has nothing left to score.
fn a_grown_collection_scores_only_what_is_new(
    store: &dyn BlobStore,
    run: &dyn Fn(&[&str]) -> String,
) {
    for (name, bytes) in photos(0, 100) {
        store.put(&name, &bytes).unwrap();
    }
    let incremental = ["--dataset", "photos", "--labels", "none", "--incremental"];
    let first = run(&incremental);
    let first_summary = summary(store, &first);
    assert_eq!(first_summary.images, 1_000);
    let none_before = first_summary.incremental.as_ref().expect("incremental");
    assert!(none_before.since.is_empty() && none_before.unchanged == 0);

    let added = photos(100, 10);
    for (name, bytes) in &added {
        store.put(name, bytes).unwrap();
    }
    // Ten images replaced by others: same names, other bytes.
    let replacements = photos(200, 1);
    let changed: Vec<String> = photos(0, 1).into_iter().map(|(name, _)| name).collect();
    for (name, (_, bytes)) in changed.iter().zip(&replacements) {
        store.put(name, bytes).unwrap();
    }
    let second = run(&incremental);
    let second_summary = summary(store, &second);
    assert_eq!(second_summary.images, 110, "{second_summary:?}");
    let covered = second_summary.incremental.as_ref().expect("incremental");
    assert_eq!(
        (covered.since.as_slice(), covered.unchanged),
        (std::slice::from_ref(&first), 990)
    );
    assert!(
        second_summary.accuracy_line().contains(&format!(
            "990 unchanged images are in the rows of job {first}"
        )),
        "{}",
        second_summary.accuracy_line()
    );
    let second_rows = rows(&scores(store, &second));
    let mut scored: Vec<String> = second_rows
        .values()
        .map(|(name, ..)| format!("photos/{name}"))
        .collect();
    let mut expected: Vec<String> = added.iter().map(|(name, _)| name.clone()).collect();
    expected.extend(changed);
    scored.sort();
    expected.sort();
    assert_eq!(scored, expected);
    let report =
        String::from_utf8(store.get(&job::result_key(&second, files::REPORT)).unwrap()).unwrap();
    assert!(report.contains("id=\"incremental\""));

    // Each of the 110 as a whole job over the collection scores it.
    let whole = run(&["--dataset", "photos", "--labels", "none"]);
    let whole_rows: BTreeMap<String, (String, f64)> = rows(&scores(store, &whole))
        .into_values()
        .map(|(name, _, predicted, confidence)| (name, (predicted, confidence)))
        .collect();
    assert_eq!(whole_rows.len(), 1_100);
    for (name, _, predicted, confidence) in second_rows.values() {
        assert_eq!(whole_rows[name], (predicted.clone(), *confidence), "{name}");
    }

    // Nothing is new since: an empty job naming the three before it.
    let last = run(&incremental);
    let last_summary = summary(store, &last);
    assert_eq!(last_summary.images, 0, "{last_summary:?}");
    let covered = last_summary.incremental.as_ref().expect("incremental");
    assert_eq!(covered.unchanged, 1_100);
    assert_eq!(covered.since, [first, second, whole]);
}

fn stage_model(args: &[&str], run: impl Fn(&[&str]) -> String) {
    let (model, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let mut stage = args.to_vec();
    stage.extend([
        "--model",
        model.to_str().unwrap(),
        "--mean-image",
        mean.to_str().unwrap(),
        "--model-name",
        "resnet20",
    ]);
    run(&stage);
}

#[test]
fn embedded_over_a_local_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_str().unwrap();
    stage_model(&[], |args| Producer::stage(dir, "ctr").args(args).ok());
    let store = LocalStore::open(Path::new(dir), "ctr").unwrap();
    a_grown_collection_scores_only_what_is_new(&store, &|args| {
        Producer::embedded(dir, "ctr").args(args).job().id
    });
}

#[test]
fn over_rabbitmq_and_azurite() {
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let ok = |args: &[&str]| {
        let out = run_with("producer", args, &env);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "producer {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    stage_model(&["stage"], ok);
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &[], &env);
    a_grown_collection_scores_only_what_is_new(fleet.store().as_ref(), &|args| {
        let mut args = args.to_vec();
        args.push("--wait");
        job_id(&ok(&args))
    });
    terminate(worker);
    terminate(collector);
}
