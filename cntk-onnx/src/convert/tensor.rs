//! Element-wise operations, shapes and axes, reductions and normalisations.
//!
//! CNTK numbers axes in its own (column-major) order without the batch axis; each lowering
//! here maps them with [`onnx_axis`].

use super::attributes::{
    Axis, axes_attr, axis_attr, bool_attr, f64_attr, i64_attr, i64s_attr, shape_attr, str_attr,
    u64_attr,
};
use super::{Lowering, Tensor, arity, one, product, unsupported};
use crate::error::{Problem, malformed};
use crate::model::Function;
use crate::ops;
use crate::proto::onnx::{AttributeProto, data_type};

/// ONNX dims that reshape a batched value to `shape` (CNTK order), the batch kept as it is.
fn reshape_dims(shape: &[u64]) -> Vec<i64> {
    std::iter::once(0)
        .chain(shape.iter().rev().map(|&d| d as i64))
        .collect()
}

/// The ONNX axis of CNTK axis `axis` of `t`.
fn onnx_axis(t: &Tensor<'_>, axis: usize) -> i64 {
    t.rank() as i64 - axis as i64 - i64::from(!t.batched)
}

fn computed<'m>(name: String, shape: Vec<u64>, batched: bool) -> Tensor<'m> {
    Tensor {
        name,
        shape,
        batched,
        constant: None,
    }
}

fn cast_to(to: i32) -> Vec<AttributeProto> {
    vec![AttributeProto::int("to", i64::from(to))]
}

impl<'m> Lowering<'m> {
    /// CNTK's broadcasting of a function's `N` inputs (aligned at the first axis, which
    /// reversed is ONNX's last): their graph names, the result's shape, and whether it has a
    /// batch axis.
    fn broadcast<const N: usize>(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<([String; N], Vec<u64>, bool), Problem> {
        let operands: [Tensor<'m>; N] = arity(f, inputs)?;
        let rank = operands.iter().map(Tensor::rank).max().unwrap_or(0);
        let mut shape = vec![1; rank];
        for t in &operands {
            for (i, &d) in t.shape.iter().enumerate() {
                if shape[i] == 1 {
                    shape[i] = d;
                } else if d != 1 && d != shape[i] {
                    let shapes: Vec<_> = operands.iter().map(|t| &t.shape).collect();
                    return Err(unsupported(f, &format!("operands of shapes {shapes:?}")));
                }
            }
        }
        let batched = operands.iter().any(|t| t.batched);
        let names = operands.map(|t| {
            if t.batched && t.rank() < rank {
                // ONNX would align the batch axis with a data axis: unit axes go right after it.
                let mut padded = t.shape.clone();
                padded.resize(rank, 1);
                self.reshape(&t.name, &format!("{}_align", f.uid), &reshape_dims(&padded))
            } else {
                self.value_name(&t)
            }
        });
        Ok((names, shape, batched))
    }

    pub(super) fn elementwise(
        &mut self,
        f: &Function,
        op: &str,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let (names, shape, batched) = self.broadcast::<2>(f, inputs)?;
        let name = self.node(op, &f.uid, names.into(), vec![]);
        Ok(computed(name, shape, batched))
    }

    /// `Equal`, `Less`, ...: 1 where the comparison holds, 0 elsewhere, as CNTK gives them.
    pub(super) fn comparison(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let (names, shape, batched) = self.broadcast::<2>(f, inputs)?;
        let (op, negate) = match f.op {
            ops::EQUAL => ("Equal", false),
            ops::NOT_EQUAL => ("Equal", true),
            ops::LESS => ("Less", false),
            ops::LESS_EQUAL => ("LessOrEqual", false),
            ops::GREATER => ("Greater", false),
            ops::GREATER_EQUAL => ("GreaterOrEqual", false),
            _ => return Err(unsupported(f, "an unknown comparison")),
        };
        let mut test = self.node(op, &format!("{}_test", f.uid), names.into(), vec![]);
        if negate {
            test = self.node("Not", &format!("{}_not", f.uid), vec![test], vec![]);
        }
        let name = self.node("Cast", &f.uid, vec![test], cast_to(data_type::FLOAT));
        Ok(computed(name, shape, batched))
    }

    /// `Select(condition, then, else)`: CNTK takes a non-zero condition for true.
    pub(super) fn select(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let ([condition, then, otherwise], shape, batched) = self.broadcast(f, inputs)?;
        let condition = self.node(
            "Cast",
            &format!("{}_condition", f.uid),
            vec![condition],
            cast_to(data_type::BOOL),
        );
        let name = self.node("Where", &f.uid, vec![condition, then, otherwise], vec![]);
        Ok(computed(name, shape, batched))
    }

    /// `Clip(x, min, max)`, with bounds that may be tensors.
    pub(super) fn clip(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let ([x, low, high], shape, batched) = self.broadcast(f, inputs)?;
        let raised = self.node("Max", &format!("{}_low", f.uid), vec![x, low], vec![]);
        let name = self.node("Min", &f.uid, vec![raised, high], vec![]);
        Ok(computed(name, shape, batched))
    }

    /// `LogPlus(a, b) = log(exp(a) + exp(b))`, computed as CNTK does without overflowing:
    /// `max(a, b) + softplus(-|a - b|)`.
    pub(super) fn log_plus(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let ([a, b], shape, batched) = self.broadcast(f, inputs)?;
        let uid = &f.uid;
        let max = self.node(
            "Max",
            &format!("{uid}_max"),
            vec![a.clone(), b.clone()],
            vec![],
        );
        let difference = self.node("Sub", &format!("{uid}_difference"), vec![a, b], vec![]);
        let distance = self.node("Abs", &format!("{uid}_distance"), vec![difference], vec![]);
        let negated = self.node("Neg", &format!("{uid}_negated"), vec![distance], vec![]);
        let soft = self.node(
            "Softplus",
            &format!("{uid}_softplus"),
            vec![negated],
            vec![],
        );
        let name = self.node("Add", uid, vec![max, soft], vec![]);
        Ok(computed(name, shape, batched))
    }

    pub(super) fn splice(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let first = inputs
            .first()
            .cloned()
            .ok_or_else(|| malformed(format!("{} has no inputs", f.uid)))?;
        let rank = first.rank();
        let axis = match axis_attr(&f.attributes, "axis")? {
            None => rank.saturating_sub(1),
            Some(Axis::Static(i)) => {
                let i = if i < 0 { i + rank as i64 } else { i };
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i <= rank)
                    .ok_or_else(|| unsupported(f, &format!("splicing along axis {i}")))?
            }
            Some(other) => return Err(unsupported(f, &format!("splicing along {other}"))),
        };
        // Splicing along the axis after the last stacks the inputs along a new axis.
        let new_axis = axis == rank;
        // Along every other axis, an input of size 1 is broadcast to the others' size, and one
        // without a batch axis to the batch (CNTK's `SpliceNode`: BrainScript's ResNets widen
        // their shortcuts with a zero tensor of size 1 in space).
        let mut target = vec![1; rank];
        for input in &inputs {
            let fits = input.rank() == rank
                && (input.shape.iter().zip(&mut target).enumerate()).all(|(i, (&d, t))| {
                    if i == axis || d == *t || d == 1 {
                        return true;
                    }
                    let widened = *t == 1;
                    *t = d;
                    widened
                });
            if !fits {
                let shapes: Vec<_> = inputs.iter().map(|t| &t.shape).collect();
                return Err(unsupported(
                    f,
                    &format!("splicing inputs of shapes {shapes:?}"),
                ));
            }
        }
        let reference = inputs
            .iter()
            .find(|t| t.batched)
            .cloned()
            .ok_or_else(|| unsupported(f, "splicing inputs none of which has a batch axis"))?;
        let mut shape = target.clone();
        if new_axis {
            shape.push(0);
        } else {
            shape[axis] = 0;
        }
        let mut names = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let mut full = target.clone();
            if !new_axis {
                full[axis] = input.shape[axis];
            }
            let input = if input.batched && input.shape == full {
                input.clone()
            } else {
                self.expand_to_batch(f, input, &reference, &full)
            };
            let input = &input;
            if new_axis {
                let mut unit = input.shape.clone();
                unit.push(1);
                let base = format!("{}_stack", f.uid);
                names.push(self.reshape(&input.name, &base, &reshape_dims(&unit)));
                shape[axis] += 1;
            } else {
                names.push(input.name.clone());
                shape[axis] += input.shape[axis];
            }
        }
        let onnx = 1 + (shape.len() - 1 - axis) as i64;
        let name = self.node(
            "Concat",
            &f.uid,
            names,
            vec![AttributeProto::int("axis", onnx)],
        );
        Ok(computed(name, shape, true))
    }

    /// `input` broadcast to `shape` (CNTK order) and to the batch of `reference`, a batched
    /// value: `Expand` to the batch size read from `reference` at run time, then `shape`.
    fn expand_to_batch(
        &mut self,
        f: &Function,
        input: &Tensor<'m>,
        reference: &Tensor<'m>,
        shape: &[u64],
    ) -> Tensor<'m> {
        let base = format!("{}_broadcast", f.uid);
        let value = self.value_name(input);
        let whole = self.node(
            "Shape",
            &format!("{base}_shape"),
            vec![reference.name.clone()],
            vec![],
        );
        let batch = self.slice_node(&whole, &format!("{base}_batch"), &[0], &[1], &[0], None);
        let dims: Vec<i64> = shape.iter().rev().map(|&d| d as i64).collect();
        let dims = self.int64_initializer(&format!("{base}_dims"), &dims);
        let full = self.node(
            "Concat",
            &format!("{base}_full"),
            vec![batch, dims],
            vec![AttributeProto::int("axis", 0)],
        );
        // An unbatched value's dims align with the last ones; a batched one's all align.
        let name = self.node("Expand", &base, vec![value, full], vec![]);
        computed(name, shape.to_vec(), true)
    }

    pub(super) fn reshape_op(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let new_shape = shape_attr(&f.attributes, "newShape")?
            .ok_or_else(|| malformed(format!("{} has no newShape", f.uid)))?;
        let rank = x.rank();
        // A range of axes: `End` (or nothing) past the last, negative from the end.
        let bound = |axis: Option<Axis>, default: usize| match axis {
            None | Some(Axis::End) => Ok(default),
            Some(Axis::Static(i)) => {
                let i = if i < 0 { i + rank as i64 } else { i };
                Ok(usize::try_from(i).unwrap_or(0).min(rank))
            }
            Some(other) => Err(unsupported(f, &format!("reshaping along {other}"))),
        };
        let begin = bound(axis_attr(&f.attributes, "beginAxis")?, 0)?;
        let end = bound(axis_attr(&f.attributes, "endAxis")?, rank)?.max(begin);
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
        self.reshaped(f, x, shape)
    }

    /// `x` with the same elements in `shape`.
    fn reshaped(
        &mut self,
        f: &Function,
        x: Tensor<'m>,
        shape: Vec<u64>,
    ) -> Result<Tensor<'m>, Problem> {
        if !x.batched {
            return Err(unsupported(f, "reshaping a constant"));
        }
        let name = self.reshape(&x.name, &f.uid, &reshape_dims(&shape));
        Ok(computed(name, shape, true))
    }

    /// Drops unit axes: the ones named, or all of them.
    pub(super) fn squeeze(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let named = axes_attr(&f.attributes, "axisVec")?;
        let mut dropped = vec![false; x.rank()];
        if named.is_empty() {
            dropped = x.shape.iter().map(|&d| d == 1).collect();
        }
        for axis in named {
            let i = axis
                .resolve(x.rank())
                .filter(|&i| x.shape[i] == 1)
                .ok_or_else(|| unsupported(f, &format!("squeezing {axis} of {:?}", x.shape)))?;
            dropped[i] = true;
        }
        let shape = x
            .shape
            .iter()
            .zip(&dropped)
            .filter(|&(_, &drop)| !drop)
            .map(|(&d, _)| d)
            .collect();
        self.reshaped(f, x, shape)
    }

    /// `TransposeAxes`: two axes swapped (`axis1`, `axis2`) or a whole permutation (`axisVec`,
    /// output axis `i` being input axis `axisVec[i]`).
    pub(super) fn transpose(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let rank = x.rank();
        let resolve = |axis: Axis| {
            axis.resolve(rank)
                .ok_or_else(|| unsupported(f, &format!("transposing {axis}")))
        };
        let permutation = axes_attr(&f.attributes, "axisVec")?;
        let permutation: Vec<usize> = if permutation.is_empty() {
            let mut identity: Vec<usize> = (0..rank).collect();
            let first = axis_attr(&f.attributes, "axis1")?.unwrap_or(Axis::Static(0));
            let second = axis_attr(&f.attributes, "axis2")?.unwrap_or(Axis::Static(1));
            identity.swap(resolve(first)?, resolve(second)?);
            identity
        } else {
            permutation
                .into_iter()
                .map(resolve)
                .collect::<Result<_, _>>()?
        };
        let mut sorted = permutation.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(unsupported(
                f,
                &format!("the axis order {permutation:?}, which is not a permutation"),
            ));
        }
        // ONNX output axis j is CNTK output axis rank - j (j > 0, after the batch axis).
        let mut onnx: Vec<i64> = (1..=rank)
            .map(|j| onnx_axis(&x, permutation[rank - j]))
            .collect();
        if x.batched {
            onnx.insert(0, 0);
        }
        let shape = permutation.iter().map(|&i| x.shape[i]).collect();
        let input = self.value_name(&x);
        let name = self.node(
            "Transpose",
            &f.uid,
            vec![input],
            vec![AttributeProto::ints("perm", onnx)],
        );
        Ok(computed(name, shape, x.batched))
    }

    /// Adds a `Slice` node.
    pub(super) fn slice_node(
        &mut self,
        input: &str,
        base: &str,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: Option<&[i64]>,
    ) -> String {
        let mut inputs = vec![
            input.to_owned(),
            self.int64_initializer(&format!("{base}_starts"), starts),
            self.int64_initializer(&format!("{base}_ends"), ends),
            self.int64_initializer(&format!("{base}_axes"), axes),
        ];
        if let Some(steps) = steps {
            inputs.push(self.int64_initializer(&format!("{base}_steps"), steps));
        }
        self.node("Slice", base, inputs, vec![])
    }

    /// `Slice`: per axis, `[begin, end)` with a stride; negative indices count from the end
    /// and an end of 0 is the end of the axis, as in CNTK.
    pub(super) fn slice(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let attrs = &f.attributes;
        let (axes, begins, ends, mut strides) = if attrs.data.contains_key("axisVec") {
            (
                axes_attr(attrs, "axisVec")?,
                i64s_attr(attrs, "beginIndexVec")?,
                i64s_attr(attrs, "endIndexVec")?,
                i64s_attr(attrs, "sliceStridesVec")?,
            )
        } else {
            let axis = axis_attr(attrs, "axis")?
                .ok_or_else(|| malformed(format!("{} has no slice axis", f.uid)))?;
            (
                vec![axis],
                vec![i64_attr(attrs, "beginIndex")?.unwrap_or(0)],
                vec![i64_attr(attrs, "endIndex")?.unwrap_or(0)],
                vec![i64_attr(attrs, "sliceStrides")?.unwrap_or(1)],
            )
        };
        if strides.is_empty() {
            strides = vec![1; axes.len()];
        }
        if begins.len() != axes.len() || ends.len() != axes.len() || strides.len() != axes.len() {
            return Err(malformed(format!(
                "{} has slice indices for a different number of axes",
                f.uid
            )));
        }
        let mut shape = x.shape.clone();
        let (mut starts, mut stops, mut onnx_axes) = (vec![], vec![], vec![]);
        for (((axis, begin), end), &stride) in axes.iter().zip(&begins).zip(&ends).zip(&strides) {
            let i = axis
                .resolve(x.rank())
                .ok_or_else(|| unsupported(f, &format!("slicing along {axis}")))?;
            let dim = x.shape[i] as i64;
            let begin = if *begin < 0 { begin + dim } else { *begin }.clamp(0, dim);
            let end = if *end <= 0 { end + dim } else { *end }.clamp(0, dim);
            if stride < 1 || end <= begin {
                return Err(unsupported(
                    f,
                    &format!("the slice [{begin}, {end}) by {stride} of an axis of {dim}"),
                ));
            }
            shape[i] = ((end - begin + stride - 1) / stride) as u64;
            starts.push(begin);
            stops.push(end);
            onnx_axes.push(onnx_axis(&x, i));
        }
        let input = self.value_name(&x);
        let steps = strides
            .iter()
            .any(|&s| s != 1)
            .then_some(strides.as_slice());
        let name = self.slice_node(&input, &f.uid, &starts, &stops, &onnx_axes, steps);
        Ok(computed(name, shape, x.batched))
    }

    /// `Pad`: constant or reflected cells before (`paddingHead`) and after (`paddingFoot`).
    pub(super) fn pad(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let attrs = &f.attributes;
        let mut head = shape_attr(attrs, "paddingHead")?.unwrap_or_default();
        let mut foot = shape_attr(attrs, "paddingFoot")?.unwrap_or_default();
        head.resize(x.rank(), 0);
        foot.resize(x.rank(), 0);
        let mode = match u64_attr(attrs, "paddingMode")?.unwrap_or(0) {
            0 => "constant",
            1 => "reflect",
            other => {
                return Err(unsupported(
                    f,
                    &format!("padding mode {other} (symmetric), which ONNX does not have"),
                ));
            }
        };
        let value = f64_attr(attrs, "paddingConstantValue")?.unwrap_or(0.0) as f32;
        let batch = usize::from(x.batched);
        let mut pads = vec![0; batch];
        pads.extend(head.iter().rev().map(|&d| d as i64));
        pads.extend(std::iter::repeat_n(0, batch));
        pads.extend(foot.iter().rev().map(|&d| d as i64));
        let shape = x
            .shape
            .iter()
            .zip(head.iter().zip(&foot))
            .map(|(&d, (&h, &t))| d + h + t)
            .collect();
        let input = self.value_name(&x);
        let pads = self.int64_initializer(&format!("{}_pads", f.uid), &pads);
        let fill = self.float_initializer(&format!("{}_value", f.uid), vec![], &[value]);
        let name = self.node(
            "Pad",
            &f.uid,
            vec![input, pads, fill],
            vec![AttributeProto::string("mode", mode)],
        );
        Ok(computed(name, shape, x.batched))
    }

    /// `ReduceElements`: sum, mean, max, min, product, log-sum-exp or arg max/min over static
    /// axes (all of them by default); the reduced axes stay, with size 1, unless
    /// `reductionKeepDimensions` is false.
    pub(super) fn reduce(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let attrs = &f.attributes;
        let op = str_attr(attrs, "reductionOpName")?
            .ok_or_else(|| malformed(format!("{} has no reductionOpName", f.uid)))?;
        let keep = bool_attr(attrs, "reductionKeepDimensions")?.unwrap_or(true);
        let mut axes = axes_attr(attrs, "axisVec")?;
        if axes.is_empty() {
            axes.push(axis_attr(attrs, "axis")?.unwrap_or(Axis::AllStatic));
        }
        let mut reduced = Vec::new();
        for axis in axes {
            match axis {
                Axis::AllStatic => reduced.extend(0..x.rank()),
                Axis::Static(_) => reduced.push(
                    axis.resolve(x.rank())
                        .ok_or_else(|| unsupported(f, &format!("reducing {axis}")))?,
                ),
                other => {
                    return Err(unsupported(
                        f,
                        &format!("a reduction over {other}: only a sample's own axes"),
                    ));
                }
            }
        }
        reduced.sort_unstable();
        reduced.dedup();
        let shape: Vec<u64> = x
            .shape
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| match (reduced.contains(&i), keep) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        // ONNX reduces every axis, the batch too, when given none.
        if reduced.is_empty() {
            return Ok(x);
        }
        let onnx_axes: Vec<i64> = reduced.iter().map(|&i| onnx_axis(&x, i)).collect();
        let keepdims = AttributeProto::int("keepdims", i64::from(keep));
        let input = self.value_name(&x);
        let name = match op {
            "Sum" => {
                let axes = self.int64_initializer(&format!("{}_axes", f.uid), &onnx_axes);
                self.node("ReduceSum", &f.uid, vec![input, axes], vec![keepdims])
            }
            "Mean" | "Max" | "Min" | "Prod" | "LogSum" => {
                let onnx_op = match op {
                    "Mean" => "ReduceMean",
                    "Max" => "ReduceMax",
                    "Min" => "ReduceMin",
                    "Prod" => "ReduceProd",
                    _ => "ReduceLogSumExp",
                };
                let axes = AttributeProto::ints("axes", onnx_axes);
                self.node(onnx_op, &f.uid, vec![input], vec![axes, keepdims])
            }
            "Argmax" | "Argmin" => {
                let [axis] = onnx_axes[..] else {
                    return Err(unsupported(f, &format!("{op} over several axes")));
                };
                let onnx_op = if op == "Argmax" { "ArgMax" } else { "ArgMin" };
                let index = self.node(
                    onnx_op,
                    &format!("{}_index", f.uid),
                    vec![input],
                    vec![AttributeProto::int("axis", axis), keepdims],
                );
                // CNTK gives the index as a number of the operand's type.
                self.node("Cast", &f.uid, vec![index], cast_to(data_type::FLOAT))
            }
            other => return Err(unsupported(f, &format!("the {other} reduction"))),
        };
        Ok(computed(name, shape, x.batched))
    }

    /// `Softmax`, `LogSoftmax`, `Hardmax`: along `axis`, or, without one, over the whole sample
    /// as CNTK does.
    pub(super) fn normalize(
        &mut self,
        f: &Function,
        op: &str,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let x = one(f, inputs)?;
        let axis = match axis_attr(&f.attributes, "axis")? {
            None | Some(Axis::AllStatic) => None,
            Some(axis @ Axis::Static(_)) => Some(
                axis.resolve(x.rank())
                    .ok_or_else(|| unsupported(f, &format!("{op} along {axis}")))?,
            ),
            Some(other) => return Err(unsupported(f, &format!("{op} along {other}"))),
        };
        let input = self.value_name(&x);
        let name = match axis {
            Some(axis) => {
                let axis = AttributeProto::int("axis", onnx_axis(&x, axis));
                self.node(op, &f.uid, vec![input], vec![axis])
            }
            None if x.rank() == 1 => self.node(
                op,
                &f.uid,
                vec![input],
                vec![AttributeProto::int("axis", -1)],
            ),
            None if x.batched && x.rank() > 1 => {
                let flat = self.reshape(&input, &format!("{}_flatten", f.uid), &[0, -1]);
                let axis = vec![AttributeProto::int("axis", 1)];
                let normalized = self.node(op, &format!("{}_flat", f.uid), vec![flat], axis);
                self.reshape(&normalized, &f.uid, &reshape_dims(&x.shape))
            }
            None => {
                return Err(unsupported(
                    f,
                    &format!("{op} of a value of shape {:?}", x.shape),
                ));
            }
        };
        Ok(Tensor {
            name,
            constant: None,
            ..x
        })
    }
}
