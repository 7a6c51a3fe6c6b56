//! Static int8 quantization of an imported model (opt-in, `producer stage --quantize`).
//!
//! The graph is rewritten in ONNX's QDQ form, which ONNX Runtime turns into integer kernels
//! (`QLinearConv`, `QLinearAdd`, `QLinearAveragePool`) so that activations stay uint8 from the
//! first convolution to the pooling; a float pass between two integer kernels would cost more
//! than the integer arithmetic saves.
//! 1. every BatchNormalization that follows a Conv is folded into the Conv's weights and bias;
//! 2. the rewrites pick the values to quantize: every activation read or written by a Conv, a
//!    residual Add (two activations), an AveragePool or a Relu, except one whose only reader is
//!    a Relu: there the Relu's output is quantized instead, with zero point 0, and the Relu is
//!    dropped, because quantizing to `[0, 255]` around zero point 0 already clamps below zero;
//! 3. the model runs on calibration images with those values exposed, to find their ranges;
//! 4. each planned value is quantized to uint8 (asymmetric, from its calibrated range) right
//!    where it is made, and its readers read the dequantized copy; Conv weights become int8 per
//!    output channel (symmetric), biases int32 at input scale times weight scale.
//!
//! The classifier head (Reshape, MatMul, Add) stays float: 64 x 10 multiply-adds per image.
//! Only graphs written by this product's importer are accepted: the ONNX messages here declare
//! just the fields the importer writes, and a model that does not survive a decode/encode round
//! trip unchanged is refused rather than silently damaged.

use std::collections::{HashMap, HashSet};

use cntk_onnx::proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TensorTypeProto, TypeProto,
    ValueInfoProto, data_type,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use prost::Message;

use fleet_inference::{InferenceError, runtime};

/// Images an int8 model is calibrated on: `producer stage --quantize` takes the first ones of
/// the first batch in the tarball.
pub const CALIBRATION_IMAGES: usize = 512;

const INT8: i32 = 3;
const UINT8: i32 = 2;
const INT32: i32 = 6;

/// Why a model has no int8 version.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The model is not one the quantizer rewrites.
    #[error("it cannot be quantized: {0}")]
    Unsupported(String),
    /// Running the model on the calibration images failed.
    #[error("calibrating it failed")]
    Calibration(#[source] ort::Error),
    /// ONNX Runtime is missing on this host.
    #[error(transparent)]
    Host(#[from] InferenceError),
}

fn fail(reason: impl Into<String>) -> QuantizeError {
    QuantizeError::Unsupported(reason.into())
}

/// Quantizes `model` (ONNX bytes) using `calibration`: preprocessed images, each of
/// `image_shape` (the input's dimensions after the batch, in the model's layout).
pub fn quantize(
    model: &[u8],
    calibration: &[f32],
    image_shape: [usize; 3],
) -> Result<Vec<u8>, QuantizeError> {
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

    let rewrites = Rewrites::new(graph);
    let ranges = calibrate(&proto, &rewrites.quantized, calibration, image_shape)?;
    let graph = proto.graph.as_mut().expect("checked above");
    rewrite(graph, &rewrites, &ranges)?;
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
) -> Result<(), QuantizeError> {
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
    let used: HashSet<&String> = nodes.iter().flat_map(|n| n.input.iter()).collect();
    weights.retain(|name, _| used.contains(name));
    Ok(())
}

/// Runs the model on the calibration images and returns (min, max) of each watched value.
fn calibrate(
    model: &ModelProto,
    watched: &[String],
    images: &[f32],
    image_shape: [usize; 3],
) -> Result<HashMap<String, (f32, f32)>, QuantizeError> {
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
    let run = QuantizeError::Calibration;
    let mut session = Session::builder(environment)
        .map_err(run)?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| run(e.into()))?
        .commit_from_memory(&exposed.encode_to_vec())
        .map_err(run)?;
    let input = session.inputs()[0].name().to_owned();
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    let image_len: usize = image_shape.iter().product();
    for chunk in images.chunks(64 * image_len) {
        let n = chunk.len() / image_len;
        let [a, b, c] = image_shape;
        let tensor = TensorRef::from_array_view(([n, a, b, c], chunk)).map_err(run)?;
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

/// Which values get quantized, and which Relus that makes redundant.
struct Rewrites {
    /// Activations to quantize, in graph order.
    quantized: Vec<String>,
    /// Relu output -> Relu input, for each Relu dropped: its output is quantized from its input.
    dropped_relus: HashMap<String, String>,
}

impl Rewrites {
    fn new(graph: &GraphProto) -> Self {
        let constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let is_activation = |name: &String| !name.is_empty() && !constants.contains(name.as_str());
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for node in &graph.node {
            for input in &node.input {
                readers.entry(input).or_default().push(node);
            }
        }
        let only_read_by_relu = |name: &str| {
            !outputs.contains(name)
                && matches!(readers.get(name).map(Vec::as_slice), Some([n]) if n.op_type == "Relu")
        };
        let mut quantized: Vec<String> = Vec::new();
        for node in &graph.node {
            let values: Vec<&String> = match node.op_type.as_str() {
                "Conv" | "AveragePool" | "Relu" => vec![&node.input[0], &node.output[0]],
                "Add" if node.input.iter().all(is_activation) => {
                    node.input.iter().chain(&node.output).collect()
                }
                _ => continue,
            };
            for value in values {
                if !only_read_by_relu(value) && !quantized.contains(value) {
                    quantized.push(value.clone());
                }
            }
        }
        let dropped_relus = graph
            .node
            .iter()
            .filter(|n| {
                n.op_type == "Relu"
                    && !quantized.contains(&n.input[0])
                    && quantized.contains(&n.output[0])
            })
            .map(|n| (n.output[0].clone(), n.input[0].clone()))
            .collect();
        Self {
            quantized,
            dropped_relus,
        }
    }
}

/// uint8 scale and zero point covering `[min, max]` (and 0, which must be exact).
fn activation_params((min, max): (f32, f32)) -> (f32, u8) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = ((max - min) / 255.0).max(1e-8);
    let zero = (-min / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

/// Quantizes `value` (computed into `source`) and dequantizes it again; returns the name of the
/// dequantized copy, which the value's readers read.
fn quantize_value(
    value: &str,
    source: &str,
    (scale, zero): (f32, u8),
    weights: &mut HashMap<String, TensorProto>,
    nodes: &mut Vec<NodeProto>,
) -> String {
    let (s, z, q, dq) = (
        format!("{value}_scale"),
        format!("{value}_zero"),
        format!("{value}_q"),
        format!("{value}_dq"),
    );
    weights.insert(s.clone(), float_tensor(&s, vec![], &[scale]));
    weights.insert(z.clone(), tensor(&z, vec![], UINT8, vec![zero]));
    nodes.push(node(
        "QuantizeLinear",
        vec![source.into(), s.clone(), z.clone()],
        q.clone(),
        vec![],
    ));
    nodes.push(node("DequantizeLinear", vec![q, s, z], dq.clone(), vec![]));
    dq
}

fn node(
    op: &str,
    inputs: Vec<String>,
    output: String,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs,
        name: output.clone(),
        output: vec![output],
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn rewrite(
    graph: &mut GraphProto,
    rewrites: &Rewrites,
    ranges: &HashMap<String, (f32, f32)>,
) -> Result<(), QuantizeError> {
    let mut weights: HashMap<String, TensorProto> = graph
        .initializer
        .drain(..)
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut params: HashMap<&str, (f32, u8)> = HashMap::new();
    for value in &rewrites.quantized {
        let range = *ranges
            .get(value)
            .ok_or_else(|| fail(format!("no calibrated range for {value}")))?;
        params.insert(value, activation_params(range));
    }
    for relu_output in rewrites.dropped_relus.keys() {
        if params[relu_output.as_str()].1 != 0 {
            return Err(fail(format!(
                "{relu_output} has a negative calibrated range, so its Relu cannot be dropped"
            )));
        }
    }
    // Planned value -> the name its readers use instead: its dequantized copy.
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() * 3);
    for input in &graph.input {
        if params.contains_key(input.name.as_str()) {
            let dq = quantize_value(
                &input.name,
                &input.name,
                params[input.name.as_str()],
                &mut weights,
                &mut nodes,
            );
            renamed.insert(input.name.clone(), dq);
        }
    }
    for mut original in graph.node.drain(..) {
        // A dropped Relu: its output is quantized straight from its input.
        if original.op_type == "Relu"
            && let Some(source) = rewrites.dropped_relus.get(&original.output[0])
        {
            let value = &original.output[0];
            let dq = quantize_value(
                value,
                source,
                params[value.as_str()],
                &mut weights,
                &mut nodes,
            );
            renamed.insert(value.clone(), dq);
            continue;
        }
        if original.op_type == "Conv" {
            let x_scale = params
                .get(original.input[0].as_str())
                .ok_or_else(|| fail("a conv input is not quantized"))?
                .0;
            let (w, b) = quantize_conv_weights(&original, x_scale, &mut weights, &mut nodes)?;
            original.input.truncate(1);
            original.input.push(w);
            original.input.extend(b);
        }
        for input in &mut original.input {
            if let Some(dq) = renamed.get(input) {
                *input = dq.clone();
            }
        }
        let outputs = original.output.clone();
        nodes.push(original);
        for output in outputs {
            if params.contains_key(output.as_str()) {
                let dq = quantize_value(
                    &output,
                    &output,
                    params[output.as_str()],
                    &mut weights,
                    &mut nodes,
                );
                renamed.insert(output, dq);
            }
        }
    }
    for output in &graph.output {
        if renamed.contains_key(&output.name) {
            return Err(fail(format!(
                "graph output {} would be quantized",
                output.name
            )));
        }
    }
    graph.node = nodes;
    let used: HashSet<&String> = graph.node.iter().flat_map(|n| n.input.iter()).collect();
    let mut kept: Vec<TensorProto> = weights
        .into_values()
        .filter(|t| used.contains(&t.name))
        .collect();
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    graph.initializer = kept;
    Ok(())
}

/// Int8 weights (symmetric, one scale per output channel) and an int32 bias at
/// `x_scale * w_scale`, as integer kernels need it; returns the names the Conv reads.
fn quantize_conv_weights(
    conv: &NodeProto,
    x_scale: f32,
    weights: &mut HashMap<String, TensorProto>,
    nodes: &mut Vec<NodeProto>,
) -> Result<(String, Option<String>), QuantizeError> {
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
        vec![wq, ws, wz],
        wdq.clone(),
        axis.clone(),
    ));
    let Some(b_name) = conv.input.get(2).cloned() else {
        return Ok((wdq, None));
    };
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
        vec![bq, bs, bz],
        bdq.clone(),
        axis,
    ));
    Ok((wdq, Some(bdq)))
}
