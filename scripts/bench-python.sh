#!/usr/bin/env bash
# Creates .bench-venv/ at the repository root: the Python peers the bench compares against
# (bench/python/), with PIL, NumPy and ONNX Runtime at the version the binaries use, and
# Ray Data when it installs on this Python. Only the bench uses it; nothing else needs Python.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bench-venv"
ort_version="${ORT_VERSION:-1.32.0}"

command -v python3 >/dev/null || { echo "python3 is needed for the Python peers" >&2; exit 1; }
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet numpy pillow "onnxruntime==$ort_version"
# Ray is optional: its wheels lag new Pythons and platforms, and the bench skips its row
# (saying so) when it is missing.
"$venv/bin/python" -m pip install --quiet "ray[data]" \
    || echo "Ray Data did not install here: the bench will skip its row" >&2
"$venv/bin/python" - <<'PY'
import importlib
for name in ["numpy", "PIL", "onnxruntime", "ray"]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError:
        print(f"{name}: not installed")
PY
