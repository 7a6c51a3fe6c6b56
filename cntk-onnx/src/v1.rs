//! CNTK 1.x models: the "BCN" binary files `cntk.exe` wrote for BrainScript and NDL networks
//! (`.dnn`, `.cmf`, `.model`), read into the same [`Model`] the v2 reader builds, so that one
//! lowering serves both formats.
//!
//! The file is a stream of little-endian fields with no lengths: strings are NUL-terminated
//! UTF-16, sections are bracketed by marker strings (`BCN`, `BNodeList`, ...). After the version
//! comes the node list (precision, operation name, node name, then whatever that node type saves,
//! which depends on the file's version), then the relations (each node's inputs by name), then
//! the node groups (features, labels, criteria, evaluation, outputs).
//!
//! A node type whose fields this reader does not know is skipped by finding the next node's
//! header: it only matters if the classifier's output depends on it, and then the error names
//! it with every other such node.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Problem, malformed};
use crate::model::{Function, Model, Variable, VariableKind};
use crate::ops;
use crate::proto::cntk::{Dictionary, DictionaryValue, NdShape, Value, Vector};

/// Whether `bytes` open like a CNTK 1.x file: the UTF-16 section marker "BCN".
pub fn is_v1(bytes: &[u8]) -> bool {
    bytes.starts_with(&utf16z("BCN"))
}

/// Version 7 added the precision tag in front of every node; the reader needs it to find its
/// way past node types it does not know.
const PRECISION_TAG_VERSION: u64 = 7;

/// A node as saved.
#[derive(Debug)]
struct Node {
    op: String,
    name: String,
    fields: Fields,
}

/// What a node type saves, for the node types the lowering needs.
#[derive(Debug)]
enum Fields {
    None,
    /// Fields of a node type this reader does not know, skipped.
    Skipped,
    /// `LearnableParameter`, and the precomputed `Mean` / `InvStdDev`: weights.
    Value {
        shape: Vec<u64>,
        values: Vec<f32>,
    },
    /// `InputValue`, `SparseInputValue`.
    Input {
        shape: Vec<u64>,
    },
    Times {
        output_rank: u64,
    },
    /// `Convolution` and `Pooling` (ND, version 5 on).
    Convolution(Box<Convolution>),
    /// The legacy `MaxPooling` / `AveragePooling` nodes.
    LegacyPooling {
        window: [u64; 2],
        stride: [u64; 2],
        chw: bool,
    },
    /// `Reshape`: 1-based axes (0: from the first, to the last) and the replacing shape.
    Reshape {
        begin: i32,
        end: i32,
        shape: Vec<u64>,
    },
    /// `TransposeDimensions`: the two 1-based axes swapped.
    Transpose {
        axis1: i32,
        axis2: i32,
    },
    /// `RowStack` (BrainScript's `Splice`): the 1-based axis stacked along.
    Splice {
        axis: i32,
    },
    BatchNormalization {
        spatial: bool,
        epsilon: f64,
        /// Before version 13 the fifth input held the running inverse standard deviation.
        inverse_std: bool,
    },
}

#[derive(Debug)]
struct Convolution {
    kernel: Vec<u64>,
    /// The output maps (channels), as a shape.
    map_count: Vec<u64>,
    stride: Vec<u64>,
    sharing: Vec<bool>,
    auto_pad: Vec<bool>,
    lower_pad: Vec<u64>,
    upper_pad: Vec<u64>,
    /// 0 none (a convolution), 1 max, 2 average.
    pool_kind: i32,
    chw: bool,
    transpose: bool,
    ceil_out_dim: bool,
    include_pad: bool,
    dilation: Vec<u64>,
}

/// A whole CNTK 1.x network as saved.
#[derive(Debug)]
pub struct Network {
    pub version: u64,
    nodes: Vec<Node>,
    inputs: HashMap<String, Vec<String>>,
    groups: BTreeMap<&'static str, Vec<String>>,
}

impl Network {
    /// Node types and how many of each, for reports.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.op.clone()).or_default() += 1;
        }
        counts
    }
}

/// Reads a CNTK 1.x file.
pub fn read(bytes: &[u8]) -> Result<Network, Problem> {
    let mut r = Reader { bytes, pos: 0 };
    r.marker("BCN")?;
    let version = if r.try_marker("BVersion") {
        let version = r.u64()?;
        r.marker("EVersion")?;
        version
    } else {
        1
    };
    let count = r.u64()?;
    r.marker("BNodeList")?;
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(r.node(version)?);
    }
    r.marker("ENodeList")?;
    r.marker("BRelation")?;
    let mut inputs = HashMap::new();
    for _ in 0..count {
        let name = r.wstring()?;
        let n = r.u64()?;
        let mut names = Vec::new();
        for _ in 0..n {
            names.push(r.wstring()?);
        }
        inputs.insert(name, names);
    }
    r.marker("ERelation")?;
    r.marker("BRootNodes")?;
    let mut groups = BTreeMap::new();
    for (group, begin, end) in [
        ("feature", "BFeatureNodes", "EFeatureNodes"),
        ("label", "BLabelNodes", "ELabelNodes"),
        ("criterion", "BCriterionNodes", "ECriterionNodes"),
        ("criterion", "BCriteriaNodes", "ECriteriaNodes"),
        (
            "multiseq",
            "BNodesReqMultiSeqHandling",
            "ENodesReqMultiSeqHandling",
        ),
        ("evaluation", "BEvalNodes", "EEvalNodes"),
        ("output", "BOutputNodes", "EOutputNodes"),
        ("pair", "BPairNodes", "EPairNodes"),
    ] {
        if r.try_marker(begin) {
            let n = r.u64()?;
            let names: &mut Vec<String> = groups.entry(group).or_default();
            for _ in 0..n {
                names.push(r.wstring()?);
            }
            r.marker(end)?;
        } else if group == "label" {
            // Older writers put the end marker of the labels there even without the section.
            r.try_marker(end);
        }
    }
    r.marker("ERootNodes")?;
    r.marker("ECN")?;
    Ok(Network {
        version,
        nodes,
        inputs,
        groups,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Problem> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                malformed(format!(
                    "the CNTK v1 file ends early (at byte {} of {})",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Problem> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn bool(&mut self) -> Result<bool, Problem> {
        Ok(self.array::<1>()?[0] != 0)
    }

    fn i32(&mut self) -> Result<i32, Problem> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Problem> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Problem> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> Result<f32, Problem> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, Problem> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-16 string.
    fn wstring(&mut self) -> Result<String, Problem> {
        let mut units = Vec::new();
        loop {
            let unit = u16::from_le_bytes(self.array()?);
            if unit == 0 {
                break;
            }
            if units.len() >= 4096 {
                return Err(malformed(format!(
                    "a string at byte {} of the CNTK v1 file does not end",
                    self.pos
                )));
            }
            units.push(unit);
        }
        Ok(String::from_utf16_lossy(&units))
    }

    fn try_marker(&mut self, marker: &str) -> bool {
        let expected = utf16z(marker);
        if self.bytes[self.pos.min(self.bytes.len())..].starts_with(&expected) {
            self.pos += expected.len();
            true
        } else {
            false
        }
    }

    fn marker(&mut self, marker: &str) -> Result<(), Problem> {
        if self.try_marker(marker) {
            Ok(())
        } else {
            Err(malformed(format!(
                "expected the section marker {marker} at byte {} of the CNTK v1 file",
                self.pos
            )))
        }
    }

    /// `TensorShape`: a 32-bit rank, then 32-bit dims (fastest-varying first).
    fn shape(&mut self) -> Result<Vec<u64>, Problem> {
        let rank = self.u32()?;
        if rank > 16 {
            return Err(malformed(format!(
                "a tensor of rank {rank} at byte {}",
                self.pos
            )));
        }
        (0..rank).map(|_| self.u32().map(u64::from)).collect()
    }

    /// `std::vector<bool>`: a 64-bit count, then one byte each.
    fn bools(&mut self) -> Result<Vec<bool>, Problem> {
        let n = self.u64()?;
        if n > 16 {
            return Err(malformed(format!(
                "a flag list of {n} entries at byte {}",
                self.pos
            )));
        }
        (0..n).map(|_| self.bool()).collect()
    }

    /// A dense matrix: its values, column-major.
    fn matrix(&mut self, node: &str) -> Result<Vec<f32>, Problem> {
        let kind = self.array::<1>()?[0];
        if kind != b'd' {
            return Err(malformed(format!(
                "{node} holds a sparse matrix; only dense weights are supported"
            )));
        }
        self.marker("BMAT")?;
        let element = self.u64()?;
        self.wstring()?; // the matrix's name, unused
        let _format = self.i32()?;
        let (rows, cols) = (self.u64()?, self.u64()?);
        let count = rows
            .checked_mul(cols)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n.saturating_mul(4) <= self.bytes.len())
            .ok_or_else(|| malformed(format!("{node} claims a {rows} x {cols} matrix")))?;
        let values = match element {
            4 => self
                .take(count * 4)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            // Narrowing is what CNTK itself does when a double model is evaluated in float.
            8 => self
                .take(count * 8)?
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(malformed(format!(
                    "{node} has {other}-byte elements; only float and double are supported"
                )));
            }
        };
        self.marker("EMAT")?;
        Ok(values)
    }

    /// Whether a node header (or the end of the node list) starts at `pos`.
    fn header_at(&self, pos: usize) -> bool {
        let mut probe = Reader {
            bytes: self.bytes,
            pos,
        };
        if probe.try_marker("ENodeList") {
            return true;
        }
        let precision = probe.wstring();
        let op = probe.wstring();
        let name = probe.wstring();
        matches!(precision.as_deref(), Ok("float" | "double"))
            && op.is_ok_and(|op| {
                !op.is_empty() && op.len() < 64 && op.chars().all(|c| c.is_ascii_alphanumeric())
            })
            && name.is_ok_and(|name| !name.is_empty())
    }

    /// Moves to the next node header, past the fields of a node type this reader does not know.
    fn skip_to_next_header(&mut self, node: &str, op: &str) -> Result<(), Problem> {
        let float = utf16z("float");
        let double = utf16z("double");
        let end = utf16z("ENodeList");
        let found = (self.pos..self.bytes.len()).find(|&p| {
            let rest = &self.bytes[p..];
            (rest.starts_with(&float) || rest.starts_with(&double) || rest.starts_with(&end))
                && self.header_at(p)
        });
        match found {
            Some(p) => {
                self.pos = p;
                Ok(())
            }
            None => Err(malformed(format!(
                "cannot find the end of node {node} ({op})"
            ))),
        }
    }

    fn node(&mut self, version: u64) -> Result<Node, Problem> {
        let tagged = version >= PRECISION_TAG_VERSION;
        if tagged {
            let precision = self.wstring()?;
            if precision != "float" && precision != "double" {
                return Err(malformed(format!(
                    "unexpected precision {precision:?} at byte {}",
                    self.pos
                )));
            }
        }
        let op = self.wstring()?;
        let name = self.wstring()?;
        let start = self.pos;
        let read = self.fields(&op, &name, version);
        match read {
            Ok(fields) if !tagged || self.header_at(self.pos) => Ok(Node { op, name, fields }),
            // A node type whose fields differ from what this reader expects: skip it. Should
            // the classifier need it, the lowering names it.
            _ if tagged => {
                self.pos = start;
                self.skip_to_next_header(&name, &op)?;
                Ok(Node {
                    op,
                    name,
                    fields: Fields::Skipped,
                })
            }
            Ok(_) => Err(malformed(format!(
                "node {name} ({op}) of this version-{version} file is not laid out as expected"
            ))),
            Err(e) => Err(e),
        }
    }

    fn fields(&mut self, op: &str, name: &str, version: u64) -> Result<Fields, Problem> {
        Ok(match op {
            "LearnableParameter" => {
                let shape = if version >= 3 {
                    let _learning_rate = self.f32()?;
                    self.shape()?
                } else {
                    let _update = self.bool()?;
                    let (rows, cols) = (self.u64()?, self.u64()?);
                    if rows != 0 {
                        vec![rows, cols]
                    } else {
                        let mut shape = self.shape()?;
                        if cols > 1 {
                            shape.push(cols);
                        }
                        shape
                    }
                };
                let values = self.matrix(name)?;
                Fields::Value { shape, values }
            }
            "Reshape" => {
                let (begin, end) = (self.i32()?, self.i32()?);
                Fields::Reshape {
                    begin,
                    end,
                    shape: self.shape()?,
                }
            }
            // Before version 3 these saved nothing and took their defaults.
            "TransposeDimensions" if version >= 3 => Fields::Transpose {
                axis1: self.i32()?,
                axis2: self.i32()?,
            },
            "TransposeDimensions" => Fields::Transpose { axis1: 1, axis2: 2 },
            "RowStack" if version >= 3 => Fields::Splice { axis: self.i32()? },
            "RowStack" => Fields::Splice { axis: 1 },
            "Mean" | "InvStdDev" => {
                let _computed = self.bool()?;
                let values = self.matrix(name)?;
                Fields::Value {
                    shape: vec![values.len() as u64],
                    values,
                }
            }
            "InputValue" | "SparseInputValue" => {
                let (rows, _cols) = (self.u64()?, self.u64()?);
                let mut shape = self.shape()?;
                if rows != 0 && rows != shape.iter().product::<u64>() {
                    shape = vec![rows];
                }
                if version >= 8 {
                    let axes = self.u32()?;
                    if axes == 1 {
                        self.wstring()?;
                    }
                }
                if version >= 10 {
                    let _learning_rate = self.f32()?;
                }
                Fields::Input { shape }
            }
            "Times" | "TransposeTimes" => {
                let output_rank = self.u64()?;
                if version >= 12 {
                    let _infer_input_rank = self.i32()?;
                }
                Fields::Times { output_rank }
            }
            "Convolution" | "Pooling" if version >= 5 => {
                let kernel = self.shape()?;
                let map_count = self.shape()?;
                let stride = self.shape()?;
                let sharing = self.bools()?;
                let auto_pad = self.bools()?;
                let lower_pad = self.shape()?;
                let upper_pad = self.shape()?;
                let pool_kind = self.i32()?;
                let layout = self.i32()?;
                let _max_temp_memory = self.u64()?;
                let transpose = version >= 9 && self.bool()?;
                if version >= 20 {
                    let _output_shape = self.shape()?;
                }
                let ceil_out_dim = version >= 21 && self.bool()?;
                let include_pad = version >= 23 && self.bool()?;
                let mut dilation = vec![1];
                if op == "Convolution" {
                    let _convolution_2d = self.bool()?;
                    if version >= 18 {
                        dilation = self.shape()?;
                    }
                }
                Fields::Convolution(Box::new(Convolution {
                    kernel,
                    map_count,
                    stride,
                    sharing,
                    auto_pad,
                    lower_pad,
                    upper_pad,
                    pool_kind,
                    // ImageLayoutKind: 0 HWC (legacy), 1 CHW (cuDNN).
                    chw: layout == 1,
                    transpose,
                    ceil_out_dim,
                    include_pad,
                    dilation,
                }))
            }
            "MaxPooling" | "AveragePooling" => {
                let width = u64::from(self.u32()?);
                let layout = self.u32()?;
                let height = self.u64()?;
                let (horizontal, vertical) = (self.u64()?, self.u64()?);
                Fields::LegacyPooling {
                    window: [width, height],
                    stride: [horizontal, vertical],
                    chw: layout == 1,
                }
            }
            "BatchNormalization" if version >= 6 => {
                let spatial = self.bool()?;
                let _normalization_time_constant = self.f64()?;
                let _blend_time_constant = self.f64()?;
                let _layout = self.i32()?;
                if version >= 19 {
                    let _run_count_is_zero = self.bool()?;
                } else {
                    let _samples_seen = self.u64()?;
                }
                let epsilon = self.f64()?;
                let _use_cntk_engine = self.bool()?;
                Fields::BatchNormalization {
                    spatial,
                    epsilon,
                    inverse_std: version < 13,
                }
            }
            _ => Fields::None,
        })
    }
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The model output: `chosen` if given (by its saved name or, for a node the CNTK 2 library
/// saved, by its v2 name), else the network's output nodes, else what its training criterion
/// scores (the input of the loss that is not a label), else the one computed node nothing
/// reads (a file the CNTK 2 library saved records no output).
pub fn output_node<'n>(network: &'n Network, chosen: Option<&'n str>) -> Result<&'n str, Problem> {
    let available = || {
        candidate_outputs(network)
            .iter()
            .map(|name| shown_name(name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = chosen {
        return network
            .nodes
            .iter()
            .find(|n| n.name == name)
            .or_else(|| network.nodes.iter().find(|n| shown_name(&n.name) == name))
            .map(|n| n.name.as_str())
            .ok_or_else(|| Problem::NoSuchOutput {
                name: name.into(),
                available: available(),
            });
    }
    let group = |g: &str| network.groups.get(g).map(Vec::as_slice).unwrap_or(&[]);
    if let Some(first) = group("output").first() {
        return Ok(first);
    }
    let labels: HashSet<&str> = group("label").iter().map(String::as_str).collect();
    for criterion in group("criterion").iter().chain(group("evaluation")) {
        let scored = network
            .inputs
            .get(criterion)
            .into_iter()
            .flatten()
            .find(|input| !labels.contains(input.as_str()));
        if let Some(scored) = scored {
            return Ok(scored);
        }
    }
    if let [only] = candidate_outputs(network).as_slice() {
        return Ok(only);
    }
    Err(Problem::NoSuchOutput {
        name: "(none saved)".into(),
        available: available(),
    })
}

/// Nodes that could be a classifier's output: every computed node (one with inputs: not a
/// parameter, an input or the CNTK 2 library's dynamic axis `*`) that nothing else reads.
fn candidate_outputs(network: &Network) -> Vec<&str> {
    let read: HashSet<&String> = network.inputs.values().flatten().collect();
    network
        .nodes
        .iter()
        .filter(|n| !read.contains(&n.name))
        .filter(|n| network.inputs.get(&n.name).is_some_and(|i| !i.is_empty()))
        .map(|n| n.name.as_str())
        .collect()
}

/// A node's name as its user knows it: the CNTK 2 library saves v1 nodes as
/// `__v2libuid__<uid>__v2libname__<name>`, where `<name>` is the v2 function's name (`Plus2060`);
/// the uid stands in when the name is empty. Other names are as saved.
pub fn shown_name(saved: &str) -> &str {
    const UID: &str = "__v2libuid__";
    const NAME: &str = "__v2libname__";
    let Some(rest) = saved.strip_prefix(UID) else {
        return saved;
    };
    match rest.split_once(NAME) {
        Some((_, name)) if !name.is_empty() => name,
        Some((uid, _)) => uid,
        None => rest,
    }
}

/// The v2 operation a v1 node type computes, for the types that take no saved fields.
fn simple_op(op: &str) -> Option<u64> {
    Some(match op {
        "Plus" => ops::PLUS,
        "Minus" => ops::MINUS,
        // Scale(scalar, x) and DiagTimes(diagonal, x) are element-wise products with CNTK's
        // broadcasting (its own source says so); old NDL networks scale features with them.
        "ElementTimes" | "Scale" | "DiagTimes" => ops::ELEMENT_TIMES,
        "RectifiedLinear" => ops::RELU,
        "Sigmoid" => ops::SIGMOID,
        "Tanh" => ops::TANH,
        "Exp" => ops::EXP,
        "Log" => ops::LOG,
        "Abs" => ops::ABS,
        "Sqrt" => ops::SQRT,
        "Negate" => ops::NEGATE,
        "Reciprocal" => ops::RECIPROCAL,
        "Floor" => ops::FLOOR,
        "Softmax" => ops::SOFTMAX,
        "Dropout" => ops::DROPOUT,
        "Pass" => ops::PASS,
        "StopGradient" => ops::STOP_GRADIENT,
        "ExponentialLinearUnit" | "ELU" => ops::ELU,
        "Hardmax" => ops::HARDMAX,
        "LogSoftmax" => ops::LOG_SOFTMAX,
        "Cosine" => ops::COS,
        "Sin" => ops::SIN,
        "Pow" => ops::POW,
        "Equal" => ops::EQUAL,
        "NotEqual" => ops::NOT_EQUAL,
        "Less" => ops::LESS,
        "LessEqual" => ops::LESS_EQUAL,
        "Greater" => ops::GREATER,
        "GreaterEqual" => ops::GREATER_EQUAL,
        "If" => ops::SELECT,
        _ => return None,
    })
}

/// Builds the [`Model`] computing `output` (see [`output_node`]).
pub fn to_model(network: &Network, output: Option<&str>) -> Result<Model, Problem> {
    let root = output_node(network, output)?.to_owned();
    let by_name: HashMap<&str, &Node> =
        network.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    // The nodes the output depends on.
    let mut needed = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root.as_str()];
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        let node = by_name
            .get(name)
            .ok_or_else(|| malformed(format!("node {name} is read but never saved")))?;
        needed.push(*node);
        stack.extend(
            network
                .inputs
                .get(name)
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    let mut variables = HashMap::new();
    let mut functions = HashMap::new();
    let mut unsupported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut inverse_stds = Vec::new();
    let mut matrix_kernels = Vec::new();
    for node in needed {
        let inputs: Vec<String> = network
            .inputs
            .get(&node.name)
            .into_iter()
            .flatten()
            .map(|n| reference(&by_name, n))
            .collect();
        if let Fields::BatchNormalization {
            inverse_std: true,
            epsilon,
            ..
        } = node.fields
            && let Some(statistic) = inputs.get(4)
        {
            inverse_stds.push((statistic.clone(), epsilon));
        }
        if let Fields::Convolution(c) = &node.fields
            && c.pool_kind == 0
            && c.chw
            && !c.transpose
            && let Some(kernel) = inputs.first()
        {
            matrix_kernels.push((kernel.clone(), c.kernel.clone(), c.map_count.clone()));
        }
        match lower_node(node, inputs)? {
            Lowered::Variable(v) => {
                variables.insert(v.uid.clone(), v);
            }
            Lowered::Functions(list) => {
                for f in list {
                    functions.insert(f.uid.clone(), f);
                }
            }
            Lowered::Unsupported => unsupported
                .entry(node.op.clone())
                .or_default()
                .push(node.name.clone()),
        }
    }
    // Before model version 13 BatchNormalization kept the running inverse standard deviation
    // where it now keeps the variance; CNTK converts it on load, as `1 / isd^2 + epsilon`, and
    // so does this reader, to compute what CNTK computed.
    for (statistic, epsilon) in inverse_stds {
        if let Some(values) = variables.get_mut(&statistic).and_then(|v| v.value.as_mut()) {
            for v in values.iter_mut() {
                *v = (1.0 / (f64::from(*v) * f64::from(*v)) + epsilon) as f32;
            }
        }
    }
    for (kernel, window, maps) in matrix_kernels {
        if let Some(variable) = variables.get_mut(&kernel) {
            kernel_from_matrix(variable, &window, &maps);
        }
    }
    if !unsupported.is_empty() {
        return Err(Problem::UnsupportedNodes(
            unsupported
                .into_iter()
                .map(|(op, names)| format!("{op} ({})", names.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if !functions.contains_key(&root) {
        return Err(malformed(format!(
            "the chosen output {root} is not computed by the network"
        )));
    }
    Ok(Model {
        variables,
        functions,
        root,
    })
}

/// Every node of the network, each after its inputs, for `inspect`.
pub fn describe(network: &Network) -> Vec<crate::inspect::Node> {
    let by_name: HashMap<&str, &Node> =
        network.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    // Depth first from each node in file order, inputs before the node that reads them.
    let mut order: Vec<&Node> = Vec::new();
    let mut seen = HashSet::new();
    for node in &network.nodes {
        let mut stack = vec![(node.name.as_str(), false)];
        while let Some((name, inputs_done)) = stack.pop() {
            let Some(&node) = by_name.get(name) else {
                continue;
            };
            if inputs_done {
                order.push(node);
                continue;
            }
            if !seen.insert(name) {
                continue;
            }
            stack.push((name, true));
            for input in network.inputs.get(name).into_iter().flatten().rev() {
                stack.push((input, false));
            }
        }
    }
    order
        .into_iter()
        .map(|node| {
            let inputs = network.inputs.get(&node.name).cloned().unwrap_or_default();
            let references = inputs.iter().map(|n| reference(&by_name, n)).collect();
            let supported = matches!(
                lower_node(node, references),
                Ok(Lowered::Variable(_) | Lowered::Functions(_))
            );
            let detail = match &node.fields {
                Fields::None => String::new(),
                Fields::Skipped => "(fields not read)".into(),
                Fields::Value { shape, .. } | Fields::Input { shape } => format!("{shape:?}"),
                Fields::Times { output_rank } => format!("outputRank={output_rank}"),
                Fields::Convolution(c) => format!("{c:?}"),
                other => format!("{other:?}"),
            };
            crate::inspect::Node {
                id: node.name.clone(),
                name: String::new(),
                op: node.op.clone(),
                inputs,
                detail,
                supported,
            }
        })
        .collect()
}

/// How a v1 input is referred to in the model: variables by name, computed nodes by their
/// output.
fn reference(by_name: &HashMap<&str, &Node>, name: &str) -> String {
    match by_name.get(name).map(|n| &n.fields) {
        Some(Fields::Value { .. } | Fields::Input { .. }) => name.to_owned(),
        _ => format!("{name}_Output_0"),
    }
}

/// A convolution kernel saved as a matrix, as BrainScript's `ConvolutionalLayer` saves it in
/// the cuDNN layout: `[maps, window x channels]` (rows first: CNTK's column-major order).
/// CNTK's `Convolution` documents the weights as "a matrix of dimensions `[outChannels,
/// (M1*M2*...*Mn)]`", the columns running over the kernel shape `window` (which includes the
/// input channels), first axis fastest: map `k`'s weight at kernel position `j` is row `k`,
/// column `j`.
/// The lowering takes the ND kernel `[window..., maps]`, first axis fastest: the matrix
/// transposed. A kernel already of that rank, or of other sizes, is left as it is.
fn kernel_from_matrix(variable: &mut Variable, window: &[u64], maps: &[u64]) {
    let (positions, count) = (window.iter().product::<u64>(), maps.iter().product::<u64>());
    if variable.shape != [count, positions] || window.len() < 2 {
        return;
    }
    let Some(values) = variable.value.as_mut() else {
        return;
    };
    let (count, positions) = (count as usize, positions as usize);
    let mut transposed = vec![0.0; values.len()];
    for k in 0..count {
        for j in 0..positions {
            transposed[j + positions * k] = values[k + count * j];
        }
    }
    *values = transposed;
    variable.shape = window.iter().copied().chain([count as u64]).collect();
}

/// What one v1 node becomes in the model.
enum Lowered {
    Variable(Variable),
    /// The node's own function (uid = node name) and any it is built from.
    Functions(Vec<Function>),
    Unsupported,
}

/// Lowers one node, its inputs already turned into references.
fn lower_node(node: &Node, inputs: Vec<String>) -> Result<Lowered, Problem> {
    let named = |suffix: &str, op: u64, inputs: Vec<String>, attributes: Dictionary| Function {
        uid: format!("{}{suffix}", node.name),
        name: node.name.clone(),
        op,
        inputs,
        attributes,
        block: None,
    };
    let function = |op: u64, attributes: Dictionary| named("", op, inputs.clone(), attributes);
    let variable = |kind, shape: &[u64], value: Option<&Vec<f32>>| {
        Lowered::Variable(Variable {
            uid: node.name.clone(),
            kind,
            shape: shape.to_vec(),
            batched: kind == VariableKind::Input,
            value: value.cloned(),
        })
    };
    let one = |f: Function| Ok(Lowered::Functions(vec![f]));
    match (&node.fields, node.op.as_str()) {
        (Fields::Value { shape, values }, _) => {
            Ok(variable(VariableKind::Constant, shape, Some(values)))
        }
        (Fields::Input { shape }, _) => Ok(variable(VariableKind::Input, shape, None)),
        (Fields::Times { output_rank }, "Times") => one(function(
            ops::TIMES,
            attributes([("outputRank", Value::SizeT(*output_rank))]),
        )),
        (Fields::Convolution(c), _) if c.chw => {
            let (op, attrs) =
                convolution(c, &node.name).map_err(|what| unsupported_use(node, &what))?;
            one(function(op, attrs))
        }
        (
            Fields::LegacyPooling {
                window,
                stride,
                chw,
            },
            op,
        ) if *chw => one(function(
            ops::POOLING,
            attributes([
                (
                    "poolingType",
                    Value::SizeT(u64::from(op == "AveragePooling")),
                ),
                (
                    "poolingWindowShape",
                    shape_value(&[window[0], window[1], 1]),
                ),
                ("strides", shape_value(&[stride[0], stride[1], 1])),
                ("autoPadding", bools_value(&[false])),
            ]),
        )),
        (
            Fields::BatchNormalization {
                spatial, epsilon, ..
            },
            _,
        ) => one(function(
            ops::BATCH_NORMALIZATION,
            attributes([
                ("spatial", Value::Bool(*spatial)),
                ("epsilon", Value::Double(*epsilon)),
            ]),
        )),
        (Fields::Reshape { begin, end, shape }, _) => {
            // CNTK v1 marks a dimension to infer with 0, v2 with the largest size_t.
            let shape: Vec<u64> = shape
                .iter()
                .map(|&d| if d == 0 { u64::MAX } else { d })
                .collect();
            let mut entries = vec![("newShape", shape_value(&shape))];
            if *begin > 0 {
                entries.push(("beginAxis", static_axis(begin - 1)));
            }
            if *end > 0 {
                entries.push(("endAxis", static_axis(end - 1)));
            }
            one(function(ops::RESHAPE, attributes(entries)))
        }
        (Fields::Transpose { axis1, axis2 }, _) => one(function(
            ops::TRANSPOSE_AXES,
            attributes([
                ("axis1", static_axis(axis1 - 1)),
                ("axis2", static_axis(axis2 - 1)),
            ]),
        )),
        (Fields::Splice { axis }, _) => one(function(
            ops::SPLICE,
            attributes([("axis", static_axis(axis - 1))]),
        )),
        // (x - mean) * invStdDev
        (Fields::None, "PerDimMeanVarNormalization") if inputs.len() == 3 => {
            let centred = named(
                "_centred",
                ops::MINUS,
                vec![inputs[0].clone(), inputs[1].clone()],
                Dictionary::default(),
            );
            let scaled = named(
                "",
                ops::ELEMENT_TIMES,
                vec![format!("{}_Output_0", centred.uid), inputs[2].clone()],
                Dictionary::default(),
            );
            Ok(Lowered::Functions(vec![centred, scaled]))
        }
        (Fields::None, "ElementDivide") if inputs.len() == 2 => {
            let reciprocal = named(
                "_reciprocal",
                ops::RECIPROCAL,
                vec![inputs[1].clone()],
                Dictionary::default(),
            );
            let product = named(
                "",
                ops::ELEMENT_TIMES,
                vec![inputs[0].clone(), format!("{}_Output_0", reciprocal.uid)],
                Dictionary::default(),
            );
            Ok(Lowered::Functions(vec![reciprocal, product]))
        }
        // v1 takes the bounds first: Clip(min, max, x).
        (Fields::None, "Clip") if inputs.len() == 3 => one(named(
            "",
            ops::CLIP,
            vec![inputs[2].clone(), inputs[0].clone(), inputs[1].clone()],
            Dictionary::default(),
        )),
        (Fields::None, op) => Ok(simple_op(op).map_or(Lowered::Unsupported, |code| {
            Lowered::Functions(vec![function(code, Dictionary::default())])
        })),
        // What Dropout saves (from version 16, its random generator's state) only matters
        // in training.
        (Fields::Skipped, "Dropout") => one(function(ops::DROPOUT, Dictionary::default())),
        _ => Ok(Lowered::Unsupported),
    }
}

fn unsupported_use(node: &Node, what: &str) -> Problem {
    Problem::UnsupportedUse {
        op: node.op.clone(),
        uid: node.name.clone(),
        what: what.into(),
    }
}

/// The v2 attributes of a v1 ND convolution or pooling node.
fn convolution(c: &Convolution, name: &str) -> Result<(u64, Dictionary), String> {
    let mut entries = vec![
        ("strides", shape_value(&c.stride)),
        ("autoPadding", bools_value(&c.auto_pad)),
        ("lowerPad", shape_value(&c.lower_pad)),
        ("upperPad", shape_value(&c.upper_pad)),
    ];
    match c.pool_kind {
        0 => {
            if c.transpose {
                entries.push(("transpose", Value::Bool(true)));
            }
            entries.push(("sharing", bools_value(&c.sharing)));
            entries.push(("dilation", shape_value(&c.dilation)));
            Ok((ops::CONVOLUTION, attributes(entries)))
        }
        kind @ (1 | 2) => {
            entries.push(("poolingType", Value::SizeT(u64::from(kind == 2))));
            entries.push(("poolingWindowShape", shape_value(&c.kernel)));
            entries.push(("ceilOutDim", Value::Bool(c.ceil_out_dim)));
            entries.push(("includePad", Value::Bool(c.include_pad)));
            Ok((ops::POOLING, attributes(entries)))
        }
        other => Err(format!("pooling kind {other} in {name}")),
    }
}

fn attributes<'k>(entries: impl IntoIterator<Item = (&'k str, Value)>) -> Dictionary {
    Dictionary {
        version: 1,
        data: entries
            .into_iter()
            .map(|(key, value)| {
                (
                    key.to_owned(),
                    DictionaryValue {
                        version: 1,
                        value_type: 0,
                        value: Some(value),
                    },
                )
            })
            .collect(),
    }
}

fn shape_value(dims: &[u64]) -> Value {
    Value::Shape(NdShape {
        shape_dim: dims.to_vec(),
    })
}

fn static_axis(index: i32) -> Value {
    Value::Axis(crate::proto::cntk::Axis {
        static_axis_idx: index,
        name: String::new(),
        is_ordered_dynamic_axis: false,
    })
}

fn bools_value(flags: &[bool]) -> Value {
    Value::Vector(Vector {
        value: flags
            .iter()
            .map(|&b| DictionaryValue {
                version: 1,
                value_type: 0,
                value: Some(Value::Bool(b)),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny v1 file: `z = Plus(Times(W, features), b)`, with a loss over `labels`.
    fn tiny(version: u64, extra_node: Option<(&str, &[u8])>) -> Vec<u8> {
        tiny_named(version, extra_node, "z")
    }

    /// [`tiny`] with the output node named `z` (and, when the CNTK 2 library saved it, a
    /// dynamic axis node `*` of no inputs beside it).
    fn tiny_named(version: u64, extra_node: Option<(&str, &[u8])>, z: &str) -> Vec<u8> {
        let mut f = Vec::new();
        let s = |f: &mut Vec<u8>, text: &str| f.extend(utf16z(text));
        let u64_ = |f: &mut Vec<u8>, n: u64| f.extend(n.to_le_bytes());
        let u32_ = |f: &mut Vec<u8>, n: u32| f.extend(n.to_le_bytes());
        let matrix = |f: &mut Vec<u8>, rows: u64, cols: u64, values: &[f32]| {
            f.push(b'd');
            f.extend(utf16z("BMAT"));
            f.extend(4u64.to_le_bytes());
            f.extend(utf16z("unnamed"));
            f.extend(0i32.to_le_bytes());
            f.extend(rows.to_le_bytes());
            f.extend(cols.to_le_bytes());
            for v in values {
                f.extend(v.to_le_bytes());
            }
            f.extend(utf16z("EMAT"));
        };
        s(&mut f, "BCN");
        s(&mut f, "BVersion");
        u64_(&mut f, version);
        s(&mut f, "EVersion");
        let v2_saved = z.starts_with("__v2libuid__");
        let nodes = 6 + u64::from(extra_node.is_some()) + u64::from(v2_saved);
        u64_(&mut f, nodes);
        s(&mut f, "BNodeList");
        let header = |f: &mut Vec<u8>, op: &str, name: &str| {
            f.extend(utf16z("float"));
            f.extend(utf16z(op));
            f.extend(utf16z(name));
        };
        for (name, dim) in [("features", 2u32), ("labels", 3)] {
            header(&mut f, "InputValue", name);
            u64_(&mut f, 0);
            u64_(&mut f, 0);
            u32_(&mut f, 1);
            u32_(&mut f, dim);
            u32_(&mut f, 1);
            s(&mut f, "");
            f.extend(0f32.to_le_bytes());
        }
        header(&mut f, "LearnableParameter", "W");
        f.extend(1f32.to_le_bytes());
        u32_(&mut f, 2);
        u32_(&mut f, 3);
        u32_(&mut f, 2);
        matrix(&mut f, 3, 2, &[1., 2., 3., 4., 5., 6.]);
        header(&mut f, "LearnableParameter", "b");
        f.extend(1f32.to_le_bytes());
        u32_(&mut f, 1);
        u32_(&mut f, 3);
        matrix(&mut f, 3, 1, &[0.5, 0.5, 0.5]);
        header(&mut f, "Times", "t");
        u64_(&mut f, 1);
        f.extend(0i32.to_le_bytes());
        header(&mut f, "Plus", z);
        if v2_saved {
            // Saves no fields of its own in this reader's terms: skipped.
            header(&mut f, "DynamicAxis", "*");
        }
        if let Some((op, fields)) = extra_node {
            header(&mut f, op, "ce");
            f.extend(fields);
        }
        s(&mut f, "ENodeList");
        s(&mut f, "BRelation");
        let relation = |f: &mut Vec<u8>, name: &str, inputs: &[&str]| {
            f.extend(utf16z(name));
            f.extend((inputs.len() as u64).to_le_bytes());
            for i in inputs {
                f.extend(utf16z(i));
            }
        };
        relation(&mut f, "features", &[]);
        relation(&mut f, "labels", &[]);
        relation(&mut f, "W", &[]);
        relation(&mut f, "b", &[]);
        relation(&mut f, "t", &["W", "features"]);
        relation(&mut f, z, &["t", "b"]);
        if v2_saved {
            relation(&mut f, "*", &[]);
        }
        if extra_node.is_some() {
            relation(&mut f, "ce", &["labels", z]);
        }
        s(&mut f, "ERelation");
        s(&mut f, "BRootNodes");
        let group = |f: &mut Vec<u8>, b: &str, e: &str, names: &[&str]| {
            f.extend(utf16z(b));
            f.extend((names.len() as u64).to_le_bytes());
            for n in names {
                f.extend(utf16z(n));
            }
            f.extend(utf16z(e));
        };
        group(&mut f, "BFeatureNodes", "EFeatureNodes", &["features"]);
        group(&mut f, "BLabelNodes", "ELabelNodes", &["labels"]);
        let criteria: &[&str] = if extra_node.is_some() { &["ce"] } else { &[] };
        group(&mut f, "BCriterionNodes", "ECriterionNodes", criteria);
        group(&mut f, "BOutputNodes", "EOutputNodes", &[]);
        s(&mut f, "ERootNodes");
        s(&mut f, "ECN");
        f
    }

    #[test]
    fn a_network_is_read_and_its_output_found_through_the_loss() {
        // A loss node with fields this reader does not know: skipped, and not needed.
        let bytes = tiny(14, Some(("SomeFutureLoss", &[7, 7, 7, 7, 7])));
        assert!(is_v1(&bytes));
        let network = read(&bytes).unwrap();
        assert_eq!(network.version, 14);
        assert_eq!(network.op_counts()["SomeFutureLoss"], 1);
        let model = to_model(&network, None).unwrap();
        assert_eq!(model.root, "z");
        assert_eq!(model.functions["z"].inputs, ["t_Output_0", "b"]);
        assert_eq!(model.functions["t"].inputs, ["W", "features"]);
        assert_eq!(
            model.variables["W"].value.as_deref(),
            Some(&[1., 2., 3., 4., 5., 6.][..])
        );
        assert!(!model.variables.contains_key("labels"));
    }

    #[test]
    fn an_unknown_node_on_the_output_path_is_named() {
        let network = read(&tiny(14, Some(("SomeFutureLoss", &[1, 2, 3])))).unwrap();
        let err = to_model(&network, Some("ce")).unwrap_err();
        assert!(
            matches!(&err, Problem::UnsupportedNodes(list) if list.contains("SomeFutureLoss (ce)")),
            "{err}"
        );
        let err = to_model(&network, Some("nope")).unwrap_err();
        assert!(err.to_string().contains("ce"), "{err}");
    }

    #[test]
    fn dropout_with_its_random_state_is_still_dropout() {
        // From version 16 Dropout saves its generator's seed and offset.
        let state = [3u8; 16];
        let network = read(&tiny(17, Some(("Dropout", &state)))).unwrap();
        let model = to_model(&network, Some("ce")).unwrap();
        assert_eq!(model.functions["ce"].op, ops::DROPOUT);
    }

    #[test]
    fn a_network_that_names_no_output_has_the_one_node_nothing_reads() {
        // No output group, no criterion: the one computed node nothing reads.
        let network = read(&tiny(14, None)).unwrap();
        assert_eq!(to_model(&network, None).unwrap().root, "z");
        // As the CNTK 2 library saves it: a v2 name inside, and the dynamic axis `*`.
        let saved = "__v2libuid__Plus2069__v2libname__Plus2060";
        let network = read(&tiny_named(14, None, saved)).unwrap();
        assert_eq!(to_model(&network, None).unwrap().root, saved);
        // Chosen by either name; an unknown one is refused with the v2 names shown.
        assert_eq!(output_node(&network, Some("Plus2060")).unwrap(), saved);
        assert_eq!(output_node(&network, Some(saved)).unwrap(), saved);
        let err = output_node(&network, Some("Times"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("its outputs: Plus2060"), "{err}");
        assert!(!err.contains("__v2lib"), "{err}");
    }

    #[test]
    fn a_convolution_kernel_saved_as_a_matrix_becomes_the_nd_kernel() {
        // 3 maps of a 2x2 window over 2 channels, saved as the matrix [3, 8].
        let (maps, positions) = (3usize, 8usize);
        let matrix: Vec<f32> = (0..maps * positions).map(|i| i as f32).collect();
        let node = |name: &str, op: &str, fields| Node {
            op: op.into(),
            name: name.into(),
            fields,
        };
        let convolution = Convolution {
            kernel: vec![2, 2, 2],
            map_count: vec![3],
            stride: vec![1, 1, 2],
            sharing: vec![true],
            auto_pad: vec![false],
            lower_pad: vec![0],
            upper_pad: vec![0],
            pool_kind: 0,
            chw: true,
            transpose: false,
            ceil_out_dim: false,
            include_pad: false,
            dilation: vec![1],
        };
        let network = Network {
            version: 14,
            nodes: vec![
                node(
                    "x",
                    "InputValue",
                    Fields::Input {
                        shape: vec![4, 4, 2],
                    },
                ),
                node(
                    "W",
                    "LearnableParameter",
                    Fields::Value {
                        shape: vec![maps as u64, positions as u64],
                        values: matrix.clone(),
                    },
                ),
                node(
                    "c",
                    "Convolution",
                    Fields::Convolution(Box::new(convolution)),
                ),
            ],
            inputs: [("c".to_owned(), vec!["W".to_owned(), "x".to_owned()])]
                .into_iter()
                .collect(),
            groups: [("output", vec!["c".to_owned()])].into_iter().collect(),
        };
        let model = to_model(&network, None).unwrap();
        let kernel = &model.variables["W"];
        assert_eq!(kernel.shape, [2, 2, 2, 3]);
        let values = kernel.value.as_deref().unwrap();
        // Map k's weight at window position (w, h) of channel c.
        for k in 0..maps {
            for c in 0..2 {
                for h in 0..2 {
                    for w in 0..2 {
                        let j = w + 2 * (h + 2 * c);
                        assert_eq!(
                            values[j + positions * k],
                            matrix[k + maps * j],
                            "map {k}, w {w}, h {h}, c {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn v2_library_names_are_shown_as_their_v2_names() {
        assert_eq!(
            shown_name("__v2libuid__Plus2069__v2libname__Plus2060"),
            "Plus2060"
        );
        assert_eq!(shown_name("__v2libuid__Plus2069__v2libname__"), "Plus2069");
        assert_eq!(shown_name("z.conv1.c.c"), "z.conv1.c.c");
    }

    #[test]
    fn a_truncated_file_is_malformed() {
        let bytes = tiny(14, None);
        for cut in [10, bytes.len() / 2, bytes.len() - 3] {
            assert!(matches!(read(&bytes[..cut]), Err(Problem::Malformed(_))));
        }
    }

    fn value(name: &str, values: &[f32]) -> Node {
        Node {
            op: "LearnableParameter".into(),
            name: name.into(),
            fields: Fields::Value {
                shape: vec![values.len() as u64],
                values: values.to_vec(),
            },
        }
    }

    /// A network of `nodes` (with their inputs) whose output node is `output`.
    fn network(version: u64, nodes: Vec<(Node, &[&str])>, output: &str) -> Network {
        let inputs = nodes
            .iter()
            .map(|(n, i)| (n.name.clone(), i.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        Network {
            version,
            nodes: nodes.into_iter().map(|(n, _)| n).collect(),
            inputs,
            groups: [("output", vec![output.to_owned()])].into_iter().collect(),
        }
    }

    fn input(name: &str, dim: u64) -> Node {
        Node {
            op: "InputValue".into(),
            name: name.into(),
            fields: Fields::Input { shape: vec![dim] },
        }
    }

    #[test]
    fn scale_and_diag_times_are_element_wise_products() {
        for op in ["Scale", "DiagTimes"] {
            let node = Node {
                op: op.into(),
                name: "y".into(),
                fields: Fields::None,
            };
            let network = network(
                14,
                vec![
                    (value("s", &[0.5, 2.]), &[]),
                    (input("x", 2), &[]),
                    (node, &["s", "x"]),
                ],
                "y",
            );
            let model = to_model(&network, None).unwrap();
            let y = &model.functions["y"];
            assert_eq!(
                (y.op, &y.inputs[..]),
                (ops::ELEMENT_TIMES, &["s".to_owned(), "x".into()][..]),
                "{op}"
            );
            crate::convert::lower(&model).unwrap();
        }
    }

    #[test]
    fn per_dim_mean_var_normalization_is_centred_then_scaled() {
        let normalize = Node {
            op: "PerDimMeanVarNormalization".into(),
            name: "n".into(),
            fields: Fields::None,
        };
        let network = network(
            14,
            vec![
                (input("x", 2), &[]),
                (value("mean", &[1., 2.]), &[]),
                (value("isd", &[0.5, 4.]), &[]),
                (normalize, &["x", "mean", "isd"]),
            ],
            "n",
        );
        let model = to_model(&network, None).unwrap();
        let (centred, scaled) = (&model.functions["n_centred"], &model.functions["n"]);
        assert_eq!(
            (centred.op, &centred.inputs[..]),
            (ops::MINUS, &["x".to_owned(), "mean".into()][..])
        );
        assert_eq!(scaled.op, ops::ELEMENT_TIMES);
        assert_eq!(scaled.inputs, ["n_centred_Output_0", "isd"]);
        crate::convert::lower(&model).unwrap();
    }

    #[test]
    fn old_batch_normalization_statistics_are_converted_as_cntk_converts_them() {
        let nodes = |version| {
            let bn = Node {
                op: "BatchNormalization".into(),
                name: "bn".into(),
                fields: Fields::BatchNormalization {
                    spatial: false,
                    epsilon: 0.25,
                    inverse_std: version < 13,
                },
            };
            network(
                version,
                vec![
                    (input("x", 2), &[]),
                    (value("scale", &[1., 1.]), &[]),
                    (value("bias", &[0., 0.]), &[]),
                    (value("mean", &[0., 0.]), &[]),
                    (value("statistic", &[0.5, 2.]), &[]),
                    (bn, &["x", "scale", "bias", "mean", "statistic"]),
                ],
                "bn",
            )
        };
        // Before version 13: the running inverse standard deviation, read as 1 / isd^2 + eps.
        let model = to_model(&nodes(12), None).unwrap();
        assert_eq!(
            model.variables["statistic"].value.as_deref(),
            Some(&[4.25, 0.5][..])
        );
        // From version 13 the variance, as saved.
        let model = to_model(&nodes(13), None).unwrap();
        assert_eq!(
            model.variables["statistic"].value.as_deref(),
            Some(&[0.5, 2.][..])
        );
    }

    #[test]
    fn reshape_transpose_and_row_stack_take_their_1_based_axes() {
        let node = |op: &str, name: &str, fields| Node {
            op: op.into(),
            name: name.into(),
            fields,
        };
        let reshape = Fields::Reshape {
            begin: 0,
            end: 0,
            shape: vec![2, 0],
        };
        let network = network(
            14,
            vec![
                (input("x", 6), &[]),
                (node("Reshape", "r", reshape), &["x"]),
                (
                    node(
                        "TransposeDimensions",
                        "t",
                        Fields::Transpose { axis1: 1, axis2: 2 },
                    ),
                    &["r"],
                ),
                (
                    node("RowStack", "s", Fields::Splice { axis: 2 }),
                    &["t", "t"],
                ),
            ],
            "s",
        );
        let model = to_model(&network, None).unwrap();
        let lowered = crate::convert::lower(&model).unwrap();
        // [6] -> [2, 3] -> [3, 2] -> [3, 4], CNTK order; ONNX reverses it behind the batch.
        assert_eq!(lowered.output_shape, [-1, 4, 3]);
    }
}
