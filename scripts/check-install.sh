#!/usr/bin/env bash
# Runs scripts/install-onnxruntime.sh as fresh hosts would, each into a directory of its own,
# and checks that the library it leaves loads and reports the release asked for:
#   - a python3 that says it is 3.10 (the release has no wheel for it) and has no pip, as on
#     Ubuntu 22.04 or Debian without python3-pip; no jq;
#   - no Python at all: jq and unzip;
#   - a python3 without pip and nothing else: no jq, no unzip;
# and that it names the right wheel for every platform it supports, and says what is missing
# when it cannot go on.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install="$root/scripts/install-onnxruntime.sh"
python="$(command -v python3)" || { echo "check-install: needs python3 to check the library loads" >&2; exit 1; }
version="${ORT_VERSION:-1.32.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() {
    echo "check-install: FAILED: $*" >&2
    exit 1
}

# A bin directory holding every command of the system's except those named, so that a run sees
# a host without them.
host_without() {
    local dir="$work/bin-$1" name
    shift
    mkdir -p "$dir"
    for tool in /usr/local/bin/* /usr/bin/* /bin/*; do
        name="$(basename "$tool")"
        [[ -e "$dir/$name" ]] && continue
        for excluded in "$@"; do
            # shellcheck disable=SC2053 # the names are globs
            [[ "$name" == $excluded ]] && continue 2
        done
        ln -s "$tool" "$dir/$name"
    done
    echo "$dir"
}

# A python3 without pip that says it is Python 3.10.
"$python" -m venv --without-pip "$work/venv"
"$work/venv/bin/python3" -c 'import pip' 2>/dev/null && fail "the venv made with --without-pip can import pip"
mkdir -p "$work/py310"
cat >"$work/py310/python3" <<EOF
#!/bin/sh
case "\$1" in
    --version | -V) echo "Python 3.10.12"; exit 0 ;;
esac
exec "$work/venv/bin/python3" "\$@"
EOF
chmod +x "$work/py310/python3"

loads() {
    "$python" - "$1" "$version" <<'PY'
import ctypes, sys
path, want = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(path)
class ApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.c_void_p), ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]
lib.OrtGetApiBase.restype = ctypes.POINTER(ApiBase)
got = lib.OrtGetApiBase().contents.GetVersionString().decode()
if got != want:
    sys.exit(f"{path} reports ONNX Runtime {got}, not {want}")
print(f"  {path} loads: ONNX Runtime {got}")
PY
}

run_host() {
    local name="$1" path="$2" dest="$work/dest-$1"
    echo "host: $name"
    env -i HOME="$HOME" PATH="$path" ORT_DEST="$dest" ORT_VERSION="$version" bash "$install" >"$work/$name.log" 2>&1 \
        || { cat "$work/$name.log" >&2; fail "$name: the install script failed"; }
    loads "$dest/libonnxruntime.so" || fail "$name: the installed library does not load"
}

case "$(uname -s)" in
    Linux)
        run_host python310-no-pip "$work/py310:$(host_without a python\* pip\* jq)"
        run_host no-python "$(host_without b python\* pip\*)"
        run_host python-only "$work/py310:$(host_without c python\* pip\* jq unzip)"
        ;;
    *) echo "hosts: skipped (not Linux)" ;;
esac

# The wheel named for each platform, from the index (nothing downloaded).
for pair in linux-x86_64:manylinux_2_[0-9]*_x86_64 linux-aarch64:manylinux_2_[0-9]*_aarch64 macos-arm64:macosx_*_arm64; do
    platform="${pair%%:*}" pattern="${pair#*:}"
    wheel="$(ORT_PLATFORM="$platform" ORT_VERSION="$version" "$install" --dry-run | awk '{print $1}')"
    # shellcheck disable=SC2053 # the pattern is a glob
    [[ "$wheel" == onnxruntime-"$version"-cp3*-$pattern.whl ]] || fail "$platform: named $wheel"
    echo "platform $platform: $wheel"
done

# What it says when it cannot go on: one line naming what is missing.
no_curl="$(env -i PATH="$(host_without d curl)" ORT_DEST="$work/none" bash "$install" 2>&1)" && fail "ran without curl"
[[ "$no_curl" == "install-onnxruntime: needs curl"* && "$(wc -l <<<"$no_curl")" -eq 1 ]] || fail "without curl it said: $no_curl"
echo "without curl: $no_curl"
no_json="$(env -i PATH="$(host_without e python\* jq)" ORT_DEST="$work/none" bash "$install" 2>&1)" && fail "ran without jq or python3"
[[ "$no_json" == "install-onnxruntime: needs jq or python3"* && "$(wc -l <<<"$no_json")" -eq 1 ]] || fail "without jq or python3 it said: $no_json"
echo "without jq or python3: $no_json"
echo "check-install: ok"
