//! Imports CNTK v2 models (`.dnn` files saved by CNTK 2.x) as ONNX models.
//!
//! CNTK no longer runs anywhere, but trained CNTK models are still around. This crate reads
//! the CNTK v2 protobuf format itself and writes an equivalent ONNX graph that ONNX Runtime
//! can score.
//!
//! - [`proto`]: the wire types of both formats (`CNTK.proto`, `onnx.proto`), hand-declared.
//! - `model`: the CNTK `Dictionary` read into variables, functions and blocks.
//! - `convert`: the lowering to ONNX (layouts, padding, block inlining).
//! - `ops`: CNTK's operation codes.
//!
//! ```no_run
//! let dnn = std::fs::read("resnet20.dnn").unwrap();
//! let model = cntk_onnx::import(&dnn, "resnet20.dnn").unwrap();
//! std::fs::write("resnet20.onnx", &model.onnx).unwrap();
//! ```

mod convert;
mod error;
mod model;
mod ops;
pub mod proto;

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
    pub const SOURCE_FILE: &str = "source_file";
    pub const SOURCE_SHA256: &str = "source_sha256";
    pub const SOURCE_FORMAT: &str = "source_format";
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
}

/// What a model file holds, judged from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    CntkV2,
    Onnx,
    Unknown,
}

/// Tells a CNTK v2 model from an ONNX model by decoding it, not by its file name.
pub fn sniff(bytes: &[u8]) -> Format {
    if parse_cntk(bytes).is_ok() {
        Format::CntkV2
    } else if is_onnx(bytes) {
        Format::Onnx
    } else {
        Format::Unknown
    }
}

fn is_onnx(bytes: &[u8]) -> bool {
    proto::onnx::ModelProto::decode(bytes)
        .is_ok_and(|m| m.ir_version > 0 && m.graph.is_some_and(|g| !g.node.is_empty()))
}

fn parse_cntk(bytes: &[u8]) -> Result<model::Model, Problem> {
    // CNTK v1 files open with the UTF-16 section marker "BCN".
    if bytes.starts_with(b"B\0C\0N\0") {
        return Err(Problem::CntkV1);
    }
    let dict = proto::cntk::Dictionary::decode(bytes)
        .map_err(|e| Problem::NotCntk(format!("not a protobuf Dictionary: {e}")))?;
    model::Model::from_dictionary(&dict)
}

/// Converts the CNTK v2 model in `bytes` to ONNX. `source_name` names the file in errors and
/// in the model's metadata.
pub fn import(bytes: &[u8], source_name: &str) -> Result<Imported, ImportError> {
    let fail = |problem| ImportError {
        file: source_name.to_owned(),
        problem,
    };
    let model = parse_cntk(bytes).map_err(|problem| match problem {
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
            "Imported from the CNTK v2 model {source_name} (sha256 {source_sha256})"
        ),
        graph: Some(lowered.graph),
        opset_import: vec![proto::onnx::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            entry(metadata::SOURCE_FILE, source_name),
            entry(metadata::SOURCE_SHA256, &source_sha256),
            entry(metadata::SOURCE_FORMAT, "CNTK v2"),
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
            err.to_string()
                .starts_with("picture.png: not a CNTK v2 model"),
            "{err}"
        );
        assert_eq!(sniff(b"hello"), Format::Unknown);
    }

    #[test]
    fn cntk_v1_files_are_named_as_such() {
        let err = import(b"B\0C\0N\0\0\0rest of a v1 model", "old.dnn").unwrap_err();
        assert_eq!(err.problem, Problem::CntkV1);
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
