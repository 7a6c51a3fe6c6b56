//! A model's graph as saved, for a person to read: what `producer convert --inspect` prints
//! when a model does not convert and its user needs to see why.

use std::fmt;

use crate::model::{Model, VariableKind, Visit};
use crate::ops;
use crate::proto::cntk::{Dictionary, Value};

/// One node (v1) or function or variable (v2) of a saved model.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (v1) or uid (v2).
    pub id: String,
    /// The name given in the model's script, where it differs from `id`.
    pub name: String,
    /// Node type or operation; `Input`, `Parameter`, `Constant` for v2 variables.
    pub op: String,
    /// The nodes it reads, by id.
    pub inputs: Vec<String>,
    /// Shape, or saved attributes, briefly.
    pub detail: String,
    /// Whether the importer lowers it.
    pub supported: bool,
}

/// A model's graph: every node the saved output depends on, each after its inputs.
#[derive(Debug, Clone)]
pub struct Graph {
    /// `CNTK v2`, or `CNTK v1 (model version N)`.
    pub format: String,
    /// The output the importer would convert, or why there is none.
    pub output: Result<String, String>,
    /// Every node the output depends on, each after its inputs.
    pub nodes: Vec<Node>,
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format: {}", self.format)?;
        match &self.output {
            Ok(output) => writeln!(f, "output: {output}")?,
            Err(why) => writeln!(f, "output: none ({why})")?,
        }
        let unsupported = self.nodes.iter().filter(|n| !n.supported).count();
        writeln!(
            f,
            "{} nodes, each after its inputs; {unsupported} marked * are not supported:",
            self.nodes.len()
        )?;
        for node in &self.nodes {
            let mark = if node.supported { ' ' } else { '*' };
            write!(f, "{mark} {:<20} {}", node.op, node.id)?;
            if !node.name.is_empty() && node.name != node.id {
                write!(f, " ({})", node.name)?;
            }
            if !node.inputs.is_empty() {
                write!(f, " <- {}", node.inputs.join(", "))?;
            }
            if !node.detail.is_empty() {
                write!(f, "  {}", node.detail)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The functions and variables a v2 model's saved root depends on, inputs first; a block's
/// inner functions come before the block.
pub fn v2_nodes(model: &Model) -> Vec<Node> {
    model
        .walk()
        .into_iter()
        .map(|visit| match visit {
            Visit::Variable(var) => {
                let op = match var.kind {
                    VariableKind::Input => "Input",
                    VariableKind::Output => "Output",
                    VariableKind::Parameter => "Parameter",
                    VariableKind::Constant => "Constant",
                    VariableKind::Placeholder => "Placeholder",
                };
                Node {
                    id: var.uid.clone(),
                    name: String::new(),
                    op: op.into(),
                    inputs: vec![],
                    detail: format!("{:?}", var.shape),
                    supported: true,
                }
            }
            Visit::Function { function: f, .. } => {
                let (op, supported) = match &f.block {
                    Some(block) => (format!("{} (block)", block.op_name), true),
                    None => (ops::name(f.op), ops::SUPPORTED.contains(&f.op)),
                };
                Node {
                    id: f.uid.clone(),
                    name: f.name.clone(),
                    op,
                    inputs: f
                        .inputs
                        .iter()
                        .map(|i| output_owner(i).to_owned())
                        .collect(),
                    detail: attributes(&f.attributes),
                    supported,
                }
            }
        })
        .collect()
}

/// `f_Output_0` is read as `f`: the function, which is what a user can find in the list.
fn output_owner(reference: &str) -> &str {
    match reference.rsplit_once("_Output_") {
        Some((owner, "0")) => owner,
        _ => reference,
    }
}

/// The attributes a user can read at a glance (numbers, flags, shapes, axes, names), sorted.
fn attributes(attrs: &Dictionary) -> String {
    let mut entries: Vec<String> = attrs
        .data
        .iter()
        .filter_map(|(key, value)| {
            value
                .value
                .as_ref()
                .and_then(brief)
                .map(|v| format!("{key}={v}"))
        })
        .collect();
    entries.sort();
    entries.join(" ")
}

fn brief(value: &Value) -> Option<String> {
    Some(match value {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::SizeT(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        Value::String(s) if s.len() <= 64 => s.clone(),
        Value::Shape(s) => format!("{:?}", s.shape_dim),
        Value::Axis(a) if a.name.is_empty() => format!("axis {}", a.static_axis_idx),
        Value::Axis(a) => a.name.clone(),
        Value::Vector(v) if v.value.len() <= 16 => {
            let items: Option<Vec<String>> = v
                .value
                .iter()
                .map(|item| item.value.as_ref().and_then(brief))
                .collect();
            format!("[{}]", items?.join(", "))
        }
        _ => return None,
    })
}
