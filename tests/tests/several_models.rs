//! Several models in one job: each image read once and scored by every model, prepared by its
//! own spec. Each model's columns are those of its own job, bit for bit; one model failing on an
//! image keeps the others' answers; the comparison's figures are those computed here from the
//! models' own jobs; and over RabbitMQ and Azurite a killed worker loses and duplicates no row.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use cntk_onnx::proto::onnx::AttributeProto;
use fleet_protocol::Summary;
use fleet_tests::graph::{self, floats, node};
use fleet_tests::real_photos::RECIPE;
use fleet_tests::{
    Fleet, Producer, finish, fixture, parquet_cells, parquet_vectors, run_job, run_ok, run_with,
    spawn, terminate,
};
use parquet::record::Field;

/// A linear model of `classes` classes on the square roots of an image's mean colour (0..1),
/// less `dark`: an image darker than that in a channel has no root, and the model's output for
/// it is not a number. `layout` is the input's dimensions, channels at `channel_axis`.
fn colour_model(classes: i64, layout: [i64; 3], channel_axis: usize, softmax: bool) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut input = "input";
    if channel_axis == 3 {
        // NHWC: made NCHW for the pooling.
        let mut transpose = node("Transpose", &["input"], "planes");
        transpose.attribute = vec![AttributeProto::ints("perm", vec![0, 3, 1, 2])];
        nodes.push(transpose);
        input = "planes";
    }
    nodes.extend([
        node("GlobalAveragePool", &[input], "pooled"),
        node("Flatten", &["pooled"], "mean"),
        node("Sub", &["mean", "dark"], "lifted"),
        node("Sqrt", &["lifted"], "roots"),
        node("MatMul", &["roots", "weights"], "product"),
        node("Add", &["product", "biases"], "logits"),
    ]);
    let output = if softmax {
        nodes.push(node("Softmax", &["logits"], "scores"));
        "scores"
    } else {
        "logits"
    };
    let weights = (0..3 * classes).map(|i| ((i * 7919 % 23) as f32 / 23.0 - 0.5) * 8.0);
    let biases = (0..classes).map(|c| (c * 31 % 17) as f32 / 17.0 - 0.5);
    let dims: Vec<Option<i64>> = std::iter::once(None)
        .chain(layout.iter().map(|&d| Some(d)))
        .collect();
    graph::model(
        "colour",
        nodes,
        vec![
            floats("dark", vec![3], [0.01; 3]),
            floats("weights", vec![3, classes], weights),
            floats("biases", vec![classes], biases),
        ],
        ("input", &dims),
        (output, &[None, Some(classes)]),
    )
}

/// A PNG of one colour.
fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&rgb.repeat((width * height) as usize))
        .unwrap();
    writer.finish().unwrap();
    bytes
}

/// `scores.csv`'s rows by file name, each a map of column to cell (cells hold no commas here).
fn rows_by_name(csv: &str) -> BTreeMap<String, HashMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.splitn(header.len(), ',').collect();
            let row: HashMap<String, String> = header
                .iter()
                .cloned()
                .zip(cells.iter().map(|c| c.to_string()))
                .collect();
            (row["filename"].clone(), row)
        })
        .collect()
}

/// Each image's float cell of `column`, as its bits (`None` where null).
fn float_bits(
    store: &dyn fleet_storage::BlobStore,
    job: &str,
    column: &str,
) -> BTreeMap<String, Option<u32>> {
    parquet_cells(store, job, column)
        .into_iter()
        .map(|(name, cell)| {
            let bits = match cell {
                Field::Float(v) => Some(v.to_bits()),
                Field::Null => None,
                other => panic!("{column} holds {other:?}"),
            };
            (name, bits)
        })
        .collect()
}

/// McNemar's exact test as its definition says: twice the binomial tail of the smaller count
/// in fair tosses, summed term by term.
fn mcnemar(b: u64, c: u64) -> f64 {
    let n = b + c;
    let choose = |k: u64| (0..k).fold(1.0f64, |acc, j| acc * (n - j) as f64 / (j + 1) as f64);
    let tail: f64 = (0..=b.min(c)).map(choose).sum::<f64>() * 0.5f64.powi(n as i32);
    (2.0 * tail).min(1.0)
}

#[test]
fn each_models_columns_are_its_own_jobs_and_the_comparison_is_computed_from_them() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    // The fixture photos, and one nearly black image the second model cannot score.
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for entry in std::fs::read_dir(fixture("real-photos/photos")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), images.join(entry.file_name())).unwrap();
    }
    std::fs::write(images.join("night.png"), png(40, 30, [2, 2, 2])).unwrap();
    // Labels: the reference's best class for every other photo, its second for the rest, so
    // that the first model is right on about half.
    let reference =
        std::fs::read_to_string(fixture("real-photos/reference_predictions.csv")).unwrap();
    let mut labels = String::from("filename,label\nnight.png,0\n");
    for (i, line) in reference.lines().skip(1).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        labels.push_str(&format!("{},{}\n", cells[0], cells[1 + i % 2]));
    }
    std::fs::write(images.join("labels.csv"), labels).unwrap();
    let model = root.path().join("colour.onnx");
    std::fs::write(&model, colour_model(1000, [3, 96, 128], 1, true)).unwrap();
    let classes = fixture("real-photos/synset_words.txt");
    let classes = classes.to_str().unwrap();
    Producer::stage(store, "photos")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "photos"])
        .ok();
    let squeezenet = fixture("real-photos/model/SqueezeNet_fp16.onnx");
    // Each model writes an embedding too: its vectors follow the first model's in a row.
    let mut sq = vec![
        "--model",
        squeezenet.to_str().unwrap(),
        "--model-name",
        "sq",
        "--classes",
        classes,
        "--embedding",
        "pool10_1",
    ];
    sq.extend(RECIPE);
    Producer::stage(store, "photos").args(&sq).ok();
    // Another size (128x96, not square: stretched), channel order and filter, and float32.
    Producer::stage(store, "photos")
        .args(&[
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "colour",
            "--classes",
            classes,
            "--channel-order",
            "rgb",
            "--resize",
            "stretch",
            "--filter",
            "opencv-linear",
            "--scale",
            "0.00392156862745098",
            "--embedding",
            "roots",
        ])
        .ok();
    let job = |models: &str| {
        let output = Producer::embedded(store, "photos")
            .args(&[
                "--dataset",
                "photos",
                "--labels",
                "labels.csv",
                "--top-k",
                "3",
                "--model-name",
                models,
            ])
            .job();
        (output.id.clone(), output)
    };
    let ((sq_job, _), (colour_job, _), (both, printed)) =
        (job("sq"), job("colour"), job("sq,colour"));
    let results = |job: &str| Path::new(store).join(format!("photos/results/{job}"));
    let csv = |job: &str| std::fs::read_to_string(results(job).join("scores.csv")).unwrap();
    let (sq_rows, colour_rows, rows) = (
        rows_by_name(&csv(&sq_job)),
        rows_by_name(&csv(&colour_job)),
        rows_by_name(&csv(&both)),
    );
    assert_eq!(rows.len(), 151);
    assert!(
        csv(&both).starts_with(
            "index,filename,true_label,true_class,sq_predicted_label,sq_predicted_class,\
             sq_confidence,sq_top2_label,sq_top2_class,sq_top2_confidence,sq_top3_label,\
             sq_top3_class,sq_top3_confidence,colour_predicted_label,"
        ),
        "{}",
        csv(&both).lines().next().unwrap()
    );

    // Each model's columns are its own job's, as text and, in Parquet, bit for bit.
    let columns = [
        "predicted_label",
        "predicted_class",
        "confidence",
        "top2_label",
        "top2_class",
        "top2_confidence",
        "top3_label",
        "top3_class",
        "top3_confidence",
    ];
    for (name, row) in &rows {
        for (prefix, own) in [("sq_", &sq_rows[name]), ("colour_", &colour_rows[name])] {
            for column in columns {
                assert_eq!(
                    row[&format!("{prefix}{column}")],
                    own[column],
                    "{name} {prefix}{column}"
                );
            }
            assert_eq!(row["true_label"], own["true_label"], "{name}");
        }
    }
    let container = fleet_storage::local::LocalStore::open(Path::new(store), "photos").unwrap();
    for (prefix, own) in [("sq_", &sq_job), ("colour_", &colour_job)] {
        for column in ["confidence", "top2_confidence", "top3_confidence"] {
            assert_eq!(
                float_bits(&container, &both, &format!("{prefix}{column}")),
                float_bits(&container, own, column),
                "{prefix}{column}"
            );
        }
    }

    // So are its vectors, in a column of its name; null where it did not score the image.
    for (prefix, own) in [("sq_", &sq_job), ("colour_", &colour_job)] {
        let vectors = |job: &str, column: &str| -> BTreeMap<String, Option<Vec<f32>>> {
            parquet_vectors(&container, job, column)
                .into_iter()
                .collect()
        };
        let together = vectors(&both, &format!("{prefix}embedding"));
        assert_eq!(together, vectors(own, "embedding"), "{prefix}embedding");
        assert_eq!(together.len(), 151);
    }
    assert_eq!(
        parquet_vectors(&container, &both, "colour_embedding")
            .into_iter()
            .find(|(name, _)| name == "night.png")
            .map(|(_, v)| v),
        Some(None)
    );

    // The image the second model cannot score keeps the first model's answer.
    let night = &rows["night.png"];
    assert!(!night["sq_predicted_label"].is_empty(), "{night:?}");
    assert!(night["colour_predicted_label"].is_empty(), "{night:?}");
    assert!(
        night["error"]
            .trim_start_matches('"')
            .starts_with("colour: the model's output is not a number"),
        "{night:?}"
    );
    assert_eq!(
        rows.values().filter(|r| !r["error"].is_empty()).count(),
        1,
        "only the night image has an error"
    );

    // The comparison, computed here from the two models' own rows.
    let summary: Summary =
        serde_json::from_slice(&std::fs::read(results(&both).join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary.models.len(), 2);
    let vectors: Vec<(&str, u64)> = (summary.embeddings.iter())
        .map(|e| (e.column.name.as_str(), e.images))
        .collect();
    assert_eq!(vectors, [("sq_embedding", 151), ("colour_embedding", 150)]);
    let (mut agree, mut images, mut overlap) = (0u64, 0u64, 0.0f64);
    let (mut only_sq, mut only_colour, mut labelled) = (0u64, 0u64, 0u64);
    let mut matrix: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut right = [0u64; 2];
    let mut judged = [0u64; 2];
    for (name, a) in &sq_rows {
        let b = &colour_rows[name];
        let label = &a["true_label"];
        for (m, row) in [a, b].iter().enumerate() {
            if !row["predicted_label"].is_empty() {
                judged[m] += 1;
                right[m] += u64::from(&row["predicted_label"] == label);
            }
        }
        if a["predicted_label"].is_empty() || b["predicted_label"].is_empty() {
            continue;
        }
        images += 1;
        agree += u64::from(a["predicted_label"] == b["predicted_label"]);
        *matrix
            .entry((a["predicted_class"].clone(), b["predicted_class"].clone()))
            .or_default() += 1;
        let top = |r: &HashMap<String, String>| {
            [&r["predicted_label"], &r["top2_label"], &r["top3_label"]].map(|s| s.to_owned())
        };
        let (ta, tb) = (top(a), top(b));
        overlap += ta.iter().filter(|c| tb.contains(c)).count() as f64 / 3.0;
        labelled += 1;
        match (
            &a["predicted_label"] == label,
            &b["predicted_label"] == label,
        ) {
            (true, false) => only_sq += 1,
            (false, true) => only_colour += 1,
            _ => {}
        }
    }
    let comparison = &summary.comparisons[0];
    assert_eq!(
        (comparison.a.as_str(), comparison.b.as_str()),
        ("sq", "colour")
    );
    assert_eq!((comparison.images, comparison.agree), (images, agree));
    assert_eq!(images, 150, "the night image is not compared");
    assert!((comparison.top_k_overlap.unwrap() - overlap / images as f64).abs() < 1e-12);
    assert_eq!(
        (
            comparison.labelled,
            comparison.only_a_right,
            comparison.only_b_right
        ),
        (labelled, only_sq, only_colour)
    );
    assert!(only_sq > 0, "the test needs discordant images");
    let p = mcnemar(only_sq, only_colour);
    let got = comparison.mcnemar_p_value.unwrap();
    assert!(
        (got - p).abs() <= 1e-12 * p.max(1e-300),
        "{got} against {p}"
    );
    let mut disagreed: Vec<((String, String), u64)> = matrix
        .iter()
        .filter(|((a, b), _)| a != b)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    disagreed.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let top = &comparison.most_disagreed[0];
    assert_eq!(top.images, disagreed[0].1);
    assert_eq!(
        matrix[&(top.a_class.clone(), top.b_class.clone())],
        top.images
    );
    for (m, figures) in summary.models.iter().enumerate() {
        assert_eq!(
            (figures.labelled, figures.correct),
            (judged[m], right[m]),
            "{}",
            figures.model
        );
        // Wilson's interval, as written in any statistics text.
        let (n, phat, z) = (
            judged[m] as f64,
            right[m] as f64 / judged[m] as f64,
            1.959963984540054,
        );
        let centre = (phat + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z / (1.0 + z * z / n) * (phat * (1.0 - phat) / n + z * z / (4.0 * n * n)).sqrt();
        let [low, high] = figures.accuracy_interval.unwrap();
        assert!((low - (centre - half)).abs() < 1e-12 && (high - (centre + half)).abs() < 1e-12);
    }
    // The first model's figures are the summary's own, as in its own job.
    let own: Summary =
        serde_json::from_slice(&std::fs::read(results(&sq_job).join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (summary.correct, summary.labelled),
        (own.correct, own.labelled)
    );
    assert!(printed.contains("sq and colour agree on"), "{printed}");

    // The matrix of one model's class against the other's, and the report's comparison.
    let agreement =
        std::fs::read_to_string(results(&both).join("agreement_sq_colour.csv")).unwrap();
    // Dense over the classes either model gave some image: each pair of answers counted once.
    let lines: Vec<&str> = agreement.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "sq_class\\colour_class");
    assert_eq!(lines.len(), header.len(), "a row for each column's class");
    let pairs: u64 = lines[1..]
        .iter()
        .flat_map(|l| l.rsplitn(header.len(), ',').take(header.len() - 1))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(pairs, 150, "the images both models scored");
    let report = std::fs::read_to_string(results(&both).join("report.html")).unwrap();
    assert!(report.contains("id=\"models\"") && report.contains("id=\"disagreements\""));
}

#[test]
fn models_of_other_classes_are_refused_before_anything_is_scored() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("a.png"), png(8, 8, [200, 10, 10])).unwrap();
    Producer::stage(store, "pair")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "p"])
        .ok();
    for (name, classes) in [("ten", 10), ("twelve", 12)] {
        let model = root.path().join(format!("{name}.onnx"));
        std::fs::write(&model, colour_model(classes, [3, 8, 8], 1, false)).unwrap();
        Producer::stage(store, "pair")
            .args(&["--model", model.to_str().unwrap(), "--model-name", name])
            .ok();
    }
    let error = Producer::embedded(store, "pair")
        .args(&["--dataset", "p", "--model-name", "ten,twelve"])
        .err();
    assert!(
        error
            .contains("models ten and twelve do not have the same classes (10 classes against 12)"),
        "{error}"
    );
    let error = Producer::embedded(store, "pair")
        .args(&["--dataset", "p", "--model-name", "ten,ten"])
        .err();
    assert!(error.contains("model ten is named twice"), "{error}");
    assert!(
        !Path::new(store).join("pair/results").exists(),
        "nothing was scored"
    );
}

/// A model the worker cannot load fails the partitions of a job of several models, as of one:
/// the job is stuck with the reason; once the model is staged again, `producer retry` completes
/// the same job with both models' answers.
#[test]
fn a_job_stuck_on_one_of_its_models_completes_after_a_retry() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for i in 0..12u8 {
        let rgb = [20 * i, 200 - 10 * i, 90];
        std::fs::write(images.join(format!("{i:02}.png")), png(8, 8, rgb)).unwrap();
    }
    Producer::stage(store, "pair")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "p"])
        .ok();
    for (name, layout, axis) in [("square", [3, 8, 8], 1), ("wide", [6, 10, 3], 3)] {
        let model = root.path().join(format!("{name}.onnx"));
        std::fs::write(&model, colour_model(10, layout, axis, false)).unwrap();
        Producer::stage(store, "pair")
            .args(&["--model", model.to_str().unwrap(), "--model-name", name])
            .ok();
    }
    let job = [
        "--dataset",
        "p",
        "--model-name",
        "square,wide",
        "--partition-size",
        "5",
    ];
    let scores = |job: &str| {
        std::fs::read_to_string(Path::new(store).join(format!("pair/results/{job}/scores.csv")))
    };
    let whole = Producer::embedded(store, "pair").args(&job).job().id;
    // The second model's file is now another model's: no worker can load it as staged.
    let wide = Path::new(store).join("pair/models/wide.onnx");
    let staged = std::fs::read(&wide).unwrap();
    std::fs::copy(Path::new(store).join("pair/models/square.onnx"), &wide).unwrap();
    let error = Producer::embedded(store, "pair").args(&job).err();
    assert!(
        error.contains("wide.onnx is not the model its spec") && error.contains("producer retry"),
        "{error}"
    );
    let stuck = error
        .split_whitespace()
        .find(|w| w.len() == 22 && w.starts_with("2"))
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .expect("the error names the job")
        .to_owned();
    assert!(scores(&stuck).is_err(), "a stuck job has no results");
    std::fs::write(&wide, staged).unwrap();
    run_ok(
        "producer",
        &[
            "retry",
            "--store",
            store,
            "--container",
            "pair",
            &stuck,
            "--embedded",
        ],
    );
    let sorted = |csv: String| {
        let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(scores(&stuck).unwrap()),
        sorted(scores(&whole).unwrap())
    );
}

/// A CNTK model and an ONNX model of another size, layout and channel order, over RabbitMQ and
/// Azurite, a worker killed mid-job: every image has one row, with the answers of the same job
/// run embedded.
#[test]
fn a_job_of_two_models_over_the_fleet_survives_a_killed_worker() {
    use fleet_dataset::CLASS_NAMES as CLASSES;
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    for class in CLASSES {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..40 {
            let from = fixture("cifar-10-test-jpeg")
                .join(class)
                .join(format!("{i:04}.jpg"));
            std::fs::copy(from, images.join(class).join(format!("{i:04}.jpg"))).unwrap();
        }
    }
    let classes = work.path().join("classes.txt");
    std::fs::write(&classes, CLASSES.join("\n")).unwrap();
    let tiny = work.path().join("tiny.onnx");
    // NHWC, 24x40, logits out.
    std::fs::write(&tiny, colour_model(10, [24, 40, 3], 3, false)).unwrap();
    let (cntk, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let stages: [Vec<&str>; 3] = [
        vec![
            "stage",
            "--images",
            images.to_str().unwrap(),
            "--prefix",
            "cifar",
        ],
        vec![
            "stage",
            "--model",
            cntk.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
            "--model-name",
            "resnet20",
            "--classes",
            classes.to_str().unwrap(),
        ],
        vec![
            "stage",
            "--model",
            tiny.to_str().unwrap(),
            "--model-name",
            "tiny",
            "--classes",
            classes.to_str().unwrap(),
            "--channel-order",
            "rgb",
            "--scale",
            "0.00392156862745098",
        ],
    ];
    for args in &stages {
        let out = run_with("producer", args, &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let job_args = [
        "--dataset",
        "cifar",
        "--model-name",
        "resnet20,tiny",
        "--labels",
        "folders",
        "--partition-size",
        "10",
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
    fleet.wait_for_stored(3);
    first.kill().unwrap();
    let _ = first.wait();
    let second = spawn("worker", &["--name", "second"], &env);
    let job = finish(producer);
    terminate(second);
    terminate(collector);
    let store = fleet.store();
    let summary: Summary =
        serde_json::from_slice(&store.get(&format!("results/{job}/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary.images, 400);
    assert!(
        summary.workers.contains_key("first") && summary.workers.contains_key("second"),
        "the job was not split by the kill: {:?}",
        summary.workers
    );
    let fleet_csv = fleet.scores(&job);
    assert_eq!(
        fleet_csv.lines().count(),
        401,
        "one row per image, no duplicates"
    );

    // The same job, embedded.
    let local = work.path().join("local");
    let local_store = local.to_str().unwrap();
    for args in &stages {
        let mut args = args.clone();
        args.splice(1..1, ["--store", local_store, "--container", "cifar"]);
        run_ok("producer", &args);
    }
    let mut local_job = vec!["--store", local_store, "--container", "cifar", "--embedded"];
    local_job.extend(job_args);
    let out = run_job(&local_job);
    let embedded_csv =
        std::fs::read_to_string(local.join(format!("cifar/results/{}/scores.csv", out.id)))
            .unwrap();
    let (fleet_rows, embedded_rows) = (rows_by_name(&fleet_csv), rows_by_name(&embedded_csv));
    assert_eq!(fleet_rows.len(), 400);
    assert_eq!(fleet_rows, embedded_rows);
    let embedded: Summary = serde_json::from_slice(
        &std::fs::read(local.join(format!("cifar/results/{}/summary.json", out.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(summary.comparisons, embedded.comparisons);
    assert_eq!(summary.comparisons[0].labelled, 400);
}
