use std::fmt;

/// Why a file could not be turned into ONNX.
///
/// Every variant is something the user can act on, so each message says what was wrong and,
/// where there is one, what to do instead. The file name is added by [`ImportError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// Neither a CNTK v2 `Dictionary` nor a v1 "BCN" file.
    #[error("not a CNTK model ({0})")]
    NotCntk(String),
    /// An ONNX file given to the importer.
    #[error("this is already an ONNX model; stage it as it is, no conversion needed")]
    AlreadyOnnx,
    /// A CNTK file that does not read as one: truncated, or inconsistent.
    #[error("malformed CNTK model: {0}")]
    Malformed(String),
    /// Every unsupported operation the output depends on, each with its count and uids.
    #[error(
        "the model uses operations the importer does not support: {found}; supported: {supported}"
    )]
    UnsupportedOps {
        /// The operations, each with its count and uids.
        found: String,
        /// The operations the importer lowers.
        supported: String,
    },
    /// A recurrent or sequence model: out of scope.
    #[error(
        "this is a sequence model ({found}): recurrent and sequence operations (LSTM, GRU, \
         PastValue, FutureValue, sequence axes) are out of scope; the importer converts \
         feed-forward image classifiers"
    )]
    SequenceModel {
        /// The sequence operations or axes found.
        found: String,
    },
    /// A v1 output that depends on node types the reader does not know.
    #[error(
        "the model's output depends on node types the importer does not support: {0}; \
         choose another output with --output-node NAME if the classifier does not need them"
    )]
    UnsupportedNodes(String),
    /// `--output-node` names no output of the model.
    #[error("the model has no output named {name}; its outputs: {available}")]
    NoSuchOutput {
        /// The name asked for.
        name: String,
        /// The outputs there are.
        available: String,
    },
    /// A supported operation used in a way the lowering does not map (an attribute, a
    /// geometry).
    #[error("{op} (uid {uid}) uses {what}, which the importer does not support")]
    UnsupportedUse {
        /// The operation.
        op: String,
        /// Its uid in the model.
        uid: String,
        /// What it uses.
        what: String,
    },
}

/// A failed import: the [`Problem`] and the file it was found in.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportError {
    /// The file's name.
    pub file: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

impl std::error::Error for ImportError {}

pub(crate) fn malformed(what: impl Into<String>) -> Problem {
    Problem::Malformed(what.into())
}
