//! A real ImageNet classifier over real photos, as a user brings them: a float16 SqueezeNet,
//! ImageNet's own class lists (`synset_words.txt` with ids, `imagenet_classes.txt` with its
//! duplicate names) and its folder layout (`val/n01440764/*.JPEG`), prepared as torchvision
//! prepares them and fed in the model's own BGR 0..255 recipe. The answers are compared with
//! the model's reference predictions (`real-photos/reference_predictions.csv`, made by ONNX
//! Runtime from torchvision's crops).

use std::path::Path;

use fleet_tests::real_photos::{RECIPE, Reference, imagenet_layout, reference, rows};
use fleet_tests::{Producer, fixture, run_err, run_ok};

/// `producer stage` of the fixture's SqueezeNet as `name`, with the class list `classes` and
/// `extra` flags.
fn stage_model_args(store: &str, name: &str, classes: &Path, extra: &[&str]) -> Vec<String> {
    let model = fixture("real-photos/model/SqueezeNet_fp16.onnx");
    let mut args: Vec<String> = [
        "stage",
        "--store",
        store,
        "--container",
        "photos",
        "--model",
        model.to_str().unwrap(),
        "--model-name",
        name,
        "--classes",
        classes.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Stages the SqueezeNet ([`stage_model_args`]), which must succeed; returns the output.
fn stage_model(store: &str, name: &str, classes: &Path, extra: &[&str]) -> String {
    let args = stage_model_args(store, name, classes, extra);
    run_ok(
        "producer",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

#[test]
fn a_float16_imagenet_model_over_real_photos_agrees_with_its_reference() {
    let reference = reference();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let val = imagenet_layout(root.path(), &reference);
    Producer::stage(store, "photos")
        .args(&[
            "--images",
            val.to_str().unwrap(),
            "--prefix",
            "imagenet/val",
        ])
        .ok();
    let staged = stage_model(
        store,
        "squeezenet",
        &fixture("real-photos/synset_words.txt"),
        &RECIPE,
    );
    // The resolved preparation is printed.
    assert!(
        staged.contains(
            "shorter side to 256, centre 224x224 (pillow-bilinear), BGR, x 1, no normalisation"
        ),
        "{staged}"
    );
    let output = Producer::embedded(store, "photos")
        .args(&[
            "--dataset",
            "imagenet/val",
            "--model-name",
            "squeezenet",
            "--labels",
            "folders",
            "--top-k",
            "5",
        ])
        .job();
    let results = root.path().join("store/photos/results").join(&output.id);
    let rows = rows(&results.join("scores.csv"));
    assert_eq!(rows.len(), reference.len(), "one row per photo");
    let mut same_top1 = 0;
    let mut largest_gap: f64 = 0.0;
    let mut differ = Vec::new();
    for row in &rows {
        let photo = row["filename"].rsplit('/').next().unwrap();
        let Reference {
            top1,
            probability,
            top5,
        } = &reference[photo];
        assert_eq!(row["error"], "", "{photo}");
        let predicted: u32 = row["predicted_label"].parse().unwrap();
        let confidence: f64 = row["confidence"].parse().unwrap();
        // Class names, not synset ids, in the results.
        let class = &row["predicted_class"];
        assert!(
            !(class.len() == 9 && class[1..].bytes().all(|b| b.is_ascii_digit())),
            "{row:?}"
        );
        if !top5.is_empty() {
            let mut ours: Vec<u32> = std::iter::once("predicted_label".to_owned())
                .chain((2..=5).map(|k| format!("top{k}_label")))
                .map(|column| row[&column].parse().unwrap())
                .collect();
            let mut theirs = top5.clone();
            ours.sort_unstable();
            theirs.sort_unstable();
            assert_eq!(ours, theirs, "{photo}: top-5");
        }
        if predicted == *top1 {
            same_top1 += 1;
            largest_gap = largest_gap.max((confidence - probability).abs());
        } else {
            differ.push(format!("{photo}: {predicted} vs {top1} ({top5:?})"));
        }
    }
    println!(
        "{same_top1} of {} photos: the reference's top-1; largest probability difference there \
         {largest_gap:.5}; differing: {differ:?}",
        rows.len()
    );
    assert_eq!(differ, Vec::<String>::new());
    assert!(largest_gap <= 0.01, "{largest_gap}");
    // Folders named by class id resolved to the model's classes: accuracy is the agreement.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["labelled"], reference.len());
    assert_eq!(summary["correct"], reference.len());
    assert_eq!(summary["classes"][0], "tench");
}

#[test]
fn imagenets_own_class_list_with_its_duplicate_names_labels_by_index() {
    let reference = reference();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    // A few photos, labelled by a CSV of class indices.
    let photos = root.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let mut chosen: Vec<(&String, &Reference)> = reference.iter().collect();
    chosen.sort_by_key(|(photo, _)| photo.as_str());
    chosen.truncate(12);
    let mut csv = String::from("filename,label\n");
    for (photo, answer) in &chosen {
        std::fs::copy(
            fixture("real-photos/photos").join(photo),
            photos.join(photo),
        )
        .unwrap();
        csv.push_str(&format!("{photo},{}\n", answer.top1));
    }
    std::fs::write(photos.join("labels.csv"), &csv).unwrap();
    Producer::stage(store, "photos")
        .args(&["--images", photos.to_str().unwrap(), "--prefix", "few"])
        .ok();
    // "crane" and "maillot" appear twice: the list is taken as it is.
    stage_model(
        store,
        "squeezenet",
        &fixture("real-photos/imagenet_classes.txt"),
        &RECIPE,
    );
    let output = Producer::embedded(store, "photos")
        .args(&[
            "--dataset",
            "few",
            "--model-name",
            "squeezenet",
            "--labels",
            "labels.csv",
        ])
        .job();
    assert!(
        output.contains(&format!(
            "Correctly predicted {0} of {0} images",
            chosen.len()
        )),
        "{output}"
    );
    // A label naming one of the shared names is refused, saying what to do.
    let first = chosen[0].0;
    std::fs::write(
        root.path().join("crane.csv"),
        format!("filename,label\n{first},crane\n"),
    )
    .unwrap();
    let crane = root.path().join("crane.csv");
    let error = Producer::embedded(store, "photos")
        .args(&[
            "--dataset",
            "few",
            "--model-name",
            "squeezenet",
            "--labels",
            crane.to_str().unwrap(),
        ])
        .err();
    assert!(
        error.contains("\"crane\" names 2 classes (indices 134, 517)")
            && error.contains("as class indices"),
        "{error}"
    );
}

#[test]
fn presets_resolve_into_the_spec_and_flags_override_them() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store_arg = store.to_str().unwrap();
    let classes = fixture("real-photos/imagenet_classes.txt");
    let spec = |name: &str| -> serde_json::Value {
        let path = store.join(format!("photos/models/{name}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };

    let staged = stage_model(store_arg, "tv", &classes, &["--preset", "torchvision"]);
    assert!(
        staged.contains(
            "images prepared as --preset torchvision: shorter side to 256, centre 224x224 \
             (pillow-bilinear), RGB, x 0.003921569, mean [0.485, 0.456, 0.406], std [0.229, \
             0.224, 0.225]"
        ),
        "{staged}"
    );
    let tv = spec("tv");
    assert_eq!(
        (
            &tv["version"],
            &tv["resize"],
            &tv["shorter_side"],
            &tv["filter"],
            &tv["channel_order"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!("center-crop"),
            &serde_json::json!(256),
            &serde_json::json!("pillow-bilinear"),
            &serde_json::json!("rgb")
        )
    );

    // A flag overrides its field of the preset; the rest stays the preset's.
    stage_model(
        store_arg,
        "caffe",
        &classes,
        &["--preset", "keras-caffe", "--filter", "opencv-area"],
    );
    let caffe = spec("caffe");
    assert_eq!(caffe["filter"], "opencv-area");
    assert_eq!(caffe["channel_order"], "bgr");
    assert_eq!(caffe["resize"], "stretch");
    assert_eq!(
        caffe["normalize"]["mean"],
        serde_json::json!([103.939, 116.779, 123.68])
    );
    stage_model(
        store_arg,
        "timm",
        &classes,
        &["--preset", "timm", "--shorter-side", "248"],
    );
    assert_eq!(spec("timm")["shorter_side"], 248);
    assert_eq!(spec("timm")["filter"], "pillow-bicubic");

    // Contradictions are refused before anything is written.
    let refused = |extra: &[&str]| {
        let args = stage_model_args(store_arg, "bad", &classes, extra);
        run_err(
            "producer",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let error = refused(&[
        "--preset",
        "torchvision",
        "--resize",
        "stretch",
        "--shorter-side",
        "256",
    ]);
    assert!(
        error.contains("--shorter-side is for --resize center-crop"),
        "{error}"
    );
    let error = refused(&["--preset", "torchvision", "--shorter-side", "200"]);
    assert!(
        error.contains("shorter side 200 is out of range"),
        "{error}"
    );
    assert!(!store.join("photos/models/bad.json").exists());
}

#[test]
fn fast_jpeg_decodes_large_jpegs_reduced_and_leaves_the_others_exact() {
    let reference = reference();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let photos = fixture("real-photos/photos");
    Producer::stage(store, "photos")
        .args(&["--images", photos.to_str().unwrap(), "--prefix", "photos"])
        .ok();
    let fast: Vec<&str> = RECIPE.iter().copied().chain(["--fast-jpeg"]).collect();
    let staged = stage_model(
        store,
        "squeezenet",
        &fixture("real-photos/synset_words.txt"),
        &fast,
    );
    assert!(
        staged.contains("(pillow-bilinear, large JPEGs decoded reduced (--fast-jpeg))"),
        "{staged}"
    );
    let output = Producer::embedded(store, "photos")
        .args(&["--dataset", "photos", "--model-name", "squeezenet"])
        .job();
    let results = root.path().join("store/photos/results").join(&output.id);
    let (mut reduced, mut moved, mut same_top1) = (0, 0, 0);
    for row in rows(&results.join("scores.csv")) {
        let photo = row["filename"].rsplit('/').next().unwrap().to_owned();
        assert_eq!(row["error"], "", "{photo}");
        let bytes = std::fs::read(photos.join(&photo)).unwrap();
        let image = fleet_imaging::decode(
            &bytes,
            fleet_imaging::DecodeLimits {
                max_pixels: u64::MAX,
                max_scans: u32::MAX,
            },
        )
        .unwrap();
        let predicted: u32 = row["predicted_label"].parse().unwrap();
        let confidence: f64 = row["confidence"].parse().unwrap();
        let Reference {
            top1, probability, ..
        } = &reference[&photo];
        same_top1 += usize::from(predicted == *top1);
        // Halving the photo would leave its shorter side under 256: decoded whole, as exact.
        let jpeg = bytes.starts_with(&[0xFF, 0xD8]);
        if !jpeg || image.width.min(image.height) < 512 {
            assert_eq!(predicted, *top1, "{photo}");
            assert!((confidence - probability).abs() <= 0.01, "{photo}");
        } else {
            reduced += 1;
            moved += usize::from(predicted != *top1 || (confidence - probability).abs() > 1e-4);
        }
    }
    println!(
        "--fast-jpeg: {reduced} photos decoded reduced, {moved} of them scored differently; \
         top-1 the exact path's on {same_top1} of {}",
        reference.len()
    );
    assert!(reduced > 0, "the fixture has large JPEGs");
    // Reduced pixels are not the exact path's: most of those photos' scores move.
    assert!(moved * 2 > reduced, "{moved} of {reduced}");
    assert!(same_top1 * 100 >= reference.len() * 85, "{same_top1}");
}

#[test]
fn several_runs_of_a_fixed_batch_model_give_what_one_run_gives() {
    use fleet_inference::{InferenceOptions, Scorer};
    let model = std::fs::read(fixture("real-photos/model/SqueezeNet_fp16.onnx")).unwrap();
    let scorer = |runs: usize| {
        let mut options: InferenceOptions = fleet_service::cli::defaults().unwrap();
        (options.intra_threads, options.model_runs) = (3, runs);
        Scorer::load(&model, "squeezenet", &options).unwrap()
    };
    let (mut one, mut three) = (scorer(1), scorer(3));
    assert_eq!((one.runs(), three.runs()), (1, 3));
    assert_eq!(one.signature().fixed_batch, Some(1));
    // Seven distinct images (more than the runs, not a multiple of them).
    let len = one.signature().input_len();
    let input: Vec<f32> = (0..7 * len)
        .map(|i| ((i * 7919 + (i / len) * 101) % 256) as f32)
        .collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    one.score(&input, 7, &mut a).unwrap();
    three.score(&input, 7, &mut b).unwrap();
    assert_eq!(a.len(), 7 * 1000);
    assert!(a == b, "several runs changed the outputs or their order");
    // Every row differs from the others, so a row out of place would be seen.
    let rows: Vec<&[f32]> = a.chunks_exact(1000).collect();
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            assert!(rows[i] != rows[j], "images {i} and {j} score alike");
        }
    }
}
