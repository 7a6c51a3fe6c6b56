//! The importer's operations against CNTK's semantics, one small v2 model each, built here the
//! way CNTK saves them, converted, run in ONNX Runtime, and compared with a direct reading of
//! what CNTK computes (window placement from `ConvolveGeometry`, the transposed convolution as
//! a scatter, reductions, slices, axes in CNTK's column-major order).
//!
//! A CNTK tensor of shape `[W, H, C]` (column-major) has the bytes of the ONNX tensor
//! `[1, C, H, W]` (row-major), so inputs and outputs are compared flat, in CNTK order.

use cntk_onnx::proto::cntk::{
    ArrayValues, Axis, Dictionary, DictionaryValue, FloatValues, NdArrayView, NdShape, Value,
    Vector,
};
use cntk_onnx::{Problem, import};
use fleet_tests::run_graph;
use prost::Message;

const BLOCK: u64 = 57;
const UNPOOLING: u64 = 58;
const CROP: u64 = 84;
const PAST_VALUE: u64 = 37;
// The operation codes under test (`PrimitiveOpType`).
const SOFTMAX: u64 = 10;
const HARDMAX: u64 = 11;
const TRANSPOSE_AXES: u64 = 12;
const SLICE: u64 = 14;
const POOLING: u64 = 17;
const ELEMENT_TIMES: u64 = 21;
const NOT_EQUAL: u64 = 23;
const LESS: u64 = 24;
const GREATER_EQUAL: u64 = 27;
const CONVOLUTION: u64 = 33;
const REDUCE_ELEMENTS: u64 = 39;
const CLIP: u64 = 41;
const SELECT: u64 = 42;
const SPLICE: u64 = 43;
const LOG_PLUS: u64 = 52;
const POW: u64 = 69;
const PAD: u64 = 83;

fn v(value: Value) -> DictionaryValue {
    DictionaryValue {
        version: 1,
        value_type: 0,
        value: Some(value),
    }
}

fn dict(entries: Vec<(&str, Value)>) -> Dictionary {
    Dictionary {
        version: 1,
        data: entries
            .into_iter()
            .map(|(k, value)| (k.to_owned(), v(value)))
            .collect(),
    }
}

fn shape(dims: &[u64]) -> Value {
    Value::Shape(NdShape {
        shape_dim: dims.to_vec(),
    })
}

fn list(values: Vec<Value>) -> Value {
    Value::Vector(Vector {
        value: values.into_iter().map(v).collect(),
    })
}

fn axis(index: i32) -> Value {
    Value::Axis(Axis {
        static_axis_idx: index,
        name: String::new(),
        is_ordered_dynamic_axis: false,
    })
}

/// A v2 model as CNTK saves it: variables, functions, a root.
#[derive(Default)]
struct Builder {
    variables: Vec<DictionaryValue>,
    functions: Vec<DictionaryValue>,
    next: usize,
}

impl Builder {
    fn uid(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn variable(&mut self, kind: u64, dims: &[u64], values: Option<Vec<f32>>) -> String {
        let uid =
            self.uid(["Input", "Output", "Parameter", "Constant", "Placeholder"][kind as usize]);
        let mut entries = vec![
            ("uid", Value::String(uid.clone())),
            ("kind", Value::SizeT(kind)),
            ("shape", shape(dims)),
        ];
        if kind == 0 {
            let batch = Value::Axis(Axis {
                static_axis_idx: i32::MAX,
                name: "defaultBatchAxis".into(),
                is_ordered_dynamic_axis: false,
            });
            entries.push(("dynamic_axis", list(vec![batch])));
        }
        if let Some(values) = values {
            entries.push((
                "value",
                Value::Array(NdArrayView {
                    data_type: 1,
                    storage_format: 0,
                    shape: Some(NdShape {
                        shape_dim: dims.to_vec(),
                    }),
                    values: Some(ArrayValues::Float(FloatValues { value: values })),
                }),
            ));
        }
        self.variables.push(v(Value::Dictionary(dict(entries))));
        uid
    }

    fn input(&mut self, dims: &[u64]) -> String {
        self.variable(0, dims, None)
    }

    fn parameter(&mut self, dims: &[u64], values: Vec<f32>) -> String {
        self.variable(2, dims, Some(values))
    }

    fn scalar(&mut self, value: f32) -> String {
        self.variable(3, &[], Some(vec![value]))
    }

    /// A function; returns its output's reference.
    fn op(&mut self, op: u64, inputs: &[&str], attributes: Vec<(&str, Value)>) -> String {
        self.function(op, inputs, attributes, vec![])
    }

    fn function(
        &mut self,
        op: u64,
        inputs: &[&str],
        attributes: Vec<(&str, Value)>,
        extra: Vec<(&str, Value)>,
    ) -> String {
        let uid = self.uid("Function");
        let mut entries = vec![
            ("uid", Value::String(uid.clone())),
            ("op", Value::SizeT(op)),
            (
                "inputs",
                list(inputs.iter().map(|i| Value::String((*i).into())).collect()),
            ),
            ("attributes", Value::Dictionary(dict(attributes))),
        ];
        entries.extend(extra);
        self.functions.push(v(Value::Dictionary(dict(entries))));
        format!("{uid}_Output_0")
    }

    /// `LeakyReLU` as CNTK's C++ API builds it: a block over `x < 0 ? alpha * x : x`.
    fn leaky_relu(&mut self, x: &str, alpha: f32) -> String {
        let placeholder = self.variable(4, &[], None);
        let (zero, alpha) = (self.scalar(0.0), self.scalar(alpha));
        let negative = self.op(LESS, &[&placeholder, &zero], vec![]);
        let scaled = self.op(ELEMENT_TIMES, &[&alpha, &placeholder], vec![]);
        let selected = self.op(SELECT, &[&negative, &scaled, &placeholder], vec![]);
        let root = selected.trim_end_matches("_Output_0").to_owned();
        let composite = dict(vec![("root", Value::String(root))]);
        self.function(
            BLOCK,
            &[x],
            vec![],
            vec![
                ("block_function_composite", Value::Dictionary(composite)),
                ("block_function_op_name", Value::String("LeakyReLU".into())),
                (
                    "block_function_composite_arguments_map_keys",
                    list(vec![Value::String(placeholder)]),
                ),
                (
                    "block_function_composite_arguments_map_values",
                    list(vec![Value::String(x.into())]),
                ),
            ],
        )
    }

    fn finish(&self, root: &str) -> Vec<u8> {
        let root = root.trim_end_matches("_Output_0");
        dict(vec![
            ("type", Value::String("CompositeFunction".into())),
            ("root", Value::String(root.into())),
            (
                "inputs",
                Value::Vector(Vector {
                    value: self.variables.clone(),
                }),
            ),
            (
                "primitive_functions",
                Value::Vector(Vector {
                    value: self.functions.clone(),
                }),
            ),
        ])
        .encode_to_vec()
    }
}

/// Column-major offset of `coords` in `shape`.
fn offset(shape: &[usize], coords: &[usize]) -> usize {
    coords
        .iter()
        .zip(shape)
        .rev()
        .fold(0, |acc, (&c, &d)| acc * d + c)
}

/// Column-major coordinates of `offset` in `shape`.
fn coords(shape: &[usize], mut offset: usize) -> Vec<usize> {
    shape
        .iter()
        .map(|&d| {
            let c = offset % d;
            offset /= d;
            c
        })
        .collect()
}

/// A deterministic input with negative, zero and positive values, no two alike.
fn sample(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 16.0)
        .collect()
}

/// Converts `model` and runs it on `input` of CNTK shape `dims`; the output in CNTK order.
fn convert_and_run(model: &[u8], dims: &[usize], input: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let imported = import(model, "built.dnn").unwrap_or_else(|e| panic!("{e}"));
    let onnx_dims: Vec<usize> = std::iter::once(1)
        .chain(dims.iter().rev().copied())
        .collect();
    let (out_dims, values) = run_graph(&imported.onnx, &onnx_dims, input);
    assert_eq!(out_dims[0], 1, "the batch axis stays first");
    let cntk_dims = out_dims[1..].iter().rev().map(|&d| d as usize).collect();
    (cntk_dims, values)
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: sizes");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "{what}: element {i} is {a}, CNTK computes {e}"
        );
    }
}

/// Where CNTK's windows go along one axis (`ConvolveGeometry`): the output count and each
/// output's first cell (possibly before the data, whose cells outside it are padding).
fn cntk_windows(
    input: usize,
    kernel: usize,
    stride: usize,
    auto_pad: bool,
    lower: usize,
    ceil: bool,
) -> (usize, Vec<i64>) {
    let padded = if auto_pad {
        input + kernel - 1
    } else {
        input + lower
    };
    let span = padded - kernel;
    let out = if ceil {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    let half = (kernel as i64 - 1) / 2;
    let start = if auto_pad {
        (input as i64 - ((out as i64 - 1) * stride as i64 + 1)) / 2
    } else {
        half - lower as i64
    };
    let firsts = (0..out)
        .map(|j| start + (j * stride) as i64 - half)
        .collect();
    (out, firsts)
}

/// One pooling case over an input of CNTK shape `[W, H, C]`.
struct PoolCase {
    dims: [usize; 3],
    window: usize,
    stride: usize,
    auto_pad: bool,
    ceil: bool,
    max: bool,
}

fn pool_reference(case: &PoolCase, x: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let [w, h, c] = case.dims;
    let axis = |n| cntk_windows(n, case.window, case.stride, case.auto_pad, 0, case.ceil);
    let ((ow, fw), (oh, fh)) = (axis(w), axis(h));
    let mut out = Vec::new();
    for ch in 0..c {
        for &top in &fh {
            for &left in &fw {
                let mut cells = Vec::new();
                for dy in 0..case.window as i64 {
                    for dx in 0..case.window as i64 {
                        let (xx, yy) = (left + dx, top + dy);
                        if (0..w as i64).contains(&xx) && (0..h as i64).contains(&yy) {
                            cells.push(x[offset(&case.dims, &[xx as usize, yy as usize, ch])]);
                        }
                    }
                }
                out.push(if case.max {
                    cells.iter().copied().fold(f32::MIN, f32::max)
                } else {
                    cells.iter().sum::<f32>() / cells.len() as f32
                });
            }
        }
    }
    (vec![ow, oh, c], out)
}

#[test]
fn pooling_places_its_windows_as_cntk_does() {
    let cases = [
        // A stride longer than the window with auto-padding: leading cells skipped.
        PoolCase {
            dims: [6, 7, 2],
            window: 1,
            stride: 3,
            auto_pad: true,
            ceil: false,
            max: true,
        },
        PoolCase {
            dims: [9, 8, 1],
            window: 2,
            stride: 4,
            auto_pad: true,
            ceil: false,
            max: false,
        },
        // No padding: windows from the first cell, trailing cells unused.
        PoolCase {
            dims: [5, 5, 1],
            window: 2,
            stride: 2,
            auto_pad: false,
            ceil: false,
            max: false,
        },
        PoolCase {
            dims: [8, 8, 2],
            window: 3,
            stride: 2,
            auto_pad: false,
            ceil: false,
            max: true,
        },
        // ceilOutDim: a last window hanging over the end.
        PoolCase {
            dims: [8, 8, 2],
            window: 3,
            stride: 2,
            auto_pad: false,
            ceil: true,
            max: true,
        },
        PoolCase {
            dims: [6, 6, 1],
            window: 2,
            stride: 4,
            auto_pad: false,
            ceil: true,
            max: false,
        },
        // Auto-padding with the odd cell first; averages over the real cells only.
        PoolCase {
            dims: [6, 6, 1],
            window: 3,
            stride: 2,
            auto_pad: true,
            ceil: false,
            max: false,
        },
    ];
    for case in &cases {
        let mut b = Builder::default();
        let dims: Vec<u64> = case.dims.iter().map(|&d| d as u64).collect();
        let x = b.input(&dims);
        let pool = b.op(
            POOLING,
            &[&x],
            vec![
                ("poolingType", Value::SizeT(u64::from(!case.max))),
                (
                    "poolingWindowShape",
                    shape(&[case.window as u64, case.window as u64]),
                ),
                ("strides", shape(&[case.stride as u64, case.stride as u64])),
                (
                    "autoPadding",
                    list(vec![
                        Value::Bool(case.auto_pad),
                        Value::Bool(case.auto_pad),
                        Value::Bool(false),
                    ]),
                ),
                ("lowerPad", shape(&[0])),
                ("upperPad", shape(&[0])),
                ("ceilOutDim", Value::Bool(case.ceil)),
                ("includePad", Value::Bool(false)),
            ],
        );
        let input = sample(case.dims.iter().product());
        let (dims, values) = convert_and_run(&b.finish(&pool), &case.dims, &input);
        let (expected_dims, expected) = pool_reference(case, &input);
        let what = format!(
            "{} pool {}/{} over {:?}, auto-padding {}, ceil {}",
            if case.max { "max" } else { "average" },
            case.window,
            case.stride,
            case.dims,
            case.auto_pad,
            case.ceil
        );
        assert_eq!(dims, expected_dims, "{what}");
        assert_close(&values, &expected, &what);
    }
}

#[test]
fn a_transposed_convolution_is_the_adjoint_of_cntks_convolution() {
    let (w, h, cin, cout, k, stride) = (3, 4, 2, 3, 3, 2);
    // (auto-padding, saved output shape): CNTK infers the output from the input when none is
    // saved, and a saved one may use the cells a stride leaves over.
    // The last: one output cell past every window, which gets nothing.
    let cases: [(bool, Option<[usize; 2]>); 4] = [
        (false, None),
        (true, None),
        (true, Some([6, 8])),
        (false, Some([8, 10])),
    ];
    for (auto_pad, output_shape) in cases {
        let mut b = Builder::default();
        let x = b.input(&[w as u64, h as u64, cin as u64]);
        let kernel_dims = [k, k, cout, cin];
        let weights = sample(kernel_dims.iter().product());
        let kernel = b.parameter(&kernel_dims.map(|d| d as u64), weights.clone());
        let mut attributes = vec![
            (
                "strides",
                shape(&[stride as u64, stride as u64, cin as u64]),
            ),
            (
                "autoPadding",
                list(vec![
                    Value::Bool(auto_pad),
                    Value::Bool(auto_pad),
                    Value::Bool(false),
                ]),
            ),
            ("sharing", list(vec![Value::Bool(true)])),
            ("lowerPad", shape(&[0])),
            ("upperPad", shape(&[0])),
            ("transpose", Value::Bool(true)),
        ];
        if let Some([tw, th]) = output_shape {
            attributes.push(("outputShape", shape(&[tw as u64, th as u64, cout as u64])));
        }
        let y = b.op(CONVOLUTION, &[&kernel, &x], attributes);
        let input = sample(w * h * cin);
        let (dims, values) = convert_and_run(&b.finish(&y), &[w, h, cin], &input);

        // CNTK's output size, then the forward windows over it, scattered back.
        let size = |n: usize, i: usize| match output_shape {
            Some(dims) => dims[i],
            None if auto_pad => (n - 1) * stride + 1,
            None => (n - 1) * stride + k,
        };
        let (tw, th) = (size(w, 0), size(h, 1));
        let (ow, fw) = cntk_windows(tw, k, stride, auto_pad, 0, false);
        let (oh, fh) = cntk_windows(th, k, stride, auto_pad, 0, false);
        assert_eq!(
            (ow, oh),
            (w, h),
            "the forward convolution maps the output back"
        );
        let out_dims = [tw, th, cout];
        let mut expected = vec![0f32; tw * th * cout];
        for ci in 0..cin {
            for j in 0..h {
                for i in 0..w {
                    let xv = input[offset(&[w, h, cin], &[i, j, ci])];
                    for co in 0..cout {
                        for dy in 0..k {
                            for dx in 0..k {
                                let (tx, ty) = (fw[i] + dx as i64, fh[j] + dy as i64);
                                if (0..tw as i64).contains(&tx) && (0..th as i64).contains(&ty) {
                                    let wv = weights[offset(&kernel_dims, &[dx, dy, co, ci])];
                                    expected[offset(&out_dims, &[tx as usize, ty as usize, co])] +=
                                        xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        let what =
            format!("transposed convolution, auto-padding {auto_pad}, output {output_shape:?}");
        assert_eq!(dims, out_dims, "{what}");
        assert_close(&values, &expected, &what);
    }
}

/// Builds `x -> op(x)` over an input of CNTK shape `dims`, runs it, and returns the output.
fn run_op(
    dims: &[usize],
    build: impl FnOnce(&mut Builder, &str) -> String,
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let mut b = Builder::default();
    let x = b.input(&dims.iter().map(|&d| d as u64).collect::<Vec<_>>());
    let y = build(&mut b, &x);
    let input = sample(dims.iter().product());
    let (out_dims, values) = convert_and_run(&b.finish(&y), dims, &input);
    (out_dims, values, input)
}

/// The reference of an element-wise function of the input.
fn map(input: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
    input.iter().map(|&x| f(x)).collect()
}

const DIMS: [usize; 3] = [4, 3, 2];

#[test]
fn element_wise_ops_compute_what_cntk_computes() {
    let (dims, values, x) = run_op(&DIMS, |b, x| b.leaky_relu(x, 0.1));
    assert_eq!(dims, DIMS);
    assert_close(
        &values,
        &map(&x, |v| if v < 0.0 { 0.1 * v } else { v }),
        "LeakyReLU block",
    );

    let (_, values, x) = run_op(&DIMS, |b, x| {
        let (low, high) = (b.scalar(-1.0), b.scalar(0.5));
        b.op(CLIP, &[x, &low, &high], vec![])
    });
    assert_close(&values, &map(&x, |v| v.clamp(-1.0, 0.5)), "Clip");

    let (_, values, x) = run_op(&DIMS, |b, x| {
        let two = b.scalar(2.0);
        b.op(POW, &[x, &two], vec![])
    });
    assert_close(&values, &map(&x, |v| v * v), "Pow");

    let (_, values, x) = run_op(&DIMS, |b, x| {
        let zero = b.scalar(0.0);
        b.op(GREATER_EQUAL, &[x, &zero], vec![])
    });
    assert_close(
        &values,
        &map(&x, |v| f32::from(u8::from(v >= 0.0))),
        "GreaterEqual",
    );

    let (_, values, x) = run_op(&DIMS, |b, x| {
        let zero = b.scalar(0.0);
        b.op(NOT_EQUAL, &[x, &zero], vec![])
    });
    assert!(x.contains(&0.0), "the sample has a zero to compare");
    assert_close(
        &values,
        &map(&x, |v| f32::from(u8::from(v != 0.0))),
        "NotEqual",
    );

    let (_, values, x) = run_op(&DIMS, |b, x| {
        let zero = b.scalar(0.0);
        b.op(LOG_PLUS, &[x, &zero], vec![])
    });
    assert_close(&values, &map(&x, |v| (v.exp() + 1.0).ln()), "LogPlus");

    // A per-channel parameter broadcast against the batched input.
    let (_, values, x) = run_op(&DIMS, |b, x| {
        let scale = b.parameter(&[1, 1, 2], vec![2.0, -3.0]);
        b.op(ELEMENT_TIMES, &[x, &scale], vec![])
    });
    let expected: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v * if coords(&DIMS, i)[2] == 0 { 2.0 } else { -3.0 })
        .collect();
    assert_close(&values, &expected, "ElementTimes by channel");
}

/// Reduces `x` (of shape `DIMS`) over `axes` with `f`, keeping the reduced axes as size 1.
fn reduce_reference(x: &[f32], axes: &[usize], f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let out_dims: Vec<usize> = (0..3)
        .map(|i| if axes.contains(&i) { 1 } else { DIMS[i] })
        .collect();
    let mut groups = vec![Vec::new(); out_dims.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let mut c = coords(&DIMS, i);
        for &a in axes {
            c[a] = 0;
        }
        groups[offset(&out_dims, &c)].push(v);
    }
    groups.iter().map(|g| f(g)).collect()
}

fn reduction(name: &str, axes: Vec<Value>, keep: bool) -> Vec<(&'static str, Value)> {
    vec![
        ("reductionOpName", Value::String(name.into())),
        ("axisVec", list(axes)),
        ("reductionKeepDimensions", Value::Bool(keep)),
    ]
}

#[test]
fn reductions_and_normalisations_cover_the_axes_cntk_names() {
    let mean = |g: &[f32]| g.iter().sum::<f32>() / g.len() as f32;
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            REDUCE_ELEMENTS,
            &[x],
            reduction("Mean", vec![axis(2)], true),
        )
    });
    assert_eq!(dims, [4, 3, 1]);
    assert_close(
        &values,
        &reduce_reference(&x, &[2], mean),
        "Mean over the channels",
    );

    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            REDUCE_ELEMENTS,
            &[x],
            reduction("Max", vec![axis(0), axis(1)], false),
        )
    });
    assert_eq!(dims, [2]);
    let max = |g: &[f32]| g.iter().copied().fold(f32::MIN, f32::max);
    assert_close(
        &values,
        &reduce_reference(&x, &[0, 1], max),
        "Max over the image",
    );

    // All static axes, the sentinel CNTK saves for "the whole sample".
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            REDUCE_ELEMENTS,
            &[x],
            vec![
                ("reductionOpName", Value::String("LogSum".into())),
                ("axis", axis(i32::MAX - 1)),
            ],
        )
    });
    assert_eq!(dims, [1, 1, 1]);
    let log_sum = x.iter().map(|v| v.exp()).sum::<f32>().ln();
    assert_close(&values, &[log_sum], "LogSum over the sample");

    // Argmax along the first axis, counted from the end (-3 of 3).
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            REDUCE_ELEMENTS,
            &[x],
            reduction("Argmax", vec![axis(-3)], false),
        )
    });
    assert_eq!(dims, [3, 2]);
    let argmax = reduce_reference(&x, &[0], |g| {
        (0..g.len()).fold(0, |best, i| if g[i] > g[best] { i } else { best }) as f32
    });
    assert_close(&values, &argmax, "Argmax along the width");

    // Softmax along the channels, Hardmax over the whole sample.
    let (_, values, x) = run_op(&DIMS, |b, x| b.op(SOFTMAX, &[x], vec![("axis", axis(2))]));
    let expected: Vec<f32> = (0..x.len())
        .map(|i| {
            let c = coords(&DIMS, i);
            let other = x[offset(&DIMS, &[c[0], c[1], 1 - c[2]])];
            1.0 / (1.0 + (other - x[i]).exp())
        })
        .collect();
    assert_close(&values, &expected, "Softmax along the channels");
    let (_, values, x) = run_op(&DIMS, |b, x| b.op(HARDMAX, &[x], vec![]));
    let top = (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best });
    let expected: Vec<f32> = (0..x.len())
        .map(|i| f32::from(u8::from(i == top)))
        .collect();
    assert_close(&values, &expected, "Hardmax over the sample");
}

/// The reference of an op that only moves elements: output coordinates to input coordinates.
fn gather(
    x: &[f32],
    out_dims: &[usize],
    source: impl Fn(&[usize]) -> Option<Vec<usize>>,
    fill: f32,
) -> Vec<f32> {
    (0..out_dims.iter().product())
        .map(|i| source(&coords(out_dims, i)).map_or(fill, |c| x[offset(&DIMS, &c)]))
        .collect()
}

#[test]
fn slices_transposes_pads_and_splices_move_elements_as_cntk_does() {
    // One axis, an end of 0 meaning the end of the axis.
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            SLICE,
            &[x],
            vec![
                ("axis", axis(1)),
                ("beginIndex", Value::Int(1)),
                ("endIndex", Value::Int(0)),
            ],
        )
    });
    assert_eq!(dims, [4, 2, 2]);
    assert_close(
        &values,
        &gather(&x, &dims, |c| Some(vec![c[0], c[1] + 1, c[2]]), 0.0),
        "Slice",
    );

    // Several axes, a negative begin, a stride.
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            SLICE,
            &[x],
            vec![
                ("axisVec", list(vec![axis(0), axis(2)])),
                ("beginIndexVec", list(vec![Value::Int(-3), Value::Int(0)])),
                ("endIndexVec", list(vec![Value::Int(0), Value::Int(1)])),
                ("sliceStridesVec", list(vec![Value::Int(2), Value::Int(1)])),
            ],
        )
    });
    assert_eq!(dims, [2, 3, 1]);
    assert_close(
        &values,
        &gather(&x, &dims, |c| Some(vec![1 + 2 * c[0], c[1], c[2]]), 0.0),
        "Slice of two axes",
    );

    // Two axes swapped, then a whole permutation (output axis i is input axis perm[i]).
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            TRANSPOSE_AXES,
            &[x],
            vec![("axis1", axis(0)), ("axis2", axis(2))],
        )
    });
    assert_eq!(dims, [2, 3, 4]);
    assert_close(
        &values,
        &gather(&x, &dims, |c| Some(vec![c[2], c[1], c[0]]), 0.0),
        "swapped axes",
    );
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            TRANSPOSE_AXES,
            &[x],
            vec![("axisVec", list(vec![axis(2), axis(0), axis(1)]))],
        )
    });
    assert_eq!(dims, [2, 4, 3]);
    assert_close(
        &values,
        &gather(&x, &dims, |c| Some(vec![c[1], c[2], c[0]]), 0.0),
        "permuted axes",
    );

    let (dims, values, x) = run_op(&DIMS, |b, x| {
        b.op(
            PAD,
            &[x],
            vec![
                ("paddingHead", shape(&[1, 0, 0])),
                ("paddingFoot", shape(&[0, 2, 0])),
                ("paddingMode", Value::SizeT(0)),
                ("paddingConstantValue", Value::Double(0.5)),
            ],
        )
    });
    assert_eq!(dims, [5, 5, 2]);
    let inside = |c: &[usize]| (c[0] >= 1 && c[1] < 3).then(|| vec![c[0] - 1, c[1], c[2]]);
    assert_close(&values, &gather(&x, &dims, inside, 0.5), "Pad");

    // Spliced along a new, fourth axis: x, then 2x.
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        let two = b.scalar(2.0);
        let doubled = b.op(ELEMENT_TIMES, &[x, &two], vec![]);
        b.op(SPLICE, &[x, &doubled], vec![("axis", axis(3))])
    });
    assert_eq!(dims, [4, 3, 2, 2]);
    let expected: Vec<f32> = x.iter().copied().chain(x.iter().map(|v| 2.0 * v)).collect();
    assert_close(&values, &expected, "Splice along a new axis");

    // A parameter of size 1 along the second axis, and no batch axis, spliced with x along the
    // first: broadcast along the second axis and the batch, as CNTK's `SpliceNode` does
    // (BrainScript's ResNets widen their shortcuts so, with zeros).
    let (dims, values, x) = run_op(&DIMS, |b, x| {
        let p = b.parameter(&[2, 1, 2], vec![10.0, 20.0, 30.0, 40.0]);
        b.op(SPLICE, &[x, &p], vec![("axis", axis(0))])
    });
    assert_eq!(dims, [6, 3, 2]);
    // p[i, 0, k], column-major: element i + 2k.
    let p = [10.0, 20.0, 30.0, 40.0];
    let expected: Vec<f32> = (0..dims.iter().product())
        .map(|i| {
            let c = coords(&dims, i);
            match c[0] < DIMS[0] {
                true => x[offset(&DIMS, &c)],
                false => p[(c[0] - DIMS[0]) + 2 * c[2]],
            }
        })
        .collect();
    assert_close(&values, &expected, "Splice broadcasting a parameter");
    // Sizes that differ along another axis, neither of them 1, are still refused.
    let mut b = Builder::default();
    let x = b.input(&[4, 3, 2]);
    let p = b.parameter(&[1, 2, 2], vec![0.0; 4]);
    let s = b.op(SPLICE, &[&x, &p], vec![("axis", axis(0))]);
    let err = import(&b.finish(&s), "splice.dnn").unwrap_err();
    assert!(
        err.to_string().contains("splicing inputs of shapes"),
        "{err}"
    );
}

#[test]
fn every_unsupported_operation_is_named_at_once() {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 1]);
    let a = b.op(UNPOOLING, &[&x, &x], vec![]);
    let c = b.op(CROP, &[&a, &x], vec![]);
    let d = b.op(UNPOOLING, &[&c, &x], vec![]);
    let err = import(&b.finish(&d), "odd.dnn").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.problem, Problem::UnsupportedOps { .. }),
        "{text}"
    );
    assert!(text.contains("Unpooling x2 ("), "{text}");
    assert!(text.contains("Crop x1 ("), "{text}");
    for uid in [&a, &c, &d] {
        assert!(
            text.contains(uid.trim_end_matches("_Output_0")),
            "{uid} missing: {text}"
        );
    }

    let mut b = Builder::default();
    let x = b.input(&[8]);
    let previous = b.op(PAST_VALUE, &[&x, &x], vec![]);
    let err = import(&b.finish(&previous), "rnn.dnn").unwrap_err();
    assert!(
        matches!(err.problem, Problem::SequenceModel { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("out of scope"), "{err}");
}

/// A v1 (BrainScript) file, written field by field as `ComputationNetwork::Save` lays it out
/// (version 14): UTF-16 strings, little-endian numbers, dense matrices column-major.
#[derive(Default)]
struct V1File {
    bytes: Vec<u8>,
}

impl V1File {
    fn text(&mut self, s: &str) -> &mut Self {
        for unit in s.encode_utf16().chain([0]) {
            self.bytes.extend(unit.to_le_bytes());
        }
        self
    }
    fn u32(&mut self, n: u32) -> &mut Self {
        self.bytes.extend(n.to_le_bytes());
        self
    }
    fn u64(&mut self, n: u64) -> &mut Self {
        self.bytes.extend(n.to_le_bytes());
        self
    }
    fn f32(&mut self, x: f32) -> &mut Self {
        self.bytes.extend(x.to_le_bytes());
        self
    }
    fn flag(&mut self, b: bool) -> &mut Self {
        self.bytes.push(u8::from(b));
        self
    }
    fn shape(&mut self, dims: &[u32]) -> &mut Self {
        self.u32(dims.len() as u32);
        for &d in dims {
            self.u32(d);
        }
        self
    }
    fn flags(&mut self, flags: &[bool]) -> &mut Self {
        self.u64(flags.len() as u64);
        for &b in flags {
            self.flag(b);
        }
        self
    }
    fn header(&mut self, op: &str, name: &str) -> &mut Self {
        self.text("float").text(op).text(name)
    }
    /// A dense matrix of `rows` x `cols`, `values` column-major.
    fn matrix(&mut self, rows: u64, cols: u64, values: &[f32]) -> &mut Self {
        self.bytes.push(b'd');
        self.text("BMAT").u64(4).text("unnamed");
        self.bytes.extend(0i32.to_le_bytes());
        self.u64(rows).u64(cols);
        for &v in values {
            self.f32(v);
        }
        self.text("EMAT")
    }
    fn group(&mut self, tag: &str, names: &[&str]) -> &mut Self {
        self.text(&format!("B{tag}")).u64(names.len() as u64);
        for n in names {
            self.text(n);
        }
        self.text(&format!("E{tag}"))
    }
}

/// A BrainScript `ConvolutionalLayer` over `[W, H, C]` as saved in the cuDNN layout: its kernel
/// a matrix `[maps, kW*kH*C]` (`z = Convolution(W, features)`).
fn v1_convolution(
    dims: [u32; 3],
    window: [u32; 2],
    maps: u32,
    stride: u32,
    auto_pad: bool,
    kernel: &[f32],
) -> Vec<u8> {
    let positions = u64::from(window[0] * window[1] * dims[2]);
    let mut f = V1File::default();
    f.text("BCN").text("BVersion").u64(14).text("EVersion");
    f.u64(3).text("BNodeList");
    f.header("InputValue", "features")
        .u64(0)
        .u64(0)
        .shape(&dims)
        .u32(1)
        .text("")
        .f32(0.0);
    f.header("LearnableParameter", "W")
        .f32(1.0)
        .shape(&[maps, positions as u32])
        .matrix(u64::from(maps), positions, kernel);
    f.header("Convolution", "z")
        .shape(&[window[0], window[1], dims[2]])
        .shape(&[maps])
        .shape(&[stride, stride, dims[2]])
        .flags(&[true])
        .flags(&[auto_pad, auto_pad, false])
        .shape(&[0])
        .shape(&[0])
        .u32(0) // pool kind: none
        .u32(1) // layout: CHW (cuDNN)
        .u64(0) // max temporary memory
        .flag(false) // transpose
        .flag(true); // 2-D convolution
    f.text("ENodeList").text("BRelation");
    f.text("features").u64(0).text("W").u64(0);
    f.text("z").u64(2).text("W").text("features");
    f.text("ERelation").text("BRootNodes");
    f.group("FeatureNodes", &["features"])
        .group("LabelNodes", &[])
        .group("CriterionNodes", &[])
        .group("OutputNodes", &["z"]);
    f.text("ERootNodes").text("ECN");
    f.bytes
}

#[test]
fn a_v1_convolution_whose_kernel_is_a_matrix_computes_what_cntk_computes() {
    let (dims, window, maps) = ([7usize, 6, 3], [3usize, 3], 4usize);
    let positions = window[0] * window[1] * dims[2];
    let input = sample(dims.iter().product());
    // Column-major [maps, positions]: map k's weight at kernel position j is at k + maps * j.
    let kernel: Vec<f32> = (0..maps * positions)
        .map(|i| ((i * 29 % 53) as f32 - 26.0) / 32.0)
        .collect();
    for (stride, auto_pad) in [(1, true), (1, false), (2, true)] {
        let model = v1_convolution(
            dims.map(|d| d as u32),
            window.map(|d| d as u32),
            maps as u32,
            stride as u32,
            auto_pad,
            &kernel,
        );
        let (out_dims, values) = convert_and_run(&model, &dims, &input);
        // Direct: out[x, y, k] = sum over window position (dx, dy, c) = j of
        // W[k, j] * in[first x + dx, first y + dy, c], cells outside the input being zero.
        let (out_w, firsts_x) = cntk_windows(dims[0], window[0], stride, auto_pad, 0, false);
        let (out_h, firsts_y) = cntk_windows(dims[1], window[1], stride, auto_pad, 0, false);
        let mut expected = vec![0.0f32; out_w * out_h * maps];
        for k in 0..maps {
            for (y, &y0) in firsts_y.iter().enumerate() {
                for (x, &x0) in firsts_x.iter().enumerate() {
                    let mut sum = 0.0;
                    for c in 0..dims[2] {
                        for dy in 0..window[1] {
                            for dx in 0..window[0] {
                                let (ix, iy) = (x0 + dx as i64, y0 + dy as i64);
                                if ix < 0 || iy < 0 || ix >= dims[0] as i64 || iy >= dims[1] as i64
                                {
                                    continue;
                                }
                                let j = dx + window[0] * (dy + window[1] * c);
                                let cell = offset(&dims, &[ix as usize, iy as usize, c]);
                                sum += kernel[k + maps * j] * input[cell];
                            }
                        }
                    }
                    expected[offset(&[out_w, out_h, maps], &[x, y, k])] = sum;
                }
            }
        }
        let what = format!("v1 convolution, stride {stride}, auto-padding {auto_pad}");
        assert_eq!(out_dims, [out_w, out_h, maps], "{what}: shape");
        assert_close(&values, &expected, &what);
    }
}
