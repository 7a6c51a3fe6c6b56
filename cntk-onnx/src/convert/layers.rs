//! Layers with weights or windows: convolution (and its transpose), pooling, batch
//! normalization, matrix products.

use super::attributes::{bool_attr, bools_attr, f64_attr, shape_attr, u64_attr};
use super::geometry::{Geometry, Transposed};
use super::{Lowering, Tensor, one, product, two, unsupported};
use crate::error::{Problem, malformed};
use crate::model::{Function, Variable};
use crate::proto::onnx::AttributeProto;

impl<'m> Lowering<'m> {
    pub(super) fn convolution(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
        let [kernel, x] = two(f, inputs)?;
        let attrs = &f.attributes;
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
        let spatial = x.rank() - 1;
        let channels = x.shape[spatial];
        // A transposed kernel is `[window..., out, in]`, a forward one `[window..., in, out]`.
        let transpose = bool_attr(attrs, "transpose")?.unwrap_or(false);
        let kernel_in = kernel.shape[spatial + usize::from(transpose)];
        if kernel_in * groups != channels {
            return Err(unsupported(
                f,
                &format!(
                    "a kernel of shape {:?} over {channels} channels",
                    kernel.shape
                ),
            ));
        }
        if transpose {
            return self.convolution_transpose(f, weights, &kernel.shape, x, groups);
        }
        let geometry = Geometry::forward(f, attrs, &x.shape[..spatial], &kernel.shape[..spatial])?;
        let mut shape = geometry.output.clone();
        shape.push(kernel.shape[x.rank()]);
        let input = self.crop(&x, f, &geometry.crop);

        let weight_dims = kernel.shape.iter().rev().map(|&d| d as i64).collect();
        let weight_name = self.constant_as(weights, weight_dims);
        let mut attribute = geometry.onnx_attributes(&kernel.shape[..spatial]);
        if groups > 1 {
            attribute.push(AttributeProto::int("group", groups as i64));
        }
        let name = self.node("Conv", &f.uid, vec![input, weight_name], attribute);
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    /// A transposed convolution (deconvolution): the kernel is `[window..., out, in]`, CNTK order.
    fn convolution_transpose(
        &mut self,
        f: &Function,
        weights: &'m Variable,
        kernel: &[u64],
        x: Tensor<'m>,
        groups: u64,
    ) -> Result<Tensor<'m>, Problem> {
        if groups > 1 {
            return Err(unsupported(f, "a grouped transposed convolution"));
        }
        let spatial = x.rank() - 1;
        // A saved output shape is `[spatial..., channels]`; an empty or zero one means "infer".
        let output = shape_attr(&f.attributes, "outputShape")?
            .filter(|dims| dims.len() >= spatial && dims[..spatial].iter().all(|&d| d > 0));
        let geometry = Transposed::read(
            f,
            &f.attributes,
            &x.shape[..spatial],
            &kernel[..spatial],
            output.as_deref().map(|dims| &dims[..spatial]),
        )?;
        let mut shape = geometry.output.clone();
        shape.push(kernel[spatial]);
        let weight_dims = kernel.iter().rev().map(|&d| d as i64).collect();
        let weight_name = self.constant_as(weights, weight_dims);
        let attribute = geometry.onnx_attributes(&kernel[..spatial]);
        let name = self.node(
            "ConvTranspose",
            &f.uid,
            vec![x.name, weight_name],
            attribute,
        );
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    /// `x` without the leading cells no window reaches (`crop`: per spatial axis, CNTK order).
    fn crop(&mut self, x: &Tensor<'m>, f: &Function, crop: &[u64]) -> String {
        if crop.iter().all(|&c| c == 0) {
            return x.name.clone();
        }
        let rank = x.rank() as i64;
        let (axes, starts): (Vec<i64>, Vec<i64>) = crop
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| (rank - i as i64, c as i64))
            .unzip();
        let ends = vec![i64::MAX; axes.len()];
        self.slice_node(
            &x.name,
            &format!("{}_crop", f.uid),
            &starts,
            &ends,
            &axes,
            None,
        )
    }

    pub(super) fn pooling(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
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
        let geometry = Geometry::forward(f, attrs, &x.shape[..spatial], &window[..spatial])?;
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
        let input = self.crop(&x, f, &geometry.crop);
        let name = self.node(op, &f.uid, vec![input], attribute);
        Ok(Tensor {
            name,
            shape,
            batched: true,
            constant: None,
        })
    }

    pub(super) fn batch_normalization(
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
    pub(super) fn times(
        &mut self,
        f: &Function,
        inputs: Vec<Tensor<'m>>,
    ) -> Result<Tensor<'m>, Problem> {
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
}
