//! Lowers a [`Model`] to an ONNX graph.
//!
//! Conventions that differ between the two formats, and how they are bridged:
//! - CNTK shapes are column-major (`[W, H, C]`); ONNX tensors are row-major (`[N, C, H, W]`).
//!   Reversing a CNTK shape gives the ONNX shape of the same bytes, so weights are copied as they
//!   are and only their dims are reversed. CNTK broadcasting aligns shapes at the first axis,
//!   ONNX at the last: reversed, the two rules agree.
//! - The batch axis is implicit in CNTK (a dynamic axis) and explicit in ONNX (a leading `N`).
//! - CNTK's auto-padding centres the first kernel window on cell `extra / 2`; with an even total
//!   padding the extra cell goes *before* the data, not after it as ONNX's `SAME_UPPER` would.
//!   Pads are therefore always written out explicitly, from CNTK's own geometry.
//! - Block functions are inlined: their placeholders are bound in a [`Scope`].

use std::collections::HashMap;

use crate::error::{Problem, malformed};
use crate::model::{Block, Function, Model, Variable, VariableKind, as_vec};
use crate::ops;
use crate::proto::cntk::{Dictionary, Value};
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
        let unary = |op: &str| (op.to_owned(), ());
        let out = match f.op {
            ops::COMBINE => return Ok(inputs),
            ops::DROPOUT | ops::PASS | ops::NO_OP | ops::STOP_GRADIENT => one(f, inputs)?,
            ops::CONVOLUTION => self.convolution(f, inputs)?,
            ops::POOLING => self.pooling(f, inputs)?,
            ops::BATCH_NORMALIZATION => self.batch_normalization(f, inputs)?,
            ops::TIMES => self.times(f, inputs)?,
            ops::PLUS => self.elementwise(f, "Add", inputs)?,
            ops::MINUS => self.elementwise(f, "Sub", inputs)?,
            ops::ELEMENT_TIMES => self.elementwise(f, "Mul", inputs)?,
            ops::SPLICE => self.splice(f, inputs)?,
            ops::RESHAPE => self.reshape_op(f, inputs)?,
            ops::SOFTMAX => self.softmax(f, inputs)?,
            op => {
                let (onnx_op, ()) = match op {
                    ops::RELU => unary("Relu"),
                    ops::SIGMOID | ops::STABLE_SIGMOID => unary("Sigmoid"),
                    ops::TANH => unary("Tanh"),
                    ops::ELU => unary("Elu"),
                    ops::EXP => unary("Exp"),
                    ops::LOG => unary("Log"),
                    ops::SQRT => unary("Sqrt"),
                    ops::ABS => unary("Abs"),
                    ops::NEGATE => unary("Neg"),
                    ops::RECIPROCAL => unary("Reciprocal"),
                    ops::FLOOR => unary("Floor"),
                    _ => {
                        return Err(Problem::UnsupportedOp {
                            op: ops::name(op),
                            uid: f.uid.clone(),
                            supported: ops::SUPPORTED,
                        });
                    }
                };
                let x = one(f, inputs)?;
                let input = self.value_name(&x);
                let name = self.node(&onnx_op, &f.uid, vec![input], vec![]);
                Tensor {
                    name,
                    constant: None,
                    ..x
                }
            }
        };
        Ok(vec![out])
    }

    fn convolution(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let [kernel, x] = two(f, inputs)?;
        let attrs = &f.attributes;
        if bool_attr(attrs, "transpose")?.unwrap_or(false) {
            return Err(unsupported(f, "a transposed convolution (deconvolution)"));
        }
        if bools_attr(attrs, "sharing")?.iter().any(|shared| !shared) {
            return Err(unsupported(f, "unshared convolution weights"));
        }
        let weights = kernel
            .constant
            .ok_or_else(|| unsupported(f, "a kernel computed at run time"))?;
        if !x.batched || kernel.rank() != x.rank() + 1 || x.rank() < 2 {
            return Err(unsupported(
                f,
                &format!(
                    "a kernel of shape {:?} over input {:?}",
                    kernel.shape, x.shape
                ),
            ));
        }
        let groups = u64_attr(attrs, "groups")?.unwrap_or(1).max(1);
        let channels = x.shape[x.rank() - 1];
        if kernel.shape[x.rank() - 1] * groups != channels {
            return Err(unsupported(
                f,
                &format!(
                    "a kernel of shape {:?} over {channels} channels",
                    kernel.shape
                ),
            ));
        }
        let spatial = x.rank() - 1;
        let geometry = Geometry::read(f, attrs, spatial, &x.shape, &kernel.shape[..spatial])?;
        let mut shape = geometry.output.clone();
        shape.push(kernel.shape[x.rank()]);

        let weight_dims = kernel.shape.iter().rev().map(|&d| d as i64).collect();
        let weight_name = self.constant_as(weights, weight_dims);
        let mut attribute = geometry.onnx_attributes(&kernel.shape[..spatial]);
        if groups > 1 {
            attribute.push(AttributeProto::int("group", groups as i64));
        }
        let name = self.node("Conv", &f.uid, vec![x.name, weight_name], attribute);
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    fn pooling(&mut self, f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let attrs = &f.attributes;
        if !x.batched || x.rank() < 2 {
            return Err(unsupported(
                f,
                &format!("pooling over an input of shape {:?}", x.shape),
            ));
        }
        let spatial = x.rank() - 1;
        let mut window = shape_attr(attrs, "poolingWindowShape")?
            .ok_or_else(|| malformed(format!("{} has no poolingWindowShape", f.uid)))?;
        window.resize(x.rank(), 1);
        if window[spatial] != 1 {
            return Err(unsupported(f, "pooling across channels"));
        }
        if bool_attr(attrs, "ceilOutDim")?.unwrap_or(false) {
            return Err(unsupported(f, "ceilOutDim (rounding the output size up)"));
        }
        let geometry = Geometry::read(f, attrs, spatial, &x.shape, &window[..spatial])?;
        let mut shape = geometry.output.clone();
        shape.push(x.shape[spatial]);
        let mut attribute = geometry.onnx_attributes(&window[..spatial]);
        let op = match u64_attr(attrs, "poolingType")? {
            Some(0) => "MaxPool",
            Some(1) => {
                let include_pad = bool_attr(attrs, "includePad")?.unwrap_or(false);
                attribute.push(AttributeProto::int(
                    "count_include_pad",
                    i64::from(include_pad),
                ));
                "AveragePool"
            }
            other => return Err(unsupported(f, &format!("pooling type {other:?}"))),
        };
        let name = self.node(op, &f.uid, vec![x.name], attribute);
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    fn batch_normalization(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        if inputs.len() < 5 {
            return Err(malformed(format!(
                "{} has {} inputs, BatchNormalization needs 5",
                f.uid,
                inputs.len()
            )));
        }
        let x = inputs[0].clone();
        let params = inputs[1..5]
            .iter()
            .map(|p| {
                p.constant
                    .ok_or_else(|| unsupported(f, "statistics computed at run time"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let epsilon = f64_attr(&f.attributes, "epsilon")?.unwrap_or(1e-5);
        let spatial = bool_attr(&f.attributes, "spatial")?.unwrap_or(false);
        if !x.batched {
            return Err(unsupported(f, "normalising a constant"));
        }
        if spatial {
            let channels = *x.shape.last().unwrap_or(&1);
            let mut names = vec![x.name.clone()];
            for p in &params {
                if p.shape.iter().product::<u64>() != channels {
                    return Err(unsupported(
                        f,
                        &format!(
                            "spatial statistics of shape {:?} for {channels} channels",
                            p.shape
                        ),
                    ));
                }
                names.push(self.constant_as(p, vec![channels as i64]));
            }
            let attribute = vec![AttributeProto::float("epsilon", epsilon as f32)];
            let name = self.node("BatchNormalization", &f.uid, names, attribute);
            return Ok(Tensor { name, ..x });
        }
        // Per-element statistics: fold them into one scale and one shift.
        let [scale, bias, mean, variance] = [params[0], params[1], params[2], params[3]]
            .map(|p| p.value.as_deref().unwrap_or_default());
        if [bias, mean, variance]
            .iter()
            .any(|v| v.len() != scale.len())
        {
            return Err(malformed(format!(
                "{} has statistics of different sizes",
                f.uid
            )));
        }
        let mul: Vec<f32> = scale
            .iter()
            .zip(variance)
            .map(|(s, v)| s / (v + epsilon as f32).sqrt())
            .collect();
        let add: Vec<f32> = bias
            .iter()
            .zip(mean)
            .zip(&mul)
            .map(|((b, m), a)| b - m * a)
            .collect();
        let dims: Vec<i64> = params[0].shape.iter().rev().map(|&d| d as i64).collect();
        let mul_name = self.float_initializer(&format!("{}_scale", f.uid), dims.clone(), &mul);
        let add_name = self.float_initializer(&format!("{}_shift", f.uid), dims, &add);
        let scaled = self.node(
            "Mul",
            &format!("{}_mul", f.uid),
            vec![x.name.clone(), mul_name],
            vec![],
        );
        let name = self.node("Add", &f.uid, vec![scaled, add_name], vec![]);
        Ok(Tensor { name, ..x })
    }

    /// `Times(W, x)`: `W` is `[out..., in...]` and `x` is `[in..., extra...]` (CNTK order).
    fn times(&mut self, f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
        let [w, x] = two(f, inputs)?;
        let weights = w
            .constant
            .ok_or_else(|| unsupported(f, "a product of two computed values"))?;
        if !x.batched {
            return Err(unsupported(f, "a product of two constants"));
        }
        let output_rank = u64_attr(&f.attributes, "outputRank")?.unwrap_or(1) as usize;
        if output_rank > w.rank() {
            return Err(malformed(format!(
                "{} has outputRank {output_rank} > weight rank {}",
                f.uid,
                w.rank()
            )));
        }
        let (out_dims, in_dims) = w.shape.split_at(output_rank);
        if x.rank() < in_dims.len() || x.shape[..in_dims.len()] != *in_dims {
            return Err(unsupported(
                f,
                &format!(
                    "weights {:?} that do not fit an input {:?}",
                    w.shape, x.shape
                ),
            ));
        }
        let extra = &x.shape[in_dims.len()..];
        let (n_in, n_out, n_extra) = (product(in_dims), product(out_dims), product(extra));
        // Row-major, x is [N, extra_rev..., in_rev...] and W is [in_rev..., out_rev...].
        let mut lhs = x.name.clone();
        let flat: Vec<i64> = if extra.is_empty() {
            vec![0, n_in]
        } else {
            vec![0, n_extra, n_in]
        };
        if x.rank() != flat.len() - 1 || in_dims.len() != 1 {
            lhs = self.reshape(&lhs, &format!("{}_flatten", f.uid), &flat);
        }
        let weight_name = self.constant_as(weights, vec![n_in, n_out]);
        let mut name = self.node("MatMul", &f.uid, vec![lhs, weight_name], vec![]);
        let mut shape: Vec<u64> = out_dims.to_vec();
        shape.extend_from_slice(extra);
        if out_dims.len() != 1 || extra.len() > 1 {
            let dims: Vec<i64> = std::iter::once(0)
                .chain(shape.iter().rev().map(|&d| d as i64))
                .collect();
            name = self.reshape(&name, &format!("{}_unflatten", f.uid), &dims);
        }
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    fn elementwise(
        &mut self,
        f: &Function,
        op: &str,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let [mut a, mut b] = two(f, inputs)?;
        let rank = a.rank().max(b.rank());
        let mut shape = Vec::with_capacity(rank);
        for i in 0..rank {
            let (da, db) = (
                a.shape.get(i).copied().unwrap_or(1),
                b.shape.get(i).copied().unwrap_or(1),
            );
            if da != db && da != 1 && db != 1 {
                return Err(unsupported(
                    f,
                    &format!("operands of shapes {:?} and {:?}", a.shape, b.shape),
                ));
            }
            shape.push(da.max(db));
        }
        // Both batched: ONNX would align the batch axis with a data axis, so pad the
        // lower-rank operand with unit axes right after the batch axis.
        if a.batched && b.batched && a.rank() != b.rank() {
            let low = if a.rank() < b.rank() { &mut a } else { &mut b };
            let dims: Vec<i64> = std::iter::once(0)
                .chain(std::iter::repeat_n(1, rank - low.rank()))
                .chain(low.shape.iter().rev().map(|&d| d as i64))
                .collect();
            low.name = self.reshape(&low.name, &format!("{}_align", f.uid), &dims);
        }
        let batched = a.batched || b.batched;
        let operands = vec![self.value_name(&a), self.value_name(&b)];
        let name = self.node(op, &f.uid, operands, vec![]);
        Ok(Tensor {
            name,
            shape,
            batched,
            constant: None,
        })
    }

    fn splice(&mut self, f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
        let first = inputs
            .first()
            .cloned()
            .ok_or_else(|| malformed(format!("{} has no inputs", f.uid)))?;
        let axis = axis_attr(&f.attributes, "axis")?.unwrap_or(first.rank().saturating_sub(1));
        if axis >= first.rank() {
            return Err(unsupported(f, "splicing along a new axis"));
        }
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for input in &inputs {
            let same_elsewhere = input.rank() == first.rank()
                && input
                    .shape
                    .iter()
                    .zip(&first.shape)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !input.batched || !same_elsewhere {
                return Err(unsupported(
                    f,
                    &format!("splicing {:?} with {:?}", input.shape, first.shape),
                ));
            }
            shape[axis] += input.shape[axis];
        }
        let onnx_axis = 1 + (first.rank() - 1 - axis) as i64;
        let names = inputs.into_iter().map(|t| t.name).collect();
        let name = self.node(
            "Concat",
            &f.uid,
            names,
            vec![AttributeProto::int("axis", onnx_axis)],
        );
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    fn reshape_op(&mut self, f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let new_shape = shape_attr(&f.attributes, "newShape")?
            .ok_or_else(|| malformed(format!("{} has no newShape", f.uid)))?;
        let begin = axis_attr(&f.attributes, "beginAxis")?
            .unwrap_or(0)
            .min(x.rank());
        let end = axis_attr(&f.attributes, "endAxis")?
            .unwrap_or(x.rank())
            .clamp(begin, x.rank());
        let replaced = product(&x.shape[begin..end]) as u64;
        // CNTK marks a dimension to infer with the largest size_t value.
        let known: u64 = new_shape.iter().filter(|&&d| d != u64::MAX).product();
        let inferred = new_shape.iter().filter(|&&d| d == u64::MAX).count();
        let resolved: Vec<u64> = match inferred {
            0 if known == replaced => new_shape,
            1 if known > 0 && replaced.is_multiple_of(known) => new_shape
                .iter()
                .map(|&d| if d == u64::MAX { replaced / known } else { d })
                .collect(),
            _ => {
                return Err(unsupported(
                    f,
                    &format!("reshaping {:?} to {new_shape:?}", x.shape),
                ));
            }
        };
        let mut shape = x.shape[..begin].to_vec();
        shape.extend(resolved);
        shape.extend_from_slice(&x.shape[end..]);
        if !x.batched {
            return Err(unsupported(f, "reshaping a constant"));
        }
        let dims: Vec<i64> = std::iter::once(0)
            .chain(shape.iter().rev().map(|&d| d as i64))
            .collect();
        let name = self.reshape(&x.name, &f.uid, &dims);
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    fn softmax(&mut self, f: &Function, inputs: Vec<Tensor<'m>>) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let axis = match axis_attr(&f.attributes, "axis")? {
            Some(axis) if axis < x.rank() => axis,
            None if x.rank() == 1 => 0,
            _ => {
                return Err(unsupported(
                    f,
                    &format!(
                        "softmax over an input of shape {:?} without one axis",
                        x.shape
                    ),
                ));
            }
        };
        let onnx_axis = x.rank() as i64 - axis as i64 - if x.batched { 0 } else { 1 };
        let input = self.value_name(&x);
        let name = self.node(
            "Softmax",
            &f.uid,
            vec![input],
            vec![AttributeProto::int("axis", onnx_axis)],
        );
        Ok(Tensor {
            name,
            constant: None,
            ..x
        })
    }
}

/// Where a sliding window (convolution kernel or pooling window) goes, per spatial axis, in
/// CNTK order. Mirrors CNTK's `ConvolveGeometry`.
struct Geometry {
    output: Vec<u64>,
    strides: Vec<u64>,
    dilations: Vec<u64>,
    pads_begin: Vec<u64>,
    pads_end: Vec<u64>,
}

impl Geometry {
    fn read(
        f: &Function,
        attrs: &Dictionary,
        spatial: usize,
        input: &[u64],
        kernel: &[u64],
    ) -> Result<Self, Problem> {
        let strides = shape_attr(attrs, "strides")?.unwrap_or_else(|| vec![1]);
        let dilations = shape_attr(attrs, "dilation")?.unwrap_or_else(|| vec![1]);
        let auto_pad = bools_attr(attrs, "autoPadding")?;
        let lower = shape_attr(attrs, "lowerPad")?.unwrap_or_else(|| vec![0]);
        let upper = shape_attr(attrs, "upperPad")?.unwrap_or_else(|| vec![0]);
        // CNTK lets a one-element attribute stand for every axis.
        let at = |v: &[u64], i: usize, default: u64| {
            v.get(if v.len() == 1 { 0 } else { i })
                .copied()
                .unwrap_or(default)
        };
        let mut geometry = Geometry {
            output: vec![],
            strides: vec![],
            dilations: vec![],
            pads_begin: vec![],
            pads_end: vec![],
        };
        for i in 0..spatial {
            let stride = at(&strides, i, 1).max(1);
            let dilation = at(&dilations, i, 1).max(1);
            let pad = auto_pad
                .get(if auto_pad.len() == 1 { 0 } else { i })
                .copied()
                .unwrap_or(false);
            let (lo, hi) = (at(&lower, i, 0), at(&upper, i, 0));
            let (out, begin, end) = window_axis(input[i], kernel[i], stride, dilation, pad, lo, hi)
                .map_err(|what| unsupported(f, &what))?;
            geometry.output.push(out);
            geometry.strides.push(stride);
            geometry.dilations.push(dilation);
            geometry.pads_begin.push(begin);
            geometry.pads_end.push(end);
        }
        Ok(geometry)
    }

    fn onnx_attributes(&self, kernel: &[u64]) -> Vec<AttributeProto> {
        let rev = |v: &[u64]| v.iter().rev().map(|&d| d as i64).collect::<Vec<_>>();
        let mut pads = rev(&self.pads_begin);
        pads.extend(rev(&self.pads_end));
        let mut attributes = vec![
            AttributeProto::ints("kernel_shape", rev(kernel)),
            AttributeProto::ints("strides", rev(&self.strides)),
            AttributeProto::ints("pads", pads),
        ];
        if self.dilations.iter().any(|&d| d != 1) {
            attributes.push(AttributeProto::ints("dilations", rev(&self.dilations)));
        }
        attributes
    }
}

/// One axis of CNTK's window geometry: returns (output size, pad before, pad after).
///
/// CNTK places output `j`'s window centre at `start + j * stride`, where `start` is `extra / 2`
/// (auto-padding or no padding) or set by explicit lower padding. The centre of a window of
/// size `k` is its cell `(k - 1) / 2`.
fn window_axis(
    input: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
    auto_pad: bool,
    lower: u64,
    upper: u64,
) -> Result<(u64, u64, u64), String> {
    let k = (kernel - 1) * dilation + 1;
    let padded = if auto_pad {
        input + k - 1
    } else {
        input + lower + upper
    };
    if padded < k {
        return Err(format!("a window of {k} over {input} cells"));
    }
    let out = (padded - k) / stride + 1;
    let cells = (out - 1) * stride + 1;
    let (input, k, cells) = (input as i64, k as i64, cells as i64);
    let left = (k - 1) / 2;
    let right = k - 1 - left;
    let start = if !auto_pad && (lower != 0 || upper != 0) {
        left - lower as i64
    } else {
        (input - cells) / 2
    };
    let begin = left - start;
    let end = start + cells - 1 + right - (input - 1);
    if begin < 0 {
        return Err(format!("a window that skips {} leading cells", -begin));
    }
    // A negative end pad means trailing cells no window reaches; ONNX drops those by itself.
    let end = end.max(0);
    if (input + begin + end - k) / stride as i64 + 1 != out as i64 {
        return Err(format!(
            "a window geometry ONNX cannot express (input {input}, window {k}, stride {stride})"
        ));
    }
    Ok((out, begin as u64, end as u64))
}

fn product(dims: &[u64]) -> i64 {
    dims.iter().product::<u64>() as i64
}

fn unsupported(f: &Function, what: &str) -> Problem {
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
    <[Tensor<'m>; 2]>::try_from(inputs)
        .map_err(|v| malformed(format!("{} has {} inputs, expected 2", f.uid, v.len())))
}

// Optional attributes: absent is `None`, present with the wrong type is an error.

fn attr<'d>(attrs: &'d Dictionary, key: &str) -> Option<&'d Value> {
    attrs.data.get(key).and_then(|v| v.value.as_ref())
}

fn bad_attr(key: &str) -> Problem {
    malformed(format!("attribute `{key}` has an unexpected type"))
}

fn bool_attr(attrs: &Dictionary, key: &str) -> Result<Option<bool>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_attr(key)),
    }
}

fn bools_attr(attrs: &Dictionary, key: &str) -> Result<Vec<bool>, Problem> {
    let Some(value) = attrs.data.get(key) else {
        return Ok(vec![]);
    };
    as_vec(value)?
        .iter()
        .map(|v| match v.value {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(bad_attr(key)),
        })
        .collect()
}

fn u64_attr(attrs: &Dictionary, key: &str) -> Result<Option<u64>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::SizeT(n)) => Ok(Some(*n)),
        Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as u64)),
        Some(_) => Err(bad_attr(key)),
    }
}

fn f64_attr(attrs: &Dictionary, key: &str) -> Result<Option<f64>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Double(x)) => Ok(Some(*x)),
        Some(Value::Float(x)) => Ok(Some(f64::from(*x))),
        Some(_) => Err(bad_attr(key)),
    }
}

fn shape_attr(attrs: &Dictionary, key: &str) -> Result<Option<Vec<u64>>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Shape(s)) => Ok(Some(s.shape_dim.clone())),
        Some(_) => Err(bad_attr(key)),
    }
}

/// A static axis index; CNTK saves dynamic and sentinel axes with huge indices, read as `None`
/// here so that the caller's default applies.
fn axis_attr(attrs: &Dictionary, key: &str) -> Result<Option<usize>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Axis(a)) => Ok(usize::try_from(a.static_axis_idx)
            .ok()
            .filter(|&i| i < 1 << 16)),
        Some(Value::Dictionary(d)) => {
            // Some CNTK versions nest the axis in a dictionary of its own.
            Ok(d.data.get("static_axis_idx").and_then(|v| match v.value {
                Some(Value::Int(i)) if (0..1 << 16).contains(&i) => Some(i as usize),
                _ => None,
            }))
        }
        Some(_) => Err(bad_attr(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::window_axis;

    #[test]
    fn auto_padding_puts_the_odd_cell_first() {
        // 3x3, stride 2 over 32 cells: CNTK pads one cell before, none after (ONNX SAME_UPPER
        // would pad after).
        assert_eq!(window_axis(32, 3, 2, 1, true, 0, 0), Ok((16, 1, 0)));
        // Stride 1 is symmetric.
        assert_eq!(window_axis(32, 3, 1, 1, true, 0, 0), Ok((32, 1, 1)));
        // 1x1 stride-2 projection: no padding, last cell unused.
        assert_eq!(window_axis(32, 1, 2, 1, true, 0, 0), Ok((16, 0, 0)));
    }

    #[test]
    fn no_padding_and_explicit_padding() {
        assert_eq!(window_axis(8, 8, 1, 1, false, 0, 0), Ok((1, 0, 0)));
        assert_eq!(window_axis(32, 3, 1, 1, false, 0, 0), Ok((30, 0, 0)));
        assert_eq!(window_axis(32, 3, 1, 1, false, 1, 1), Ok((32, 1, 1)));
        assert_eq!(window_axis(32, 2, 2, 1, false, 0, 0), Ok((16, 0, 0)));
    }

    #[test]
    fn window_larger_than_input_is_refused() {
        assert!(window_axis(2, 5, 1, 1, false, 0, 0).is_err());
    }
}
