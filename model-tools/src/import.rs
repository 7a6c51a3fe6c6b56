//! A model file, read as ONNX: CNTK models are converted here.

use cntk_onnx::Format;
use cntk_onnx::proto::onnx::ModelProto;
use fleet_spec::{Outputs, sha256_hex};
use prost::Message;

/// Why a model file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A CNTK model the importer refuses.
    #[error(transparent)]
    Cntk(#[from] cntk_onnx::ImportError),
    /// Neither a CNTK nor an ONNX file.
    #[error("{0} is neither a CNTK model (v1 or v2) nor an ONNX model")]
    UnknownFormat(String),
    /// A file that looks like ONNX but does not parse.
    #[error(
        "{file} is not an ONNX model: {reason}. Export it again, or check that the file was \
         copied whole"
    )]
    NotOnnx {
        /// The file's name.
        file: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// What a model file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// ONNX, taken as it is.
    Onnx,
    /// CNTK 1.x ("BCN" binary, BrainScript), converted here.
    CntkV1,
    /// CNTK 2.x protobuf, converted here.
    CntkV2,
}

impl SourceFormat {
    /// The name recorded in a model's spec.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Onnx => "onnx",
            SourceFormat::CntkV1 => "cntk-v1",
            SourceFormat::CntkV2 => "cntk-v2",
        }
    }
}

/// A model ready to stage.
#[derive(Debug, Clone)]
pub struct ImportedModel {
    /// The ONNX model.
    pub onnx: Vec<u8>,
    /// What the file was.
    pub format: SourceFormat,
    /// SHA-256 of the file as given.
    pub source_sha256: String,
    /// SHA-256 of the ONNX model.
    pub onnx_sha256: String,
    /// How it was obtained, for the user (`converted from CNTK v2: 120 nodes, ...`).
    pub description: String,
}

/// Reads `bytes` (a file named `file_name`) as a model; `options` apply to a CNTK model.
pub fn import(
    bytes: Vec<u8>,
    file_name: &str,
    options: &cntk_onnx::Options,
) -> Result<ImportedModel, ImportError> {
    let source_sha256 = sha256_hex(&bytes);
    let format = match cntk_onnx::sniff(&bytes) {
        Format::CntkV1 => Some(SourceFormat::CntkV1),
        Format::CntkV2 => Some(SourceFormat::CntkV2),
        Format::Onnx => None,
        Format::Unknown => {
            // A file named as ONNX is explained as ONNX; any other by the CNTK importer (a
            // damaged model, not a model at all, ...).
            if file_name.to_ascii_lowercase().ends_with(".onnx") {
                return Err(ImportError::NotOnnx {
                    file: file_name.into(),
                    reason: onnx_problem(&bytes),
                });
            }
            cntk_onnx::import_with(&bytes, file_name, options)?;
            return Err(ImportError::UnknownFormat(file_name.into()));
        }
    };
    let (onnx, format, description) = match format {
        Some(format) => {
            let imported = cntk_onnx::import_with(&bytes, file_name, options)?;
            let description = format!(
                "converted from {} (output {}): {} nodes, {} weights",
                imported.source_format, imported.output, imported.nodes, imported.parameters
            );
            (imported.onnx, format, description)
        }
        None => (bytes, SourceFormat::Onnx, "ONNX".to_owned()),
    };
    Ok(ImportedModel {
        onnx_sha256: sha256_hex(&onnx),
        onnx,
        format,
        source_sha256,
        description,
    })
}

/// Why `bytes` are not an ONNX model.
fn onnx_problem(bytes: &[u8]) -> String {
    match ModelProto::decode(bytes) {
        Err(e) => format!("its bytes are not an ONNX protobuf ({e})"),
        Ok(model) if model.ir_version == 0 => "it names no ONNX IR version".into(),
        Ok(_) => "it holds no graph of operators".into(),
    }
}

/// What makes a model's classifier output, as far as its scores go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A Softmax node: a probability distribution over the classes.
    Softmax,
    /// A Sigmoid node: each class's probability on its own (a multi-label classifier).
    Sigmoid,
    /// Anything else: logits.
    Logits,
}

impl Head {
    /// What the output row holds, for the spec.
    pub fn outputs(self) -> Outputs {
        match self {
            Head::Softmax | Head::Sigmoid => Outputs::Probabilities,
            Head::Logits => Outputs::Logits,
        }
    }
}

/// What node makes the model's output `output`.
pub fn head_of(onnx: &[u8], output: &str) -> Head {
    let Ok(model) = ModelProto::decode(onnx) else {
        return Head::Logits;
    };
    let Some(graph) = model.graph else {
        return Head::Logits;
    };
    let op = graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == output))
        .map(|n| n.op_type.as_str());
    match op {
        Some("Softmax") => Head::Softmax,
        Some("Sigmoid") => Head::Sigmoid,
        _ => Head::Logits,
    }
}
