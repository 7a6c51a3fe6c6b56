//! `bench`: measures the scoring fleet on the fixture and prints a Markdown table.
//!
//! ```sh
//! cargo build --release --bins && target/release/bench            # everything
//! target/release/bench --skip-fleet                                 # no RabbitMQ/Azurite
//! target/release/bench --scale 1000,5000,20000                      # the collector at scale
//! target/release/bench --embedded-images 1000000                    # one job of many images
//! ```
//!
//! Measured in one run: ONNX Runtime alone through `ort` at several batch sizes with the
//! worker's thread settings (the ceiling); one image per model call (the walkthrough's design);
//! the embedded job as a whole process; the fleet over RabbitMQ and Azurite with 1 and 2 worker
//! processes; peak RSS of each process; time to the first scored partition; a tarball holding
//! all six batches (60,000 images); the same 10,000 images as a folder of JPEG files: decoding
//! per core, the engine on the decoded tensors, the folder job embedded and over the fleet, and
//! Python peers scoring the same folder (PIL + ONNX Runtime, one process per core; Ray Data);
//! the fixtures' real photos decoded and prepared for a 224x224 model by each resize
//! convention, beside Pillow preparing them as torchvision does (`--only-photos` runs these
//! alone).
//! Job timings are whole processes, from start to exit. Each figure is the median of `--runs`
//! runs (3 by default).
//!
//! On a GPU (a build with `--features bench/cuda,producer/cuda,worker/cuda` and the CUDA build
//! of ONNX Runtime), `--provider cuda` runs the engine rows and every job on CUDA, and the
//! engine and the jobs are measured at the batch sizes a GPU wants:
//!
//! ```sh
//! target/release/bench --provider cuda --engine-batches 500,2000,10000 \
//!     --partition-size 2000 --partitions-per-call 5 --skip-fleet --skip-python
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::ValueEnum;
use fleet_broker::amqp::AmqpArgs;
use fleet_dataset::{self as dataset, BatchSelection, HEIGHT, IMAGE_BYTES, WIDTH};
use fleet_imaging::{DecodeLimits, Image, Preprocessor, decode};
use fleet_inference::{InferenceOptions, Scorer};
use fleet_service::cli::defaults;
use fleet_spec::{ModelSpec, Normalize, Resize};
use producer::submit::SubmitOptions;
use worker::WorkerOptions;

mod embeddings;
mod many;
mod models;
mod photos;
mod scale;

#[derive(Debug, Parser)]
struct Args {
    /// The fixtures directory.
    #[arg(
        long,
        env = "CIFAR_FLEET_FIXTURES",
        default_value = "../shared/fixtures"
    )]
    fixtures: PathBuf,
    /// Skip the runs over RabbitMQ and Azurite.
    #[arg(long)]
    skip_fleet: bool,
    /// Skip the 60,000-image tarball.
    #[arg(long)]
    skip_full: bool,
    /// Images per partition in the job runs [default: the producer's `--partition-size`, which
    /// for the walkthrough's 10,000 images is its largest].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    partition_size: Option<u32>,
    /// Partitions a worker joins into one model call in the job runs [default: the worker's
    /// `--partitions-per-call`, which reads WORKER_PARTITIONS_PER_CALL].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    partitions_per_call: Option<u16>,
    /// Images per model call in the engine rows, comma-separated. The jobs' largest call
    /// (partition size times partitions per call) is always measured too, for their ratios.
    #[arg(long, env = "BENCH_ENGINE_BATCHES", value_delimiter = ',', default_value = "1,32,128,500", value_parser = clap::value_parser!(u32).range(1..))]
    engine_batches: Vec<u32>,
    /// The engine rows' and the jobs' execution provider and threads.
    #[command(flatten)]
    inference: InferenceOptions,
    /// The broker of the fleet runs.
    #[command(flatten)]
    amqp: AmqpArgs,
    /// Azure Storage connection string for the fleet runs.
    #[arg(long, env = "AZURE_STORAGE_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,
    /// Runs of each measurement; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the Python peers (PIL + ONNX Runtime, Ray Data, Pillow on the real photos).
    #[arg(long)]
    skip_python: bool,
    /// Run only the real-photo rows (decoding and preparing for a 224x224 model, the job over
    /// the photos).
    #[arg(long)]
    only_photos: bool,
    /// Run only the embedding rows: the real-photo job classifying only, then also writing one
    /// and two 1,000-float embeddings, in turn.
    #[arg(long)]
    only_embeddings: bool,
    /// Run only the rows of several models: the real-photo job with one 224x224 model, with
    /// another, and with both in one pass, in turn.
    #[arg(long)]
    only_models: bool,
    /// Run only the collector at scale, at these partition counts (comma-separated): synthetic
    /// results through the real collector, over the in-process broker and a local directory,
    /// and (unless --skip-fleet) over RabbitMQ and Azurite up to --scale-fleet-max.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=i64::from(fleet_protocol::job::MAX_PARTITIONS)))]
    scale: Vec<u32>,
    /// Images per partition of the scale runs.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    scale_images: u32,
    /// Largest partition count run over RabbitMQ and Azurite in the scale runs.
    #[arg(long, default_value_t = 5_000)]
    scale_fleet_max: u32,
    /// Run only an embedded job over this many small images (the fixture's MNIST digits,
    /// linked many times over, scored by its MNIST model).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..))]
    embedded_images: Option<u64>,
    /// The Python with the peers' packages (`scripts/bench-python.sh` makes it).
    #[arg(long, env = "BENCH_PYTHON", default_value = ".bench-venv/bin/python")]
    python: PathBuf,
}

struct Row {
    what: String,
    images: u64,
    seconds: f64,
    note: String,
}

fn main() -> Result<()> {
    // Before any thread: one C heap for all of them, and ONNX Runtime keeps no usage database
    // of ours.
    fleet_service::memory::one_heap();
    fleet_inference::runtime::opt_out_of_telemetry();
    let args: Args = fleet_service::cli::parse();
    if !args.scale.is_empty() {
        let fleet = match (&args.connection_string, args.skip_fleet) {
            (Some(connection), false) => Some((&args.amqp, connection.as_str())),
            (None, false) => bail!(
                "the scale runs over RabbitMQ and Azurite need AZURE_STORAGE_CONNECTION_STRING (see scripts/services.sh), or pass --skip-fleet"
            ),
            (_, true) => None,
        };
        let rows = scale::rows(&args.scale, args.scale_images, fleet, args.scale_fleet_max)?;
        scale::print_table(&rows);
        return Ok(());
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for name in ["producer", "worker", "collector"] {
        if !bin_dir.join(name).is_file() {
            bail!(
                "{} is missing: run `cargo build --release --bins` first",
                bin_dir.join(name).display()
            );
        }
    }
    if args.only_embeddings {
        let rows = embeddings::rows(&args.fixtures, &bin_dir, args.runs)?;
        print_table(&rows, args.runs, "");
        return Ok(());
    }
    if args.only_models {
        let rows = models::rows(&args.fixtures, &bin_dir, args.runs)?;
        print_table(&rows, args.runs, "");
        return Ok(());
    }
    if let Some(images) = args.embedded_images {
        let rows = many::rows(&args.fixtures, &bin_dir, images)?;
        print_table(&rows, 1, "");
        return Ok(());
    }
    // Checked first, not after the minutes of runs before the fleet's.
    let connection = match (args.skip_fleet || args.only_photos, &args.connection_string) {
        (true, _) => None,
        (false, Some(connection)) => Some(connection.clone()),
        (false, None) => bail!(
            "the fleet runs need AZURE_STORAGE_CONNECTION_STRING (see scripts/services.sh), or pass --skip-fleet"
        ),
    };
    let python = if args.skip_python {
        None
    } else if args.python.is_file() {
        Some(args.python.clone())
    } else {
        bail!(
            "{} is missing: run scripts/bench-python.sh for the Python peers, or pass --skip-python",
            args.python.display()
        );
    };
    let mut rows = photos::rows(
        &args.fixtures.join("real-photos/photos"),
        args.runs,
        python.as_deref(),
    )?;
    rows.extend(photos::job_rows(
        &args.fixtures,
        &bin_dir,
        args.runs,
        &args.inference,
        python.as_deref(),
    )?);
    if args.only_photos {
        print_table(&rows, args.runs, "");
        return Ok(());
    }

    let bench = Bench::stage(&args, bin_dir)?;
    let engine = bench.engine_rows(&mut rows)?;
    bench.embedded_rows(&engine, &mut rows)?;
    bench.folder_job_rows(&engine, python.as_deref(), &mut rows)?;
    if !args.skip_full {
        bench.full_tarball_rows(&engine, &mut rows)?;
    }
    if let Some(connection) = connection {
        bench.fleet_rows(&engine, &connection, &mut rows)?;
    }
    print_table(
        &rows,
        args.runs,
        &format!(
            "Execution provider: {}; jobs: partitions of {} images, up to {} per model call.",
            engine.provider, bench.partition_size, bench.partitions_per_call
        ),
    );
    Ok(())
}

/// The CIFAR-10 rows' setting: the binaries, the inputs staged as a user stages them (the
/// engine rows score the very models and spec the jobs score; the int8 model is calibrated by
/// `producer stage --quantize`), and the jobs' settings.
struct Bench<'a> {
    args: &'a Args,
    bin_dir: PathBuf,
    /// Holds the store and the written tarballs.
    work: tempfile::TempDir,
    store: PathBuf,
    partition_size: u32,
    partitions_per_call: u16,
    tarball: PathBuf,
    jpeg_folder: PathBuf,
    model: PathBuf,
    mean_image: PathBuf,
    /// Class names, for jobs labelled by class folders.
    classes: PathBuf,
}

/// What the engine rows measured, for the job rows to compare with.
struct Engine {
    provider: String,
    /// Images in the test batch.
    images: usize,
    /// The jobs' largest model call (partition size times partitions per call).
    call: usize,
    /// The engine alone at that call size, and at its best size.
    at_call: f64,
    best: (usize, f64),
    /// The int8 model alone at that call size.
    int8_at_call: f64,
    /// The engine alone on the JPEG folder's decoded tensors.
    on_folder: f64,
}

impl Engine {
    /// A job's seconds against the engine's at the job's call size (and at its best size).
    fn versus(&self, seconds: f64) -> String {
        let (call, (best_batch, best)) = (self.call, self.best);
        let mut note = format!("{:.2} x engine at batch {call}", seconds / self.at_call);
        if best_batch != call {
            note += &format!(", {:.2} x its best (batch {best_batch})", seconds / best);
        }
        note
    }
}

impl<'a> Bench<'a> {
    /// Stages the tarball, the model (and its int8 version) and the JPEG folder into a fresh
    /// local store. The jobs take their own defaults where the bench is not told otherwise.
    fn stage(args: &'a Args, bin_dir: PathBuf) -> Result<Self> {
        let submit: SubmitOptions = defaults()?;
        let worker: WorkerOptions = defaults()?;
        let work = tempfile::tempdir()?;
        let classes = work.path().join("classes.txt");
        std::fs::write(&classes, dataset::CLASS_NAMES.join("\n"))?;
        let bench = Self {
            args,
            bin_dir,
            store: work.path().join("store"),
            work,
            partition_size: (args.partition_size.or(submit.partition_size))
                .unwrap_or(producer::submit::MAX_PARTITION_SIZE),
            partitions_per_call: args
                .partitions_per_call
                .unwrap_or(worker.partitions_per_call),
            tarball: args.fixtures.join("cifar-10-python.tar.gz"),
            jpeg_folder: args.fixtures.join("cifar-10-test-jpeg"),
            model: args.fixtures.join("resnet20_meanimage_159.dnn"),
            mean_image: args.fixtures.join("CIFAR-10_mean.xml"),
            classes,
        };
        let mut with_int8 = [
            bench.tarball_args(),
            bench.model_args(),
            bench.folder_args(),
        ]
        .concat();
        with_int8.push("--quantize");
        bench.stage_into(bench.store_arg(), "cifar", &[], &with_int8)?;
        Ok(bench)
    }

    fn store_arg(&self) -> &str {
        self.store.to_str().unwrap()
    }

    fn tarball_args(&self) -> Vec<&str> {
        vec!["--tarball", self.tarball.to_str().unwrap()]
    }

    fn model_args(&self) -> Vec<&str> {
        vec![
            "--model",
            self.model.to_str().unwrap(),
            "--mean-image",
            self.mean_image.to_str().unwrap(),
            "--classes",
            self.classes.to_str().unwrap(),
            "--model-name",
            "resnet20",
        ]
    }

    fn folder_args(&self) -> Vec<&str> {
        vec![
            "--images",
            self.jpeg_folder.to_str().unwrap(),
            "--prefix",
            "datasets/cifar-jpeg",
        ]
    }

    /// `producer stage` into `store`'s `container`.
    fn stage_into(
        &self,
        store: &str,
        container: &str,
        envs: &[(&str, &str)],
        inputs: &[&str],
    ) -> Result<()> {
        let mut stage_args = vec!["stage", "--store", store, "--container", container];
        stage_args.extend(inputs);
        run(&self.bin_dir.join("producer"), &stage_args, envs).map(drop)
    }

    /// A blob of the local store's `cifar` container.
    fn staged(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.store.join("cifar").join(key);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The execution provider the engine rows ran on, as the roles' `--provider` names it.
    fn provider_name(&self) -> String {
        let provider = self.args.inference.provider.to_possible_value();
        provider
            .expect("every provider has a name")
            .get_name()
            .to_owned()
    }

    /// The environment of the job processes: every job scores as the engine rows did.
    fn job_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EXECUTION_PROVIDER", self.provider_name()),
            (
                "WORKER_PARTITIONS_PER_CALL",
                self.partitions_per_call.to_string(),
            ),
            (
                "INTRA_OP_THREADS",
                self.args.inference.intra_threads.to_string(),
            ),
        ]
    }

    /// The engine alone: the whole test batch, preprocessed once, scored at each batch size;
    /// the int8 model; the walkthrough's one image per call; the JPEG folder decoded per core,
    /// and the engine on its decoded tensors.
    fn engine_rows(&self, rows: &mut Vec<Row>) -> Result<Engine> {
        let runs = self.args.runs;
        let (pixels, labels) = load_test_batch(&self.tarball)?;
        let images = pixels.len() / IMAGE_BYTES;
        let spec = ModelSpec::from_json(
            &self.staged("models/resnet20.json")?,
            "models/resnet20.json",
        )?;
        let mean = spec
            .mean_image_key()
            .map(|key| self.staged(key))
            .transpose()?;
        let preprocessor = Preprocessor::new(&spec, mean.as_deref())?;
        let image_len = preprocessor.input_len();
        let preprocess = |planes: &[u8], out: &mut Vec<f32>| {
            out.clear();
            out.resize(planes.len() / IMAGE_BYTES * image_len, 0.0);
            preprocessor.write_planes(planes, HEIGHT, WIDTH, out);
        };
        let onnx = self.staged("models/resnet20.onnx")?;
        let mut scorer = Scorer::load(&onnx, "resnet20", &self.args.inference)?;
        let provider = scorer.provider().to_string();
        let mut input = Vec::new();
        preprocess(&pixels, &mut input);
        // The jobs' largest model call, and the engine at that size: what their ratios
        // compare to.
        let call = self.partition_size as usize * usize::from(self.partitions_per_call);
        let mut engine_batches: Vec<usize> = self
            .args
            .engine_batches
            .iter()
            .map(|&b| b as usize)
            .collect();
        engine_batches.push(call);
        engine_batches.sort_unstable();
        engine_batches.dedup();
        let mut fp32_correct = 0;
        let mut fp32_seconds = std::collections::BTreeMap::new();
        for &batch in &engine_batches {
            let (seconds, correct) =
                repeated(runs, || score_all(&mut scorer, &input, &labels, batch))?;
            let correct = correct[0];
            fp32_seconds.insert(batch, seconds);
            fp32_correct = correct;
            rows.push(Row {
                what: format!("ONNX Runtime alone, batch {batch}"),
                images: images as u64,
                seconds,
                note: format!("accuracy {:.2}%", 100.0 * correct as f64 / images as f64),
            });
        }
        let best = fp32_seconds
            .iter()
            .map(|(&batch, &seconds)| (batch, seconds))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("the job's call size is always measured");
        // The opt-in int8 model, as `producer stage --quantize` staged it.
        let int8 = self.staged("models/resnet20-int8.onnx")?;
        let mut quantized = Scorer::load(&int8, "resnet20-int8", &self.args.inference)?;
        let mut int8_at_call = 0.0;
        let int8_batches = engine_batches
            .iter()
            .copied()
            .filter(|&b| b == 32 || b == call);
        for batch in int8_batches {
            let (seconds, correct) =
                repeated(runs, || score_all(&mut quantized, &input, &labels, batch))?;
            let correct = correct[0];
            if batch == call {
                int8_at_call = seconds;
            }
            rows.push(Row {
                what: format!("ONNX Runtime alone, int8 model, batch {batch}"),
                images: images as u64,
                seconds,
                note: format!(
                    "{:.2} x fp32 throughput at batch {batch}; accuracy {:.2}% (fp32 {:.2}%)",
                    fp32_seconds[&batch] / seconds,
                    100.0 * correct as f64 / images as f64,
                    100.0 * fp32_correct as f64 / images as f64
                ),
            });
        }
        drop(quantized);
        // The walkthrough's design: per image, preprocess then one model call.
        let (mut one, mut logits) = (Vec::new(), Vec::new());
        let (seconds, _) = repeated(runs, || {
            let started = Instant::now();
            for image in pixels.chunks(IMAGE_BYTES) {
                preprocess(image, &mut one);
                scorer.score(&one, 1, &mut logits)?;
            }
            Ok((started.elapsed().as_secs_f64(), ()))
        })?;
        rows.push(Row {
            what: "one image per model call (walkthrough design)".into(),
            images: images as u64,
            seconds,
            note: String::new(),
        });
        let on_folder = self.folder_engine_rows(&spec, &preprocessor, &mut scorer, call, rows)?;
        Ok(Engine {
            provider,
            images,
            call,
            at_call: fp32_seconds[&call],
            best,
            int8_at_call,
            on_folder,
        })
    }

    /// The JPEG folder: decoding per core (and resizing, where it has work to do), and the
    /// engine on the decoded tensors; the engine's seconds.
    fn folder_engine_rows(
        &self,
        spec: &ModelSpec,
        preprocessor: &Preprocessor,
        scorer: &mut Scorer,
        call: usize,
        rows: &mut Vec<Row>,
    ) -> Result<f64> {
        let runs = self.args.runs;
        let image_len = preprocessor.input_len();
        let files = list_folder(&self.jpeg_folder)?;
        let folder_labels: Vec<u8> = files.iter().map(|(_, label)| *label).collect();
        let encoded: Vec<Vec<u8>> = files
            .iter()
            .map(|(path, _)| std::fs::read(path).with_context(|| path.display().to_string()))
            .collect::<Result<_>>()?;
        rows.push(decoding_row(
            runs,
            &encoded,
            "JPEG decoding (libjpeg), 1 thread",
            "the folder's 32x32 files, from bytes in memory",
            |_, _| {},
        )?);
        let mut folder_input = vec![0.0; encoded.len() * image_len];
        rows.push(decoding_row(
            runs,
            &encoded,
            "JPEG decoding + preprocessing, 1 thread",
            "to the model's input: BGR, minus the mean image, CHW",
            |i, image| preprocessor.write(image, &mut folder_input[i * image_len..][..image_len]),
        )?);
        // Resizing, measured where it has work to do: the same files to a 224x224 input, the
        // shorter side scaled and the centre cropped (as ImageNet models take them).
        let mut large = spec.clone();
        (large.height, large.width) = (224, 224);
        large.resize = Resize::CenterCrop;
        large.normalize = Normalize::PerChannel {
            mean: vec![104.0, 117.0, 123.0],
            std: vec![1.0; 3],
        };
        let resizing = Preprocessor::new(&large, None)?;
        let mut resized = vec![0.0; resizing.input_len()];
        rows.push(decoding_row(
            runs,
            &encoded,
            "JPEG decoding + resize to 224x224 (centre crop) + preprocessing, 1 thread",
            "bilinear, OpenCV's geometry",
            |_, image| resizing.write(image, &mut resized),
        )?);
        let (seconds, correct) = repeated(runs, || {
            score_all(scorer, &folder_input, &folder_labels, call)
        })?;
        rows.push(Row {
            what: format!("ONNX Runtime alone on the folder's decoded tensors, batch {call}"),
            images: encoded.len() as u64,
            seconds,
            note: format!(
                "accuracy {:.2}%",
                100.0 * correct[0] as f64 / encoded.len() as f64
            ),
        });
        Ok(seconds)
    }

    /// One embedded job, whole process: seconds, peak RSS, time to the first stored partition.
    fn embedded_once(&self, batches: &str, model: &str) -> Result<(f64, u64, Option<f64>)> {
        let started = Instant::now();
        let watcher = FirstFile::watch(self.store.join("cifar/jobs"), started);
        let partition_size = self.partition_size.to_string();
        let env = self.job_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let peak = run_measured(
            &self.bin_dir.join("producer"),
            &[
                "--store",
                self.store_arg(),
                "--container",
                "cifar",
                "--embedded",
                "--batches",
                batches,
                "--partition-size",
                &partition_size,
                "--model-name",
                model,
            ],
            &env,
        )?
        .peak_kib;
        Ok((started.elapsed().as_secs_f64(), peak, watcher.first()))
    }

    /// Embedded jobs: median seconds, peak RSS over the runs, median time to the first stored
    /// partition.
    fn embedded(&self, batches: &str, model: &str) -> Result<(f64, u64, Option<f64>)> {
        let (seconds, runs) = repeated(self.args.runs, || {
            let (seconds, peak, first) = self.embedded_once(batches, model)?;
            Ok((seconds, (peak, first)))
        })?;
        let peak = runs.iter().map(|r| r.0).max().unwrap_or(0);
        let mut firsts: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
        firsts.sort_by(f64::total_cmp);
        Ok((seconds, peak, firsts.get(firsts.len() / 2).copied()))
    }

    /// The embedded job over the test batch, with the fp32 model and the int8 one.
    fn embedded_rows(&self, engine: &Engine, rows: &mut Vec<Row>) -> Result<()> {
        let images = engine.images as u64;
        let (seconds, peak, first) = self.embedded("test_batch", "resnet20")?;
        rows.push(Row {
            what: "embedded job, whole process (1 worker)".into(),
            images,
            seconds,
            note: format!(
                "{}; peak RSS {} MB; first partition stored after {}",
                engine.versus(seconds),
                peak / 1024,
                first.map_or("?".into(), |s| format!("{s:.2} s"))
            ),
        });
        let (seconds, peak, _) = self.embedded("test_batch", "resnet20-int8")?;
        rows.push(Row {
            what: "embedded job, int8 model, whole process (1 worker)".into(),
            images,
            seconds,
            note: format!(
                "{:.2} x int8 engine at batch {}, {:.2} x fp32 engine; peak RSS {} MB",
                seconds / engine.int8_at_call,
                engine.call,
                seconds / engine.at_call,
                peak / 1024
            ),
        });
        Ok(())
    }

    /// The folder job, whole process, against the engine on the same tensors and the peers.
    fn folder_job_rows(
        &self,
        engine: &Engine,
        python: Option<&Path>,
        rows: &mut Vec<Row>,
    ) -> Result<()> {
        let runs = self.args.runs;
        let partition_size = self.partition_size.to_string();
        let env = self.job_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let folder_job = || -> Result<(f64, u64)> {
            let job_args = [
                "--store",
                self.store_arg(),
                "--container",
                "cifar",
                "--embedded",
                "--dataset",
                "datasets/cifar-jpeg",
                "--model-name",
                "resnet20",
                "--labels",
                "folders",
                "--partition-size",
                &partition_size,
            ];
            let started = Instant::now();
            let peak = run_measured(&self.bin_dir.join("producer"), &job_args, &env)?.peak_kib;
            Ok((started.elapsed().as_secs_f64(), peak))
        };
        let (folder_seconds, peaks) = repeated(runs, folder_job)?;
        rows.push(Row {
            what: "embedded job over the JPEG folder, whole process (1 worker)".into(),
            images: engine.images as u64,
            seconds: folder_seconds,
            note: format!(
                "{:.2} x engine on its tensors; peak RSS {} MB",
                folder_seconds / engine.on_folder,
                peaks.iter().max().unwrap_or(&0) / 1024
            ),
        });
        let Some(python) = python else {
            return Ok(());
        };
        let model = self.store.join("cifar/models/resnet20.onnx");
        let peers = [
            (
                "Python peer: PIL + ONNX Runtime, one process per core",
                "peer.py",
            ),
            (
                "Python peer: Ray Data (read_images + map_batches)",
                "ray_peer.py",
            ),
        ];
        for (what, script) in peers {
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("python")
                .join(script);
            let (seconds, reports) = repeated(runs, || {
                let started = Instant::now();
                let out = run(
                    python,
                    &[
                        script.to_str().unwrap(),
                        self.jpeg_folder.to_str().unwrap(),
                        model.to_str().unwrap(),
                        self.mean_image.to_str().unwrap(),
                    ],
                    &[],
                )?;
                Ok((started.elapsed().as_secs_f64(), peer_report(&out)?))
            })?;
            let (scored, correct) = reports[0];
            rows.push(Row {
                what: what.into(),
                images: scored,
                seconds,
                note: format!(
                    "accuracy {:.2}%; the folder job's throughput is {:.2} x this",
                    100.0 * correct as f64 / scored as f64,
                    seconds / folder_seconds
                ),
            });
        }
        Ok(())
    }

    /// All six batches: the test batch under every batch name.
    fn full_tarball_rows(&self, engine: &Engine, rows: &mut Vec<Row>) -> Result<()> {
        let full = self.work.path().join("cifar-10-full.tar.gz");
        write_full_tarball(&self.tarball, &full)?;
        self.stage_into(
            self.store_arg(),
            "cifar",
            &[],
            &["--tarball", full.to_str().unwrap()],
        )?;
        let (seconds, peak, _) = self.embedded("all", "resnet20")?;
        rows.push(Row {
            what: "embedded job, all 6 batches".into(),
            images: 6 * engine.images as u64,
            seconds,
            note: format!(
                "{}; peak RSS {} MB",
                engine.versus(seconds / 6.0),
                peak / 1024
            ),
        });
        Ok(())
    }

    /// The fleet over RabbitMQ and Azurite, with one and two worker processes (and the JPEG
    /// folder with one), each in a container and queues of its own.
    fn fleet_rows(&self, engine: &Engine, connection: &str, rows: &mut Vec<Row>) -> Result<()> {
        let partition_size = self.partition_size.to_string();
        let partitions_per_call = self.partitions_per_call.to_string();
        let provider = self.provider_name();
        for workers in [1usize, 2] {
            let container = format!("bench{}w{}", std::process::id(), workers);
            let queue = |kind: &str| format!("{container}.{kind}");
            let (pq, rq, dq) = (queue("partitions"), queue("results"), queue("dead-letter"));
            let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / workers)
                .max(1)
                .to_string();
            let envs = [
                ("AMQP_URL", self.args.amqp.url.as_str()),
                ("AZURE_STORAGE_CONNECTION_STRING", connection),
                ("FLEET_CONTAINER", container.as_str()),
                ("PARTITIONS_QUEUE", pq.as_str()),
                ("RESULTS_QUEUE", rq.as_str()),
                ("DEAD_LETTER_QUEUE", dq.as_str()),
                ("INTRA_OP_THREADS", threads.as_str()),
                ("EXECUTION_PROVIDER", provider.as_str()),
                ("WORKER_PARTITIONS_PER_CALL", partitions_per_call.as_str()),
            ];
            let mut inputs = [self.tarball_args(), self.model_args()].concat();
            if workers == 1 {
                inputs.extend(self.folder_args());
            }
            self.stage_into(connection, &container, &envs, &inputs)?;
            // Fresh processes for every run: each pays its own start-up, as a real job does.
            let fleet_run = |job: &[&str]| {
                repeated(self.args.runs, || {
                    let bin = |name: &str| self.bin_dir.join(name);
                    let collector = Measured::spawn(&bin("collector"), &[], &envs)?;
                    let fleet: Vec<Measured> = (0..workers)
                        .map(|_| Measured::spawn(&bin("worker"), &[], &envs))
                        .collect::<Result<_>>()?;
                    std::thread::sleep(Duration::from_millis(500)); // let them connect and subscribe
                    let started = Instant::now();
                    let mut producer_args = vec!["--wait", "--partition-size", &partition_size];
                    producer_args.extend(job);
                    let producer_peak =
                        run_measured(&bin("producer"), &producer_args, &envs)?.peak_kib;
                    let seconds = started.elapsed().as_secs_f64();
                    let worker_peaks: Vec<u64> = fleet
                        .into_iter()
                        .map(Measured::stop)
                        .collect::<Result<_>>()?;
                    let collector_peak = collector.stop()?;
                    let worker_peak = worker_peaks.into_iter().max().unwrap_or(0);
                    Ok((seconds, [producer_peak, worker_peak, collector_peak]))
                })
            };
            let plural = if workers > 1 { "es" } else { "" };
            let mut jobs = vec![(
                format!("fleet over RabbitMQ + Azurite, {workers} worker process{plural}"),
                vec!["--model-name", "resnet20"],
                engine.at_call,
            )];
            if workers == 1 {
                jobs.push((
                    "fleet over RabbitMQ + Azurite, JPEG folder, 1 worker process".into(),
                    vec![
                        "--dataset",
                        "datasets/cifar-jpeg",
                        "--model-name",
                        "resnet20",
                        "--labels",
                        "folders",
                    ],
                    engine.on_folder,
                ));
            }
            for (what, job, engine_seconds) in jobs {
                let (seconds, peaks) = fleet_run(&job)?;
                let peak = |i: usize| peaks.iter().map(|p| p[i]).max().unwrap_or(0) / 1024;
                rows.push(Row {
                    what,
                    images: engine.images as u64,
                    seconds,
                    note: format!(
                        "{:.2} x engine; peak RSS: producer {} MB, worker {} MB, collector {} MB",
                        seconds / engine_seconds,
                        peak(0),
                        peak(1),
                        peak(2)
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Prints `rows` as a Markdown table, after a line saying how the figures were taken.
fn print_table(rows: &[Row], runs: usize, setting: &str) {
    let runs = runs.max(1);
    println!("Each figure is the median of {runs} runs (peak RSS: the largest). {setting}\n");
    println!("| what | images | seconds | images/s | notes |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} |",
            r.what,
            r.images,
            r.seconds,
            r.images as f64 / r.seconds,
            r.note
        );
    }
}

/// Runs `measure` `runs` times (at least once); returns the median of the seconds it reports,
/// and what else each run reported. One run can be slowed by anything else on the machine.
fn repeated<T>(
    runs: usize,
    mut measure: impl FnMut() -> Result<(f64, T)>,
) -> Result<(f64, Vec<T>)> {
    let (mut seconds, mut reports) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let (s, report) = measure()?;
        seconds.push(s);
        reports.push(report);
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], reports))
}

fn load_test_batch(tarball: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    dataset::read_tarball(
        std::fs::File::open(tarball)?,
        "fixture",
        &BatchSelection::default(),
        |b| {
            pixels = b.pixels;
            labels = b.labels;
            Ok(())
        },
    )?;
    Ok((pixels, labels))
}

/// Decodes every file on this thread, hands each image to `then`, and times it all.
fn decoding_row(
    runs: usize,
    encoded: &[Vec<u8>],
    what: &str,
    note: &str,
    mut then: impl FnMut(usize, &Image),
) -> Result<Row> {
    let limits = DecodeLimits {
        max_pixels: u64::MAX,
        max_scans: u32::MAX,
    };
    let (seconds, _) = repeated(runs, || {
        let started = Instant::now();
        for (i, bytes) in encoded.iter().enumerate() {
            then(i, &decode(bytes, limits)?);
        }
        Ok((started.elapsed().as_secs_f64(), ()))
    })?;
    Ok(Row {
        what: what.into(),
        images: encoded.len() as u64,
        seconds,
        note: note.into(),
    })
}

/// The files of a `<class>/<file>` folder, sorted, each with its class index (the sorted
/// folder names are CIFAR-10's class order).
fn list_folder(root: &Path) -> Result<Vec<(PathBuf, u8)>> {
    let sorted = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| dir.display().to_string())?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        Ok(paths)
    };
    let mut files = Vec::new();
    for (label, class) in sorted(root)?.iter().enumerate() {
        let label = u8::try_from(label).context("more than 255 class folders")?;
        files.extend(sorted(class)?.into_iter().map(|path| (path, label)));
    }
    Ok(files)
}

/// A Python peer's last output line: `{"images": N, "correct": M}`.
fn peer_report(stdout: &str) -> Result<(u64, u64)> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the Python peer printed no result line")?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    let field = |name: &str| value[name].as_u64().context("a malformed result line");
    Ok((field("images")?, field("correct")?))
}

/// Scores every image at `batch` images per call (after one warm-up call); returns the
/// seconds taken and how many predictions match `labels`.
fn score_all(
    scorer: &mut Scorer,
    input: &[f32],
    labels: &[u8],
    batch: usize,
) -> Result<(f64, usize)> {
    let mut logits = Vec::new();
    let image_len = scorer.signature().input_len();
    // A batch larger than the input scores it in one call.
    let warm_up = batch.min(input.len() / image_len);
    scorer.score(&input[..warm_up * image_len], warm_up, &mut logits)?;
    let classes = scorer.classes();
    let mut correct = 0;
    let started = Instant::now();
    for (i, chunk) in input.chunks(batch * image_len).enumerate() {
        scorer.score(chunk, chunk.len() / image_len, &mut logits)?;
        for (j, row) in logits.chunks_exact(classes).enumerate() {
            let predicted =
                (0..classes).fold(0, |best, k| if row[k] > row[best] { k } else { best });
            correct += usize::from(predicted == labels[i * batch + j] as usize);
        }
    }
    Ok((started.elapsed().as_secs_f64(), correct))
}

/// Writes a python tarball with data_batch_1..5 and test_batch, each the fixture's test batch.
fn write_full_tarball(source: &Path, target: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(source)?));
    let mut members = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        members.push((path, bytes));
    }
    let test = members
        .iter()
        .find(|(p, _)| p.ends_with("/test_batch"))
        .context("no test_batch")?
        .1
        .clone();
    let gz =
        flate2::write::GzEncoder::new(std::fs::File::create(target)?, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes)?;
        Ok(())
    };
    for i in 1..=5 {
        add(&format!("cifar-10-batches-py/data_batch_{i}"), &test)?;
    }
    for (path, bytes) in &members {
        add(path, bytes)?;
    }
    builder.into_inner()?.finish()?;
    Ok(())
}

fn run(exe: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<String> {
    let out = Command::new(exe)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a process run to completion printed, and its peak RSS.
struct Finished {
    /// Standard output: a job run's id alone.
    stdout: String,
    /// Standard error: what a job run said of its job.
    stderr: String,
    /// Peak RSS in KiB.
    peak_kib: u64,
}

/// Runs a process to completion; returns what it printed and its peak RSS.
fn run_measured(exe: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Finished> {
    let child = Command::new(exe)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let measured = Measured::watch(child);
    let peak = measured.peak.clone();
    let out = measured.child.wait_with_output()?;
    measured.done.store(true, Ordering::SeqCst);
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Finished {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        peak_kib: peak.load(Ordering::SeqCst),
    })
}

/// A child process whose peak RSS (VmHWM) is sampled while it runs.
struct Measured {
    child: Child,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Measured {
    fn spawn(exe: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Self> {
        let child = Command::new(exe)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self::watch(child))
    }

    fn watch(child: Child) -> Self {
        let (peak, done) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, d, pid) = (peak.clone(), done.clone(), child.id());
        std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    break;
                };
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    p.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { child, peak, done }
    }

    /// SIGTERM, wait, and the peak RSS in KiB.
    fn stop(mut self) -> Result<u64> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        self.done.store(true, Ordering::SeqCst);
        Ok(self.peak.load(Ordering::SeqCst))
    }
}

/// Notices when the first file appears under a directory (the collector's first stored
/// partition), measured from `since`.
fn job_dirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
}

struct FirstFile {
    seconds: Arc<AtomicU64>,
}

impl FirstFile {
    fn watch(dir: PathBuf, since: Instant) -> Self {
        let seconds = Arc::new(AtomicU64::new(u64::MAX));
        let out = seconds.clone();
        // Jobs already there are earlier runs'.
        let earlier: Vec<PathBuf> = job_dirs(&dir).collect();
        std::thread::spawn(move || {
            let deadline = since + Duration::from_secs(600);
            while Instant::now() < deadline {
                let found = job_dirs(&dir)
                    .filter(|job| !earlier.contains(job))
                    .any(|job| {
                        std::fs::read_dir(job.join("partitions"))
                            .into_iter()
                            .flatten()
                            .flatten()
                            .next()
                            .is_some()
                    });
                if found {
                    out.store(since.elapsed().as_micros() as u64, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { seconds }
    }

    fn first(&self) -> Option<f64> {
        match self.seconds.load(Ordering::SeqCst) {
            u64::MAX => None,
            micros => Some(micros as f64 / 1e6),
        }
    }
}
