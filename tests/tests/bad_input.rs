//! Bad input is stopped with an error that names the problem, and nothing is written half-way.

use std::io::Write;
use std::path::Path;

use cntk_onnx::proto::onnx::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use fleet_tests::{fixture, run_err, run_ok, stage_fixtures};
use prost::Message;

fn stage(store: &Path, what: &str, source: &Path) -> String {
    run_err(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "cifar",
            &format!("--{what}"),
            source.to_str().unwrap(),
            "--only",
            what,
        ],
    )
}

fn run_job(store: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "--store",
        store.to_str().unwrap(),
        "--container",
        "cifar",
        "--embedded",
    ];
    args.extend_from_slice(extra);
    run_err("producer", &args)
}

/// No result files for any job, not even the sample grid drawn before the failure.
fn assert_no_results(store: &Path) {
    let files = walk(&store.join("cifar/results"));
    assert!(files.is_empty(), "result files written: {files:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

#[test]
fn truncated_and_corrupt_tarballs_are_refused_at_staging_and_at_submission() {
    let root = tempfile::tempdir().unwrap();
    let tarball = std::fs::read(fixture("cifar-10-python.tar.gz")).unwrap();
    let truncated = write(
        root.path(),
        "truncated.tar.gz",
        &tarball[..tarball.len() / 2],
    );
    let mut flipped = tarball.clone();
    for b in &mut flipped[tarball.len() / 3..tarball.len() / 3 + 64] {
        *b ^= 0x5a;
    }
    let corrupt = write(root.path(), "corrupt.tar.gz", &flipped);

    let store = root.path().join("store");
    for bad in [&truncated, &corrupt] {
        let err = stage(&store, "tarball", bad);
        assert!(err.contains("is corrupt or truncated"), "{err}");
        assert!(!store.join("cifar/cifar-10-python.tar.gz").exists());
    }

    // Past staging (the blob damaged in the store): the job is cancelled, nothing is written.
    stage_fixtures(&store, "cifar");
    std::fs::copy(&truncated, store.join("cifar/cifar-10-python.tar.gz")).unwrap();
    let err = run_job(&store, &[]);
    assert!(err.contains("is corrupt or truncated"), "{err}");
    assert_no_results(&store);
    // `producer status` shows the job cancelled, with the reason.
    let listed = run_ok(
        "producer",
        &[
            "status",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "cifar",
        ],
    );
    let line = listed
        .lines()
        .find(|l| l.contains(" cancelled "))
        .unwrap_or_else(|| panic!("no cancelled job listed:\n{listed}"));
    assert!(line.contains("is corrupt or truncated"), "{line}");
}

#[test]
fn a_missing_batch_is_named_with_what_the_tarball_holds() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let err = run_job(root.path(), &["--batches", "data_batch_1"]);
    assert!(
        err.contains("has no batch named data_batch_1; it holds: test_batch"),
        "{err}"
    );
    assert_no_results(root.path());
}

#[test]
fn a_tarball_without_cifar_batches_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_cksum();
    tar.append_data(&mut header, "notes/readme.txt", &b"hello"[..])
        .unwrap();
    let bytes = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    let path = write(root.path(), "other.tar.gz", &gz.finish().unwrap());
    let err = stage(&root.path().join("store"), "tarball", &path);
    assert!(err.contains("holds no CIFAR-10 batches"), "{err}");
}

#[test]
fn bad_mean_images_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    // A mean image belongs to a staged model: it is checked against the model's input.
    let err = stage(&store, "mean-image", &fixture("CIFAR-10_mean.xml"));
    assert!(
        err.contains("has no staged model; stage one with `producer stage --model FILE`"),
        "{err}"
    );
    stage_fixtures(&store, "cifar");
    let staged = std::fs::read(store.join("cifar/models/resnet20.mean.xml")).unwrap();
    let small = write(
        root.path(),
        "small.xml",
        b"<?xml version=\"1.0\"?><opencv_storage><MeanImg type_id=\"opencv-matrix\"><rows>1</rows><cols>3</cols><dt>f</dt><data>1 2 3</data></MeanImg></opencv_storage>",
    );
    let err = stage(&store, "mean-image", &small);
    assert!(
        err.contains("small.xml") && err.contains("the model takes 32x32 with 3 channels"),
        "{err}"
    );
    let xml = std::fs::read(fixture("CIFAR-10_mean.xml")).unwrap();
    let cut = write(root.path(), "cut.xml", &xml[..xml.len() / 2]);
    let err = stage(&store, "mean-image", &cut);
    assert!(err.contains("mean image cut.xml"), "{err}");
    assert_eq!(
        std::fs::read(store.join("cifar/models/resnet20.mean.xml")).unwrap(),
        staged,
        "the staged mean image is untouched"
    );
}

/// An ONNX classifier taking `[N, channels, side, side]` and returning `[N, classes]`: global
/// average pool, then a weight matrix whose last column is largest, so every image is
/// predicted as the last class.
fn classifier_model(channels: i64, side: i64, classes: i64) -> Vec<u8> {
    exported_model(channels, Some(side), classes, None, 1)
}

/// [`classifier_model`] with its image side and batch size fixed (`Some`) or left free, and
/// input elements of ONNX type `elem_type` (1: float32, 10: float16; any other, e.g. 2 for
/// uint8, is cast to float32 inside) and output elements of float16 for 10, else float32.
fn exported_model(
    channels: i64,
    side: Option<i64>,
    classes: i64,
    batch: Option<i64>,
    elem_type: i32,
) -> Vec<u8> {
    let dims = |d: &[Option<i64>]| TensorShapeProto {
        dim: d
            .iter()
            .map(|v| Dimension {
                value: Some(v.map_or(DimensionValue::Param("N".into()), DimensionValue::Value)),
            })
            .collect(),
    };
    // The type the graph computes in.
    let float = if elem_type == 10 { 10 } else { 1 };
    let info = |name: &str, elem_type, shape| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(shape),
            }),
        }),
    };
    let node = |op: &str, inputs: &[&str], o: &str| NodeProto {
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![o.into()],
        name: o.into(),
        op_type: op.into(),
        ..Default::default()
    };
    let weights: Vec<u8> = match float {
        1 => (0..channels * classes)
            .flat_map(|i| ((i % classes + 1) as f32 * 0.01).to_le_bytes())
            .collect(),
        _ => vec![0; (channels * classes * 2) as usize],
    };
    let mut nodes = vec![
        node("GlobalAveragePool", &["pixels"], "pooled"),
        node("Flatten", &["pooled"], "flat"),
        node("MatMul", &["flat", "weights"], "output"),
    ];
    if elem_type == float {
        nodes[0].input = vec!["input".into()];
    } else {
        let mut cast = node("Cast", &["input"], "pixels");
        cast.attribute = vec![AttributeProto::int("to", 1)];
        nodes.insert(0, cast);
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "classifier".into(),
            node: nodes,
            initializer: vec![TensorProto {
                dims: vec![channels, classes],
                data_type: float,
                name: "weights".into(),
                raw_data: weights,
            }],
            input: vec![info(
                "input",
                elem_type,
                dims(&[batch, Some(channels), side, side]),
            )],
            output: vec![info("output", float, dims(&[batch, Some(classes)]))],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn models_that_do_not_fit_or_are_not_models_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let wrong = write(
        root.path(),
        "five-channels.onnx",
        &classifier_model(5, 32, 10),
    );
    let err = stage(&store, "model", &wrong);
    assert!(
        err.contains("is not an image classifier") && err.contains("[-1, 5, 32, 32]"),
        "{err}"
    );

    let text = write(root.path(), "notes.dnn", b"this is not a model");
    let err = stage(&store, "model", &text);
    assert!(err.contains("notes.dnn: not a CNTK model"), "{err}");
    assert!(!store.join("cifar/models/resnet20.onnx").exists());

    // A file named as ONNX is explained as ONNX, not as a CNTK model it never claimed to be.
    let whole = classifier_model(3, 32, 10);
    let cut = write(root.path(), "cut.onnx", &whole[..whole.len() / 2]);
    let err = stage(&store, "model", &cut);
    assert!(
        err.contains("cut.onnx is not an ONNX model: its bytes are not an ONNX protobuf")
            && err.contains("copied whole"),
        "{err}"
    );

    // An input of bytes (float32 and float16 are read, other types are not): named, with the
    // way out.
    let bytes = write(
        root.path(),
        "bytes.onnx",
        &exported_model(3, Some(32), 10, None, 2),
    );
    let err = stage(&store, "model", &bytes);
    assert!(
        err.contains("its input input holds Uint8 values, not Float32 or Float16")
            && err.contains("export it with float inputs"),
        "{err}"
    );

    // A model of any fixed image size is accepted by the same path.
    let fits = write(
        root.path(),
        "imagenet-sized.onnx",
        &classifier_model(3, 224, 1000),
    );
    let staged = run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "cifar",
            "--model",
            fits.to_str().unwrap(),
            "--only",
            "model",
        ],
    );
    assert!(
        staged.contains("input 3x224x224") && staged.contains("1000 classes"),
        "{staged}"
    );
    // A size asked for that the model does not take.
    let err = run_err(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "cifar",
            "--model",
            fits.to_str().unwrap(),
            "--input-size",
            "32x32",
            "--only",
            "model",
        ],
    );
    assert!(
        err.contains("takes images of 224x224 at its input input, not the 32x32 asked for"),
        "{err}"
    );
}

/// `model` with the pooled features as a second graph output, listed before the classifier's.
fn with_features_output(model: &[u8]) -> Vec<u8> {
    let mut proto = ModelProto::decode(model).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let mut features = graph.output[0].clone();
    features.name = "flat".into();
    graph.output.insert(0, features);
    proto.encode_to_vec()
}

/// Models as users export them, each scoring as the same model with the batch free, the size
/// fixed and one output: a fixed batch size (a batch of one image is what `torch.onnx.export`
/// gives without dynamic axes) is run that many images at a time, the last call filled up; a
/// free image size is fed the size staged with `--input-size`; of several outputs, the one
/// staged with `--output-node` is read.
#[test]
fn models_exported_for_a_fixed_batch_any_image_size_or_several_outputs_score_as_the_same_model() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let store = root.path().to_str().unwrap();
    let mut scores = Vec::new();
    // Name, the model, what staging adds, and the refusal without it.
    let plain = exported_model(3, Some(32), 10, None, 1);
    let models: [(&str, Vec<u8>, &[&str], &str); 5] = [
        ("any", plain.clone(), &[], ""),
        ("one", exported_model(3, Some(32), 10, Some(1), 1), &[], ""),
        (
            "seven",
            exported_model(3, Some(32), 10, Some(7), 1),
            &[],
            "",
        ),
        (
            "free-size",
            exported_model(3, None, 10, None, 1),
            &["--input-size", "32x32"],
            "leaves the height and width of its input input free ([-1, 3, -1, -1]; -1: any \
             size): stage it with `--input-size HEIGHTxWIDTH`",
        ),
        (
            "two-outputs",
            with_features_output(&plain),
            &["--output-node", "output"],
            "has several outputs (flat, output): stage it with `--output-node NAME`",
        ),
    ];
    for (name, bytes, extra, refusal) in &models {
        let model = write(root.path(), &format!("{name}.onnx"), bytes);
        let mut args = vec![
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            name,
        ];
        if !refusal.is_empty() {
            // Refused without the flag, named with the way out.
            let err = run_err("producer", &args);
            assert!(err.contains(refusal), "{err}");
        }
        args.extend(*extra);
        run_ok("producer", &args);
        let output = fleet_tests::run_job(&[
            "--store",
            store,
            "--container",
            "cifar",
            "--embedded",
            "--model-name",
            name,
        ]);
        assert!(output.contains("of 10000 images"), "{output}");
        let results = root.path().join("cifar/results").join(&output.id);
        scores.push(std::fs::read_to_string(results.join("scores.csv")).unwrap());
    }
    assert_eq!(scores[1], scores[0], "batch 1 differs from any batch");
    assert_eq!(scores[2], scores[0], "batch 7 differs from any batch");
    assert_eq!(
        scores[3], scores[0],
        "the size given differs from the size fixed"
    );
    assert_eq!(
        scores[4], scores[0],
        "the output named differs from the only one"
    );
    // An output the model does not have.
    let model = write(root.path(), "named.onnx", &models[4].1);
    let err = run_err(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--model",
            model.to_str().unwrap(),
            "--output-node",
            "logits",
        ],
    );
    assert!(
        err.contains("it has no output logits (its outputs: flat, output)"),
        "{err}"
    );
}

/// The class count comes from the model: a 15-class model is not compared with the tarball's
/// 10 CIFAR-10 labels, and its predictions beyond class 9 are kept, never clamped.
#[test]
fn a_model_with_more_classes_than_the_labels_is_not_scored_against_them() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let model = write(root.path(), "fifteen.onnx", &classifier_model(3, 32, 15));
    let store = root.path().to_str().unwrap();
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "fifteen",
        ],
    );
    let err = run_job(root.path(), &["--model-name", "fifteen"]);
    assert!(
        err.contains("has 15 classes") && err.contains("--labels none"),
        "{err}"
    );
    assert_no_results(root.path());
    let output = fleet_tests::run_job(&[
        "--store",
        store,
        "--container",
        "cifar",
        "--embedded",
        "--model-name",
        "fifteen",
        "--labels",
        "none",
    ]);
    assert!(
        output.contains("Scored 10000 images (no true labels)"),
        "{output}"
    );
    let scores = std::fs::read_to_string(
        root.path()
            .join("cifar/results")
            .join(&output.id)
            .join("scores.csv"),
    )
    .unwrap();
    let second = scores.lines().nth(1).unwrap();
    assert!(
        second.starts_with("0,airplane_0000.png,,14,,class_14,"),
        "{second}"
    );
}

#[test]
fn a_job_on_an_unstaged_container_says_to_stage_first() {
    let root = tempfile::tempdir().unwrap();
    let err = run_job(root.path(), &[]);
    assert!(err.contains("container cifar does not exist"), "{err}");
    std::fs::create_dir_all(root.path().join("cifar")).unwrap();
    let err = run_job(root.path(), &[]);
    assert!(
        err.contains("has no staged model") && err.contains("producer stage"),
        "{err}"
    );
}

/// The fixture tarball with its test batch pickle edited by `edit`.
fn tarball_with_edited_batch(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut Vec<u8>),
) -> std::path::PathBuf {
    use std::io::Read;
    let source = std::fs::File::open(fixture("cifar-10-python.tar.gz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(source));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if path.ends_with("/test_batch") {
            edit(&mut bytes);
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, &path, bytes.as_slice())
            .unwrap();
    }
    write(dir, name, &builder.into_inner().unwrap().finish().unwrap())
}

/// Replaces the first occurrence of `from` (after `after`, if given) with `to`.
fn patch(bytes: &mut [u8], after: &[u8], from: &[u8], to: &[u8]) {
    let start = bytes
        .windows(after.len())
        .position(|w| w == after)
        .expect("anchor present")
        + after.len();
    let at = start
        + bytes[start..]
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn pickles_with_a_wrong_dtype_shape_or_label_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    // dtype: numpy's `u1` (uint8) becomes `f4`.
    let dtype = tarball_with_edited_batch(root.path(), "dtype.tar.gz", |b| {
        patch(b, b"numpy\ndtype\n", b"U\x02u1", b"U\x02f4")
    });
    let err = stage(&store, "tarball", &dtype);
    assert!(
        err.contains("batch test_batch is malformed") && err.contains("dtype f4, expected uint8"),
        "{err}"
    );
    // shape: rows of 3072 bytes become rows of 3071 (BININT2 little-endian).
    let shape = tarball_with_edited_batch(root.path(), "shape.tar.gz", |b| {
        patch(b, b"\x10\x27", b"M\x00\x0c", b"M\xff\x0b")
    });
    let err = stage(&store, "tarball", &shape);
    assert!(
        err.contains("batch test_batch is malformed") && err.contains("[10000, 3071]"),
        "{err}"
    );
    // labels: the first label (BININT1 0) becomes 12.
    let label = tarball_with_edited_batch(root.path(), "label.tar.gz", |b| {
        patch(b, b"labels", b"K\x00", b"K\x0c")
    });
    let err = stage(&store, "tarball", &label);
    assert!(
        err.contains("batch test_batch is malformed") && err.contains("label 12"),
        "{err}"
    );
    assert!(!store.join("cifar/cifar-10-python.tar.gz").exists());
}

/// A batch whose pickle nests a million lists (2 MB, compressed to a few kB) is refused with the
/// reason, at staging and when a tarball planted in the store is scored: no stack overflow.
#[test]
fn a_pickle_nesting_a_million_lists_is_refused_not_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let nested = tarball_with_edited_batch(root.path(), "nested.tar.gz", |b| {
        let n = 1_000_000;
        *b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b']', n));
        b.extend(std::iter::repeat_n(b'a', n - 1));
        b.push(b'.');
    });
    let err = stage(&store, "tarball", &nested);
    assert!(
        err.contains("batch test_batch") && err.contains("nested more than 100 deep"),
        "{err}"
    );
    // Planted past the staging checks, then scored.
    stage_fixtures(root.path(), "cifar");
    std::fs::copy(&nested, root.path().join("cifar/cifar-10-python.tar.gz")).unwrap();
    let err = run_job(root.path(), &[]);
    assert!(err.contains("nested more than 100 deep"), "{err}");
    assert_no_results(root.path());
}

/// A model whose output is not a number predicts nothing: ranking NaN would report an
/// arbitrary class with confidence NaN. Each image's row says why, and the job how many.
#[test]
fn a_model_that_outputs_nan_predicts_nothing_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "cifar");
    let mut proto = ModelProto::decode(&classifier_model(3, 32, 10)[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    // The classifier's logits are positive (positive weights, pixels 0..255): the square root
    // of their negation is NaN.
    let matmul = graph.node.last_mut().unwrap();
    (matmul.output, matmul.name) = (vec!["logits".into()], "logits".into());
    for (op, input, output) in [("Neg", "logits", "negated"), ("Sqrt", "negated", "output")] {
        graph.node.push(NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            ..Default::default()
        });
    }
    let model = write(root.path(), "nan.onnx", &proto.encode_to_vec());
    let store = root.path().to_str().unwrap();
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "nan",
        ],
    );
    let output = fleet_tests::run_job(&[
        "--store",
        store,
        "--container",
        "cifar",
        "--embedded",
        "--model-name",
        "nan",
    ]);
    assert!(
        output.contains("10000 of 10000 images could not be scored"),
        "{output}"
    );
    let scores = std::fs::read_to_string(
        root.path()
            .join("cifar/results")
            .join(&output.id)
            .join("scores.csv"),
    )
    .unwrap();
    let mut lines = scores.lines();
    assert!(lines.next().unwrap().ends_with(",error"));
    let row = lines.next().unwrap();
    assert!(
        row.contains("the model's output is not a number (NaN)"),
        "{row}"
    );
    assert!(
        !row.to_lowercase().contains(",nan,"),
        "no NaN confidence: {row}"
    );
}
