#!/usr/bin/env bash
# Installs the ONNX Runtime shared library into .onnxruntime/ at the repository root, where the
# binaries look for it when ORT_DYLIB_PATH is not set.
#
# The library comes from the `onnxruntime` wheel on PyPI. The library inside a wheel does not
# depend on Python, so the script takes the wheel built for this host's OS and CPU (Linux
# x86-64 or arm64, macOS arm64) whatever Python is installed, or none: it reads the package
# index's JSON API, downloads the wheel, checks its sha256 against the index, and unpacks only
# the shared libraries. No Python environment is created or changed, and pip is not used.
#
# Needs: curl; jq or python3 (to read the index's JSON); unzip or python3 (to unpack).
#
# Environment (all optional):
#   ORT_PACKAGE   onnxruntime (CPU, the default) or onnxruntime-gpu (CUDA build with its
#                 provider libraries; needs CUDA 13 and cuDNN 9 for CUDA 13 at run time)
#   ORT_VERSION   the release; defaults below
#   ORT_PLATFORM  linux-x86_64, linux-aarch64, macos-arm64 or macos-x86_64; default: this host
#   ORT_INDEX     the package index, https://pypi.org by default
#   ORT_DEST      where to install, .onnxruntime/ at the repository root by default
#
# `--dry-run` prints the wheel it would fetch (name, URL, sha256) and stops.
# Re-running is a no-op once the library is there.
set -euo pipefail

package="${ORT_PACKAGE:-onnxruntime}"
# The GPU wheel trails the CPU one: 1.31.1 is the newest onnxruntime-gpu on PyPI.
case "$package" in
    onnxruntime-gpu) version="${ORT_VERSION:-1.31.1}" ;;
    *) version="${ORT_VERSION:-1.32.0}" ;;
esac
index="${ORT_INDEX:-https://pypi.org}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ORT_DEST:-$root/.onnxruntime}"
dry_run=false
[[ "${1:-}" == "--dry-run" ]] && dry_run=true

die() {
    echo "install-onnxruntime: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# The platform, and what its wheels and libraries are called.
if [[ -z "${ORT_PLATFORM:-}" ]]; then
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64 | Linux-amd64) ORT_PLATFORM=linux-x86_64 ;;
        Linux-aarch64 | Linux-arm64) ORT_PLATFORM=linux-aarch64 ;;
        Darwin-arm64) ORT_PLATFORM=macos-arm64 ;;
        Darwin-x86_64) ORT_PLATFORM=macos-x86_64 ;;
        *) die "no ONNX Runtime wheel for $(uname -s) $(uname -m); build ONNX Runtime from source and set ORT_DYLIB_PATH to its library" ;;
    esac
fi
case "$ORT_PLATFORM" in
    linux-x86_64) tag_re='manylinux[0-9_]*_x86_64' lib=libonnxruntime.so versioned="libonnxruntime.so.$version" ;;
    linux-aarch64) tag_re='manylinux[0-9_]*_aarch64' lib=libonnxruntime.so versioned="libonnxruntime.so.$version" ;;
    macos-arm64) tag_re='macosx_[0-9_]*_(arm64|universal2)' lib=libonnxruntime.dylib versioned="libonnxruntime.$version.dylib" ;;
    macos-x86_64) tag_re='macosx_[0-9_]*_(x86_64|universal2)' lib=libonnxruntime.dylib versioned="libonnxruntime.$version.dylib" ;;
    *) die "ORT_PLATFORM=$ORT_PLATFORM is not one of linux-x86_64, linux-aarch64, macos-arm64, macos-x86_64" ;;
esac

if ! $dry_run && [[ -e "$dest/$lib" && -e "$dest/$versioned" ]]; then
    echo "ONNX Runtime $version already in $dest"
    exit 0
fi

have curl || die "needs curl to fetch the $package wheel from $index (e.g. apt-get install curl)"
if have jq; then
    json_tool=jq
elif have python3; then
    json_tool=python3
else
    die "needs jq or python3 to read the package index's JSON (e.g. apt-get install jq)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The release's files as lines of "filename url sha256". The per-release document is tried
# first; some indexes (mirrors) serve only the project's, which lists every release.
list_files() {
    local url="$index/pypi/$package/$version/json" filter='.urls'
    if ! curl -fsSL --retry 3 -o "$tmp/index.json" "$url" 2>/dev/null; then
        url="$index/pypi/$package/json" filter=".releases[\"$version\"]"
        curl -fsSL --retry 3 -o "$tmp/index.json" "$url" \
            || die "could not read $url: is $index reachable, and is $package a package there?"
    fi
    echo "$url" >"$tmp/index.url"
    if [[ $json_tool == jq ]]; then
        jq -r "($filter // []) | .[] | \"\(.filename) \(.url) \(.digests.sha256)\"" "$tmp/index.json"
    else
        python3 - "$tmp/index.json" "$version" "$filter" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
files = doc.get("urls", []) if sys.argv[3] == ".urls" else doc.get("releases", {}).get(sys.argv[2], [])
for f in files:
    print(f["filename"], f["url"], f["digests"]["sha256"])
PY
    fi
}

# A URL as the index gave it, made absolute (mirrors give paths relative to the JSON document).
absolute() {
    local url="$1" base
    case "$url" in
        http://* | https://*) echo "$url"; return ;;
        /*) echo "$(sed -E 's#^(https?://[^/]+).*#\1#' <"$tmp/index.url")$url"; return ;;
    esac
    base="$(sed -E 's#/[^/]*$##' <"$tmp/index.url")"
    while [[ "$url" == ../* ]]; do
        url="${url#../}"
        base="${base%/*}"
    done
    echo "$base/${url#./}"
}

files="$(list_files)"
[[ -n "$files" ]] || die "$index has no files for $package $version: check ORT_VERSION"
# Any CPython tag will do (the library is the same in each); free-threaded builds (cp313t) are
# skipped, and the newest tag is taken.
choice="$(grep -E "^[^ ]+-cp[0-9]+-cp[0-9]+-$tag_re\.whl " <<<"$files" | sort -V | tail -n 1 || true)"
if [[ -z "$choice" ]]; then
    platforms="$(grep -oE -- '-(manylinux|macosx|win)[^ ]*\.whl ' <<<"$files" | sed -E 's/^-//; s/\.whl $//' | sort -u | paste -sd ' ' -)"
    die "$package $version has no wheel for $ORT_PLATFORM (it has: ${platforms:-nothing}); try another ORT_VERSION or set ORT_DYLIB_PATH to a library built from source"
fi
read -r wheel url sha256 <<<"$choice"
url="$(absolute "$url")"

if $dry_run; then
    echo "$wheel $url $sha256"
    exit 0
fi

# manylinux_2_28 means glibc 2.28 or newer: say so now rather than fail to load later.
if [[ "$ORT_PLATFORM" == linux-* ]] && [[ "$wheel" =~ manylinux_([0-9]+)_([0-9]+)_ ]]; then
    need="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
    have_glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}' || true)"
    if [[ -z "$have_glibc" ]]; then
        die "$wheel needs glibc $need or newer, and this host has no glibc (musl?); use a glibc distribution or set ORT_DYLIB_PATH to a library built for this one"
    elif [[ "$(printf '%s\n%s\n' "$need" "$have_glibc" | sort -V | head -n 1)" != "$need" ]]; then
        die "$wheel needs glibc $need or newer, and this host has $have_glibc; use a newer distribution or an older ORT_VERSION"
    fi
fi

echo "Fetching $wheel from $index"
progress=(-sS)
[[ -t 2 ]] && progress=(--progress-bar)
curl -fL --retry 3 "${progress[@]}" -o "$tmp/$wheel" "$url" || die "could not download $url"

if have sha256sum; then
    got="$(sha256sum "$tmp/$wheel" | awk '{print $1}')"
elif have shasum; then
    got="$(shasum -a 256 "$tmp/$wheel" | awk '{print $1}')"
elif have python3; then
    got="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$tmp/$wheel")"
else
    die "needs sha256sum, shasum or python3 to check the wheel's sha256"
fi
[[ "$got" == "$sha256" ]] || die "$wheel has sha256 $got, the index says $sha256: the download is corrupt or was tampered with; run again"

# Only the shared libraries (ONNX Runtime and, in the GPU build, its provider libraries).
mkdir -p "$tmp/unpacked" "$dest"
if have unzip; then
    unzip -q -j -o "$tmp/$wheel" 'onnxruntime/capi/lib*' -d "$tmp/unpacked"
elif have python3; then
    python3 - "$tmp/$wheel" "$tmp/unpacked" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/lib"):
            with z.open(name) as src, open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as out:
                out.write(src.read())
PY
else
    die "needs unzip or python3 to unpack the wheel (e.g. apt-get install unzip)"
fi
[[ -e "$tmp/unpacked/$versioned" ]] || die "$wheel holds no $versioned; the package's layout changed: set ORT_DYLIB_PATH to the library"
for file in "$tmp/unpacked"/*; do
    mv -f "$file" "$dest/"
    echo "unpacked $(basename "$file")"
done
ln -sf "$versioned" "$dest/$lib"
echo "ONNX Runtime $version installed in $dest"
