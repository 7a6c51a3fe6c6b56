use std::fmt;

/// Why a file could not be turned into ONNX.
///
/// Every variant is something the user can act on, so each message says what was wrong and,
/// where there is one, what to do instead. The file name is added by [`ImportError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("not a CNTK model ({0})")]
    NotCntk(String),
    #[error("this is already an ONNX model; stage it as it is, no conversion needed")]
    AlreadyOnnx,
    #[error("malformed CNTK model: {0}")]
    Malformed(String),
    /// Every unsupported operation the output depends on, each with its count and uids.
    #[error(
        "the model uses operations the importer does not support: {found}; supported: {supported}"
    )]
    UnsupportedOps { found: String, supported: String },
    #[error(
        "this is a sequence model ({found}): recurrent and sequence operations (LSTM, GRU, \
         PastValue, FutureValue, sequence axes) are out of scope; the importer converts \
         feed-forward image classifiers"
    )]
    SequenceModel { found: String },
    #[error(
        "the model's output depends on node types the importer does not support: {0}; \
         choose another output with --output-node NAME if the classifier does not need them"
    )]
    UnsupportedNodes(String),
    #[error("the model has no output named {name}; its outputs: {available}")]
    NoSuchOutput { name: String, available: String },
    #[error("{op} (uid {uid}) uses {what}, which the importer does not support")]
    UnsupportedUse {
        op: String,
        uid: String,
        what: String,
    },
}

/// A failed import: the [`Problem`] and the file it was found in.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportError {
    pub file: String,
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
