//! Helpers for the end-to-end tests: fixtures, the built binaries, and running them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared fixtures: `CIFAR_FLEET_FIXTURES`, or `shared/fixtures` beside the repository.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("CIFAR_FLEET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.join("resnet20_meanimage_159.dnn").is_file(),
        "fixtures not found in {}: set CIFAR_FLEET_FIXTURES to the fixtures directory",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A binary of the workspace, built by `cargo build --workspace --bins` (the test script does
/// that first; `cargo test` alone only builds the binaries of the package under test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Runs a binary to completion and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a binary that must succeed; returns its standard output.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let output = run(name, args);
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs a binary that must fail; returns its standard error.
pub fn run_err(name: &str, args: &[&str]) -> String {
    let output = run(name, args);
    assert!(
        !output.status.success(),
        "{name} {args:?} succeeded but should have failed"
    );
    String::from_utf8(output.stderr).expect("UTF-8 output")
}

/// Stages the fixture dataset, model and mean image into `store`/`container`.
pub fn stage_fixtures(store: &Path, container: &str) {
    let (dataset, model, mean) = (
        fixture("cifar-10-python.tar.gz"),
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            container,
            "--dataset",
            dataset.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
        ],
    );
}

/// The value after `key: ` on a line of `output`, e.g. the job id after `job: `.
pub fn field(output: &str, key: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in:\n{output}"))
        .trim()
        .to_owned()
}
