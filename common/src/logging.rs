//! Log output of the binaries: `tracing` events to standard error, filtered by `RUST_LOG`.

/// Installs the subscriber. `default` is the filter used when `RUST_LOG` is unset, e.g.
/// `"warn,worker=info"`: warnings from everything, progress from the binary itself.
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
