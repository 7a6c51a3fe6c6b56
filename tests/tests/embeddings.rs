//! Embeddings: any tensor of a model written as a vector an image, in the Parquet results.
//!
//! - An intermediate tensor of a real classifier (the fixture SqueezeNet's pooled features,
//!   `pool10_1`) over the fixture's real photos equals what ONNX Runtime gives for that tensor
//!   on the reference inputs (torchvision's crops), and the job's predictions are those of the
//!   same model staged without it.
//! - A model staged for its embedding alone, whose vectors (48 KiB an image, 24 MiB a
//!   partition: more than a RabbitMQ message may hold) go through the store, over RabbitMQ
//!   and Azurite: every vector read back is the image's own.

use std::collections::HashMap;
use std::path::Path;

use cntk_onnx::proto::onnx::{AttributeProto, ModelProto, ValueInfoProto};
use fleet_tests::graph::{self, node};
use fleet_tests::real_photos::RECIPE;
use fleet_tests::{
    Fleet, Producer, fixture, job_id, parquet_vectors, run_ok, run_with, spawn, stop, terminate,
};
use prost::Message;

/// Decoding limits well above the fixtures' images.
const LIMITS: fleet_imaging::DecodeLimits = fleet_imaging::DecodeLimits {
    max_pixels: 1 << 26,
    max_scans: 1000,
};

/// The fixture's SqueezeNet with `pool10_1` made an output: built here from the model's
/// protobuf, apart from the product's own way of doing it.
fn squeezenet_with_pool10() -> Vec<u8> {
    let bytes = std::fs::read(fixture("real-photos/model/SqueezeNet_fp16.onnx")).unwrap();
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph.output.push(ValueInfoProto {
        name: "pool10_1".into(),
        ..Default::default()
    });
    model.encode_to_vec()
}

/// ONNX Runtime's `pool10_1` of the SqueezeNet for a 224x224 RGB crop: the model's recipe
/// (BGR, raw 0..255, NCHW) fed as float16, as the model takes it.
fn reference_features(session: &mut ort::session::Session, crop: &Path) -> Vec<f32> {
    let image = fleet_imaging::decode(&std::fs::read(crop).unwrap(), LIMITS).unwrap();
    assert_eq!((image.width, image.height, image.channels), (224, 224, 3));
    let mut input = vec![half::f16::ZERO; 3 * 224 * 224];
    for (i, pixel) in image.data.chunks_exact(3).enumerate() {
        for (c, bgr) in [2, 1, 0].into_iter().enumerate() {
            input[c * 224 * 224 + i] = half::f16::from_f32(f32::from(pixel[bgr]));
        }
    }
    let tensor = ort::value::TensorRef::from_array_view(([1, 3, 224, 224], &input[..])).unwrap();
    let outputs = session.run(ort::inputs!["data_0" => tensor]).unwrap();
    let (shape, values) = outputs["pool10_1"]
        .try_extract_tensor::<half::f16>()
        .unwrap();
    assert_eq!(shape.to_vec(), [1, 1000, 1, 1]);
    values.iter().map(|v| v.to_f32()).collect()
}

#[test]
fn an_intermediate_tensor_of_a_real_classifier_is_what_onnx_runtime_gives() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    Producer::stage(store, "photos")
        .args(&[
            "--images",
            fixture("real-photos/photos").to_str().unwrap(),
            "--prefix",
            "photos",
        ])
        .ok();
    let model = fixture("real-photos/model/SqueezeNet_fp16.onnx");
    let classes = fixture("real-photos/synset_words.txt");
    let stage = |name: &str, extra: &[&str]| {
        let mut args = vec![
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
        ];
        args.extend(RECIPE);
        args.extend(extra);
        run_ok("producer", &args)
    };
    stage("plain", &[]);
    let staged = stage("features", &["--embedding", "pool10_1"]);
    assert!(
        staged.contains("pool10_1 made an output")
            && staged
                .contains("column embedding <- tensor pool10_1: 1000 values an image, float32"),
        "{staged}"
    );
    let job = |model: &str| {
        let output = Producer::embedded(store, "photos")
            .args(&["--dataset", "photos", "--model-name", model])
            .job();
        output.id
    };
    let (plain, features) = (job("plain"), job("features"));
    let container = fleet_storage::local::LocalStore::open(Path::new(store), "photos").unwrap();

    // The predictions are the model's, embedding or not.
    let csv = |job: &str| {
        std::fs::read_to_string(Path::new(store).join(format!("photos/results/{job}/scores.csv")))
            .unwrap()
    };
    assert_eq!(csv(&plain), csv(&features));
    let summary: fleet_protocol::Summary = serde_json::from_slice(
        &std::fs::read(Path::new(store).join(format!("photos/results/{features}/summary.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary.embeddings.len(), 1);
    assert_eq!(
        (
            summary.embeddings[0].column.name.as_str(),
            summary.embeddings[0].column.dim,
            summary.embeddings[0].images
        ),
        ("embedding", 1000, 150)
    );

    // Each photo's vector is ONNX Runtime's pool10_1 on torchvision's crop of it.
    let mut session =
        ort::session::Session::builder(fleet_inference::runtime::environment().unwrap())
            .unwrap()
            .commit_from_memory(&squeezenet_with_pool10())
            .unwrap();
    let rows = parquet_vectors(&container, &features, "embedding");
    assert_eq!(rows.len(), 150);
    let mut worst = 0.0f32;
    for (name, vector) in &rows {
        let vector = vector
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no vector"));
        let stem = Path::new(name).file_stem().unwrap().to_str().unwrap();
        let crop = fixture(&format!("real-photos/expected/torchvision/{stem}.png"));
        let expected = reference_features(&mut session, &crop);
        assert_eq!(vector.len(), expected.len(), "{name}");
        for (got, want) in vector.iter().zip(&expected) {
            worst = worst.max((got - want).abs());
        }
    }
    // The same float16 values, widened: equal, not merely close.
    assert_eq!(
        worst, 0.0,
        "largest difference from ONNX Runtime's pool10_1"
    );
}

/// An embedding model: each 32x32 RGB image's values, flattened (CHW), four times over: 12,288
/// values an image, each known from the image itself.
fn fourfold_model() -> Vec<u8> {
    let mut concat = node("Concat", &["flat", "flat", "flat", "flat"], "features");
    concat.attribute = vec![AttributeProto::int("axis", 1)];
    graph::model(
        "fourfold",
        vec![node("Flatten", &["input"], "flat"), concat],
        Vec::new(),
        ("input", &[None, Some(3), Some(32), Some(32)]),
        ("features", &[None, Some(4 * 3072)]),
    )
}

#[test]
fn an_embedding_model_with_large_vectors_runs_over_the_fleet() {
    let fleet = Fleet::isolated();
    let env = fleet.env();
    let root = tempfile::tempdir().unwrap();
    // 600 of the CIFAR-10 test JPEGs: two partitions, one of 500 images.
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut originals = HashMap::new();
    for class in ["cat", "ship"] {
        for i in 0..300 {
            let name = format!("{class}-{i:04}.jpg");
            let from = fixture(&format!("cifar-10-test-jpeg/{class}/{i:04}.jpg"));
            std::fs::copy(&from, images.join(&name)).unwrap();
            originals.insert(name, from);
        }
    }
    let model = root.path().join("fourfold.onnx");
    std::fs::write(&model, fourfold_model()).unwrap();
    for args in [
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
            model.to_str().unwrap(),
            "--model-name",
            "fourfold",
            "--embedding-only",
        ],
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
    let out = run_with(
        "producer",
        &["--dataset", "cifar", "--model-name", "fourfold", "--wait"],
        &env,
    );
    for worker in workers {
        terminate(worker);
    }
    let collector = stop(collector);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{stdout}{stderr}\n{}",
        String::from_utf8_lossy(&collector.stderr)
    );
    assert!(
        stderr.contains(
            "Scored 600 images (no classes); 600 vectors of 12288 values in column embedding"
        ),
        "{stderr}"
    );
    let job = job_id(&stdout);
    let store = fleet.store();
    // No predictions: the rows say which images were scored.
    let scores = fleet.scores(&job);
    assert_eq!(scores.lines().next(), Some("index,filename,error"));
    assert_eq!(scores.lines().count(), 601);
    // Each image's vector is its own pixels, four times (the model's 0..255 RGB input).
    let rows = parquet_vectors(store.as_ref(), &job, "embedding");
    assert_eq!(rows.len(), 600);
    for (name, vector) in &rows {
        let vector = vector
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no vector"));
        let image =
            fleet_imaging::decode(&std::fs::read(&originals[name]).unwrap(), LIMITS).unwrap();
        let mut planes = vec![0.0f32; 3072];
        for (i, pixel) in image.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * 1024 + i] = f32::from(pixel[c]);
            }
        }
        assert_eq!(vector.len(), 4 * 3072, "{name}");
        for copy in vector.chunks_exact(3072) {
            assert_eq!(copy, planes.as_slice(), "{name}");
        }
    }
    // The vectors blobs were the job's working state: gone with it.
    assert!(
        store
            .list(&fleet_protocol::job::vectors_prefix(&job))
            .unwrap()
            .is_empty()
    );
}

/// An embedding model's jobs build on each other as a classifier's do: an incremental job
/// scores only the images added since, and the earlier job's vectors stand for the rest.
#[test]
fn an_incremental_embedding_job_scores_only_what_is_new() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let copy = |from: usize, to: usize| {
        for i in from..to {
            let name = format!("dog-{i:04}.jpg");
            let source = fixture(&format!("cifar-10-test-jpeg/dog/{i:04}.jpg"));
            std::fs::copy(source, images.join(name)).unwrap();
        }
    };
    copy(0, 20);
    let model = root.path().join("fourfold.onnx");
    std::fs::write(&model, fourfold_model()).unwrap();
    let stage_images = || {
        Producer::stage(store, "pets")
            .args(&["--images", images.to_str().unwrap(), "--prefix", "dogs"])
            .ok()
    };
    stage_images();
    Producer::stage(store, "pets")
        .args(&[
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "fourfold",
            "--embedding-only",
            "--embedding-precision",
            "float16",
        ])
        .ok();
    let run = || {
        Producer::embedded(store, "pets")
            .args(&["--dataset", "dogs", "--incremental"])
            .job()
    };
    let first = run();
    assert!(first.contains("Scored 20 images (no classes)"), "{first}");
    copy(20, 25);
    stage_images();
    let second = run();
    assert!(
        second.contains("Scored 5 images (no classes)")
            && second.contains(&format!(
                "incremental: 20 unchanged images are in the rows of job {}",
                first.id
            )),
        "{second}"
    );
    let container = fleet_storage::local::LocalStore::open(Path::new(store), "pets").unwrap();
    let rows = parquet_vectors(&container, &second.id, "embedding");
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dog-0020.jpg",
            "dog-0021.jpg",
            "dog-0022.jpg",
            "dog-0023.jpg",
            "dog-0024.jpg"
        ]
    );
    assert!(
        rows.iter()
            .all(|(_, v)| v.as_ref().is_some_and(|v| v.len() == 4 * 3072))
    );
}
