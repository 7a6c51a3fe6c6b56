#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end tests that run the binaries on the fixtures.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/install-onnxruntime.sh
# The end-to-end tests run the binaries of every crate: build them first.
cargo build --workspace --bins
cargo test --workspace
