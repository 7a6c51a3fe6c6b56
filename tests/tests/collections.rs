//! Image collections on the embedded default, run as a user runs them: a folder of image files
//! staged under a prefix, a model staged with its spec, `producer --embedded --dataset PREFIX`.

use std::collections::HashMap;
use std::path::Path;

use fleet_tests::{JobRun, Producer, fixture, stage_fixtures};

use fleet_dataset::CLASS_NAMES as CIFAR_CLASSES;

/// Rows of a `scores.csv`, as maps from column name to value.
fn rows(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            // The error column is last and may be quoted with commas inside.
            let mut fields: Vec<String> = Vec::new();
            let mut rest = line;
            for _ in 0..header.len() - 1 {
                let (field, tail) = rest.split_once(',').unwrap();
                fields.push(field.to_owned());
                rest = tail;
            }
            fields.push(rest.trim_matches('"').to_owned());
            header.iter().map(|h| h.to_string()).zip(fields).collect()
        })
        .collect()
}

fn job_dir(store: &Path, container: &str, run: &JobRun) -> std::path::PathBuf {
    store.join(container).join("results").join(&run.id)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The fixture's JPEG folder and its tarball are the same images (the tarball holds libjpeg's
/// pixels of these files): decoded by libjpeg here too, a folder job agrees with the tarball
/// job on every image.
#[test]
fn a_jpeg_folder_job_agrees_with_the_tarball_job() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let classes = write(
        root.path(),
        "classes.txt",
        CIFAR_CLASSES.join("\n").as_bytes(),
    );
    let (model, mean) = (
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    let staged = Producer::stage(store, "ctr")
        .args(&[
            "--images",
            fixture("cifar-10-test-jpeg").to_str().unwrap(),
            "--prefix",
            "datasets/cifar-jpeg",
            "--model",
            model.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
            "--model-name",
            "named",
            "--classes",
            &classes,
        ])
        .ok();
    assert!(staged.contains("10000 images: 10000 uploaded"), "{staged}");
    // Staging again uploads nothing: every blob is there with its size.
    let again = Producer::stage(store, "ctr")
        .args(&[
            "--images",
            fixture("cifar-10-test-jpeg").to_str().unwrap(),
            "--prefix",
            "datasets/cifar-jpeg",
        ])
        .ok();
    assert!(again.contains("0 uploaded, 10000 already there"), "{again}");

    let tarball = Producer::embedded(store, "ctr")
        .args(&["--model-name", "resnet20"])
        .job();
    let folder = Producer::embedded(store, "ctr")
        .args(&[
            "--dataset",
            "datasets/cifar-jpeg",
            "--model-name",
            "named",
            "--labels",
            "folders",
            "--top-k",
            "3",
            "--workers",
            "2",
        ])
        .job();
    let tarball_rows = rows(&job_dir(root.path(), "ctr", &tarball).join("scores.csv"));
    let folder_rows = rows(&job_dir(root.path(), "ctr", &folder).join("scores.csv"));
    assert_eq!(folder_rows.len(), 10_000, "one row per image");
    let by_file: HashMap<&str, &HashMap<String, String>> = folder_rows
        .iter()
        .map(|r| (r["filename"].as_str(), r))
        .collect();
    assert_eq!(by_file.len(), 10_000, "each image once");
    let mut agree = 0;
    for (i, row) in tarball_rows.iter().enumerate() {
        let file = format!("{}/{:04}.jpg", CIFAR_CLASSES[i % 10], i / 10);
        let other = by_file[file.as_str()];
        assert_eq!(
            row["true_class"], other["true_class"],
            "{file}: folder labels"
        );
        agree += usize::from(row["predicted_label"] == other["predicted_label"]);
        assert!(other["top3_class"].len() > 1, "top-3 columns are filled");
        assert_eq!(other["error"], "");
    }
    // A pure-Rust decoder (jpeg-decoder) agreed on 9,890: its rounding moved the images near a
    // decision boundary across it.
    assert_eq!(
        agree, 10_000,
        "folder and tarball predictions agree on {agree} of 10000"
    );
    // The same model with an 8-bit filter (a 32x32 image needs no resizing, so the same
    // values), its images waiting as 8-bit crops and scored in calls of 85 (`--max-call-mb 1`)
    // instead of one per partition: the same answers.
    Producer::stage(store, "ctr")
        .args(&[
            "--model",
            model.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
            "--model-name",
            "eight-bit",
            "--classes",
            &classes,
            "--filter",
            "opencv-linear",
        ])
        .ok();
    let small_calls = Producer::embedded(store, "ctr")
        .args(&[
            "--dataset",
            "datasets/cifar-jpeg",
            "--model-name",
            "eight-bit",
            "--labels",
            "folders",
            "--top-k",
            "3",
            "--max-call-mb",
            "1",
        ])
        .job();
    let small_rows = rows(&job_dir(root.path(), "ctr", &small_calls).join("scores.csv"));
    assert_eq!(small_rows.len(), folder_rows.len());
    for (a, b) in small_rows.iter().zip(&folder_rows) {
        assert_eq!(
            (&a["filename"], &a["predicted_label"], &a["top3_label"]),
            (&b["filename"], &b["predicted_label"], &b["top3_label"])
        );
        let confidence = |r: &HashMap<String, String>| r["confidence"].parse::<f64>().unwrap();
        assert!((confidence(a) - confidence(b)).abs() < 1e-5, "{a:?} {b:?}");
    }
    let accuracy = |run: &JobRun| -> f64 {
        let line = (run.said.lines())
            .find(|l| l.starts_with("Correctly predicted"))
            .unwrap();
        line.rsplit('(')
            .next()
            .unwrap()
            .trim_end_matches("%)")
            .parse()
            .unwrap()
    };
    assert_eq!(
        accuracy(&folder),
        accuracy(&tarball),
        "folder:\n{folder}\ntarball:\n{tarball}"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job_dir(root.path(), "ctr", &folder).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["classes"][3], "cat");
    assert_eq!(summary["unreadable"], 0);
    // The JPEG decoder the worker ran is said with the job's figures; a tarball job decodes
    // no file, and says none.
    let decoder = fleet_imaging::jpeg_decoder();
    assert_eq!(summary["decoders"], serde_json::json!([decoder]));
    assert!(
        folder.said.contains(&format!("JPEG decoding: {decoder}")),
        "{folder}"
    );
    let tarball_summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job_dir(root.path(), "ctr", &tarball).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert!(
        tarball_summary.get("decoders").is_none(),
        "{tarball_summary}"
    );
    assert!(!tarball.said.contains("JPEG decoding"), "{tarball}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("ctr/jobs")
                .join(&folder.id)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["dataset_kind"], "images");
    assert_eq!(manifest["labels"], "folders");
    assert_eq!(manifest["model_sha256"].as_str().unwrap().len(), 64);
}

/// A grayscale CNTK model saved by the C# API (inputs with two dynamic axes), raw 0..255
/// pixels in: all ten digits right, labelled by a CSV of indices.
#[test]
fn mnist_digits_are_all_recognised() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let classes = write(root.path(), "digits.txt", digits.join("\n").as_bytes());
    let models = fixture("cntk-models");
    let staged = Producer::stage(store, "ctr")
        .args(&[
            "--images",
            models.join("mnist-digits").to_str().unwrap(),
            "--prefix",
            "mnist",
            "--model",
            models.join("MNISTConvolution.model").to_str().unwrap(),
            "--model-name",
            "mnist",
            "--classes",
            &classes,
        ])
        .ok();
    assert!(staged.contains("input 1x28x28"), "{staged}");
    let csv: String = (0..10).map(|d| format!("digit_{d}.png,{d}\n")).collect();
    let labels = write(
        root.path(),
        "labels.csv",
        format!("filename,label\n{csv}").as_bytes(),
    );
    let output = Producer::embedded(store, "ctr")
        .args(&[
            "--dataset",
            "mnist",
            "--model-name",
            "mnist",
            "--labels",
            &labels,
        ])
        .job();
    assert!(
        output.contains("Correctly predicted 10 of 10 images (100.00%)"),
        "{output}"
    );
    for row in rows(&job_dir(root.path(), "ctr", &output).join("scores.csv")) {
        assert_eq!(
            row["filename"],
            format!("digit_{}.png", row["predicted_class"])
        );
    }
}

/// The six original CIFAR-10 PNGs with the walkthrough model, labelled by the fixture's map
/// file (with a header line), next to every kind of unreadable file: each gets its own row
/// with its error, and nothing else is lost.
#[test]
fn bad_images_get_their_own_rows_and_the_job_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let samples = fixture("cntk-models/cifar10-samples");
    for entry in std::fs::read_dir(&samples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), images.join(entry.file_name())).unwrap();
    }
    let jpeg = std::fs::read(fixture("cifar-10-test-jpeg/cat/0001.jpg")).unwrap();
    write(&images, "truncated.jpg", &jpeg[..jpeg.len() / 2]);
    write(&images, "text.jpg", b"a text file named like an image");
    write(&images, "empty.png", b"");
    write(&images, "bomb.png", &png_header_claiming(100_000, 100_000));
    Producer::stage(store, "ctr")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "mixed"])
        .ok();
    let output = Producer::embedded(store, "ctr")
        .args(&["--dataset", "mixed", "--labels", "labels.tsv"])
        .job();
    assert!(
        output.contains(
            "Correctly predicted 6 of 6 images (100.00%); 4 of 10 images could not be scored"
        ),
        "{output}"
    );
    let rows = rows(&job_dir(root.path(), "ctr", &output).join("scores.csv"));
    assert_eq!(rows.len(), 10);
    let error = |file: &str| rows.iter().find(|r| r["filename"] == file).unwrap()["error"].clone();
    assert!(
        error("truncated.jpg").contains("corrupt or truncated"),
        "{}",
        error("truncated.jpg")
    );
    assert!(
        error("text.jpg").contains("not an image"),
        "{}",
        error("text.jpg")
    );
    assert_eq!(error("empty.png"), "empty file");
    assert!(
        error("bomb.png").contains("100000x100000"),
        "{}",
        error("bomb.png")
    );
    assert_eq!(error("cifar10_test_00000.png"), "");
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job_dir(root.path(), "ctr", &output).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["scored"].as_u64(), summary["unreadable"].as_u64()),
        (Some(6), Some(4))
    );
}

/// JPEGs whose entropy coding is arithmetic (`jpegtran -arithmetic` of fixture files, so the
/// same coefficients as the originals, sequential and progressive, one with an EXIF
/// orientation) decode to the originals' pixels and score as they do; files of formats this
/// product does not read, named like images it reads (a phone's HEIC saved as `.jpg`), are
/// named for what they are, never called corrupt.
#[test]
fn arithmetic_coded_jpegs_score_as_their_originals_and_unread_formats_are_named() {
    let arithmetic = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/arithmetic");
    let cat = fixture("cifar-10-test-jpeg/cat/0000.jpg");
    let hopper = fixture("real-photos/photos/pillow_hopper_orientation_6.jpg");
    let twins = [
        ("cat-0000.jpg", &cat),
        ("cat-0000-progressive.jpg", &cat),
        ("pillow_hopper_orientation_6.jpg", &hopper),
    ];
    let limits = fleet_imaging::DecodeLimits {
        max_pixels: 1 << 26,
        max_scans: 1000,
    };
    for (name, original) in twins {
        let decoded = fleet_imaging::decode(&std::fs::read(arithmetic.join(name)).unwrap(), limits)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = fleet_imaging::decode(&std::fs::read(original).unwrap(), limits).unwrap();
        assert!(
            decoded == expected,
            "{name}: other pixels than its original"
        );
    }

    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(&cat, images.join("original-cat.jpg")).unwrap();
    std::fs::copy(&hopper, images.join("original-hopper.jpg")).unwrap();
    for (name, _) in twins {
        std::fs::copy(arithmetic.join(name), images.join(name)).unwrap();
    }
    let body = [0u8; 64];
    for (name, head) in [
        ("scan.png", &b"II*\0\x08\0\0\0"[..]),
        ("phone.jpg", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
        ("photo.webp", b"\0\0\0\x20ftypavif\0\0\0\0avifmif1miaf"),
    ] {
        write(&images, name, &[head, &body].concat());
    }
    Producer::stage(store, "ctr")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "coded"])
        .ok();
    let output = Producer::embedded(store, "ctr")
        .args(&["--dataset", "coded", "--top-k", "3"])
        .job();
    let rows = rows(&job_dir(root.path(), "ctr", &output).join("scores.csv"));
    let row = |file: &str| rows.iter().find(|r| r["filename"] == file).unwrap();
    let answer = |file: &str| {
        let row = row(file);
        assert_eq!(row["error"], "", "{file}");
        let mut answer: Vec<(String, String)> = row
            .iter()
            .filter(|(column, _)| !["index", "filename"].contains(&column.as_str()))
            .map(|(column, value)| (column.clone(), value.clone()))
            .collect();
        answer.sort();
        answer
    };
    for (twin, original) in [
        ("cat-0000.jpg", "original-cat.jpg"),
        ("cat-0000-progressive.jpg", "original-cat.jpg"),
        ("pillow_hopper_orientation_6.jpg", "original-hopper.jpg"),
    ] {
        assert_eq!(answer(twin), answer(original), "{twin}");
    }
    for (file, format) in [
        ("scan.png", "TIFF"),
        ("phone.jpg", "HEIF/HEIC"),
        ("photo.webp", "AVIF"),
    ] {
        let error = &row(file)["error"];
        assert!(
            error.contains(&format!(
                "not an image this product reads (a {format} file; it reads JPEG"
            )),
            "{file}: {error}"
        );
    }
}

/// The fix a job's folder-label check names, as a user types it: `producer stage --model-name
/// M --classes FILE` names the classes of the staged model (no model file again, and none of
/// the walkthrough's inputs fetched), after which the folders label the images. A label file
/// that labels none of the images is refused, not taken as "no labels".
#[test]
fn classes_are_named_for_a_staged_model_and_a_label_file_that_labels_nothing_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let images = root.path().join("images");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..3 {
            std::fs::copy(
                fixture(&format!("cifar-10-test-jpeg/{class}/{i:04}.jpg")),
                images.join(class).join(format!("{i}.jpg")),
            )
            .unwrap();
        }
    }
    Producer::stage(store, "ctr")
        .args(&["--images", images.to_str().unwrap(), "--prefix", "pets"])
        .ok();
    let job = |labels: &str| {
        Producer::embedded(store, "ctr").args(&["--dataset", "pets", "--labels", labels])
    };
    let err = job("folders").err();
    assert!(
        err.contains("producer stage --model-name MODEL --classes FILE"),
        "{err}"
    );

    let wrong = write(root.path(), "three.txt", b"cat\ndog\nbird\n");
    let err = Producer::stage(store, "ctr")
        .args(&["--model-name", "resnet20", "--classes", &wrong])
        .err();
    assert!(
        err.contains("names 3 classes, but model resnet20 has 10"),
        "{err}"
    );
    let classes = write(
        root.path(),
        "classes.txt",
        CIFAR_CLASSES.join("\n").as_bytes(),
    );
    let staged = Producer::stage(store, "ctr")
        .args(&["--model-name", "resnet20", "--classes", &classes])
        .ok();
    assert_eq!(
        staged.trim(),
        format!("classes {classes} -> models/resnet20.json (10 classes)"),
        "only the classes are staged"
    );
    let output = job("folders").job();
    assert!(output.contains("of 6 images"), "{output}");
    let rows = rows(&job_dir(root.path(), "ctr", &output).join("scores.csv"));
    for row in &rows {
        let folder = row["filename"].split('/').next().unwrap();
        assert_eq!(row["true_class"], folder, "{row:?}");
    }

    let elsewhere = write(
        root.path(),
        "elsewhere.csv",
        b"filename,label\nkitten.jpg,cat\npuppy.jpg,dog\n",
    );
    let err = job(&elsewhere).err();
    assert!(
        err.contains("it labels none of the 6 images (line 3 names \"puppy.jpg\"")
            && err.contains("named like \"cat/0.jpg\""),
        "{err}"
    );
    // Mistakes get a suggestion: a keyword mistyped, a model misnamed.
    let err = job("folder").err();
    assert!(err.contains("did you mean --labels folders?"), "{err}");
    let err = Producer::embedded(store, "ctr")
        .args(&["--dataset", "pets", "--model-name", "resnet"])
        .err();
    assert!(
        err.contains("model resnet is not staged") && err.contains("staged there: resnet20;"),
        "{err}"
    );
}

/// A PNG whose header claims `width` x `height` (valid CRC), followed by a few bytes of data.
fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 1, 1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[0, 0, 0]).unwrap();
    writer.finish().unwrap();
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = {
        let mut crc = !0u32;
        for &b in &out[12..29] {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Without labels, a job reports predictions and their distribution, no accuracy; a model of
/// another class count than the tarball's labels is refused with what to do.
#[test]
fn unlabelled_jobs_and_mismatched_labels() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let output = Producer::stage(store, "ctr")
        .args(&[
            "--images",
            fixture("cntk-models/mnist-digits").to_str().unwrap(),
            "--prefix",
            "digits",
            "--model",
            fixture("cntk-models/MNISTConvolution.model")
                .to_str()
                .unwrap(),
            "--model-name",
            "mnist",
        ])
        .ok();
    assert!(output.contains("10 classes"), "{output}");
    let output = Producer::embedded(store, "ctr")
        .args(&["--dataset", "digits", "--model-name", "mnist"])
        .job();
    assert!(
        output.contains("Scored 10 images (no true labels)"),
        "{output}"
    );
    // The prefix as users type it, with a trailing slash or a leading `./`.
    for prefix in ["digits/", "./digits"] {
        let again = Producer::embedded(store, "ctr")
            .args(&["--dataset", prefix, "--model-name", "mnist"])
            .job();
        assert!(again.contains("Scored 10 images"), "{prefix}: {again}");
    }
    let dir = job_dir(root.path(), "ctr", &output);
    assert!(!dir.join("confusion.csv").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["accuracy"].is_null());
    let predicted: u64 = summary["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["predicted"].as_u64().unwrap())
        .sum();
    assert_eq!(predicted, 10);
    assert_eq!(
        summary["classes"][0], "class_0",
        "no names given: generic names"
    );

    // Folder labels need class names.
    let error = Producer::embedded(store, "ctr")
        .args(&[
            "--dataset",
            "digits",
            "--model-name",
            "mnist",
            "--labels",
            "folders",
        ])
        .err();
    assert!(
        error.contains("producer stage --model-name MODEL --classes FILE"),
        "{error}"
    );
    // A mean image of another size than the model's input is refused at staging.
    let error = Producer::stage(store, "ctr")
        .args(&[
            "--model-name",
            "mnist",
            "--mean-image",
            fixture("CIFAR-10_mean.xml").to_str().unwrap(),
        ])
        .err();
    assert!(
        error.contains("the model takes 28x28 with 1 channels"),
        "{error}"
    );
    // An empty prefix says what to do.
    let error = Producer::embedded(store, "ctr")
        .args(&["--dataset", "nothing-here", "--model-name", "mnist"])
        .err();
    assert!(error.contains("no images under nothing-here/"), "{error}");
}
