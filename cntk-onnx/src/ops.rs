//! CNTK's primitive operation codes (`PrimitiveOpType.h`), by name.

/// Names indexed by `CNTK::PrimitiveOpType`; the saved models store only the number.
const NAMES: &[&str] = &[
    "Negate",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "Exp",
    "Log",
    "Sqrt",
    "Floor",
    "Abs",
    "Reciprocal",
    "Softmax",
    "Hardmax",
    "TransposeAxes",
    "Where",
    "Slice",
    "Dropout",
    "Reshape",
    "Pooling",
    "SumAll",
    "Plus",
    "Minus",
    "ElementTimes",
    "Equal",
    "NotEqual",
    "Less",
    "LessEqual",
    "Greater",
    "GreaterEqual",
    "PackedIndex",
    "GatherPacked",
    "ScatterPacked",
    "Times",
    "TransposeTimes",
    "Convolution",
    "SquaredError",
    "CrossEntropyWithSoftmax",
    "ClassificationError",
    "PastValue",
    "FutureValue",
    "ReduceElements",
    "BatchNormalization",
    "Clip",
    "Select",
    "Splice",
    "Combine",
    "RandomSample",
    "RandomSampleInclusionFrequency",
    "ROIPooling",
    "Logistic",
    "OptimizedRNNStack",
    "ReconcileDynamicAxis",
    "LogSoftmax",
    "LogPlus",
    "CosDistance",
    "Sin",
    "Cos",
    "Pass",
    "Block",
    "Unpooling",
    "LambdaRank",
    "NDCG",
    "EditDistanceError",
    "NoOp",
    "LabelsToGraph",
    "StopGradient",
    "ELU",
    "ForwardBackward",
    "CosDistanceWithNegativeSamples",
    "OneHot",
    "Pow",
    "ToSequence",
    "ToSequenceLike",
    "UnpackSequence",
    "Assign",
    "Gather",
    "StableSigmoid",
    "RandomDistribution",
    "Sinh",
    "Cosh",
    "UnpackBatch",
    "ToBatch",
    "Asin",
    "Acos",
    "Pad",
    "Crop",
    "Atanh",
    "Asinh",
    "TopK",
    "Squeeze",
    "ConstantOp",
    "LatticeSequenceWithSoftmax",
    "Cast",
    "EyeLikeOp",
    "CustomProxyOp",
    "StraightThrough",
];

pub const NEGATE: u64 = 0;
pub const SIGMOID: u64 = 1;
pub const TANH: u64 = 2;
pub const RELU: u64 = 3;
pub const EXP: u64 = 4;
pub const LOG: u64 = 5;
pub const SQRT: u64 = 6;
pub const FLOOR: u64 = 7;
pub const ABS: u64 = 8;
pub const RECIPROCAL: u64 = 9;
pub const SOFTMAX: u64 = 10;
pub const HARDMAX: u64 = 11;
pub const TRANSPOSE_AXES: u64 = 12;
pub const SLICE: u64 = 14;
pub const DROPOUT: u64 = 15;
pub const RESHAPE: u64 = 16;
pub const POOLING: u64 = 17;
pub const PLUS: u64 = 19;
pub const MINUS: u64 = 20;
pub const ELEMENT_TIMES: u64 = 21;
pub const EQUAL: u64 = 22;
pub const NOT_EQUAL: u64 = 23;
pub const LESS: u64 = 24;
pub const LESS_EQUAL: u64 = 25;
pub const GREATER: u64 = 26;
pub const GREATER_EQUAL: u64 = 27;
pub const TIMES: u64 = 31;
pub const CONVOLUTION: u64 = 33;
pub const REDUCE_ELEMENTS: u64 = 39;
pub const BATCH_NORMALIZATION: u64 = 40;
pub const CLIP: u64 = 41;
pub const SELECT: u64 = 42;
pub const SPLICE: u64 = 43;
pub const COMBINE: u64 = 44;
pub const RECONCILE_DYNAMIC_AXIS: u64 = 50;
pub const LOG_SOFTMAX: u64 = 51;
pub const LOG_PLUS: u64 = 52;
pub const SIN: u64 = 54;
pub const COS: u64 = 55;
pub const PASS: u64 = 56;
pub const NO_OP: u64 = 62;
pub const STOP_GRADIENT: u64 = 64;
pub const ELU: u64 = 65;
pub const POW: u64 = 69;
pub const STABLE_SIGMOID: u64 = 75;
pub const SINH: u64 = 77;
pub const COSH: u64 = 78;
pub const ASIN: u64 = 81;
pub const ACOS: u64 = 82;
pub const PAD: u64 = 83;
pub const ATANH: u64 = 85;
pub const ASINH: u64 = 86;
pub const SQUEEZE: u64 = 88;

/// Operations that score a model against labels (training criteria and metrics): never a
/// classifier's output, so a checkpoint's root `Combine` drops them.
pub const CRITERIA: &[u64] = &[34, 35, 36, 48, 59, 60, 61, 66, 67, 90];

/// Operations over sequences (recurrences, sequence axes): a sequence model, not an image
/// classifier, which is out of the importer's scope.
pub const SEQUENCE: &[u64] = &[13, 28, 29, 30, 37, 38, 49, 70, 71, 72];

/// The operations the importer lowers to ONNX.
pub const SUPPORTED: &[u64] = &[
    NEGATE,
    SIGMOID,
    TANH,
    RELU,
    EXP,
    LOG,
    SQRT,
    FLOOR,
    ABS,
    RECIPROCAL,
    SOFTMAX,
    HARDMAX,
    TRANSPOSE_AXES,
    SLICE,
    DROPOUT,
    RESHAPE,
    POOLING,
    PLUS,
    MINUS,
    ELEMENT_TIMES,
    EQUAL,
    NOT_EQUAL,
    LESS,
    LESS_EQUAL,
    GREATER,
    GREATER_EQUAL,
    TIMES,
    CONVOLUTION,
    REDUCE_ELEMENTS,
    BATCH_NORMALIZATION,
    CLIP,
    SELECT,
    SPLICE,
    COMBINE,
    RECONCILE_DYNAMIC_AXIS,
    LOG_SOFTMAX,
    LOG_PLUS,
    SIN,
    COS,
    PASS,
    NO_OP,
    STOP_GRADIENT,
    ELU,
    POW,
    STABLE_SIGMOID,
    SINH,
    COSH,
    ASIN,
    ACOS,
    PAD,
    ATANH,
    ASINH,
    SQUEEZE,
];

/// The names of [`SUPPORTED`], for error messages.
pub fn supported_names() -> String {
    let mut names: Vec<String> = SUPPORTED.iter().map(|&op| name(op)).collect();
    names.sort();
    names.join(", ")
}

pub fn name(op: u64) -> String {
    usize::try_from(op)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("unknown operation #{op}"), |n| (*n).to_owned())
}
