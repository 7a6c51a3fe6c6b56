#!/usr/bin/env bash
# Installs the ONNX Runtime shared library into .onnxruntime/ at the repository root, where the
# binaries look for it when ORT_DYLIB_PATH is not set.
#
# The library comes from the `onnxruntime` wheel on PyPI (the CPU build; set
# ORT_PACKAGE=onnxruntime-gpu for the CUDA build, with its CUDA and cuDNN provider libraries:
# it needs CUDA 13 and cuDNN 9 for CUDA 13 at run time). Only the shared libraries are
# unpacked: no Python environment is created or changed. Re-running is a no-op once the
# library is there.
set -euo pipefail

package="${ORT_PACKAGE:-onnxruntime}"
# The GPU wheel trails the CPU one: 1.31.1 is the newest onnxruntime-gpu on PyPI.
case "$package" in
    onnxruntime-gpu) version="${ORT_VERSION:-1.31.1}" ;;
    *) version="${ORT_VERSION:-1.32.0}" ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.onnxruntime"

if [[ -e "$dest/libonnxruntime.so" && -e "$dest/libonnxruntime.so.$version" ]]; then
    echo "ONNX Runtime $version already in $dest"
    exit 0
fi

command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch the onnxruntime wheel" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "Fetching $package==$version from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$package==$version"
wheel="$(ls "$tmp"/*.whl)"

mkdir -p "$dest"
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in n]
    if not libs:
        sys.exit(f"{wheel} holds no libonnxruntime shared library")
    for name in libs:
        target = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as out:
            out.write(src.read())
        print("unpacked", os.path.basename(name))
PY
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so"
echo "ONNX Runtime $version installed in $dest"
