//! Makes tensors inside an ONNX graph outputs of the model, so that ONNX Runtime returns them:
//! the pooled features before a classifier, read as an embedding.
//!
//! The model is edited as protobuf wire data, not decoded and re-encoded: a new `output`
//! entry (a `ValueInfoProto` naming the tensor) is appended to the graph, and every other byte
//! of the file stays as it was. Decoding into this crate's subset of `onnx.proto` and encoding
//! again would drop whatever the subset does not declare (functions, sparse initializers,
//! metadata of newer IR versions). ONNX Runtime infers the new output's type and shape.

use std::collections::HashSet;

use cntk_onnx::proto::onnx::ModelProto;
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};

/// `ModelProto.graph`.
const MODEL_GRAPH: u32 = 7;
/// `GraphProto.output`.
const GRAPH_OUTPUT: u32 = 12;
/// `ValueInfoProto.name`.
const VALUE_INFO_NAME: u32 = 1;

/// Why a tensor cannot be made an output.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// The model does not decode as ONNX.
    #[error("the model is not an ONNX protobuf")]
    NotOnnx(#[source] prost::DecodeError),
    /// The graph has no tensor of that name.
    #[error(
        "the model has no tensor {name}; its outputs are {outputs}, and {nodes} of its nodes \
         make tensors (see them with a viewer such as Netron, or `producer convert --inspect` \
         for a CNTK file)"
    )]
    NoSuchTensor {
        /// The name asked for.
        name: String,
        /// The model's own outputs.
        outputs: String,
        /// How many nodes the graph has.
        nodes: usize,
    },
}

/// A model with tensors made outputs.
#[derive(Debug, Clone)]
pub struct Exposed {
    /// The model.
    pub onnx: Vec<u8>,
    /// Its outputs before: the one of a single-output classifier stays its classifier's.
    pub outputs: Vec<String>,
    /// The tensors made outputs, in order.
    pub added: Vec<String>,
}

/// `onnx` with each of `tensors` an output of its graph (those that are outputs already are
/// left as they are).
pub fn expose(onnx: &[u8], tensors: &[String]) -> Result<Exposed, ExposeError> {
    let model = ModelProto::decode(onnx).map_err(ExposeError::NotOnnx)?;
    let graph = model.graph.unwrap_or_default();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let made: HashSet<&str> = (graph.node.iter())
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .collect();
    let mut added = Vec::new();
    for name in tensors {
        if outputs.contains(name.as_str()) || added.contains(name) {
            continue;
        }
        if !made.contains(name.as_str()) {
            return Err(ExposeError::NoSuchTensor {
                name: name.clone(),
                outputs: graph
                    .output
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                nodes: graph.node.len(),
            });
        }
        added.push(name.clone());
    }
    let onnx = match added.is_empty() {
        true => onnx.to_vec(),
        false => append_outputs(onnx, &added),
    };
    Ok(Exposed {
        onnx,
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        added,
    })
}

/// `onnx` with a `ValueInfoProto { name }` appended to its graph's outputs for each of
/// `names`. `onnx` decodes as a `ModelProto` (checked by the caller), so its fields parse.
fn append_outputs(onnx: &[u8], names: &[String]) -> Vec<u8> {
    let mut extra = Vec::new();
    for name in names {
        let mut value_info = Vec::new();
        encode_key(VALUE_INFO_NAME, WireType::LengthDelimited, &mut value_info);
        encode_varint(name.len() as u64, &mut value_info);
        value_info.extend_from_slice(name.as_bytes());
        encode_key(GRAPH_OUTPUT, WireType::LengthDelimited, &mut extra);
        encode_varint(value_info.len() as u64, &mut extra);
        extra.extend_from_slice(&value_info);
    }
    // Protobuf merges repeated occurrences of a message field: the outputs go into the last
    // `graph` field, or into a new one when the model has none.
    let fields = top_level_fields(onnx);
    let last_graph = fields.iter().rposition(|f| f.number == MODEL_GRAPH);
    let mut out = Vec::with_capacity(onnx.len() + extra.len() + 8);
    for (i, field) in fields.iter().enumerate() {
        if Some(i) == last_graph {
            let body = &onnx[field.body.clone()];
            encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut out);
            encode_varint((body.len() + extra.len()) as u64, &mut out);
            out.extend_from_slice(body);
            out.extend_from_slice(&extra);
        } else {
            out.extend_from_slice(&onnx[field.whole.clone()]);
        }
    }
    if last_graph.is_none() {
        encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut out);
        encode_varint(extra.len() as u64, &mut out);
        out.extend_from_slice(&extra);
    }
    out
}

/// One top-level field of a protobuf message: its number, its bytes with the key, and (for a
/// length-delimited field) its body's.
struct Field {
    number: u32,
    whole: std::ops::Range<usize>,
    body: std::ops::Range<usize>,
}

/// The top-level fields of a message that decodes, in order, with where their bytes are.
fn top_level_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut rest = bytes;
    let at = |rest: &[u8]| bytes.len() - rest.len();
    while !rest.is_empty() {
        let start = at(rest);
        let (number, wire) = decode_key(&mut rest).expect("a decoding message has keys");
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut rest).expect("a decoding message has varints");
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                decode_varint(&mut rest).expect("a decoding message has lengths") as usize
            }
            WireType::StartGroup | WireType::EndGroup => unreachable!("ONNX declares no groups"),
        };
        let body = at(rest)..at(rest) + skip;
        rest = &rest[skip..];
        fields.push(Field {
            number,
            whole: start..at(rest),
            body,
        });
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntk_onnx::proto::onnx::{GraphProto, NodeProto, ValueInfoProto};

    fn model() -> Vec<u8> {
        ModelProto {
            ir_version: 8,
            producer_name: "test".into(),
            graph: Some(GraphProto {
                name: "g".into(),
                node: vec![
                    NodeProto {
                        op_type: "Relu".into(),
                        input: vec!["input".into()],
                        output: vec!["hidden".into()],
                        ..Default::default()
                    },
                    NodeProto {
                        op_type: "Sigmoid".into(),
                        input: vec!["hidden".into()],
                        output: vec!["output".into()],
                        ..Default::default()
                    },
                ],
                input: vec![ValueInfoProto {
                    name: "input".into(),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: "output".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn an_inner_tensor_becomes_an_output_and_nothing_else_changes() {
        let onnx = model();
        let exposed = expose(&onnx, &["hidden".into(), "output".into()]).unwrap();
        assert_eq!(exposed.added, ["hidden"]);
        assert_eq!(exposed.outputs, ["output"]);
        let decoded = ModelProto::decode(exposed.onnx.as_slice()).unwrap();
        let outputs: Vec<&str> = (decoded.graph.as_ref().unwrap().output.iter())
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(outputs, ["output", "hidden"]);
        // The rest of the model is as it was: only the graph's new output differs.
        let mut original = ModelProto::decode(onnx.as_slice()).unwrap();
        original
            .graph
            .as_mut()
            .unwrap()
            .output
            .push(ValueInfoProto {
                name: "hidden".into(),
                ..Default::default()
            });
        assert_eq!(decoded, original);
        // An output already is left alone: the same bytes.
        assert_eq!(expose(&onnx, &["output".into()]).unwrap().onnx, onnx);
    }

    #[test]
    fn a_tensor_the_graph_does_not_make_is_refused_by_name() {
        let e = expose(&model(), &["pool5".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the model has no tensor pool5; its outputs are output"),
            "{e}"
        );
    }
}
