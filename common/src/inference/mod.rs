//! Scoring with ONNX Runtime: one session per process, one run per partition.

pub mod quantize;
pub mod runtime;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::dataset::{CHANNELS, HEIGHT, WIDTH};

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{0}")]
    Runtime(String),
    #[error("model {model} could not be loaded by ONNX Runtime: {reason}")]
    InvalidModel { model: String, reason: String },
    #[error(
        "model {model} does not fit CIFAR images: {reason}. The model must take one float tensor \
         [N, 3, 32, 32] (BGR, mean image subtracted) and return one float tensor [N, classes]"
    )]
    DoesNotFit { model: String, reason: String },
    #[error("scoring failed: {0}")]
    Run(String),
}

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provider {
    /// CUDA when the build has it and a GPU answers, else CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA or fail.
    Cuda,
}

/// How sessions are built. Part of every binary's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct InferenceOptions {
    /// Threads ONNX Runtime uses inside one operator; 0 lets it use every core.
    #[arg(long, env = "INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Execution provider.
    #[arg(long, env = "EXECUTION_PROVIDER", value_enum, default_value_t = Provider::Auto)]
    pub provider: Provider,
}

impl Default for InferenceOptions {
    fn default() -> Self {
        Self {
            intra_threads: 0,
            provider: Provider::Auto,
        }
    }
}

/// A loaded model, ready to score batches of preprocessed images.
#[derive(Debug)]
pub struct Scorer {
    session: Session,
    input: String,
    classes: usize,
    provider: &'static str,
}

impl Scorer {
    /// Builds a session for the ONNX model in `model` and checks that it takes CIFAR images.
    pub fn load(
        model: &[u8],
        model_name: &str,
        options: &InferenceOptions,
    ) -> Result<Self, InferenceError> {
        let environment = runtime::environment()?;
        let invalid = |e: &dyn std::fmt::Display| InferenceError::InvalidModel {
            model: model_name.into(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(environment)
            .and_then(|b| {
                b.with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(Into::into)
            })
            .map_err(|e| InferenceError::Runtime(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(|e| InferenceError::Runtime(e.to_string()))?;
        }
        let (builder, provider) = providers::register(builder, options.provider)?;
        let mut builder = builder;
        let session = builder.commit_from_memory(model).map_err(|e| invalid(&e))?;
        let (input, classes) =
            check_signature(&session).map_err(|reason| InferenceError::DoesNotFit {
                model: model_name.into(),
                reason,
            })?;
        tracing::info!(model = model_name, provider, classes, "model loaded");
        Ok(Self {
            session,
            input,
            classes,
            provider,
        })
    }

    /// Number of classes the model scores.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Scores `images` preprocessed images laid out `[N, 3, 32, 32]` in `input`, and writes
    /// `N * classes` logits to `logits` (cleared first).
    pub fn score(
        &mut self,
        input: &[f32],
        images: usize,
        logits: &mut Vec<f32>,
    ) -> Result<(), InferenceError> {
        let run = |e: ort::Error| InferenceError::Run(e.to_string());
        let tensor =
            TensorRef::from_array_view(([images, CHANNELS, HEIGHT, WIDTH], input)).map_err(run)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(run)?;
        let (shape, values) = outputs[0].try_extract_tensor::<f32>().map_err(run)?;
        if values.len() != images * self.classes {
            return Err(InferenceError::Run(format!(
                "model returned shape {shape:?} for {images} images"
            )));
        }
        logits.clear();
        logits.extend_from_slice(values);
        Ok(())
    }
}

/// Returns the input name and the number of classes, or why the model does not fit.
fn check_signature(session: &Session) -> Result<(String, usize), String> {
    let [input] = session.inputs() else {
        return Err(format!("it has {} inputs", session.inputs().len()));
    };
    let Some(output) = session.outputs().first() else {
        return Err("it has no outputs".into());
    };
    let expect_float = |what: &str, ty: &ValueType| match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Ok(shape.to_vec()),
        other => Err(format!("its {what} is {other:?}, not a float tensor")),
    };
    let input_shape = expect_float("input", input.dtype())?;
    let wanted = [CHANNELS as i64, HEIGHT as i64, WIDTH as i64];
    if input_shape.len() != 4 || input_shape[1..] != wanted {
        return Err(format!(
            "its input {} has shape {input_shape:?}, not [N, 3, 32, 32]",
            input.name()
        ));
    }
    let output_shape = expect_float("output", output.dtype())?;
    match output_shape.as_slice() {
        [_, classes] if *classes > 0 => Ok((input.name().to_owned(), *classes as usize)),
        other => Err(format!(
            "its output {} has shape {other:?}, not [N, classes]",
            output.name()
        )),
    }
}

mod providers {
    use ort::session::builder::SessionBuilder;

    use super::{InferenceError, Provider};

    /// Registers the execution provider `wanted` asks for and says which one will run.
    pub(super) fn register(
        builder: SessionBuilder,
        wanted: Provider,
    ) -> Result<(SessionBuilder, &'static str), InferenceError> {
        match wanted {
            Provider::Cpu => Ok((builder, "CPU")),
            Provider::Auto | Provider::Cuda => cuda(builder, wanted),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        mut builder: SessionBuilder,
        wanted: Provider,
    ) -> Result<(SessionBuilder, &'static str), InferenceError> {
        use ort::ep::{CUDA, ExecutionProvider};
        let cuda = CUDA::default();
        let why_not = if !gpu_present() {
            "no NVIDIA GPU driver found (/proc/driver/nvidia/version)".to_owned()
        } else if !cuda.is_available().unwrap_or(false) {
            "this ONNX Runtime library was built without CUDA (install the onnxruntime-gpu build)"
                .to_owned()
        } else {
            match cuda.register(&mut builder) {
                Ok(()) => return Ok((builder, "CUDA")),
                Err(e) => format!("CUDA could not be started: {e}"),
            }
        };
        if wanted == Provider::Cuda {
            return Err(InferenceError::Runtime(format!(
                "the CUDA provider was asked for, but {why_not}"
            )));
        }
        tracing::info!("using the CPU provider: {why_not}");
        Ok((builder, "CPU"))
    }

    #[cfg(feature = "cuda")]
    fn gpu_present() -> bool {
        std::path::Path::new("/proc/driver/nvidia/version").exists()
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda(
        builder: SessionBuilder,
        wanted: Provider,
    ) -> Result<(SessionBuilder, &'static str), InferenceError> {
        if wanted == Provider::Cuda {
            return Err(InferenceError::Runtime(
                "the CUDA provider was asked for, but this build was compiled without the `cuda` feature".into(),
            ));
        }
        Ok((builder, "CPU"))
    }
}
