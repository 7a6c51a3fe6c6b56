//! A multi-label classifier (independent sigmoids), built here over a known graph: each image's
//! tags, the class scores, and the job's per-class precision, recall, F1, average precision and
//! mAP, against a reference computed here from the images and their true tags.

use std::collections::HashMap;
use std::path::Path;

use fleet_protocol::Summary;
use fleet_tests::graph::{self, floats, node};
use fleet_tests::{Fleet, Producer, job_id, parquet_vectors, run_with, spawn, stop, terminate};

const CLASSES: [&str; 4] = ["red", "green", "blue", "dark"];
/// Each class's weights on the image's mean R, G and B (0..255), and its bias.
const WEIGHTS: [[f32; 3]; 4] = [
    [0.04, -0.02, -0.02],
    [-0.02, 0.04, -0.02],
    [-0.02, -0.02, 0.04],
    [-0.01, -0.01, -0.01],
];
const BIASES: [f32; 4] = [-1.0, -1.0, -1.0, 2.0];

/// Mean colour, a linear layer, a sigmoid: four independent classes.
fn tagger() -> Vec<u8> {
    let weights = (0..3).flat_map(|j| WEIGHTS.iter().map(move |w| w[j]));
    graph::model(
        "tagger",
        vec![
            node("GlobalAveragePool", &["input"], "pooled"),
            node("Flatten", &["pooled"], "mean"),
            node("MatMul", &["mean", "weights"], "product"),
            node("Add", &["product", "biases"], "logits"),
            node("Sigmoid", &["logits"], "scores"),
        ],
        vec![
            floats("weights", vec![3, 4], weights),
            floats("biases", vec![4], BIASES),
        ],
        ("input", &[None, Some(3), Some(8), Some(8)]),
        ("scores", &[None, Some(4)]),
    )
}

/// Image `i`'s colour, from a fixed sequence.
fn colour(i: u32) -> [u8; 3] {
    let mut x = i.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 256) as u8
    };
    [next(), next(), next()]
}

/// An 8x8 PNG of one colour.
fn png(rgb: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 8, 8);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb.repeat(64)).unwrap();
    writer.finish().unwrap();
    bytes
}

/// An image's true classes: the colours it is strong in, and dark when it is; every seventh
/// image's first tag is wrong, so that the measures are not all 1.
fn truth(i: u32, [r, g, b]: [u8; 3]) -> Vec<u32> {
    let mut tags: Vec<u32> = [
        r > 140,
        g > 140,
        b > 140,
        u32::from(r) + u32::from(g) + u32::from(b) < 250,
    ]
    .iter()
    .enumerate()
    .filter(|(_, on)| **on)
    .map(|(c, _)| c as u32)
    .collect();
    if i.is_multiple_of(7) {
        match tags.first() {
            Some(&first) => tags[0] = (first + 1) % 4,
            None => tags.push(i % 4),
        }
        tags.sort_unstable();
        tags.dedup();
    }
    tags
}

/// scikit-learn's `average_precision_score` for one class: the images ranked by score, the
/// precision at each distinct score times the recall it adds.
fn average_precision(mut ranked: Vec<(f32, bool)>) -> Option<f64> {
    let positives = ranked.iter().filter(|(_, t)| *t).count();
    if positives == 0 {
        return None;
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < ranked.len() {
        let score = ranked[i].0;
        while i < ranked.len() && ranked[i].0 == score {
            tp += usize::from(ranked[i].1);
            seen += 1;
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        ap += (recall - last_recall) * tp as f64 / seen as f64;
        last_recall = recall;
    }
    Some(ap)
}

/// The test's inputs, written under a directory: 80 swatches (`images/`, with `tags.csv`
/// labelling the first 70), the tagger and its class list.
struct Inputs {
    images: std::path::PathBuf,
    model: std::path::PathBuf,
    classes: std::path::PathBuf,
    /// Each labelled image's true tags.
    truths: HashMap<String, Vec<u32>>,
    colours: HashMap<String, [u8; 3]>,
}

impl Inputs {
    fn write(root: &Path) -> Self {
        let images = root.join("images");
        std::fs::create_dir(&images).unwrap();
        let mut truths: HashMap<String, Vec<u32>> = HashMap::new();
        let mut colours = HashMap::new();
        let mut csv = String::from("filename,label\n");
        for i in 0..80u32 {
            let name = format!("swatch-{i:03}.png");
            let rgb = colour(i);
            std::fs::write(images.join(&name), png(rgb)).unwrap();
            colours.insert(name.clone(), rgb);
            // The last ten images have no label at all.
            if i < 70 {
                let tags = truth(i, rgb);
                let names: Vec<&str> = tags.iter().map(|&c| CLASSES[c as usize]).collect();
                csv.push_str(&format!("{name},{}\n", names.join(";")));
                truths.insert(name, tags);
            }
        }
        std::fs::write(images.join("tags.csv"), csv).unwrap();
        let model = root.join("tagger.onnx");
        std::fs::write(&model, tagger()).unwrap();
        let classes = root.join("classes.txt");
        std::fs::write(&classes, CLASSES.join("\n")).unwrap();
        Self {
            images,
            model,
            classes,
            truths,
            colours,
        }
    }
}

#[test]
fn a_multi_label_job_gives_tags_and_per_class_measures_as_computed_independently() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let Inputs {
        images,
        model,
        classes,
        truths,
        colours,
    } = Inputs::write(root.path());
    Producer::stage(store, "tags")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "swatches"])
        .ok();
    let staged = Producer::stage(store, "tags")
        .args(&[
            "--model",
            model.to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
        ])
        .ok();
    // A graph that ends in a sigmoid is a multi-label model without being told.
    assert!(
        staged.contains("4 classes, multi-label (its outputs are the scores), threshold 0.5"),
        "{staged}"
    );
    let output = Producer::embedded(store, "tags")
        .args(&[
            "--dataset",
            "swatches",
            "--labels",
            "tags.csv",
            "--top-k",
            "2",
        ])
        .job();
    let job = output.id.clone();
    let results = Path::new(store).join(format!("tags/results/{job}"));
    let summary: Summary =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    let multi = summary.multi_label.as_ref().expect("multi-label measures");
    assert_eq!((summary.images, multi.labelled), (80, 70));
    assert_eq!(summary.accuracy, None);
    assert!(
        !results.join("confusion.csv").exists(),
        "a confusion matrix of one class an image"
    );

    // The scores are the model's: the sigmoid of the mean colour's logits.
    let container = fleet_storage::local::LocalStore::open(Path::new(store), "tags").unwrap();
    let scores: HashMap<String, Vec<f32>> = parquet_vectors(&container, &job, "class_scores")
        .into_iter()
        .map(|(name, v)| (name, v.expect("every image is scored")))
        .collect();
    assert_eq!(scores.len(), 80);
    for (name, got) in &scores {
        let rgb = colours[name].map(f32::from);
        for c in 0..4 {
            let logit: f32 = (0..3).map(|j| WEIGHTS[c][j] * rgb[j]).sum::<f32>() + BIASES[c];
            let expected = 1.0 / (1.0 + (-logit).exp());
            assert!(
                (got[c] - expected).abs() < 1e-5,
                "{name} class {c}: {got:?}"
            );
        }
    }

    // Each row's tags are the classes at or over the threshold, best first.
    let rows = std::fs::read_to_string(results.join("scores.csv")).unwrap();
    let mut lines = rows.lines();
    assert_eq!(
        lines.next(),
        Some(
            "index,filename,true_tags,predicted_tags,tag_scores,predicted_label,predicted_class,\
             confidence,top2_label,top2_class,top2_confidence,error"
        )
    );
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let name = cells[1];
        let mut expected: Vec<(usize, f32)> = (0..4)
            .map(|c| (c, scores[name][c]))
            .filter(|&(_, s)| s >= 0.5)
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        let names: Vec<&str> = expected.iter().map(|&(c, _)| CLASSES[c]).collect();
        assert_eq!(cells[3], names.join(";"), "{line}");
        let truth: Vec<&str> = truths
            .get(name)
            .map(|t| t.iter().map(|&c| CLASSES[c as usize]).collect())
            .unwrap_or_default();
        assert_eq!(cells[2], truth.join(";"), "{line}");
    }

    // The measures, computed here from the scores and the true tags.
    let mut per_class_ap = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        let labelled = truths
            .iter()
            .map(|(name, tags)| (scores[name][c], tags.contains(&(c as u32))));
        let ranked: Vec<(f32, bool)> = labelled.clone().collect();
        let (mut hits, mut predicted, mut positives) = (0u64, 0u64, 0u64);
        for (score, truth) in labelled {
            predicted += u64::from(score >= 0.5);
            positives += u64::from(truth);
            hits += u64::from(score >= 0.5 && truth);
        }
        let ap = average_precision(ranked);
        let got = multi
            .per_class
            .iter()
            .find(|m| m.class == *class)
            .unwrap_or_else(|| panic!("no measures of {class}: {multi:?}"));
        assert_eq!(
            (got.positives, got.predicted, got.hits),
            (positives, predicted, hits),
            "{class}"
        );
        let precision = hits as f64 / predicted as f64;
        let recall = hits as f64 / positives as f64;
        // summary.json's numbers, read back: equal to the last bits JSON keeps.
        let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-12);
        assert!(
            close(got.precision, precision),
            "{class}: {:?}",
            got.precision
        );
        assert!(close(got.recall, recall), "{class}: {:?}", got.recall);
        let f1 = 2.0 * precision * recall / (precision + recall);
        assert!((got.f1.unwrap() - f1).abs() < 1e-12, "{class}");
        assert!(
            (got.average_precision.unwrap() - ap.unwrap()).abs() < 1e-12,
            "{class}: {:?} against {ap:?}",
            got.average_precision
        );
        per_class_ap.push(ap.unwrap());
    }
    let map = per_class_ap.iter().sum::<f64>() / per_class_ap.len() as f64;
    assert!((multi.mean_average_precision.unwrap() - map).abs() < 1e-12);
    assert!(
        map > 0.5 && map < 1.0,
        "mAP {map}: the wrong tags should cost something"
    );
    assert!(
        summary
            .accuracy_line()
            .starts_with(&format!("mAP {map:.3} over 70 labelled images")),
        "{}",
        summary.accuracy_line()
    );
    let report = std::fs::read_to_string(results.join("report.html")).unwrap();
    assert!(report.contains("id=\"per-tag\""), "the report's tag table");
}

/// The same job over RabbitMQ and Azurite, cut in three partitions scored by two workers, gives
/// the embedded run's rows and measures.
#[test]
fn a_multi_label_job_over_the_fleet_is_the_embedded_job() {
    let root = tempfile::tempdir().unwrap();
    let inputs = Inputs::write(root.path());
    let (images, model, classes) = (
        inputs.images.to_str().unwrap(),
        inputs.model.to_str().unwrap(),
        inputs.classes.to_str().unwrap(),
    );
    let job = ["--dataset", "swatches", "--labels", "tags.csv"];

    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    Producer::stage(store, "tags")
        .args(&["--images", images, "--prefix", "swatches"])
        .ok();
    Producer::stage(store, "tags")
        .args(&["--model", model, "--classes", classes])
        .ok();
    let embedded = Producer::embedded(store, "tags").args(&job).job().id;
    let results = Path::new(store).join(format!("tags/results/{embedded}"));
    let embedded_summary: Summary =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    let embedded_rows = std::fs::read_to_string(results.join("scores.csv")).unwrap();

    let fleet = Fleet::isolated();
    let env = fleet.env();
    for args in [
        vec!["stage", "--images", images, "--prefix", "swatches"],
        vec!["stage", "--model", model, "--classes", classes],
    ] {
        let out = run_with("producer", &args, &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let collector = spawn("collector", &[], &env);
    let workers = [spawn("worker", &[], &env), spawn("worker", &[], &env)];
    let mut args = job.to_vec();
    args.extend(["--partition-size", "30", "--wait"]);
    let out = run_with("producer", &args, &env);
    for worker in workers {
        terminate(worker);
    }
    let collector = stop(collector);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&collector.stderr)
    );
    let job = job_id(&stdout);
    let summary: Summary = serde_json::from_slice(
        &fleet
            .store()
            .get(&format!("results/{job}/summary.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary.partitions, 3);
    let measures = summary.multi_label.expect("multi-label measures");
    assert_eq!(measures.labelled, 70);
    assert_eq!(Some(measures), embedded_summary.multi_label);
    // Rows arrive in any order: compare them sorted.
    let sorted = |csv: &str| {
        let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&fleet.scores(&job)), sorted(&embedded_rows));
    assert_eq!(
        parquet_vectors(fleet.store().as_ref(), &job, "class_scores").len(),
        80
    );
}
