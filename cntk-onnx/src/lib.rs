#![warn(missing_docs)]
//! Imports CNTK models as ONNX models: v2 (the protobuf files CNTK 2.x saves, `.dnn` /
//! `.model`) and v1 (the "BCN" binary files `cntk.exe` wrote for BrainScript networks,
//! `.dnn` / `.cmf`).
//!
//! CNTK no longer runs anywhere, but trained CNTK models are still around. This crate reads
//! both formats itself and writes an equivalent ONNX graph that ONNX Runtime can score.
//!
//! - [`proto`]: the wire types (`CNTK.proto`, `onnx.proto`), hand-declared.
//! - `model`: the CNTK v2 `Dictionary` read into variables, functions and blocks.
//! - `v1`: the CNTK v1 node list read into the same variables and functions.
//! - `convert`: the lowering to ONNX (layouts, padding, block inlining).
//! - [`inspect`]: the saved graph, for a person to read.
//! - `ops`: CNTK's operation codes.
//!
//! ```no_run
//! let dnn = std::fs::read("resnet20.dnn").unwrap();
//! let model = cntk_onnx::import(&dnn, "resnet20.dnn").unwrap();
//! std::fs::write("resnet20.onnx", &model.onnx).unwrap();
//! ```

mod convert;
mod error;
pub mod inspect;
mod model;
mod ops;
pub mod proto;
mod v1;

use std::collections::BTreeMap;

use prost::Message;
use sha2::{Digest, Sha256};

pub use convert::{BATCH_DIM, INPUT_NAME, OUTPUT_NAME};
pub use error::{ImportError, Problem};

/// ONNX operator set the graphs are written against.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// Metadata keys written into every imported model, so an ONNX file can be traced back to
/// the exact CNTK file it came from.
pub mod metadata {
    /// The CNTK file's name.
    pub const SOURCE_FILE: &str = "source_file";
    /// The CNTK file's SHA-256.
    pub const SOURCE_SHA256: &str = "source_sha256";
    /// `CNTK v2`, or `CNTK v1 (model version N)`.
    pub const SOURCE_FORMAT: &str = "source_format";
    /// The CNTK node or function the ONNX output computes.
    pub const OUTPUT: &str = "source_output";
    /// This importer and its version.
    pub const IMPORTER: &str = "importer";
}

/// An imported model.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The serialized ONNX `ModelProto`.
    pub onnx: Vec<u8>,
    /// Input dims, `-1` for the batch dimension (e.g. `[-1, 3, 32, 32]`).
    pub input_shape: Vec<i64>,
    /// Output dims, `-1` for the batch dimension (e.g. `[-1, 10]`).
    pub output_shape: Vec<i64>,
    /// Number of ONNX nodes written.
    pub nodes: usize,
    /// Number of weights carried over.
    pub parameters: usize,
    /// Hex SHA-256 of the source file.
    pub source_sha256: String,
    /// `CNTK v2`, or `CNTK v1 (model version N)`.
    pub source_format: String,
    /// The CNTK node or function whose output was converted.
    pub output: String,
    /// Node types in the source file (v2: operations, and blocks by their op name) and how
    /// many of each.
    pub source_ops: BTreeMap<String, usize>,
}

/// What a model file holds, judged from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A CNTK 1.x "BCN" file (BrainScript, `cntk.exe`).
    CntkV1,
    /// A CNTK 2.x protobuf `Dictionary`.
    CntkV2,
    /// An ONNX `ModelProto`.
    Onnx,
    /// None of these.
    Unknown,
}

/// Tells CNTK v1, CNTK v2 and ONNX models apart by their contents, not by their file names.
pub fn sniff(bytes: &[u8]) -> Format {
    if v1::is_v1(bytes) {
        Format::CntkV1
    } else if parse_v2(bytes).is_ok() {
        Format::CntkV2
    } else if is_onnx(bytes) {
        Format::Onnx
    } else {
        Format::Unknown
    }
}

/// Choices made while importing.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The output to convert, by node or function name (or v2 uid), when the model's own
    /// choice is not the classifier's: by default the saved output nodes (v1), or the first
    /// output of the root that is not a loss or metric (v2).
    pub output: Option<String>,
}

fn is_onnx(bytes: &[u8]) -> bool {
    proto::onnx::ModelProto::decode(bytes)
        .is_ok_and(|m| m.ir_version > 0 && m.graph.is_some_and(|g| !g.node.is_empty()))
}

fn parse_v2(bytes: &[u8]) -> Result<model::Model, Problem> {
    let dict = proto::cntk::Dictionary::decode(bytes)
        .map_err(|e| Problem::NotCntk(format!("not a protobuf Dictionary: {e}")))?;
    model::Model::from_dictionary(&dict)
}

/// A model read from its file: its output chosen, the name of its format, and how many
/// nodes of each type the file holds.
struct Parsed {
    model: model::Model,
    format: String,
    ops: BTreeMap<String, usize>,
}

fn parse(bytes: &[u8], options: &Options) -> Result<Parsed, Problem> {
    if v1::is_v1(bytes) {
        let network = v1::read(bytes)?;
        let model = v1::to_model(&network, options.output.as_deref())?;
        return Ok(Parsed {
            model,
            format: format!("CNTK v1 (model version {})", network.version),
            ops: network.op_counts(),
        });
    }
    let mut model = parse_v2(bytes)?;
    model.choose_output(options.output.as_deref())?;
    let mut ops = BTreeMap::new();
    for function in model.functions.values() {
        let name = match &function.block {
            Some(block) => block.op_name.clone(),
            None => ops::name(function.op),
        };
        *ops.entry(name).or_default() += 1;
    }
    Ok(Parsed {
        model,
        format: "CNTK v2".into(),
        ops,
    })
}

/// The graph of the CNTK model in `bytes` as saved, every node the output depends on, with
/// the ones the importer does not lower marked; it is read even when the model cannot be
/// converted, so that its user can see why.
pub fn inspect(
    bytes: &[u8],
    source_name: &str,
    options: &Options,
) -> Result<inspect::Graph, ImportError> {
    let fail = |problem| ImportError {
        file: source_name.to_owned(),
        problem,
    };
    let chosen = options.output.as_deref();
    if v1::is_v1(bytes) {
        let network = v1::read(bytes).map_err(fail)?;
        return Ok(inspect::Graph {
            format: format!("CNTK v1 (model version {})", network.version),
            output: v1::output_node(&network, chosen)
                .map(str::to_owned)
                .map_err(|e| e.to_string()),
            nodes: v1::describe(&network),
        });
    }
    let mut model = parse_v2(bytes).map_err(|problem| match problem {
        Problem::NotCntk(_) if is_onnx(bytes) => fail(Problem::AlreadyOnnx),
        other => fail(other),
    })?;
    let nodes = inspect::v2_nodes(&model);
    let output = match model.choose_output(chosen) {
        Ok(()) => {
            let f = &model.functions[&model.root];
            Ok(if f.name.is_empty() {
                model.root.clone()
            } else {
                format!("{} ({})", f.name, model.root)
            })
        }
        Err(e) => Err(e.to_string()),
    };
    Ok(inspect::Graph {
        format: "CNTK v2".into(),
        output,
        nodes,
    })
}

/// Converts the CNTK model in `bytes` to ONNX, choosing its output as CNTK saved it.
/// `source_name` names the file in errors and in the model's metadata.
pub fn import(bytes: &[u8], source_name: &str) -> Result<Imported, ImportError> {
    import_with(bytes, source_name, &Options::default())
}

/// [`import`] with [`Options`].
pub fn import_with(
    bytes: &[u8],
    source_name: &str,
    options: &Options,
) -> Result<Imported, ImportError> {
    let fail = |problem| ImportError {
        file: source_name.to_owned(),
        problem,
    };
    let Parsed {
        model,
        format: source_format,
        ops: source_ops,
    } = parse(bytes, options).map_err(|problem| match problem {
        Problem::NotCntk(_) if is_onnx(bytes) => fail(Problem::AlreadyOnnx),
        other => fail(other),
    })?;
    let lowered = convert::lower(&model).map_err(fail)?;
    let source_sha256 = hex(&Sha256::digest(bytes));
    let nodes = lowered.graph.node.len();
    let parameters = lowered
        .graph
        .initializer
        .iter()
        .map(|t| t.raw_data.len() / 4)
        .sum();
    let entry = |key: &str, value: &str| proto::onnx::StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    };
    let onnx = proto::onnx::ModelProto {
        ir_version: IR_VERSION,
        producer_name: env!("CARGO_PKG_NAME").into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "Imported from the {source_format} model {source_name} (sha256 {source_sha256})"
        ),
        graph: Some(lowered.graph),
        opset_import: vec![proto::onnx::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            entry(metadata::SOURCE_FILE, source_name),
            entry(metadata::SOURCE_SHA256, &source_sha256),
            entry(metadata::SOURCE_FORMAT, &source_format),
            entry(metadata::OUTPUT, &model.root),
            entry(
                metadata::IMPORTER,
                concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
            ),
        ],
    }
    .encode_to_vec();
    Ok(Imported {
        onnx,
        input_shape: lowered.input_shape,
        output_shape: lowered.output_shape,
        nodes,
        parameters,
        source_sha256,
        source_format,
        source_ops,
        output: model.root,
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_not_a_model() {
        let err = import(b"\x89PNG\r\n\x1a\n not a model at all", "picture.png").unwrap_err();
        assert!(matches!(err.problem, Problem::NotCntk(_)), "{err}");
        assert!(
            err.to_string().starts_with("picture.png: not a CNTK model"),
            "{err}"
        );
        assert_eq!(sniff(b"hello"), Format::Unknown);
    }

    #[test]
    fn a_damaged_cntk_v1_file_is_malformed() {
        let bytes = b"B\0C\0N\0\0\0rest of a v1 model";
        assert_eq!(sniff(bytes), Format::CntkV1);
        let err = import(bytes, "old.dnn").unwrap_err();
        assert!(matches!(err.problem, Problem::Malformed(_)), "{err}");
    }

    #[test]
    fn a_dictionary_without_a_composite_function_is_not_a_model() {
        let dict = proto::cntk::Dictionary {
            version: 1,
            data: Default::default(),
        };
        let err = import(&dict.encode_to_vec(), "empty.dnn").unwrap_err();
        assert!(matches!(err.problem, Problem::NotCntk(_)), "{err}");
    }
}
