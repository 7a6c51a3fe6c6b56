//! Small ONNX models built by the tests over known graphs, so that what a model gives each image
//! is known from the image alone.

use cntk_onnx::proto::onnx::{
    Dimension, DimensionValue, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

/// A float tensor type of these dimensions (`None`: the batch, left free).
pub fn float_type(dims: &[Option<i64>]) -> Option<TypeProto> {
    Some(TypeProto {
        tensor_type: Some(TensorTypeProto {
            elem_type: 1,
            shape: Some(TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|d| Dimension {
                        value: Some(match d {
                            Some(v) => DimensionValue::Value(*v),
                            None => DimensionValue::Param("batch".into()),
                        }),
                    })
                    .collect(),
            }),
        }),
    })
}

/// A float initializer.
pub fn floats(name: &str, dims: Vec<i64>, values: impl IntoIterator<Item = f32>) -> TensorProto {
    TensorProto {
        dims,
        data_type: 1,
        name: name.into(),
        raw_data: values.into_iter().flat_map(f32::to_le_bytes).collect(),
    }
}

/// A node of one output, named after it.
pub fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    }
}

/// A model (opset 17) of `nodes` and `initializers`, from input `input` to output `output`,
/// each a name and its dimensions.
pub fn model(
    name: &str,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    input: (&str, &[Option<i64>]),
    output: (&str, &[Option<i64>]),
) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: name.into(),
            node: nodes,
            initializer: initializers,
            input: vec![ValueInfoProto {
                name: input.0.into(),
                r#type: float_type(input.1),
            }],
            output: vec![ValueInfoProto {
                name: output.0.into(),
                r#type: float_type(output.1),
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
