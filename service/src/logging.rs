//! Log output of the binaries: `tracing` events to standard error, filtered by `RUST_LOG`, as
//! text (coloured only on a terminal) or as one JSON object per line, for log collectors such
//! as Azure Log Analytics.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when standard error is a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

/// Log options of every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text, or one JSON object per line (for log collectors).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// The format chosen at [`init`], for [`say`].
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Writes one line of what a command has to tell (a job's accuracy, where its report is) to
/// standard error, whatever `RUST_LOG` filters: as it is, or, with `--log-format json`, as a
/// log line's JSON object, so that a log pipeline reads one format on the stream.
pub fn say(message: impl std::fmt::Display) {
    match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => {
            let line = serde_json::json!({
                "timestamp": now_rfc3339(),
                "level": "INFO",
                "target": "output",
                "message": message.to_string(),
            });
            eprintln!("{line}");
        }
    }
}

/// The time now as the JSON log lines write it (tracing-subscriber's clock, RFC 3339).
fn now_rfc3339() -> String {
    use tracing_subscriber::fmt::time::FormatTime;
    let mut now = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut now));
    now
}

/// Installs the subscriber. `default` is the filter used when `RUST_LOG` is unset, e.g.
/// `"warn,worker=info"`: warnings from everything, progress from the binary itself.
pub fn init(default: &str, args: &LogArgs) {
    let _ = FORMAT.set(args.log_format);
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        // Escape codes are for terminals: in a file or a log pipeline they are noise.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
