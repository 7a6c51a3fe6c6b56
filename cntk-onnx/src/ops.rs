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
pub const DROPOUT: u64 = 15;
pub const RESHAPE: u64 = 16;
pub const POOLING: u64 = 17;
pub const PLUS: u64 = 19;
pub const MINUS: u64 = 20;
pub const ELEMENT_TIMES: u64 = 21;
pub const TIMES: u64 = 31;
pub const CONVOLUTION: u64 = 33;
pub const BATCH_NORMALIZATION: u64 = 40;
pub const SPLICE: u64 = 43;
pub const COMBINE: u64 = 44;
pub const PASS: u64 = 56;
pub const NO_OP: u64 = 62;
pub const STOP_GRADIENT: u64 = 64;
pub const ELU: u64 = 65;
pub const STABLE_SIGMOID: u64 = 75;

/// Operations that score a model against labels (training criteria and metrics): never a
/// classifier's output, so a checkpoint's root `Combine` drops them.
pub const CRITERIA: &[u64] = &[34, 35, 36, 48, 59, 60, 61, 66, 67, 90];

/// The operations the importer maps, for error messages.
pub const SUPPORTED: &str = "Convolution, Pooling (max, average), BatchNormalization, Times, Plus, \
     Minus, ElementTimes, ReLU, Sigmoid, Tanh, ELU, Softmax, Exp, Log, Sqrt, Abs, Negate, \
     Reciprocal, Floor, Reshape, Splice, Dropout, Combine, Pass, NoOp, StopGradient and blocks of these";

pub fn name(op: u64) -> String {
    usize::try_from(op)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("unknown operation #{op}"), |n| (*n).to_owned())
}
