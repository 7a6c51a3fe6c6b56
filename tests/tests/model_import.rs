//! The CNTK importer against the real model: reference logits through ONNX Runtime, and the
//! errors for files it must refuse.

use cntk_onnx::proto::cntk::{Dictionary, Value};
use cntk_onnx::{Problem, import};
use fleet_dataset::{self as dataset, IMAGE_BYTES};
use fleet_inference::{InferenceOptions, Scorer};
use fleet_tests::{fixture, mean_image_hwc_bgr, walkthrough_preprocess};
use model_tools::quantize::{CALIBRATION_IMAGES, quantize};
use prost::Message;

const MODEL: &str = "resnet20_meanimage_159.dnn";

/// Session options as the binaries take them with no flags given.
fn options() -> InferenceOptions {
    fleet_service::cli::defaults().unwrap()
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(fixture(MODEL)).unwrap()
}

/// The fixture test batch, preprocessed as the walkthrough does.
fn test_batch() -> (dataset::Batch, Vec<f32>) {
    let batch = fleet_tests::test_batch();
    let input = walkthrough_preprocess(&batch.pixels, &mean_image_hwc_bgr());
    (batch, input)
}

#[test]
fn converted_model_reproduces_the_reference_logits() {
    let imported = import(&model_bytes(), MODEL).unwrap();
    assert_eq!(imported.input_shape, vec![-1, 3, 32, 32]);
    assert_eq!(imported.output_shape, vec![-1, 10]);
    let mut scorer = Scorer::load(&imported.onnx, MODEL, &options()).unwrap();

    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference_logits.json")).unwrap()).unwrap();
    let images = reference["images"].as_array().unwrap();
    assert_eq!(images.len(), 16);
    let (batch, input) = test_batch();
    let mut logits = Vec::new();
    scorer
        .score(&input[..16 * IMAGE_BYTES], 16, &mut logits)
        .unwrap();

    let mut worst = 0f64;
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["index"].as_u64(), Some(i as u64));
        assert_eq!(
            image["filename"].as_str(),
            Some(batch.filenames[i].as_str())
        );
        let expected: Vec<f64> = image["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (k, e) in expected.iter().enumerate() {
            let got = f64::from(logits[i * 10 + k]);
            worst = worst.max((got - e).abs());
            assert!(
                (got - e).abs() <= 1e-3,
                "image {i} logit {k}: got {got}, reference {e}"
            );
        }
    }
    println!("largest logit difference from the reference: {worst:.2e}");
}

/// Correct predictions of `scorer` over the whole batch, 500 images per call.
fn correct(scorer: &mut Scorer, batch: &dataset::Batch, input: &[f32]) -> usize {
    let mut logits = Vec::new();
    let mut correct = 0;
    for (start, chunk) in input.chunks(500 * IMAGE_BYTES).enumerate() {
        scorer
            .score(chunk, chunk.len() / IMAGE_BYTES, &mut logits)
            .unwrap();
        for (j, row) in logits.chunks_exact(10).enumerate() {
            let predicted = row
                .iter()
                .enumerate()
                .fold(0, |best, (k, v)| if *v > row[best] { k } else { best });
            correct += usize::from(predicted == batch.labels[start * 500 + j] as usize);
        }
    }
    correct
}

#[test]
fn converted_model_scores_the_whole_test_batch() {
    let imported = import(&model_bytes(), MODEL).unwrap();
    let mut scorer = Scorer::load(&imported.onnx, MODEL, &options()).unwrap();
    let (batch, input) = test_batch();
    let correct = correct(&mut scorer, &batch, &input);
    let accuracy = correct as f64 / batch.len() as f64;
    println!(
        "converted model: {correct} of {} correct ({:.2}%)",
        batch.len(),
        accuracy * 100.0
    );
    // The fixture's images carry JPEG artefacts; the walkthrough's 91.65% is on the originals.
    assert_eq!(batch.len(), 10_000);
    assert!(
        accuracy > 0.75,
        "accuracy {accuracy} is far below what the model reaches"
    );
}

#[test]
fn the_int8_model_stays_within_half_a_point_of_fp32() {
    let imported = import(&model_bytes(), MODEL).unwrap();
    let (batch, input) = test_batch();
    let int8 = quantize(
        &imported.onnx,
        &input[..CALIBRATION_IMAGES * IMAGE_BYTES],
        [3, 32, 32],
    )
    .unwrap();
    let mut fp32 = Scorer::load(&imported.onnx, MODEL, &options()).unwrap();
    let mut quantized = Scorer::load(&int8, "int8", &options()).unwrap();
    let (a, b) = (
        correct(&mut fp32, &batch, &input),
        correct(&mut quantized, &batch, &input),
    );
    println!("fp32 {a}, int8 {b} of {} correct", batch.len());
    assert!(
        (a as f64 - b as f64).abs() <= 0.005 * batch.len() as f64,
        "fp32 {a} vs int8 {b}"
    );
}

/// The int8 graph keeps activations integer from the first convolution to the pooling: every
/// Conv, residual Add and AveragePool reads dequantized values and writes only into a
/// quantizer (the pattern ONNX Runtime fuses into QLinearConv / QLinearAdd /
/// QLinearAveragePool), and no Relu is left between them.
#[test]
fn the_int8_graph_has_no_float_pass_between_integer_kernels() {
    use cntk_onnx::proto::onnx::ModelProto;
    let imported = import(&model_bytes(), MODEL).unwrap();
    let (_, input) = test_batch();
    let int8 = quantize(&imported.onnx, &input[..64 * IMAGE_BYTES], [3, 32, 32]).unwrap();
    let graph = ModelProto::decode(int8.as_slice()).unwrap().graph.unwrap();
    let producer = |value: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == value))
            .map(|n| n.op_type.as_str())
    };
    let readers = |value: &str| -> Vec<&str> {
        graph
            .node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == value))
            .map(|n| n.op_type.as_str())
            .collect()
    };
    let constants: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut kernels = std::collections::BTreeMap::<&str, usize>::new();
    for node in &graph.node {
        assert_ne!(node.op_type, "Relu", "a Relu is left in the int8 graph");
        assert_ne!(
            node.op_type, "BatchNormalization",
            "a BatchNormalization is left"
        );
        let activations: Vec<&String> = node
            .input
            .iter()
            .filter(|i| !constants.contains(&i.as_str()))
            .collect();
        let integer = match node.op_type.as_str() {
            "Conv" | "AveragePool" => true,
            "Add" => activations.len() == 2,
            _ => false,
        };
        if !integer {
            continue;
        }
        *kernels.entry(node.op_type.as_str()).or_default() += 1;
        for value in activations {
            assert_eq!(
                producer(value),
                Some("DequantizeLinear"),
                "{} {} reads {value} in float",
                node.op_type,
                node.name
            );
        }
        assert_eq!(
            readers(&node.output[0]),
            ["QuantizeLinear"],
            "{} {} writes {} in float",
            node.op_type,
            node.name,
            node.output[0]
        );
    }
    let kernels: Vec<(&str, usize)> = kernels.into_iter().collect();
    assert_eq!(kernels, [("Add", 9), ("AveragePool", 1), ("Conv", 21)]);
}

#[test]
fn metadata_names_the_source() {
    let imported = import(&model_bytes(), MODEL).unwrap();
    let model = cntk_onnx::proto::onnx::ModelProto::decode(imported.onnx.as_slice()).unwrap();
    assert!(
        model
            .opset_import
            .iter()
            .any(|o| o.domain.is_empty() && o.version >= 17)
    );
    let meta = |key: &str| {
        model
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
    };
    assert_eq!(meta("source_file").as_deref(), Some(MODEL));
    let sums = std::fs::read_to_string(fixture("SHA256SUMS")).unwrap();
    let expected = sums
        .lines()
        .find(|l| l.ends_with(MODEL))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(meta("source_sha256").as_deref(), Some(expected));
    let graph = model.graph.unwrap();
    assert_eq!(graph.input[0].name, "input");
    assert_eq!(graph.output[0].name, "output");
}

#[test]
fn a_truncated_model_is_malformed() {
    let bytes = model_bytes();
    let err = import(&bytes[..bytes.len() / 2], "cut.dnn").unwrap_err();
    assert!(err.to_string().starts_with("cut.dnn: "), "{err}");
    assert!(
        matches!(err.problem, Problem::NotCntk(_) | Problem::Malformed(_)),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_model_is_refused() {
    let xml = std::fs::read(fixture("CIFAR-10_mean.xml")).unwrap();
    let err = import(&xml, "CIFAR-10_mean.xml").unwrap_err();
    assert!(matches!(err.problem, Problem::NotCntk(_)), "{err}");
    assert!(
        err.to_string()
            .contains("CIFAR-10_mean.xml: not a CNTK model"),
        "{err}"
    );
}

#[test]
fn an_onnx_model_is_recognised() {
    let onnx = import(&model_bytes(), MODEL).unwrap().onnx;
    let err = import(&onnx, "model.onnx").unwrap_err();
    assert_eq!(err.problem, Problem::AlreadyOnnx);
    assert_eq!(cntk_onnx::sniff(&onnx), cntk_onnx::Format::Onnx);
}

/// Rewrites the first ReLU of the model into `op`, keeping everything else.
fn with_first_relu_as(op: u64) -> (Vec<u8>, String) {
    let mut dict = Dictionary::decode(model_bytes().as_slice()).unwrap();
    let Some(Value::Vector(functions)) =
        &mut dict.data.get_mut("primitive_functions").unwrap().value
    else {
        panic!()
    };
    let relu = functions
        .value
        .iter_mut()
        .filter_map(|f| match &mut f.value {
            Some(Value::Dictionary(d)) => Some(d),
            _ => None,
        })
        .find(|d| matches!(d.data["op"].value, Some(Value::SizeT(3))))
        .expect("the model has ReLUs");
    let uid = match &relu.data["uid"].value {
        Some(Value::String(s)) => s.clone(),
        _ => panic!(),
    };
    relu.data.get_mut("op").unwrap().value = Some(Value::SizeT(op));
    (dict.encode_to_vec(), uid)
}

#[test]
fn a_sequence_op_is_refused_as_out_of_scope_with_its_uid_and_file() {
    let (bytes, uid) = with_first_relu_as(49); // OptimizedRNNStack
    let err = import(&bytes, "rnn.dnn").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.problem, Problem::SequenceModel { .. }),
        "{text}"
    );
    assert!(text.starts_with("rnn.dnn: "), "{text}");
    assert!(text.contains("OptimizedRNNStack x1"), "{text}");
    assert!(text.contains(&uid), "{text}");
    assert!(text.contains("out of scope"), "{text}");
}

#[test]
fn mapped_activations_change_the_graph_not_its_shape() {
    // Sigmoid in place of one ReLU: still converts and runs, with different logits.
    let (bytes, _) = with_first_relu_as(1);
    let imported = import(&bytes, "sigmoid.dnn").unwrap();
    let mut scorer = Scorer::load(&imported.onnx, "sigmoid.dnn", &options()).unwrap();
    let original = import(&model_bytes(), MODEL).unwrap();
    let mut reference = Scorer::load(&original.onnx, MODEL, &options()).unwrap();
    let (_, input) = test_batch();
    let (mut logits, mut expected) = (Vec::new(), Vec::new());
    scorer.score(&input[..IMAGE_BYTES], 1, &mut logits).unwrap();
    reference
        .score(&input[..IMAGE_BYTES], 1, &mut expected)
        .unwrap();
    assert_eq!(logits.len(), 10);
    assert!(logits.iter().all(|v| v.is_finite()));
    let change = logits
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        change > 1e-3,
        "replacing a ReLU by a Sigmoid must change the logits"
    );
}
