//! Finding and loading the ONNX Runtime shared library.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), never downloaded at build time,
//! so the same build works offline and on a machine with a GPU build of ONNX Runtime. Search
//! order: the `ORT_DYLIB_PATH` variable, then `.onnxruntime/` in the working directory or next
//! to (or above) the executable, where `scripts/install-onnxruntime.sh` puts it; then the system
//! library directories (`/usr/local/lib` in the container image). The file has its platform's
//! name: `libonnxruntime.so` on Linux, `libonnxruntime.dylib` on macOS, `onnxruntime.dll` on
//! Windows.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::InferenceError;

/// Environment variable naming the library file (the variable `ort` itself documents).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// File name of the library on this platform.
#[cfg(target_os = "macos")]
const LIB_NAME: &str = "libonnxruntime.dylib";
/// File name of the library on this platform.
#[cfg(windows)]
const LIB_NAME: &str = "onnxruntime.dll";
/// File name of the library on this platform.
#[cfg(not(any(target_os = "macos", windows)))]
const LIB_NAME: &str = "libonnxruntime.so";
/// Where the platform's package managers put libraries, searched last.
#[cfg(target_os = "macos")]
const SYSTEM_DIRS: &[&str] = &["/usr/local/lib", "/opt/homebrew/lib"];
/// Where the platform's package managers put libraries, searched last.
#[cfg(windows)]
const SYSTEM_DIRS: &[&str] = &[];
/// Where the platform's package managers put libraries, searched last.
#[cfg(not(any(target_os = "macos", windows)))]
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/lib",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];
/// Project-local install directory, relative to the repository root.
const LOCAL_DIR: &str = ".onnxruntime";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The variable by which Microsoft's builds of ONNX Runtime are told to send no usage events and
/// keep no usage database (`~/.cache/Microsoft/DeveloperTools/.onnxruntime/`): read when the
/// library loads, before any setting through its API can say so.
pub const TELEMETRY_ENV: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_ENV`] for this process unless the user set it, so that the bare binary
/// writes nothing of ONNX Runtime's under the user's home. Call it first in `main`: changing the
/// environment is only sound while the process has a single thread, which is checked (Linux's
/// `/proc/self/task`); elsewhere, or with threads running, it leaves the environment alone and
/// says so. Whether it was set.
pub fn opt_out_of_telemetry() -> bool {
    if std::env::var_os(TELEMETRY_ENV).is_some() {
        return true;
    }
    // One thread cannot race with another over the environment, and only it could start one.
    let single = std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1);
    if !single {
        tracing::debug!("{TELEMETRY_ENV} left unset: the process has threads, or no /proc");
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: the process has one thread (checked just above, and only this thread could have
    // started another since), so nothing reads or writes the environment concurrently.
    unsafe {
        std::env::set_var(TELEMETRY_ENV, "1");
    }
    true
}

/// Loads ONNX Runtime once per process and returns its environment.
pub fn environment() -> Result<&'static ort::environment::Environment, InferenceError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate().map_err(|e| e.to_string())?;
            tracing::debug!(library = %path.display(), "loading ONNX Runtime");
            ort::init_from(&path)
                .map_err(|e| format!("could not load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("scoring-fleet")
                // Microsoft's builds send usage events unless told not to: a scoring fleet
                // reports to nobody.
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("could not start ONNX Runtime from {}: {e}", path.display()))
        })
        .as_ref()
        .map_err(InferenceError::host)
}

/// Where the library is, or an error that says how to install it.
pub fn locate() -> Result<PathBuf, InferenceError> {
    if let Some(path) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InferenceError::host(format!(
                "{DYLIB_ENV} is set to {}, which is not a file; point it at {LIB_NAME} or unset it",
                path.display()
            )))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let mut searched = Vec::new();
    for root in roots {
        let candidate = root.join(LOCAL_DIR).join(LIB_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    for dir in SYSTEM_DIRS {
        let candidate = Path::new(dir).join(LIB_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(InferenceError::host(format!(
        "the ONNX Runtime library ({LIB_NAME}) was not found. Install it with \
         `scripts/install-onnxruntime.sh` (unpacks it from the onnxruntime wheel on PyPI into \
         {LOCAL_DIR}/), or set {DYLIB_ENV} to the path of a {LIB_NAME}, version 1.22 or newer. \
         Looked in: {}",
        searched
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
