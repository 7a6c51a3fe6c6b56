//! `producer convert`: a CNTK model to an ONNX file, without staging it, or its graph as saved
//! (`--inspect`) when it does not convert.

use std::io::Write as _;
use std::path::PathBuf;

use cntk_onnx::ImportError;
use fleet_storage::printable;

/// What `producer convert` converts, and where to.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The CNTK model file (v2 `.dnn`/`.model`, or v1 `.dnn`/`.cmf`).
    pub input: PathBuf,
    /// The ONNX file to write (default: the input with an .onnx extension).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The CNTK node (v1) or function (v2) whose output is the classifier's, when the model
    /// saved another one first [default: the saved output nodes, or the first output that is
    /// not a loss or metric].
    #[arg(long = "output-node", value_name = "NAME")]
    pub output_node: Option<String>,
    /// Print the model's graph as saved (every node the output depends on, each after its
    /// inputs, with the ones the importer does not support marked) instead of converting it.
    #[arg(long, conflicts_with = "output")]
    pub inspect: bool,
}

/// Why a model was not converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The model file or the ONNX file cannot be read or written.
    #[error("cannot {doing} {}", printable(path))]
    File {
        /// `read` or `write`.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The model does not convert.
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// Converts the model `args` names, or prints its graph, and says what it held.
pub fn run(args: ConvertArgs) -> Result<(), ConvertError> {
    let file = |doing, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ConvertError::File {
            doing,
            path,
            source,
        }
    };
    let bytes = std::fs::read(&args.input).map_err(file("read", &args.input))?;
    let name = args.input.file_name().map_or_else(
        || printable(&args.input),
        |n| n.to_string_lossy().into_owned(),
    );
    let options = cntk_onnx::Options {
        output: args.output_node.clone(),
    };
    if args.inspect {
        let graph = cntk_onnx::inspect(&bytes, &name, &options)?;
        // A long graph is often piped into `head` or `less`: a reader that stops early is not
        // an error.
        return match write!(std::io::stdout().lock(), "{graph}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            written => written.map_err(file("write the graph to", "standard output".as_ref())),
        };
    }
    let imported = cntk_onnx::import_with(&bytes, &name, &options)?;
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension("onnx"));
    std::fs::write(&output, &imported.onnx).map_err(file("write", &output))?;
    println!(
        "{} -> {}: {} nodes, {} weights, input {:?}, output {:?}, source sha256 {}",
        printable(&args.input),
        printable(&output),
        imported.nodes,
        imported.parameters,
        imported.input_shape,
        imported.output_shape,
        imported.source_sha256
    );
    println!(
        "source: {}, output node {}",
        imported.source_format, imported.output
    );
    let histogram: Vec<String> = imported
        .source_ops
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!("source nodes: {}", histogram.join(", "));
    Ok(())
}
