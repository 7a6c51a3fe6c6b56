//! Static int8 quantization of an imported model (opt-in, `producer stage --quantize`).
//!
//! The graph is rewritten in ONNX's QDQ form, which ONNX Runtime turns into integer kernels
//! (`QLinearConv`):
//! 1. every BatchNormalization that follows a Conv is folded into the Conv's weights and bias;
//! 2. the model runs on calibration images with every Conv input and output exposed, to find
//!    each activation's range;
//! 3. each Conv gets its input and output quantized to uint8 (asymmetric, from the calibrated
//!    range), its weights to int8 per output channel (symmetric), its bias to int32.
//!
//! Everything else stays float. Only graphs written by this product's importer are accepted:
//! the ONNX messages here declare just the fields the importer writes, and a model that does
//! not survive a decode/encode round trip unchanged is refused rather than silently damaged.

use std::collections::HashMap;

use cntk_onnx::proto::onnx::{
    AttributeProto, ModelProto, NodeProto, TensorProto, TensorTypeProto, TypeProto, ValueInfoProto,
    data_type,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use prost::Message;

use super::{InferenceError, runtime};
use crate::dataset::{CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};

const INT8: i32 = 3;
const UINT8: i32 = 2;
const INT32: i32 = 6;

fn fail(reason: impl Into<String>) -> InferenceError {
    InferenceError::InvalidModel {
        model: "quantization".into(),
        reason: reason.into(),
    }
}

/// Quantizes `model` (ONNX bytes) using `calibration`: preprocessed images, `[N, 3, 32, 32]`.
pub fn quantize(model: &[u8], calibration: &[f32]) -> Result<Vec<u8>, InferenceError> {
    let mut proto =
        ModelProto::decode(model).map_err(|e| fail(format!("not an ONNX model: {e}")))?;
    if proto.encode_to_vec() != model {
        return Err(fail(
            "only models imported by this product can be quantized (the model uses ONNX fields it does not write)",
        ));
    }
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| fail("the model has no graph"))?;
    let mut weights: HashMap<String, TensorProto> = graph
        .initializer
        .drain(..)
        .map(|t| (t.name.clone(), t))
        .collect();
    fold_batch_norms(&mut graph.node, &mut weights)?;
    graph.initializer = weights.into_values().collect();
    graph.initializer.sort_by(|a, b| a.name.cmp(&b.name));

    let convs: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Conv")
        .map(|(i, _)| i)
        .collect();
    let mut watched: Vec<String> = Vec::new();
    for &i in &convs {
        for name in [&graph.node[i].input[0], &graph.node[i].output[0]] {
            if !watched.contains(name) {
                watched.push(name.clone());
            }
        }
    }
    let ranges = calibrate(&proto, &watched, calibration)?;
    let graph = proto.graph.as_mut().expect("checked above");
    rewrite(graph, &convs, &ranges)?;
    Ok(proto.encode_to_vec())
}

fn floats(t: &TensorProto) -> Vec<f32> {
    t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn tensor(name: &str, dims: Vec<i64>, data_type: i32, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type,
        name: name.into(),
        raw_data,
    }
}

fn float_tensor(name: &str, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        data_type::FLOAT,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// Conv followed by BatchNormalization (its only consumer) becomes one Conv with a bias.
fn fold_batch_norms(
    nodes: &mut Vec<NodeProto>,
    weights: &mut HashMap<String, TensorProto>,
) -> Result<(), InferenceError> {
    let mut i = 0;
    while i < nodes.len() {
        let is_bn = nodes[i].op_type == "BatchNormalization";
        let producer = is_bn
            .then(|| {
                nodes
                    .iter()
                    .position(|n| n.op_type == "Conv" && n.output.first() == nodes[i].input.first())
            })
            .flatten();
        let Some(conv) = producer else {
            i += 1;
            continue;
        };
        let conv_out = nodes[conv].output[0].clone();
        let consumers = nodes.iter().filter(|n| n.input.contains(&conv_out)).count();
        let params: Option<Vec<Vec<f32>>> = nodes[i].input[1..5]
            .iter()
            .map(|name| weights.get(name).map(floats))
            .collect();
        let (Some(params), 1) = (params, consumers) else {
            i += 1;
            continue;
        };
        let epsilon = nodes[i]
            .attribute
            .iter()
            .find(|a| a.name == "epsilon")
            .map_or(1e-5, |a| a.f);
        let (scale, shift, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
        let w_name = nodes[conv].input[1].clone();
        let w = weights
            .get(&w_name)
            .ok_or_else(|| fail(format!("conv weight {w_name} is not a constant")))?;
        let dims = w.dims.clone();
        let mut w_values = floats(w);
        let out_channels = dims[0] as usize;
        if scale.len() != out_channels {
            return Err(fail("batch normalization does not match its convolution"));
        }
        let per_channel = w_values.len() / out_channels;
        let mut bias = match nodes[conv].input.get(2).and_then(|b| weights.get(b)) {
            Some(b) => floats(b),
            None => vec![0.0; out_channels],
        };
        for c in 0..out_channels {
            let k = scale[c] / (var[c] + epsilon).sqrt();
            for v in &mut w_values[c * per_channel..(c + 1) * per_channel] {
                *v *= k;
            }
            bias[c] = (bias[c] - mean[c]) * k + shift[c];
        }
        let (w_new, b_new) = (
            format!("{w_name}_folded"),
            format!("{}_bias", nodes[conv].name),
        );
        weights.insert(w_new.clone(), float_tensor(&w_new, dims, &w_values));
        weights.insert(
            b_new.clone(),
            float_tensor(&b_new, vec![out_channels as i64], &bias),
        );
        let bn_out = nodes[i].output[0].clone();
        let conv_node = &mut nodes[conv];
        conv_node.input.truncate(2);
        conv_node.input[1] = w_new;
        conv_node.input.push(b_new);
        conv_node.output[0] = bn_out;
        nodes.remove(i);
    }
    // Drop weights nothing uses any more.
    let used: std::collections::HashSet<&String> =
        nodes.iter().flat_map(|n| n.input.iter()).collect();
    weights.retain(|name, _| used.contains(name));
    Ok(())
}

/// Runs the model on the calibration images and returns (min, max) of each watched value.
fn calibrate(
    model: &ModelProto,
    watched: &[String],
    images: &[f32],
) -> Result<HashMap<String, (f32, f32)>, InferenceError> {
    let mut exposed = model.clone();
    let graph = exposed.graph.as_mut().expect("checked by the caller");
    graph
        .output
        .extend(watched.iter().map(|name| ValueInfoProto {
            name: name.clone(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: data_type::FLOAT,
                    shape: None,
                }),
            }),
        }));
    let environment = runtime::environment()?;
    let run = |e: ort::Error| InferenceError::Run(e.to_string());
    let mut session = Session::builder(environment)
        .map_err(run)?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| InferenceError::Run(e.to_string()))?
        .commit_from_memory(&exposed.encode_to_vec())
        .map_err(|e| fail(e.to_string()))?;
    let input = session.inputs()[0].name().to_owned();
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    for chunk in images.chunks(64 * IMAGE_BYTES) {
        let n = chunk.len() / IMAGE_BYTES;
        let tensor =
            TensorRef::from_array_view(([n, CHANNELS, HEIGHT, WIDTH], chunk)).map_err(run)?;
        let outputs = session
            .run(ort::inputs![input.as_str() => tensor])
            .map_err(run)?;
        for name in watched {
            let (_, values) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(run)?;
            let entry = ranges.entry(name.clone()).or_insert((f32::MAX, f32::MIN));
            for &v in values {
                entry.0 = entry.0.min(v);
                entry.1 = entry.1.max(v);
            }
        }
    }
    Ok(ranges)
}

/// uint8 scale and zero point covering `[min, max]` (and 0, which must be exact).
fn activation_params((min, max): (f32, f32)) -> (f32, u8) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = ((max - min) / 255.0).max(1e-8);
    let zero = (-min / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

fn rewrite(
    graph: &mut cntk_onnx::proto::onnx::GraphProto,
    convs: &[usize],
    ranges: &HashMap<String, (f32, f32)>,
) -> Result<(), InferenceError> {
    let mut weights: HashMap<String, TensorProto> = graph
        .initializer
        .drain(..)
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() * 3);
    // Values already available in dequantized form: name -> (dequantized name, scale).
    let mut dequantized: HashMap<String, (String, f32)> = HashMap::new();
    let node = |op: &str,
                name: String,
                inputs: Vec<String>,
                output: String,
                attribute: Vec<AttributeProto>| NodeProto {
        input: inputs,
        output: vec![output],
        name,
        op_type: op.into(),
        attribute,
        ..Default::default()
    };
    let qdq =
        |value: &str, nodes: &mut Vec<NodeProto>, weights: &mut HashMap<String, TensorProto>| {
            let range = *ranges
                .get(value)
                .ok_or_else(|| fail(format!("no calibrated range for {value}")))?;
            let (scale, zero) = activation_params(range);
            let (s, z, q) = (
                format!("{value}_scale"),
                format!("{value}_zero"),
                format!("{value}_q"),
            );
            weights.insert(s.clone(), float_tensor(&s, vec![], &[scale]));
            weights.insert(z.clone(), tensor(&z, vec![], UINT8, vec![zero]));
            let dq = format!("{value}_dq");
            nodes.push(node(
                "QuantizeLinear",
                q.clone(),
                vec![value.into(), s.clone(), z.clone()],
                q.clone(),
                vec![],
            ));
            nodes.push(node(
                "DequantizeLinear",
                format!("{q}_dq"),
                vec![q, s, z],
                dq.clone(),
                vec![],
            ));
            Ok::<_, InferenceError>((dq, scale))
        };
    for (i, original) in graph.node.drain(..).enumerate() {
        if !convs.contains(&i) {
            nodes.push(original);
            continue;
        }
        let mut conv = original;
        let x = conv.input[0].clone();
        let (x_dq, x_scale) = match dequantized.get(&x) {
            Some(found) => found.clone(),
            None => {
                let found = qdq(&x, &mut nodes, &mut weights)?;
                dequantized.insert(x.clone(), found.clone());
                found
            }
        };
        // Weights: int8, symmetric, one scale per output channel.
        let w = weights
            .get(&conv.input[1])
            .ok_or_else(|| fail("conv weights are not constant"))?
            .clone();
        let values = floats(&w);
        let channels = w.dims[0] as usize;
        let per = values.len() / channels;
        let scales: Vec<f32> = (0..channels)
            .map(|c| {
                values[c * per..(c + 1) * per]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()))
                    / 127.0
            })
            .map(|s| s.max(1e-12))
            .collect();
        let q: Vec<u8> = values
            .iter()
            .enumerate()
            .map(|(k, v)| (v / scales[k / per]).round().clamp(-127.0, 127.0) as i8 as u8)
            .collect();
        let (wq, ws, wz, wdq) = (
            format!("{}_q", w.name),
            format!("{}_scale", w.name),
            format!("{}_zero", w.name),
            format!("{}_dq", w.name),
        );
        weights.insert(wq.clone(), tensor(&wq, w.dims.clone(), INT8, q));
        weights.insert(
            ws.clone(),
            float_tensor(&ws, vec![channels as i64], &scales),
        );
        weights.insert(
            wz.clone(),
            tensor(&wz, vec![channels as i64], INT8, vec![0; channels]),
        );
        let axis = vec![AttributeProto::int("axis", 0)];
        nodes.push(node(
            "DequantizeLinear",
            wdq.clone(),
            vec![wq, ws, wz],
            wdq.clone(),
            axis.clone(),
        ));
        let mut inputs = vec![x_dq, wdq];
        // Bias: int32 at scale x_scale * w_scale, as integer kernels need it.
        if let Some(b_name) = conv.input.get(2).cloned() {
            let b = weights
                .get(&b_name)
                .ok_or_else(|| fail("conv bias is not constant"))?
                .clone();
            let bias_scales: Vec<f32> = scales.iter().map(|s| s * x_scale).collect();
            let q: Vec<u8> = floats(&b)
                .iter()
                .zip(&bias_scales)
                .flat_map(|(v, s)| ((v / s).round() as i32).to_le_bytes())
                .collect();
            let (bq, bs, bz, bdq) = (
                format!("{b_name}_q"),
                format!("{b_name}_scale"),
                format!("{b_name}_zero"),
                format!("{b_name}_dq"),
            );
            weights.insert(bq.clone(), tensor(&bq, vec![channels as i64], INT32, q));
            weights.insert(
                bs.clone(),
                float_tensor(&bs, vec![channels as i64], &bias_scales),
            );
            weights.insert(
                bz.clone(),
                tensor(&bz, vec![channels as i64], INT32, vec![0; 4 * channels]),
            );
            nodes.push(node(
                "DequantizeLinear",
                bdq.clone(),
                vec![bq, bs, bz],
                bdq.clone(),
                axis,
            ));
            inputs.push(bdq);
        }
        // Output: computed into a new name, quantized, and dequantized back into the old one,
        // so the rest of the graph is untouched.
        let y = conv.output[0].clone();
        let y_float = format!("{y}_float");
        conv.input = inputs;
        conv.output = vec![y_float.clone()];
        nodes.push(conv);
        let range = *ranges
            .get(&y)
            .ok_or_else(|| fail(format!("no calibrated range for {y}")))?;
        let (s, z, q) = (format!("{y}_scale"), format!("{y}_zero"), format!("{y}_q"));
        let (scale, zero) = activation_params(range);
        weights.insert(s.clone(), float_tensor(&s, vec![], &[scale]));
        weights.insert(z.clone(), tensor(&z, vec![], UINT8, vec![zero]));
        nodes.push(node(
            "QuantizeLinear",
            q.clone(),
            vec![y_float, s.clone(), z.clone()],
            q.clone(),
            vec![],
        ));
        nodes.push(node(
            "DequantizeLinear",
            format!("{q}_dq"),
            vec![q, s, z],
            y.clone(),
            vec![],
        ));
        // A later Conv reading `y` reads it as it is: it is already dequantized.
        dequantized.insert(y.clone(), (y, scale));
    }
    graph.node = nodes;
    let used: std::collections::HashSet<&String> =
        graph.node.iter().flat_map(|n| n.input.iter()).collect();
    let mut kept: Vec<TensorProto> = weights
        .into_values()
        .filter(|t| used.contains(&t.name))
        .collect();
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    graph.initializer = kept;
    Ok(())
}
