#!/usr/bin/env bash
# The main job on the embedded default: stage the dataset, the walkthrough's model and its mean
# image into a local store, then score the test batch in one process (no server needed).
#
# Inputs come from the fixtures directory when there is one (CIFAR_FLEET_FIXTURES, or
# ../shared/fixtures beside the repository), otherwise from the walkthrough's public URLs.
# Extra arguments go to the run, e.g. `scripts/run-job.sh --workers 2 --batches all`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
store="${FLEET_STORE:-$root/.fleet}"
fixtures="${CIFAR_FLEET_FIXTURES:-$root/../shared/fixtures}"

scripts/install-onnxruntime.sh
cargo build --release --quiet --bin producer
# Microsoft's ONNX Runtime builds keep a usage database under ~/.cache unless told not to.
export ORT_DISABLE_TELEMETRY="${ORT_DISABLE_TELEMETRY:-1}"

if [[ -f "$fixtures/resnet20_meanimage_159.dnn" ]]; then
    inputs=(--tarball "$fixtures/cifar-10-python.tar.gz" --model "$fixtures/resnet20_meanimage_159.dnn"
            --mean-image "$fixtures/CIFAR-10_mean.xml")
else
    inputs=()  # the walkthrough's URLs
fi
target/release/producer stage --store "$store" --container cifar --model-name resnet20 "${inputs[@]}"
# Standard output is the job's id alone; the rest (accuracy, timings, report) is on stderr.
job="$(target/release/producer --store "$store" --container cifar --model-name resnet20 --embedded "$@")"
echo "job: $job"
echo "results: $store/cifar/results/$job/"
