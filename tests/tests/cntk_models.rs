//! The importer on CNTK models of other vintages than the walkthrough's (`cntk-models/` in
//! the fixtures): a v1 BrainScript model, a v2 trainer checkpoint in the 2.0 beta layout, and
//! two of CNTK's own unit-test models, each converted and run in ONNX Runtime.

use cntk_onnx::{Options, Problem, import, import_with};
use fleet_dataset::{self as dataset, IMAGE_BYTES};
use fleet_inference::{InferenceOptions, Scorer};
use fleet_tests::{
    fixture, mean_image_hwc_bgr, run_graph, run_ok, test_batch, walkthrough_preprocess,
};

fn model(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("cntk-models/{name}"))).unwrap()
}

/// The fixture model `name` imported, its input and output shapes checked.
fn import_fixture(name: &str, input: &[i64], output: &[i64]) -> cntk_onnx::Imported {
    let imported = import(&model(name), name).unwrap();
    assert_eq!(
        (
            imported.input_shape.as_slice(),
            imported.output_shape.as_slice()
        ),
        (input, output),
        "{name}"
    );
    imported
}

/// The share of the test batch `onnx` gets right on `input`.
fn accuracy(onnx: &[u8], batch: &dataset::Batch, input: &[f32]) -> f64 {
    let options: InferenceOptions = fleet_service::cli::defaults().unwrap();
    let mut scorer = Scorer::load(onnx, "converted", &options).unwrap();
    let (mut logits, mut correct) = (Vec::new(), 0);
    for (start, chunk) in input.chunks(500 * IMAGE_BYTES).enumerate() {
        scorer
            .score(chunk, chunk.len() / IMAGE_BYTES, &mut logits)
            .unwrap();
        for (j, row) in logits.chunks_exact(10).enumerate() {
            let best = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            correct += usize::from(best == usize::from(batch.labels[start * 500 + j]));
        }
    }
    correct as f64 / batch.len() as f64
}

#[test]
fn a_cntk_v1_brainscript_model_converts_and_scores_far_above_chance() {
    let imported = import_fixture("cifar10.pretrained.cmf", &[-1, 3, 32, 32], &[-1, 10]);
    assert_eq!(imported.source_format, "CNTK v1 (model version 14)");
    // The saved output node, not the loss or the error metric beside it.
    assert_eq!(imported.output, "z");
    // Pixels 0..255 in: the network subtracts 128 itself.
    let batch = test_batch();
    let accuracy = accuracy(
        &imported.onnx,
        &batch,
        &walkthrough_preprocess(&batch.pixels, &[0.0; IMAGE_BYTES]),
    );
    println!("cifar10.pretrained.cmf: {:.2}% correct", accuracy * 100.0);
    assert!(accuracy > 0.65, "accuracy {accuracy}");
}

#[test]
fn a_v2_trainer_checkpoint_converts_its_classifier_not_its_loss() {
    let bytes = model("ConvNet_CIFAR10_DataAug_0.dnn");
    let imported = import(&bytes, "ConvNet_CIFAR10_DataAug_0.dnn").unwrap();
    assert_eq!(imported.source_format, "CNTK v2");
    assert_eq!(imported.output_shape, [-1, 10]);
    // One epoch of training only: weak, but far above chance (10%).
    let batch = test_batch();
    let accuracy = accuracy(
        &imported.onnx,
        &batch,
        &walkthrough_preprocess(&batch.pixels, &mean_image_hwc_bgr()),
    );
    println!(
        "ConvNet_CIFAR10_DataAug_0.dnn (output {}): {:.2}% correct",
        imported.output,
        accuracy * 100.0
    );
    assert!(accuracy > 0.3, "accuracy {accuracy}");
    // Another output is chosen by name; a name that is not there lists the ones that are.
    let chosen = import_with(
        &bytes,
        "ConvNet_CIFAR10_DataAug_0.dnn",
        &Options {
            output: Some(imported.output.clone()),
        },
    )
    .unwrap();
    assert!(
        chosen.onnx == imported.onnx,
        "naming the default output changed the graph"
    );
    let err = import_with(
        &bytes,
        "checkpoint.dnn",
        &Options {
            output: Some("no-such-node".into()),
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err.problem, Problem::NoSuchOutput { available, .. } if !available.is_empty()),
        "{err}"
    );
}

/// An early CNTK 2 trainer checkpoint keeps only its criteria at its root, as blocks (the loss
/// a `CrossEntropyWithSoftmax` block holding a `TransposeTimes`), with what the trainer sums
/// them into: the classifier converted is what the loss scores, and it reads the digits.
#[test]
fn an_early_checkpoint_of_criteria_blocks_converts_what_they_score() {
    let imported = import_fixture("mnist.early.cmf", &[-1, 28, 28], &[-1, 10]);
    assert_eq!(imported.source_format, "CNTK v2");
    for digit in [4, 9] {
        let path = fixture(&format!("cntk-models/node-cntk-digits/sample_{digit}.bmp"));
        let gray = image::open(&path).unwrap().to_luma8();
        // Raw pixels 0..255, or scaled to 0..1: the classifier says the same.
        for scale in [1.0, 1.0 / 255.0] {
            let input: Vec<f32> = (gray.as_raw().iter())
                .map(|&p| f32::from(p) * scale)
                .collect();
            let (shape, logits) = run_graph(&imported.onnx, &[1, 28, 28], &input);
            assert_eq!(shape, [1, 10]);
            let best = (0..10).fold(0, |b, k| if logits[k] > logits[b] { k } else { b });
            assert_eq!(
                best, digit,
                "sample_{digit}.bmp, pixels x {scale}: {logits:?}"
            );
        }
    }
}

/// BrainScript's ResNet of CNTK's ImageHandsOn tutorial: convolution kernels stored as
/// matrices, and shortcuts widened by splicing a tensor of size 1 in space onto the
/// subsampled input (broadcast along the spatial axes). It converts and runs; its answers are
/// not yet CNTK's (it scores at chance on the test batch), so no accuracy is claimed here.
#[test]
fn a_brainscript_resnet_with_broadcasting_splices_converts_and_runs() {
    let imported = import_fixture("cifar10.ResNet.cmf", &[-1, 3, 32, 32], &[-1, 10]);
    assert_eq!(imported.output, "z");
    // Every shortcut's splice: the subsampled input, then its zero padding broadcast in space.
    let batch = test_batch();
    let input = walkthrough_preprocess(&batch.pixels[..4 * IMAGE_BYTES], &[0.0; IMAGE_BYTES]);
    let (shape, logits) = run_graph(&imported.onnx, &[4, 3, 32, 32], &input);
    assert_eq!(shape, [4, 10]);
    assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
}

#[test]
fn cntk_unit_test_models_convert_and_run() {
    // `abs` of a (1, 2) input.
    let imported = import(&model("load_and_eval.dnn"), "load_and_eval.dnn").unwrap();
    let (shape, values) = run_graph(&imported.onnx, &[1, 1, 2], &[-10.0, 20.0]);
    assert_eq!((shape, values), (vec![1, 1, 2], vec![10.0, 20.0]));

    // Convolution, then the old five-input BatchNormalization (no running sample count),
    // then ReLU, over a 3x5x5 input.
    let name = "batch.norm.no.sample.count.v2.bin";
    let imported = import(&model(name), name).unwrap();
    assert_eq!(imported.input_shape, [-1, 3, 5, 5]);
    let input: Vec<f32> = (0..75).map(|i| (i as f32 - 37.0) / 10.0).collect();
    let (shape, values) = run_graph(&imported.onnx, &[1, 3, 5, 5], &input);
    assert_eq!(shape, [1, 16, 5, 5]);
    assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(values.iter().any(|v| *v > 0.0), "all outputs are zero");
}

#[test]
fn inspect_shows_the_saved_graph_with_what_is_not_supported() {
    let path = fixture("cntk-models/cifar10.pretrained.cmf");
    let graph = run_ok(
        "producer",
        &["convert", "--inspect", path.to_str().unwrap()],
    );
    assert!(
        graph.contains("format: CNTK v1 (model version 14)"),
        "{graph}"
    );
    assert!(graph.contains("output: z\n"), "{graph}");
    // The training criterion is listed, marked, and reads the classifier's output.
    let criterion = graph
        .lines()
        .find(|l| l.contains(" ce <- "))
        .unwrap_or_else(|| panic!("no ce line in {graph}"));
    assert!(
        criterion.starts_with("* CrossEntropyWithSoftmax"),
        "{criterion}"
    );
    assert!(
        criterion.contains("labels") && criterion.contains('z'),
        "{criterion}"
    );
    // Inputs come before the nodes that read them.
    let position = |needle: &str| graph.find(needle).unwrap_or_else(|| panic!("{needle}"));
    assert!(position("InputValue           features") < position(" z.featNorm <- features"));
    assert!(
        !path.with_extension("onnx").exists(),
        "--inspect writes nothing"
    );

    let path = fixture("cntk-models/ConvNet_CIFAR10_DataAug_0.dnn");
    let graph = run_ok(
        "producer",
        &["convert", "--inspect", path.to_str().unwrap()],
    );
    assert!(
        graph.contains("format: CNTK v2\noutput: Plus259 (Plus424)"),
        "{graph}"
    );
    assert!(graph.contains("\n  Pooling "), "{graph}");
    assert!(graph.contains("poolingWindowShape=[3, 3]"), "{graph}");
}
