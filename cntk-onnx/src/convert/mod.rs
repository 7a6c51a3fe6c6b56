//! Lowers a [`Model`] to an ONNX graph.
//!
//! Conventions that differ between the two formats, and how they are bridged:
//! - CNTK shapes are column-major (`[W, H, C]`); ONNX tensors are row-major (`[N, C, H, W]`).
//!   Reversing a CNTK shape gives the ONNX shape of the same bytes, so weights are copied as they
//!   are and only their dims are reversed. CNTK broadcasting aligns shapes at the first axis,
//!   ONNX at the last: reversed, the two rules agree.
//! - The batch axis is implicit in CNTK (a dynamic axis) and explicit in ONNX (a leading `N`).
//! - Windows (convolution, pooling) are placed by CNTK's own geometry, written out as explicit
//!   pads ([`geometry`]).
//! - Block functions are inlined: their placeholders are bound in a [`Scope`].
//!
//! Before anything is written, every operation the output depends on is checked, so that a
//! model with several unsupported operations is refused with all of them named at once.
//!
//! - `layers`: convolution, pooling, batch normalization, matrix products.
//! - `tensor`: element-wise operations, shapes and axes, reductions, normalisations.
//! - `geometry`: window placement. `attributes`: typed access to saved attributes.

mod attributes;
mod geometry;
mod layers;
mod tensor;

use std::collections::{BTreeMap, HashMap};

use crate::error::{Problem, malformed};
use crate::model::{Block, Function, Model, Variable, VariableKind, Visit};
use crate::ops;
use crate::proto::onnx::{
    AttributeProto, Dimension, DimensionValue, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, data_type,
};

/// Name of the converted model's single input: `[N, C, H, W]` float.
pub const INPUT_NAME: &str = "input";
/// Name of the converted model's output: `[N, classes]` float.
pub const OUTPUT_NAME: &str = "output";
/// Symbolic name of the batch dimension.
pub const BATCH_DIM: &str = "N";

/// A value in the graph being built.
#[derive(Debug, Clone)]
struct Tensor<'m> {
    name: String,
    /// Static shape in CNTK order (no batch axis).
    shape: Vec<u64>,
    /// Whether the ONNX value has a leading batch dimension.
    batched: bool,
    /// The parameter or constant this value holds, if it is one.
    constant: Option<&'m Variable>,
}

impl Tensor<'_> {
    fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// Placeholder bindings of one block instance, chained to the enclosing ones.
struct Scope<'a> {
    id: String,
    bindings: Option<&'a HashMap<String, String>>,
    parent: Option<&'a Scope<'a>>,
}

pub struct Lowered {
    pub graph: GraphProto,
    pub input_shape: Vec<i64>,
    pub output_shape: Vec<i64>,
}

pub fn lower(model: &Model) -> Result<Lowered, Problem> {
    check_ops(model)?;
    let mut lowering = Lowering {
        model,
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: HashMap::new(),
        constants: HashMap::new(),
        memo: HashMap::new(),
        input: None,
    };
    let top = Scope {
        id: String::new(),
        bindings: None,
        parent: None,
    };
    let outputs = lowering.function(&model.root, &top)?;
    let output = outputs
        .into_iter()
        .next()
        .ok_or_else(|| malformed(format!("root function {} has no output", model.root)))?;
    let (input_var, input) = lowering
        .input
        .clone()
        .ok_or_else(|| Problem::UnsupportedUse {
            op: ops::name(model.functions[&model.root].op),
            uid: model.root.clone(),
            what: "no image input (the output does not depend on any input variable)".into(),
        })?;
    if !output.batched {
        return Err(malformed("the model output does not depend on its input"));
    }
    lowering.nodes.push(NodeProto {
        input: vec![output.name.clone()],
        output: vec![OUTPUT_NAME.into()],
        name: OUTPUT_NAME.into(),
        op_type: "Identity".into(),
        ..Default::default()
    });
    let input_shape = batched_dims(&input_var.shape);
    let output_shape = batched_dims(&output.shape);
    let graph = GraphProto {
        node: lowering.nodes,
        name: model.root.clone(),
        initializer: lowering.initializers,
        doc_string: format!("Imported from CNTK function {}", model.root),
        input: vec![value_info(&input.name, &input_shape)],
        output: vec![value_info(OUTPUT_NAME, &output_shape)],
    };
    Ok(Lowered {
        graph,
        input_shape,
        output_shape,
    })
}

/// Refuses, all at once, the operations the output depends on that have no lowering: a user
/// deciding what to do about a model needs the whole list, not its first item.
fn check_ops(model: &Model) -> Result<(), Problem> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut sequence = false;
    for visit in model.walk() {
        let Visit::Function {
            function: f,
            within,
        } = visit
        else {
            continue;
        };
        if f.block.is_some() || ops::SUPPORTED.contains(&f.op) {
            continue;
        }
        sequence |= ops::SEQUENCE.contains(&f.op);
        let place = match (within, within.and_then(|b| b.block.as_ref())) {
            (Some(outer), Some(block)) => format!("{} in {} {}", f.uid, block.op_name, outer.uid),
            _ => f.uid.clone(),
        };
        found.entry(ops::name(f.op)).or_default().push(place);
    }
    if found.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 5;
    let found = found
        .into_iter()
        .map(|(op, mut uids)| {
            uids.sort();
            let count = uids.len();
            let more = count.saturating_sub(SHOWN);
            uids.truncate(SHOWN);
            let mut list = uids.join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            format!("{op} x{count} ({list})")
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(if sequence {
        Problem::SequenceModel { found }
    } else {
        Problem::UnsupportedOps {
            found,
            supported: ops::supported_names(),
        }
    })
}

/// ONNX dims of a batched CNTK shape; `-1` stands for the symbolic batch size.
fn batched_dims(shape: &[u64]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(shape.iter().rev().map(|&d| d as i64))
        .collect()
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 {
                DimensionValue::Param(BATCH_DIM.into())
            } else {
                DimensionValue::Value(d)
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

struct Lowering<'m> {
    model: &'m Model,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// How often each value name was handed out, to keep names unique.
    names: HashMap<String, usize>,
    /// Initializers already written, by (variable uid, ONNX dims).
    constants: HashMap<(String, Vec<i64>), String>,
    /// Outputs of functions already lowered, by (scope id, function uid).
    memo: HashMap<(String, String), Vec<Tensor<'m>>>,
    input: Option<(&'m Variable, Tensor<'m>)>,
}

impl<'m> Lowering<'m> {
    fn fresh(&mut self, base: &str) -> String {
        let count = self.names.entry(base.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base.to_owned()
        } else {
            format!("{base}_{count}")
        }
    }

    /// Adds a node with one output and returns the output's name.
    fn node(
        &mut self,
        op_type: &str,
        base: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        let name = self.fresh(base);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op_type.into(),
            attribute,
            ..Default::default()
        });
        name
    }

    fn float_initializer(&mut self, base: &str, dims: Vec<i64>, values: &[f32]) -> String {
        let name = self.fresh(base);
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims,
            data_type: data_type::FLOAT,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn int64_initializer(&mut self, base: &str, values: &[i64]) -> String {
        let name = self.fresh(base);
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = vec![values.len() as i64];
        self.initializers.push(TensorProto {
            dims,
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// The weights of `var` as an initializer with the given ONNX dims (same element count).
    fn constant_as(&mut self, var: &'m Variable, dims: Vec<i64>) -> String {
        let key = (var.uid.clone(), dims.clone());
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        let values = var.value.as_deref().unwrap_or_default();
        let name = self.float_initializer(&var.uid, dims, values);
        self.constants.insert(key, name.clone());
        name
    }

    /// The graph value of `t`, writing its weights out first if it is a constant.
    fn value_name(&mut self, t: &Tensor<'m>) -> String {
        match t.constant {
            Some(var) => self.constant_as(var, t.shape.iter().rev().map(|&d| d as i64).collect()),
            None => t.name.clone(),
        }
    }

    fn reshape(&mut self, input: &str, base: &str, dims: &[i64]) -> String {
        let shape = self.int64_initializer(&format!("{base}_shape"), dims);
        self.node("Reshape", base, vec![input.into(), shape], vec![])
    }

    /// Resolves a variable uid, as seen from `scope`, to a graph value.
    fn variable(&mut self, uid: &str, scope: &Scope<'_>) -> Result<Tensor<'m>, Problem> {
        if let Some((function, index)) = uid.rsplit_once("_Output_") {
            let index: usize = index
                .parse()
                .map_err(|_| malformed(format!("bad output reference {uid}")))?;
            let outputs = self.function(function, scope)?;
            return outputs
                .get(index)
                .cloned()
                .ok_or_else(|| malformed(format!("{function} has no output {index}")));
        }
        let model = self.model;
        let var = model
            .variables
            .get(uid)
            .ok_or_else(|| malformed(format!("reference to unknown variable {uid}")))?;
        match var.kind {
            VariableKind::Input => {
                if let Some((seen, tensor)) = &self.input {
                    if seen.uid == uid {
                        return Ok(tensor.clone());
                    }
                    return Err(Problem::UnsupportedUse {
                        op: "Input".into(),
                        uid: uid.into(),
                        what: format!(
                            "a second input (the model also reads {}); only single-image classifiers can be imported",
                            seen.uid
                        ),
                    });
                }
                if !var.batched {
                    return Err(malformed(format!("input {uid} has no batch axis")));
                }
                let tensor = Tensor {
                    name: INPUT_NAME.into(),
                    shape: var.shape.clone(),
                    batched: true,
                    constant: None,
                };
                self.input = Some((var, tensor.clone()));
                Ok(tensor)
            }
            // Written out only when an op needs it as it is: ops such as Times and
            // BatchNormalization store the weights in a layout of their own.
            VariableKind::Parameter | VariableKind::Constant => Ok(Tensor {
                name: String::new(),
                shape: var.shape.clone(),
                batched: false,
                constant: Some(var),
            }),
            VariableKind::Placeholder => {
                let bound = scope.bindings.and_then(|b| b.get(uid)).ok_or_else(|| {
                    malformed(format!("placeholder {uid} is not bound to any input"))
                })?;
                let parent = scope
                    .parent
                    .ok_or_else(|| malformed(format!("placeholder {uid} outside a block")))?;
                self.variable(bound, parent)
            }
            VariableKind::Output => Err(malformed(format!(
                "output variable {uid} saved as an input"
            ))),
        }
    }

    /// Lowers one function (once per scope) and returns its outputs.
    fn function(&mut self, uid: &str, scope: &Scope<'_>) -> Result<Vec<Tensor<'m>>, Problem> {
        let key = (scope.id.clone(), uid.to_owned());
        if let Some(outputs) = self.memo.get(&key) {
            return Ok(outputs.clone());
        }
        let model = self.model;
        let function = model
            .functions
            .get(uid)
            .ok_or_else(|| malformed(format!("reference to unknown function {uid}")))?;
        let outputs = match &function.block {
            Some(block) => self.block(function, block, scope)?,
            None => {
                let inputs = function
                    .inputs
                    .iter()
                    .map(|input| self.variable(input, scope))
                    .collect::<Result<Vec<_>, _>>()?;
                self.primitive(function, inputs)?
            }
        };
        self.memo.insert(key, outputs.clone());
        Ok(outputs)
    }

    fn block(
        &mut self,
        function: &Function,
        block: &Block,
        scope: &Scope<'_>,
    ) -> Result<Vec<Tensor<'m>>, Problem> {
        let inner = Scope {
            id: format!("{}/{}", scope.id, function.uid),
            bindings: Some(&block.arguments),
            parent: Some(scope),
        };
        self.function(&block.root, &inner)
            .map_err(|problem| match problem {
                // Say which layer the failing op belongs to: the uid alone means little to a user.
                Problem::UnsupportedUse { op, uid, what } => Problem::UnsupportedUse {
                    op,
                    uid: format!("{uid} in {} {}", block.op_name, function.uid),
                    what,
                },
                other => other,
            })
    }

    fn primitive(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Vec<Tensor<'m>>, Problem> {
        let out = match f.op {
            ops::COMBINE => return Ok(inputs),
            ops::DROPOUT | ops::PASS | ops::NO_OP | ops::STOP_GRADIENT => one(f, inputs)?,
            // Gives its first input the second's dynamic axes: only the batch axis here.
            ops::RECONCILE_DYNAMIC_AXIS => inputs
                .into_iter()
                .next()
                .ok_or_else(|| malformed(format!("{} has no inputs", f.uid)))?,
            ops::CONVOLUTION => self.convolution(f, inputs)?,
            ops::POOLING => self.pooling(f, inputs)?,
            ops::BATCH_NORMALIZATION => self.batch_normalization(f, inputs)?,
            ops::TIMES => self.times(f, inputs)?,
            ops::PLUS => self.elementwise(f, "Add", inputs)?,
            ops::MINUS => self.elementwise(f, "Sub", inputs)?,
            ops::ELEMENT_TIMES => self.elementwise(f, "Mul", inputs)?,
            ops::POW => self.elementwise(f, "Pow", inputs)?,
            ops::EQUAL
            | ops::NOT_EQUAL
            | ops::LESS
            | ops::LESS_EQUAL
            | ops::GREATER
            | ops::GREATER_EQUAL => self.comparison(f, inputs)?,
            ops::SELECT => self.select(f, inputs)?,
            ops::CLIP => self.clip(f, inputs)?,
            ops::LOG_PLUS => self.log_plus(f, inputs)?,
            ops::SPLICE => self.splice(f, inputs)?,
            ops::RESHAPE => self.reshape_op(f, inputs)?,
            ops::SQUEEZE => self.squeeze(f, inputs)?,
            ops::TRANSPOSE_AXES => self.transpose(f, inputs)?,
            ops::SLICE => self.slice(f, inputs)?,
            ops::PAD => self.pad(f, inputs)?,
            ops::REDUCE_ELEMENTS => self.reduce(f, inputs)?,
            ops::SOFTMAX => self.normalize(f, "Softmax", inputs)?,
            ops::LOG_SOFTMAX => self.normalize(f, "LogSoftmax", inputs)?,
            ops::HARDMAX => self.normalize(f, "Hardmax", inputs)?,
            op => {
                let onnx_op = match op {
                    ops::RELU => "Relu",
                    ops::SIGMOID | ops::STABLE_SIGMOID => "Sigmoid",
                    ops::TANH => "Tanh",
                    ops::ELU => "Elu",
                    ops::EXP => "Exp",
                    ops::LOG => "Log",
                    ops::SQRT => "Sqrt",
                    ops::ABS => "Abs",
                    ops::NEGATE => "Neg",
                    ops::RECIPROCAL => "Reciprocal",
                    ops::FLOOR => "Floor",
                    ops::SIN => "Sin",
                    ops::COS => "Cos",
                    ops::SINH => "Sinh",
                    ops::COSH => "Cosh",
                    ops::ASIN => "Asin",
                    ops::ACOS => "Acos",
                    ops::ASINH => "Asinh",
                    ops::ATANH => "Atanh",
                    // `check_ops` refused everything else before lowering began.
                    _ => return Err(unsupported(f, "an operation without a lowering")),
                };
                let x = one(f, inputs)?;
                let input = self.value_name(&x);
                let name = self.node(onnx_op, &f.uid, vec![input], vec![]);
                Tensor {
                    name,
                    constant: None,
                    ..x
                }
            }
        };
        Ok(vec![out])
    }
}

fn product(dims: &[u64]) -> i64 {
    dims.iter().product::<u64>() as i64
}

pub(super) fn unsupported(f: &Function, what: &str) -> Problem {
    Problem::UnsupportedUse {
        op: ops::name(f.op),
        uid: f.uid.clone(),
        what: what.into(),
    }
}

fn one<'m>(f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
    let [x] = <[Tensor<'m>; 1]>::try_from(inputs)
        .map_err(|v| malformed(format!("{} has {} inputs, expected 1", f.uid, v.len())))?;
    Ok(x)
}

fn two<'m>(f: &Function, inputs: Vec<Tensor<'m>>) -> Result<[Tensor<'m>; 2], Problem> {
    arity(f, inputs)
}

fn arity<'m, const N: usize>(
    f: &Function,
    inputs: Vec<Tensor<'m>>,
) -> Result<[Tensor<'m>; N], Problem> {
    <[Tensor<'m>; N]>::try_from(inputs)
        .map_err(|v| malformed(format!("{} has {} inputs, expected {N}", f.uid, v.len())))
}
