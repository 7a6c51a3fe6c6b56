//! The main job on the embedded default, run as a user runs it: stage the fixtures, run
//! `producer --embedded`, read the result files.

use std::collections::BTreeSet;
use std::path::Path;

use std::process::Command;

use fleet_tests::{Producer, assert_matches_reference, bin, job_id, output, stage_fixtures};

fn decode_png(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // A real picture, not a blank canvas: several distinct colours.
    let colours: BTreeSet<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    assert!(
        colours.len() > 20,
        "{} has only {} colours",
        path.display(),
        colours.len()
    );
    (info.width, info.height)
}

#[test]
fn embedded_job_scores_every_test_image_once() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "cifar");
    let run = Producer::embedded(store, "cifar")
        .args(&["--workers", "2"])
        .job();
    let job = run.id.clone();
    let accuracy_line = (run.said.lines())
        .find(|l| l.starts_with("Correctly predicted"))
        .expect("accuracy line");
    println!("{accuracy_line}");

    let results = root.path().join("cifar/results").join(&job);
    let csv = std::fs::read_to_string(results.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "index,filename,true_label,predicted_label,true_class,predicted_class,confidence,error"
        )
    );
    let mut indices = BTreeSet::new();
    let mut correct = 0u64;
    let mut per_class = [(0u64, 0u64); 10];
    let classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 8, "{line}");
        assert_eq!(f[7], "", "no image has an error: {line}");
        assert!(
            indices.insert(f[0].parse::<u32>().unwrap()),
            "index {} twice",
            f[0]
        );
        let (label, predicted): (usize, usize) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert_eq!((f[4], f[5]), (classes[label], classes[predicted]));
        assert!(f[1].starts_with(classes[label]), "{line}");
        let confidence: f64 = f[6].parse().unwrap();
        assert!((0.1..=1.0).contains(&confidence), "{line}");
        per_class[label].0 += 1;
        if label == predicted {
            correct += 1;
            per_class[label].1 += 1;
        }
    }
    assert_eq!(indices.len(), 10_000);
    assert_eq!(
        indices.iter().copied().collect::<Vec<_>>(),
        (0..10_000).collect::<Vec<_>>()
    );
    // The Parquet files hold the same rows, typed: read back, they print as scores.csv does.
    let local = fleet_storage::local::LocalStore::open(root.path(), "cifar").unwrap();
    let parquet = fleet_tests::parquet_as_csv(&local, &job);
    let first_seven = |csv: &str| -> Vec<String> {
        csv.lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(first_seven(&parquet), first_seven(&csv));

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["job"], job.as_str());
    assert_eq!(summary["images"], 10_000);
    assert_eq!(summary["correct"], correct);
    assert!((summary["accuracy"].as_f64().unwrap() - correct as f64 / 10_000.0).abs() < 1e-12);
    for (c, class) in summary["per_class"].as_array().unwrap().iter().enumerate() {
        assert_eq!(class["class"], classes[c]);
        assert_eq!(
            (
                class["images"].as_u64().unwrap(),
                class["correct"].as_u64().unwrap()
            ),
            per_class[c]
        );
    }
    assert_eq!(
        summary["workers"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        10_000
    );
    assert!(summary["timings"]["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(
        accuracy_line,
        format!(
            "Correctly predicted {correct} of 10000 images ({:.2}%)",
            correct as f64 / 100.0
        )
    );

    let confusion = std::fs::read_to_string(results.join("confusion.csv")).unwrap();
    let diagonal: u64 = confusion
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| l.split(',').nth(i + 1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(diagonal, correct);
    let (w, h) = decode_png(&results.join("confusion.png"));
    assert!(w > 400 && h > 400);
    let (w, h) = decode_png(&results.join("samples.png"));
    assert!(w > 8 * 96 && h >= 2 * 96);

    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("cifar/jobs")
                .join(&job)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["images"], 10_000);
    assert_eq!(manifest["partitions"], 20);
    // The collector's intermediate rows are gone once the result files hold them.
    let leftovers = std::fs::read_dir(root.path().join("cifar/jobs").join(&job).join("partitions"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0);
}

/// `--partitions-per-call`: partitions prepared while the model is busy run together in its
/// next call, and every image still gets the prediction it gets alone.
#[test]
fn partitions_prepared_while_the_model_runs_share_its_next_call() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "cifar");
    let out = output(
        Command::new(bin("producer"))
            .args([
                "--store",
                store,
                "--container",
                "cifar",
                "--embedded",
                "--partition-size",
                "100",
                "--partitions-per-call",
                "4",
            ])
            .env("RUST_LOG", "warn,worker=debug")
            .env("NO_COLOR", "1"),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Each call of more than one partition is logged with its count.
    let joined: Vec<usize> = stderr
        .lines()
        .filter(|l| l.contains("partitions scored in one model call"))
        .map(|l| {
            let count = l.split("partitions=").nth(1).expect("a partition count");
            count.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    // Decoding a tarball's 100 images takes far less than the model's run of them, so calls
    // fill up; none may exceed the limit.
    assert!(
        !joined.is_empty(),
        "no model call took several partitions:\n{stderr}"
    );
    assert!(joined.iter().all(|&n| (2..=4).contains(&n)), "{joined:?}");
    let job = job_id(&stdout);
    let csv = std::fs::read_to_string(root.path().join(format!("cifar/results/{job}/scores.csv")))
        .unwrap();
    assert_matches_reference(&csv);
}
