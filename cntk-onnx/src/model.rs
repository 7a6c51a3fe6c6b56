//! A CNTK v2 model read out of its `Dictionary` into typed variables and functions.
//!
//! The saved form of a CNTK `CompositeFunction` is: `inputs` (every variable: inputs,
//! parameters, constants, placeholders), `primitive_functions` (every function, including the
//! ones inside block functions, flattened), and `root` (the uid of the function whose outputs
//! are the model's outputs). A function's output variables are not saved; they are named
//! `<function uid>_Output_<index>`.

use std::collections::{HashMap, HashSet};

use crate::error::{Problem, malformed};
use crate::ops;
use crate::proto::cntk::{ArrayValues, Dictionary, DictionaryValue, NdArrayView, Value};

/// `CNTK::VariableKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    Input,
    Output,
    Parameter,
    Constant,
    Placeholder,
}

#[derive(Debug)]
pub struct Variable {
    pub uid: String,
    pub kind: VariableKind,
    /// Static shape in CNTK's order: column-major, fastest-varying axis first.
    pub shape: Vec<u64>,
    /// Whether the variable has a batch (dynamic) axis.
    pub batched: bool,
    /// Weights of parameters and constants, in the order of `shape` read column-major.
    pub value: Option<Vec<f32>>,
}

#[derive(Debug)]
pub struct Function {
    pub uid: String,
    /// The name given in the model's script, if any (e.g. `z`, `ce`).
    pub name: String,
    /// `CNTK::PrimitiveOpType` as saved.
    pub op: u64,
    pub inputs: Vec<String>,
    pub attributes: Dictionary,
    pub block: Option<Block>,
}

/// A block function: a composite (rooted at `root`) whose placeholders are bound to the
/// block's actual inputs by `arguments`.
#[derive(Debug)]
pub struct Block {
    pub root: String,
    pub op_name: String,
    pub arguments: HashMap<String, String>,
}

#[derive(Debug)]
pub struct Model {
    pub variables: HashMap<String, Variable>,
    pub functions: HashMap<String, Function>,
    pub root: String,
}

impl Model {
    pub fn from_dictionary(dict: &Dictionary) -> Result<Self, Problem> {
        let kind = dict.data.get("type").and_then(|v| as_str(v).ok());
        if kind != Some("CompositeFunction") {
            return Err(Problem::NotCntk(
                "no CompositeFunction at the top level of the protobuf dictionary".into(),
            ));
        }
        let root = get_str(dict, "root")?.to_owned();
        let mut variables = HashMap::new();
        for value in get_vec(dict, "inputs")? {
            let var = read_variable(as_dict(value)?)?;
            variables.insert(var.uid.clone(), var);
        }
        let mut functions = HashMap::new();
        for value in get_vec(dict, "primitive_functions")? {
            let function = read_function(as_dict(value)?)?;
            functions.insert(function.uid.clone(), function);
        }
        if !functions.contains_key(&root) {
            return Err(malformed(format!(
                "root function {root} is not among the saved functions"
            )));
        }
        Ok(Self {
            variables,
            functions,
            root,
        })
    }
}

impl Model {
    /// Makes the model's output the one a classifier is scored by: `chosen` (a function's name
    /// or uid) if given; else, for a root `Combine` saved by a trainer checkpoint, its first
    /// output that is neither a loss or metric nor an aggregate of them (the labels go with
    /// them, unread); and when the checkpoint keeps only its criteria, the prediction its first
    /// criterion scores.
    pub fn choose_output(&mut self, chosen: Option<&str>) -> Result<(), Problem> {
        if let Some(chosen) = chosen {
            let found = self
                .functions
                .values()
                .find(|f| f.uid == chosen || f.name == chosen)
                .map(|f| f.uid.clone());
            self.root = found.ok_or_else(|| {
                let mut available: Vec<String> = self
                    .functions
                    .values()
                    .filter(|f| !f.name.is_empty())
                    .map(|f| f.name.clone())
                    .collect();
                available.sort();
                available.dedup();
                Problem::NoSuchOutput {
                    name: chosen.into(),
                    available: available.join(", "),
                }
            })?;
            return Ok(());
        }
        let root = &self.functions[&self.root];
        if root.op != ops::COMBINE {
            return Ok(());
        }
        let owner = |input: &str| {
            input
                .rsplit_once("_Output_")
                .and_then(|(uid, _)| self.functions.get(uid))
        };
        let outputs: Vec<&Function> = root
            .inputs
            .iter()
            .filter_map(|input| owner(input))
            .collect();
        // A loss or metric takes another output of the checkpoint (the prediction) and an
        // input (the label), as a primitive function or as a block (CNTK 2's Python composes
        // `cross_entropy_with_softmax` and friends as blocks); the classifier takes neither.
        let criterion = |f: &Function| {
            let reads_output = f.inputs.iter().any(|input| {
                owner(input)
                    .is_some_and(|o| o.uid != f.uid && outputs.iter().any(|x| x.uid == o.uid))
            });
            let reads_input = f.inputs.iter().any(|input| {
                self.variables
                    .get(input)
                    .is_some_and(|v| v.kind == VariableKind::Input)
            });
            ops::CRITERIA.contains(&f.op)
                || f.block
                    .as_ref()
                    .is_some_and(|b| CRITERION_BLOCKS.contains(&b.op_name.as_str()))
                || (reads_output && reads_input)
        };
        // What a trainer sums a loss or metric into (`aggregateLoss`, `aggregateEvalMetric`):
        // a function that reads criteria and nothing else computed.
        let aggregate = |f: &Function| {
            let read: Vec<&Function> = f.inputs.iter().filter_map(|i| owner(i)).collect();
            !read.is_empty() && read.iter().all(|o| o.uid != f.uid && criterion(o))
        };
        if let Some(output) = outputs.iter().find(|f| !criterion(f) && !aggregate(f)) {
            self.root = output.uid.clone();
        } else if let Some(prediction) = outputs.iter().filter(|f| criterion(f)).find_map(|f| {
            // The computed input of a criterion: its labels are an input variable.
            f.inputs
                .iter()
                .filter_map(|i| owner(i))
                .find(|o| o.uid != f.uid)
        }) {
            self.root = prediction.uid.clone();
        }
        Ok(())
    }
}

/// The op names of CNTK 2's losses and metrics when its Python API composes them as blocks.
const CRITERION_BLOCKS: &[&str] = &[
    "CrossEntropyWithSoftmax",
    "ClassificationError",
    "SquaredError",
    "BinaryCrossEntropy",
    "WeightedBinaryCrossEntropy",
    "CosineDistance",
    "CosineDistanceWithNegativeSamples",
    "LambdaRank",
    "NDCG",
    "EditDistanceError",
];

/// A function or variable met walking a model from its root.
#[derive(Debug)]
pub enum Visit<'m> {
    Variable(&'m Variable),
    Function {
        function: &'m Function,
        /// The block function it sits in, if any.
        within: Option<&'m Function>,
    },
}

impl Model {
    /// Everything the root depends on, each once and after its inputs; a block's inner
    /// functions come before the block. References to nothing saved are left out (the
    /// lowering reports them as malformed).
    pub fn walk(&self) -> Vec<Visit<'_>> {
        let mut walk = Walk {
            model: self,
            seen: HashSet::new(),
            visits: Vec::new(),
        };
        walk.function(&self.root, None);
        walk.visits
    }
}

struct Walk<'m> {
    model: &'m Model,
    seen: HashSet<&'m str>,
    visits: Vec<Visit<'m>>,
}

impl<'m> Walk<'m> {
    fn function(&mut self, uid: &'m str, within: Option<&'m Function>) {
        if !self.seen.insert(uid) {
            return;
        }
        let Some(function) = self.model.functions.get(uid) else {
            return;
        };
        for input in &function.inputs {
            match input.rsplit_once("_Output_") {
                Some((owner, _)) => self.function(owner, within),
                None => {
                    if let Some(var) = self.model.variables.get(input.as_str())
                        && self.seen.insert(input)
                    {
                        self.visits.push(Visit::Variable(var));
                    }
                }
            }
        }
        if let Some(block) = &function.block {
            self.function(&block.root, Some(function));
        }
        self.visits.push(Visit::Function { function, within });
    }
}

fn read_variable(dict: &Dictionary) -> Result<Variable, Problem> {
    let uid = get_str(dict, "uid")?.to_owned();
    let kind = match get_u64(dict, "kind")? {
        0 => VariableKind::Input,
        1 => VariableKind::Output,
        2 => VariableKind::Parameter,
        3 => VariableKind::Constant,
        4 => VariableKind::Placeholder,
        other => {
            return Err(malformed(format!(
                "variable {uid} has unknown kind {other}"
            )));
        }
    };
    let shape = get_shape(dict, "shape")?;
    let batched = dict
        .data
        .get("dynamic_axis")
        .map(as_vec)
        .transpose()?
        .is_some_and(|axes| !axes.is_empty());
    let value = match dict.data.get("value") {
        Some(v) => Some(read_array(as_array(v)?, &uid)?),
        None if matches!(kind, VariableKind::Parameter | VariableKind::Constant) => {
            return Err(malformed(format!("{uid} has no saved value")));
        }
        None => None,
    };
    if let Some(values) = &value {
        let expected: u64 = shape.iter().product();
        if values.len() as u64 != expected {
            return Err(malformed(format!(
                "{uid} holds {} values but its shape {shape:?} needs {expected}",
                values.len()
            )));
        }
    }
    Ok(Variable {
        uid,
        kind,
        shape,
        batched,
        value,
    })
}

fn read_array(array: &NdArrayView, uid: &str) -> Result<Vec<f32>, Problem> {
    if array.storage_format != 0 {
        return Err(malformed(format!(
            "{uid} is stored sparse; only dense weights are supported"
        )));
    }
    match &array.values {
        Some(ArrayValues::Float(v)) => Ok(v.value.clone()),
        // Narrowing is what CNTK itself does when a double model is evaluated in float.
        Some(ArrayValues::Double(v)) => Ok(v.value.iter().map(|&x| x as f32).collect()),
        Some(_) => Err(malformed(format!(
            "{uid} has weights of data type {}; only float and double are supported",
            array.data_type
        ))),
        None => Err(malformed(format!("{uid} has an empty value"))),
    }
}

fn read_function(dict: &Dictionary) -> Result<Function, Problem> {
    let uid = get_str(dict, "uid")?.to_owned();
    let op = get_u64(dict, "op")?;
    let inputs = get_vec(dict, "inputs")?
        .iter()
        .map(|v| as_str(v).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    let attributes = match dict.data.get("attributes") {
        Some(v) => as_dict(v)?.clone(),
        None => Dictionary::default(),
    };
    let block = match dict.data.get("block_function_composite") {
        None => None,
        Some(composite) => {
            let composite = as_dict(composite)?;
            let keys = get_vec(dict, "block_function_composite_arguments_map_keys")?;
            let values = get_vec(dict, "block_function_composite_arguments_map_values")?;
            if keys.len() != values.len() {
                return Err(malformed(format!("block {uid} has an uneven argument map")));
            }
            let arguments = keys
                .iter()
                .zip(values)
                .map(|(k, v)| Ok((as_str(k)?.to_owned(), as_str(v)?.to_owned())))
                .collect::<Result<_, Problem>>()?;
            Some(Block {
                root: get_str(composite, "root")?.to_owned(),
                op_name: dict
                    .data
                    .get("block_function_op_name")
                    .map(as_str)
                    .transpose()?
                    .unwrap_or("Block")
                    .to_owned(),
                arguments,
            })
        }
    };
    let name = match dict.data.get("name") {
        Some(v) => as_str(v)?.to_owned(),
        None => String::new(),
    };
    Ok(Function {
        uid,
        name,
        op,
        inputs,
        attributes,
        block,
    })
}

// Typed access to dictionary entries. Each error names the key, since that is all a user can
// look for in a file they did not write.

fn missing(key: &str) -> Problem {
    malformed(format!("entry `{key}` is missing"))
}

fn wrong_type(what: &str) -> Problem {
    malformed(format!("expected {what} in the dictionary"))
}

pub fn as_str(v: &DictionaryValue) -> Result<&str, Problem> {
    match &v.value {
        Some(Value::String(s)) => Ok(s),
        _ => Err(wrong_type("a string")),
    }
}

pub fn as_dict(v: &DictionaryValue) -> Result<&Dictionary, Problem> {
    match &v.value {
        Some(Value::Dictionary(d)) => Ok(d),
        _ => Err(wrong_type("a dictionary")),
    }
}

pub fn as_vec(v: &DictionaryValue) -> Result<&[DictionaryValue], Problem> {
    match &v.value {
        Some(Value::Vector(vec)) => Ok(&vec.value),
        _ => Err(wrong_type("a vector")),
    }
}

fn as_array(v: &DictionaryValue) -> Result<&NdArrayView, Problem> {
    match &v.value {
        Some(Value::Array(a)) => Ok(a),
        _ => Err(wrong_type("an NDArrayView")),
    }
}

pub fn get_str<'d>(dict: &'d Dictionary, key: &str) -> Result<&'d str, Problem> {
    as_str(dict.data.get(key).ok_or_else(|| missing(key))?)
}

pub fn get_vec<'d>(dict: &'d Dictionary, key: &str) -> Result<&'d [DictionaryValue], Problem> {
    as_vec(dict.data.get(key).ok_or_else(|| missing(key))?)
}

pub fn get_u64(dict: &Dictionary, key: &str) -> Result<u64, Problem> {
    match dict.data.get(key).ok_or_else(|| missing(key))?.value {
        Some(Value::SizeT(n)) => Ok(n),
        Some(Value::Int(n)) if n >= 0 => Ok(n as u64),
        _ => Err(malformed(format!(
            "entry `{key}` is not an unsigned integer"
        ))),
    }
}

pub fn get_shape(dict: &Dictionary, key: &str) -> Result<Vec<u64>, Problem> {
    match &dict.data.get(key).ok_or_else(|| missing(key))?.value {
        Some(Value::Shape(s)) => Ok(s.shape_dim.clone()),
        _ => Err(malformed(format!("entry `{key}` is not a shape"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(uid: &str, op: u64, inputs: &[&str]) -> (String, Function) {
        let f = Function {
            uid: uid.into(),
            name: uid.to_uppercase(),
            op,
            inputs: inputs.iter().map(|&i| i.to_owned()).collect(),
            attributes: Dictionary::default(),
            block: None,
        };
        (uid.into(), f)
    }

    /// A checkpoint's root: loss first, then the metric, then the classifier.
    fn checkpoint() -> Model {
        Model {
            variables: HashMap::new(),
            functions: [
                function(
                    "root",
                    ops::COMBINE,
                    &["ce_Output_0", "err_Output_0", "z_Output_0"],
                ),
                function("ce", 35, &["z_Output_0", "labels"]),
                function("err", 36, &["z_Output_0", "labels"]),
                function("z", ops::PLUS, &["x", "b"]),
            ]
            .into_iter()
            .collect(),
            root: "root".into(),
        }
    }

    #[test]
    fn a_checkpoint_root_gives_its_classifier_not_its_loss() {
        let mut model = checkpoint();
        model.choose_output(None).unwrap();
        assert_eq!(model.root, "z");
    }

    #[test]
    fn a_checkpoint_whose_loss_and_metric_are_blocks_gives_its_classifier() {
        let block = |op_name: &str| Block {
            root: "inner".into(),
            op_name: op_name.into(),
            arguments: HashMap::new(),
        };
        // The loss a block of a known op name; the metric a block of a name not listed, known
        // by what it takes (the classifier's output and the labels).
        let block_op = (0..).find(|&op| ops::name(op) == "Block").unwrap();
        let mut model = checkpoint();
        for (uid, op_name) in [("ce", "CrossEntropyWithSoftmax"), ("err", "MyOwnMetric")] {
            let f = model.functions.get_mut(uid).unwrap();
            (f.op, f.block) = (block_op, Some(block(op_name)));
        }
        model.variables.insert(
            "labels".into(),
            Variable {
                uid: "labels".into(),
                kind: VariableKind::Input,
                shape: vec![10],
                batched: true,
                value: None,
            },
        );
        model.choose_output(None).unwrap();
        assert_eq!(model.root, "z");
    }

    /// A checkpoint whose root keeps only its criteria, as blocks, and what the trainer sums
    /// them into (CNTK 2's early trainers): the classifier is what its loss scores.
    #[test]
    fn a_checkpoint_of_criteria_and_their_aggregates_gives_what_they_score() {
        let block_op = (0..).find(|&op| ops::name(op) == "Block").unwrap();
        let criterion = |uid: &str, op_name: &str| {
            let (uid, mut f) = function(uid, block_op, &["z_Output_0", "labels"]);
            f.block = Some(Block {
                root: "inner".into(),
                op_name: op_name.into(),
                arguments: HashMap::new(),
            });
            (uid, f)
        };
        let mut model = Model {
            variables: HashMap::new(),
            functions: [
                function(
                    "root",
                    ops::COMBINE,
                    &[
                        "ce_Output_0",
                        "loss_Output_0",
                        "err_Output_0",
                        "metric_Output_0",
                    ],
                ),
                criterion("ce", "CrossEntropyWithSoftmax"),
                function("loss", ops::REDUCE_ELEMENTS, &["ce_Output_0"]),
                criterion("err", "ClassificationError"),
                function("metric", ops::REDUCE_ELEMENTS, &["err_Output_0"]),
                function("z", ops::PLUS, &["y_Output_0", "b"]),
                function("y", ops::TIMES, &["w", "x"]),
            ]
            .into_iter()
            .collect(),
            root: "root".into(),
        };
        model.choose_output(None).unwrap();
        assert_eq!(model.root, "z");
    }

    #[test]
    fn an_output_is_chosen_by_name_or_uid() {
        let mut model = checkpoint();
        model.choose_output(Some("CE")).unwrap();
        assert_eq!(model.root, "ce");
        let err = checkpoint().choose_output(Some("zz")).unwrap_err();
        assert!(
            matches!(&err, Problem::NoSuchOutput { available, .. } if available == "CE, ERR, ROOT, Z"),
            "{err}"
        );
    }
}
