#![warn(missing_docs)]
//! Scoring image classifiers with ONNX Runtime.
//!
//! - [`runtime`]: finding and loading the ONNX Runtime library.
//! - [`Scorer`]: a model checked to be an image classifier, its [`Signature`] read from the
//!   model itself (input layout and size, class count, float32 or float16 at its edges), and
//!   the sessions that run it: one, or on a CPU for a model with a fixed batch, one per core
//!   running at once.
//!
//! Errors say whose fault they are: [`InferenceError::Host`] is this machine's (no library,
//! no GPU), never the model's or the data's.

pub mod runtime;

use fleet_spec::Layout;
use half::f16;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

/// Why a model cannot be loaded or run; [`InferenceError::Host`] is the machine's fault.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// This host cannot run models: the library is missing, or the provider asked for is not
    /// there. Not the model's fault.
    #[error("{message}")]
    Host {
        /// What is missing, and what to do.
        message: String,
        /// What ONNX Runtime said, where it said something.
        #[source]
        source: Option<ort::Error>,
    },
    /// ONNX Runtime refused the model.
    #[error("model {model} could not be loaded by ONNX Runtime")]
    InvalidModel {
        /// The model's name.
        model: String,
        /// What ONNX Runtime said.
        #[source]
        source: ort::Error,
    },
    /// The model is not an image classifier of a shape this product scores.
    #[error(
        "model {model} is not an image classifier this product can score: {reason}. It must take \
         one float tensor [N, C, H, W] or [N, H, W, C] with C 1 or 3, and return one float \
         tensor [N, classes]"
    )]
    DoesNotFit {
        /// The model's name.
        model: String,
        /// What does not fit.
        reason: String,
    },
    /// The model's input size is free and none was given.
    #[error(
        "model {model} leaves the height and width of its input {input} free ({shape:?}; -1: \
         any size): stage it with `--input-size HEIGHTxWIDTH`, the size it was trained at"
    )]
    NeedsSize {
        /// The model's name.
        model: String,
        /// Its input's name.
        input: String,
        /// Its input's shape (-1 for a free dimension).
        shape: Vec<i64>,
    },
    /// The size asked for is not the one the model takes.
    #[error(
        "model {model} takes images of {fixed} at its input {input}, not the {asked} asked for: \
         leave out --input-size, or give the size the model takes"
    )]
    WrongSize {
        /// The model's name.
        model: String,
        /// Its input's name.
        input: String,
        /// The size the model takes.
        fixed: String,
        /// The size asked for.
        asked: InputSize,
    },
    /// The model has several outputs and the spec names none.
    #[error(
        "model {model} has several outputs ({outputs}): stage it with `--output-node NAME`, \
         naming the classifier's"
    )]
    NeedsOutput {
        /// The model's name.
        model: String,
        /// Its outputs' names.
        outputs: String,
    },
    /// A model call failed.
    #[error("scoring failed{detail}")]
    Run {
        /// What was wrong with the call's output, if that was it (empty, or starting with
        /// `: `).
        detail: String,
        /// What ONNX Runtime said, if it failed.
        #[source]
        source: Option<ort::Error>,
    },
}

impl InferenceError {
    /// A fault of the host, said in `message` alone.
    pub fn host(message: impl Into<String>) -> Self {
        InferenceError::Host {
            message: message.into(),
            source: None,
        }
    }

    /// A fault of the host: `message`, because ONNX Runtime said `source`.
    fn host_from(message: &str, source: ort::Error) -> Self {
        InferenceError::Host {
            message: message.into(),
            source: Some(source),
        }
    }
}

/// The height and width fed to a model whose input leaves them free (`224x224`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize {
    /// Height, in pixels.
    pub height: usize,
    /// Width, in pixels.
    pub width: usize,
}

impl std::str::FromStr for InputSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let side = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
        match s.split_once(['x', 'X']).map(|(h, w)| (side(h), side(w))) {
            Some((Some(height), Some(width))) => Ok(Self { height, width }),
            _ => Err(format!("`{s}` is not a size like 224x224 (height x width)")),
        }
    }
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

/// What a model leaves open, settled by its spec: the size fed to an input whose height and
/// width are free, which output is the classifier's when there are several, and which are
/// read as embeddings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    /// Where the model fixes its input size, this must agree when given.
    pub size: Option<InputSize>,
    /// The classifier's output, by name; `None`: the model's only output.
    pub output: Option<String>,
    /// The model has no classifier: only its embeddings are read (with none named, its only
    /// output is the embedding).
    pub no_classes: bool,
    /// Outputs read as vectors, by name, each flattened after the batch axis: a pooled
    /// feature map `[N, 2048, 1, 1]` is 2,048 values an image.
    pub embeddings: Vec<String>,
}

impl Fit {
    /// What `spec` settles of its model: the size its images are prepared at, its classifier's
    /// output, and its embeddings.
    pub fn of(spec: &fleet_spec::ModelSpec) -> Self {
        Self {
            size: Some(InputSize {
                height: spec.height as usize,
                width: spec.width as usize,
            }),
            output: spec.output.clone(),
            no_classes: !spec.has_classes(),
            embeddings: spec.embeddings.iter().map(|e| e.tensor.clone()).collect(),
        }
    }
}

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// CUDA when the build has it and a GPU answers, else CPU.
    Auto,
    /// The CPU, even where a GPU is.
    Cpu,
    /// CUDA or fail.
    Cuda,
}

/// How sessions are built. Part of every binary's configuration that scores.
#[derive(Debug, Clone, clap::Args)]
pub struct InferenceOptions {
    /// Cores one model uses; 0: every core. They go to threads inside an operator, or, with
    /// several runs (--model-runs), are shared among the runs.
    #[arg(long, env = "INTRA_OP_THREADS", default_value_t = 0, value_parser = at_most::<1024>)]
    pub intra_threads: usize,
    /// Sessions of one model run at once, on a share of the cores each; 0: on a CPU, one per
    /// core for a model with a fixed batch (a run of one image keeps several cores busy
    /// poorly), else one (a large batch keeps every core busy in one run). Each session holds
    /// its own copy of the model's weights.
    #[arg(long, env = "MODEL_RUNS", default_value_t = 0, value_parser = at_most::<256>)]
    pub model_runs: usize,
    /// Execution provider.
    #[arg(long, env = "EXECUTION_PROVIDER", value_enum, default_value_t = Provider::Auto)]
    pub provider: Provider,
}

/// A count up to `MAX`: a thread or session count beyond any machine's cores would only stall
/// the host creating them.
fn at_most<const MAX: usize>(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= MAX => Ok(n),
        Ok(n) => Err(format!("{n} is more than {MAX}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One output a call reads, per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSignature {
    /// Its name in the model.
    pub name: String,
    /// Values per image: its dimensions after the batch axis, multiplied.
    pub len: usize,
    /// The element type it holds (float16 values are widened).
    pub precision: Precision,
}

/// What a model takes and returns, read from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Name of the image input.
    pub input: String,
    /// Where the channel axis is in the input.
    pub layout: Layout,
    /// 1 or 3.
    pub channels: usize,
    /// Input height, in pixels.
    pub height: usize,
    /// Input width, in pixels.
    pub width: usize,
    /// The classifier's output (its length is the class count), unless the model has none.
    pub classifier: Option<OutputSignature>,
    /// The outputs read as vectors, in the order asked for.
    pub embeddings: Vec<OutputSignature>,
    /// The images per call the model was exported for, when its batch dimension is fixed
    /// (`torch.onnx.export` without dynamic axes leaves 1); `None` when it takes any number.
    pub fixed_batch: Option<usize>,
    /// The element type of the image input.
    pub input_precision: Precision,
}

/// The float element types a model's input and output may hold. Preprocessing always makes
/// float32 values; a float16 input gets them rounded to nearest (as a cast does), and a
/// float16 output is widened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `float`.
    Float32,
    /// `float16`.
    Float16,
}

impl Signature {
    /// Values in one input image.
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The model's classes: the classifier's length, 0 without one.
    pub fn classes(&self) -> usize {
        self.classifier.as_ref().map_or(0, |c| c.len)
    }

    /// The outputs a call reads, in the order of an image's row: the classifier's first.
    pub fn outputs(&self) -> impl Iterator<Item = &OutputSignature> {
        self.classifier.iter().chain(&self.embeddings)
    }

    /// Values of one image's row of outputs ([`Scorer::score`]): its class scores, then each
    /// embedding.
    pub fn row_len(&self) -> usize {
        self.outputs().map(|o| o.len).sum()
    }

    /// The input tensor's shape for `images` images.
    fn shape(&self, images: usize) -> [usize; 4] {
        match self.layout {
            Layout::Nchw => [images, self.channels, self.height, self.width],
            Layout::Nhwc => [images, self.height, self.width, self.channels],
        }
    }
}

/// A loaded model, ready to score batches of preprocessed images.
#[derive(Debug)]
pub struct Scorer {
    /// At least one; a model with a fixed batch has its batches shared among them.
    runs: Vec<Run>,
    signature: Signature,
    provider: &'static str,
}

/// One session of the model.
#[derive(Debug)]
struct Run {
    session: Session,
    /// The input in half precision, for a float16 model: reused from call to call.
    half_input: Vec<f16>,
}

/// The most memory the copies of one model's weights held by its extra runs may take: beyond
/// it, a model scores with fewer runs than cores.
const RUN_COPIES_BYTES: usize = 1 << 30;

impl Scorer {
    /// Checks, before any work is taken, that this host can score as `options` ask: the
    /// library loads and the provider asked for can be registered (`--provider cuda` on a host
    /// without a usable GPU fails here, not on the first partition). Returns the provider
    /// sessions will run on.
    pub fn check_host(options: &InferenceOptions) -> Result<&'static str, InferenceError> {
        let builder = Session::builder(runtime::environment()?)
            .map_err(|e| InferenceError::host_from("ONNX Runtime cannot make a session", e))?;
        let (_, provider) = providers::register(builder, options.provider)?;
        Ok(provider)
    }

    /// Builds a session for the ONNX model in `model` and reads its signature. The model must
    /// leave nothing open (one output, a fixed input size); see [`Scorer::load_fitted`].
    pub fn load(
        model: &[u8],
        model_name: &str,
        options: &InferenceOptions,
    ) -> Result<Self, InferenceError> {
        Self::load_fitted(model, model_name, options, &Fit::default())
    }

    /// [`Scorer::load`] for a model that may leave its input size or its classifier's output
    /// open: `fit` settles them.
    pub fn load_fitted(
        model: &[u8],
        model_name: &str,
        options: &InferenceOptions,
        fit: &Fit,
    ) -> Result<Self, InferenceError> {
        let cores = match options.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        };
        // Threads per session for `runs` runs: ONNX Runtime's own choice (every physical core)
        // for one run when no count was given.
        let threads = |runs: usize| match (options.intra_threads, runs) {
            (0, 1) => None,
            _ => Some((cores / runs).max(1)),
        };
        let asked = options.model_runs.max(1);
        let (mut first, provider) = session(model, model_name, options, threads(asked))?;
        let signature = read_signature(&first, model_name, fit)?;
        let mut signature = signature;
        settle_lengths(&mut first, &mut signature, model_name)?;
        tracing::info!(model = model_name, provider, classes = signature.classes(), embeddings = ?signature.embeddings.iter().map(|e| (&e.name, e.len)).collect::<Vec<_>>(), input = ?signature.shape(1), "model loaded");
        let runs = match options.model_runs {
            0 if provider == "CPU" && signature.fixed_batch.is_some() => {
                cores.min(RUN_COPIES_BYTES / model.len().max(1)).max(1)
            }
            0 => 1,
            runs => runs,
        };
        if let Some(fixed) = signature.fixed_batch {
            tracing::info!(
                model = model_name,
                fixed,
                runs,
                "the model takes a fixed number of images per call: they are scored that many at a time, in runs at once"
            );
        }
        // The first session has its threads for `asked` runs: kept if that is the count.
        let mut sessions = if runs == asked {
            vec![first]
        } else {
            Vec::new()
        };
        while sessions.len() < runs {
            sessions.push(session(model, model_name, options, threads(runs))?.0);
        }
        Ok(Self {
            runs: sessions
                .into_iter()
                .map(|session| Run {
                    session,
                    half_input: Vec::new(),
                })
                .collect(),
            signature,
            provider,
        })
    }

    /// What the model takes and returns.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Number of classes the model scores (0 for a model with no classifier).
    pub fn classes(&self) -> usize {
        self.signature.classes()
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Sessions that run at once (see [`InferenceOptions::model_runs`]).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Scores `images` preprocessed images laid out as the signature says in `input`, and
    /// writes each image's row of outputs ([`Signature::row_len`] values: its class scores,
    /// then each embedding) to `outputs` (cleared first). A model with a fixed batch size is
    /// run as often as it takes, its runs at once, the last call filled up with blank images
    /// whose outputs are dropped.
    pub fn score(
        &mut self,
        input: &[f32],
        images: usize,
        outputs: &mut Vec<f32>,
    ) -> Result<(), InferenceError> {
        let signature = &self.signature;
        let image_len = signature.input_len();
        assert_eq!(input.len(), images * image_len, "{images} images of input");
        let row = signature.row_len();
        outputs.clear();
        outputs.resize(images * row, 0.0);
        let Some(fixed) = signature.fixed_batch.filter(|&fixed| fixed != images) else {
            return self.runs[0].run(signature, input, images, outputs);
        };
        let batches: Vec<(&[f32], &mut [f32])> = input
            .chunks(fixed * image_len)
            .zip(outputs.chunks_mut(fixed * row))
            .collect();
        if self.runs.len() == 1 || batches.len() == 1 {
            return batches.into_iter().try_for_each(|(input, out)| {
                self.runs[0].run_padded(signature, fixed, input, out)
            });
        }
        // Batch i goes to run i % runs: the batches cost the same.
        let mut shares: Vec<Vec<(&[f32], &mut [f32])>> =
            self.runs.iter().map(|_| Vec::new()).collect();
        let runs = shares.len();
        for (i, batch) in batches.into_iter().enumerate() {
            shares[i % runs].push(batch);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .runs
                .iter_mut()
                .zip(shares)
                .map(|(run, share)| {
                    scope.spawn(move || {
                        share.into_iter().try_for_each(|(input, out)| {
                            run.run_padded(signature, fixed, input, out)
                        })
                    })
                })
                .collect();
            // Every run is joined by the scope; the first error is the call's.
            handles.into_iter().try_for_each(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        })
    }
}

/// A session for `model` with `threads` threads inside an operator (ONNX Runtime's choice if
/// none), on the provider `options` asks for, and that provider's name.
fn session(
    model: &[u8],
    model_name: &str,
    options: &InferenceOptions,
    threads: Option<usize>,
) -> Result<(Session, &'static str), InferenceError> {
    let host = |e: ort::Error| InferenceError::host_from("ONNX Runtime cannot make a session", e);
    let mut builder = Session::builder(runtime::environment()?)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::All)
                .map_err(Into::into)
        })
        .map_err(host)?;
    if let Some(threads) = threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| host(e.into()))?;
    }
    let (mut builder, provider) = providers::register(builder, options.provider)?;
    let session = builder
        .commit_from_memory(model)
        .map_err(|e| InferenceError::InvalidModel {
            model: model_name.into(),
            source: e,
        })?;
    Ok((session, provider))
}

impl Run {
    /// [`Run::run`] for `input` of at most the model's fixed batch `fixed`: a short last batch
    /// is filled up with blank images, whose outputs are dropped.
    fn run_padded(
        &mut self,
        signature: &Signature,
        fixed: usize,
        input: &[f32],
        out: &mut [f32],
    ) -> Result<(), InferenceError> {
        let real = input.len() / signature.input_len();
        if real == fixed {
            return self.run(signature, input, fixed, out);
        }
        let mut padded = input.to_vec();
        padded.resize(fixed * signature.input_len(), 0.0);
        let mut padded_out = vec![0.0; fixed * signature.row_len()];
        self.run(signature, &padded, fixed, &mut padded_out)?;
        out.copy_from_slice(&padded_out[..out.len()]);
        Ok(())
    }

    /// One session run over `images` images; writes their outputs into `out`.
    fn run(
        &mut self,
        signature: &Signature,
        input: &[f32],
        images: usize,
        out: &mut [f32],
    ) -> Result<(), InferenceError> {
        let run = |e: ort::Error| InferenceError::Run {
            detail: String::new(),
            source: Some(e),
        };
        let shape = signature.shape(images);
        let result = match signature.input_precision {
            Precision::Float32 => {
                let tensor = TensorRef::from_array_view((shape, input)).map_err(run)?;
                self.session
                    .run(ort::inputs![signature.input.as_str() => tensor])
                    .map_err(run)?
            }
            Precision::Float16 => {
                self.half_input.clear();
                self.half_input
                    .extend(input.iter().map(|&v| f16::from_f32(v)));
                let tensor =
                    TensorRef::from_array_view((shape, self.half_input.as_slice())).map_err(run)?;
                self.session
                    .run(ort::inputs![signature.input.as_str() => tensor])
                    .map_err(run)?
            }
        };
        // Each output's values go to their place in each image's row.
        let row = signature.row_len();
        debug_assert_eq!(out.len(), images * row);
        let mut offset = 0;
        for output in signature.outputs() {
            let value = &result[output.name.as_str()];
            let scatter = |out: &mut [f32], values: &[f32]| {
                for (image, values) in values.chunks_exact(output.len).enumerate() {
                    out[image * row + offset..][..output.len].copy_from_slice(values);
                }
            };
            let (shape, returned) = match output.precision {
                Precision::Float32 => {
                    let (shape, values) = value.try_extract_tensor::<f32>().map_err(run)?;
                    if values.len() == images * output.len {
                        scatter(out, values);
                    }
                    (shape.to_vec(), values.len())
                }
                Precision::Float16 => {
                    let (shape, values) = value.try_extract_tensor::<f16>().map_err(run)?;
                    if values.len() == images * output.len {
                        let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
                        scatter(out, &wide);
                    }
                    (shape.to_vec(), values.len())
                }
            };
            if returned != images * output.len {
                return Err(InferenceError::Run {
                    detail: format!(
                        ": the model returned shape {shape:?} at {} for {images} images",
                        output.name
                    ),
                    source: None,
                });
            }
            offset += output.len;
        }
        Ok(())
    }
}

/// Settles the lengths of the outputs `signature` reads whose shapes the model leaves open
/// (an intermediate tensor exposed as an output often has no shape in the model): one run of
/// blank images on `session` says them.
fn settle_lengths(
    session: &mut Session,
    signature: &mut Signature,
    model: &str,
) -> Result<(), InferenceError> {
    if signature.outputs().all(|o| o.len > 0) {
        return Ok(());
    }
    let images = signature.fixed_batch.unwrap_or(1);
    let input = vec![0.0; images * signature.input_len()];
    let shape = signature.shape(images);
    let run = |e: ort::Error| InferenceError::Run {
        detail: " (a blank image, to learn an output's shape)".into(),
        source: Some(e),
    };
    let result = match signature.input_precision {
        Precision::Float32 => {
            let tensor = TensorRef::from_array_view((shape, input.as_slice())).map_err(run)?;
            session.run(ort::inputs![signature.input.as_str() => tensor])
        }
        Precision::Float16 => {
            let half: Vec<f16> = input.iter().map(|&v| f16::from_f32(v)).collect();
            let tensor = TensorRef::from_array_view((shape, half.as_slice())).map_err(run)?;
            session.run(ort::inputs![signature.input.as_str() => tensor])
        }
    }
    .map_err(run)?;
    let outputs = signature
        .classifier
        .iter_mut()
        .chain(&mut signature.embeddings);
    for output in outputs.filter(|o| o.len == 0) {
        let dims: Vec<i64> = result[output.name.as_str()]
            .shape()
            .iter()
            .copied()
            .collect();
        let len: i64 = dims.iter().skip(1).product();
        output.len = match dims.first() {
            Some(&n) if n == images as i64 && len > 0 => len as usize,
            _ => {
                return Err(InferenceError::DoesNotFit {
                    model: model.into(),
                    reason: format!(
                        "its output {} has shape {dims:?} for {images} images, not one row an image",
                        output.name
                    ),
                });
            }
        };
    }
    Ok(())
}

/// The model's signature, with what `fit` settles, or why it cannot be scored.
fn read_signature(session: &Session, model: &str, fit: &Fit) -> Result<Signature, InferenceError> {
    let does_not_fit = |reason: String| InferenceError::DoesNotFit {
        model: model.into(),
        reason,
    };
    let outputs = session.outputs();
    let names = || {
        outputs
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let position = |name: &str| {
        outputs
            .iter()
            .position(|o| o.name() == name)
            .ok_or_else(|| {
                does_not_fit(format!(
                    "it has no output {name} (its outputs: {})",
                    names()
                ))
            })
    };
    let only = || match outputs {
        [_] => Ok(0),
        [] => Err(does_not_fit("it has no outputs".into())),
        _ => Err(InferenceError::NeedsOutput {
            model: model.into(),
            outputs: names(),
        }),
    };
    let classifier = match (&fit.output, fit.no_classes) {
        (_, true) => None,
        (Some(name), false) => Some(position(name)?),
        (None, false) => Some(only()?),
    };
    let embeddings = match (fit.no_classes, fit.embeddings.is_empty()) {
        (true, true) => vec![only()?],
        _ => (fit.embeddings.iter())
            .map(|name| position(name))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let size = fit.size;
    let shape = shape(session, classifier, &embeddings).map_err(does_not_fit)?;
    let mut signature = shape.signature;
    let (model_height, model_width) = shape.height_width;
    if let Some(asked) = size {
        let agrees = |in_model: Option<usize>, asked: usize| in_model.is_none_or(|m| m == asked);
        if !agrees(model_height, asked.height) || !agrees(model_width, asked.width) {
            let side = |d: Option<usize>| d.map_or("any".to_owned(), |d| d.to_string());
            return Err(InferenceError::WrongSize {
                model: model.into(),
                input: signature.input,
                fixed: format!("{}x{}", side(model_height), side(model_width)),
                asked,
            });
        }
    }
    match (
        model_height.or(size.map(|s| s.height)),
        model_width.or(size.map(|s| s.width)),
    ) {
        (Some(height), Some(width)) => {
            (signature.height, signature.width) = (height, width);
            Ok(signature)
        }
        _ => Err(InferenceError::NeedsSize {
            model: model.into(),
            input: signature.input,
            shape: shape.dims,
        }),
    }
}

/// What [`shape`] reads: the signature with the height and width still to be
/// settled, and the model's own (`None` where it leaves them free).
struct InputShape {
    signature: Signature,
    height_width: (Option<usize>, Option<usize>),
    dims: Vec<i64>,
}

/// The model's input as an image model's, its classifier output (at `classifier`) as
/// `[N, classes]`, and its outputs at `embeddings` as one row of values an image, or why they
/// are not.
fn shape(
    session: &Session,
    classifier: Option<usize>,
    embeddings: &[usize],
) -> Result<InputShape, String> {
    let [input] = session.inputs() else {
        return Err(format!(
            "it has {} inputs ({})",
            session.inputs().len(),
            session
                .inputs()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let expect_float = |what: &str, name: &str, ty: &ValueType| match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Ok((shape.to_vec(), Precision::Float32)),
        ValueType::Tensor {
            ty: TensorElementType::Float16,
            shape,
            ..
        } => Ok((shape.to_vec(), Precision::Float16)),
        ValueType::Tensor { ty, .. } => Err(format!(
            "its {what} {name} holds {ty:?} values, not Float32 or Float16 (export it with \
             float {what}s; a cast inside the model keeps any other precision within)"
        )),
        _ => Err(format!("its {what} {name} is not a tensor")),
    };
    let (shape, input_precision) = expect_float("input", input.name(), input.dtype())?;
    let fixed = |d: i64| usize::try_from(d).ok().filter(|&d| d > 0);
    let fixed_batch = shape.first().and_then(|&n| fixed(n));
    // A side is a size, or -1 where the model takes any.
    let side = |d: i64| d == -1 || fixed(d).is_some();
    let (layout, channels, height, width) = match shape.as_slice() {
        [_, c, h, w] if matches!(c, 1 | 3) && side(*h) && side(*w) => (Layout::Nchw, *c, *h, *w),
        [_, h, w, c] if matches!(c, 1 | 3) && side(*h) && side(*w) => (Layout::Nhwc, *c, *h, *w),
        other => {
            return Err(format!(
                "its input {} has shape {other:?} (-1: any size)",
                input.name()
            ));
        }
    };
    let classifier = classifier
        .map(|at| {
            let output = &session.outputs()[at];
            let (shape, precision) = expect_float("output", output.name(), output.dtype())?;
            // [N, classes], or [N, classes, 1, 1] as some converters leave it.
            let classes = match shape.as_slice() {
                [_, rest @ ..] if !rest.is_empty() && rest.iter().all(|&d| d > 0) => {
                    let classes: i64 = rest.iter().product();
                    (rest.iter().filter(|&&d| d > 1).count() <= 1).then_some(classes as usize)
                }
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "its output {} has shape {shape:?}, not [N, classes]",
                    output.name()
                )
            })?;
            Ok::<_, String>(OutputSignature {
                name: output.name().to_owned(),
                len: classes,
                precision,
            })
        })
        .transpose()?;
    let embeddings = embeddings
        .iter()
        .map(|&at| {
            let output = &session.outputs()[at];
            let (shape, precision) = expect_float("output", output.name(), output.dtype())?;
            // Every value after the batch axis, when the model says how many; 0 (settled by a
            // run) where it leaves them open.
            let known = shape.iter().skip(1).all(|&d| d > 0);
            let len = if known && shape.len() > 1 {
                shape.iter().skip(1).product::<i64>() as usize
            } else {
                0
            };
            Ok::<_, String>(OutputSignature {
                name: output.name().to_owned(),
                len,
                precision,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InputShape {
        signature: Signature {
            input: input.name().to_owned(),
            layout,
            channels: channels as usize,
            // Settled by the caller: the model's, or the size asked for.
            height: 0,
            width: 0,
            classifier,
            embeddings,
            fixed_batch,
            input_precision,
        },
        height_width: (fixed(height), fixed(width)),
        dims: shape,
    })
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
        } else if !CUDA::is_available().unwrap_or(false) {
            "this ONNX Runtime library was built without CUDA (install the onnxruntime-gpu build)"
                .to_owned()
        } else {
            match cuda.register(&mut builder) {
                Ok(()) => return Ok((builder, "CUDA")),
                Err(e) => format!("CUDA could not be started: {e}"),
            }
        };
        if wanted == Provider::Cuda {
            return Err(InferenceError::host(format!(
                "the CUDA provider was asked for, but {why_not}"
            )));
        }
        tracing::warn!("using the CPU provider: {why_not}");
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
            return Err(InferenceError::host(
                "the CUDA provider was asked for, but this build was compiled without the `cuda` feature",
            ));
        }
        Ok((builder, "CPU"))
    }
}

#[cfg(test)]
mod tests {
    use super::InputSize;

    #[test]
    fn input_sizes_read_height_by_width() {
        let size: InputSize = "224x160".parse().unwrap();
        assert_eq!((size.height, size.width), (224, 160));
        assert_eq!(size.to_string(), "224x160");
        assert_eq!("32X32".parse::<InputSize>().unwrap().width, 32);
        for bad in ["224", "0x32", "x32", "axb", "32x-1"] {
            let e = bad.parse::<InputSize>().unwrap_err();
            assert!(e.contains("224x224"), "{bad}: {e}");
        }
    }
}
