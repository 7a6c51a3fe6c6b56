#!/usr/bin/env bash
# Runs every test: unit tests, the end-to-end tests that run the binaries on the fixtures, and
# the integration tests against RabbitMQ and Azurite.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/install-onnxruntime.sh
# The report tests render report.html in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >&2
    else
        echo "the report tests need Chromium: install it (Debian: apt-get install chromium)" >&2
        exit 1
    fi
fi
# Builds without nasm link libjpeg-turbo's x86-64 SIMD code pregenerated from its sources; with
# nasm, check that those objects are what the sources make (installed where that is easy).
if ! command -v nasm >/dev/null && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    { apt-get install -y -qq --no-install-recommends nasm \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nasm; }; } >&2 \
        || echo "nasm did not install: the pregenerated SIMD objects are not checked" >&2
fi
if command -v nasm >/dev/null; then
    scripts/pregenerate-jpeg-simd.sh --check
fi
# The integration tests talk to a real RabbitMQ and a real Azurite: start them unless the
# environment already points at some (AMQP_URL and AZURE_STORAGE_CONNECTION_STRING).
# The outage tests start a RabbitMQ node and an Azurite of their own, on free ports.
if [[ -z "${AMQP_URL:-}" || -z "${AZURE_STORAGE_CONNECTION_STRING:-}" ]]; then
    eval "$(scripts/services.sh)"
else
    scripts/services.sh --install-only
fi
# Microsoft's ONNX Runtime builds keep a usage database under ~/.cache unless told not to.
export ORT_DISABLE_TELEMETRY="${ORT_DISABLE_TELEMETRY:-1}"
# The end-to-end tests run the binaries of every crate: build them first.
cargo build --workspace --bins

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
