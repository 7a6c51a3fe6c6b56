#!/usr/bin/env bash
# Assembles libjpeg-turbo's x86-64 SIMD code (NASM syntax, in third_party/mozjpeg-sys/vendor/simd/
# x86_64) into the objects under third_party/mozjpeg-sys/pregenerated/, which the build links on
# an x86-64 host without nasm: every build then decodes JPEGs with SIMD, the first one on a fresh
# machine included. A host with nasm assembles the same sources itself.
#
#   scripts/pregenerate-jpeg-simd.sh           rewrite the objects (after updating the sources)
#   scripts/pregenerate-jpeg-simd.sh --check   assemble into a temporary folder and fail if any
#                                              committed object differs from what nasm makes
#
# Needs nasm (2.16.01 made the committed objects; another release may encode differently, and
# --check then says so). The flags are the ones the crate's build script gives nasm, without debug
# information; paths are relative so that the objects do not name this machine's folders.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
crate="$root/third_party/mozjpeg-sys"
made_with="NASM version 2.16.01"
check=false
[[ "${1:-}" == "--check" ]] && check=true

command -v nasm >/dev/null || { echo "pregenerate-jpeg-simd: nasm is not installed" >&2; exit 1; }
version="$(nasm -v)"

# The *ext-*.asm files are included by the others, not assembled alone (the build script's list).
sources=()
for source in "$crate"/vendor/simd/x86_64/*.asm; do
    case "$(basename "$source")" in
        *colext-*|*gryext-*|*mrgext-*) ;;
        *) sources+=("vendor/simd/x86_64/$(basename "$source")") ;;
    esac
done

assemble() { # format, defines, destination
    local format="$1" defines="$2" dest="$3"
    mkdir -p "$dest"
    for source in "${sources[@]}"; do
        # shellcheck disable=SC2086 # the defines are separate words
        (cd "$crate" && nasm "$format" -DPIC $defines -D__x86_64__ \
            -Ivendor/simd/x86_64/ -Ivendor/simd/nasm/ \
            "$source" -o "$dest/$(basename "${source%.asm}").o")
    done
}

if $check; then
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    assemble -felf64 -DELF "$scratch/x86_64-elf"
    assemble -fmacho64 -DMACHO "$scratch/x86_64-macho"
    if ! diff -r "$scratch" "$crate/pregenerated" >/dev/null; then
        if [[ "$version" != "$made_with"* ]]; then
            echo "pregenerate-jpeg-simd: the objects differ, and this nasm ($version) is not the one" \
                "that made them ($made_with): compare with that release" >&2
        else
            echo "pregenerate-jpeg-simd: third_party/mozjpeg-sys/pregenerated is not what nasm makes" \
                "of the sources beside it; run scripts/pregenerate-jpeg-simd.sh" >&2
            diff -rq "$scratch" "$crate/pregenerated" >&2 || true
        fi
        exit 1
    fi
    echo "pregenerated JPEG SIMD objects match their sources (${#sources[@]} files, $version)" >&2
else
    [[ "$version" == "$made_with"* ]] \
        || echo "pregenerate-jpeg-simd: $version, not $made_with: update made_with" >&2
    rm -rf "$crate/pregenerated"
    assemble -felf64 -DELF "$crate/pregenerated/x86_64-elf"
    assemble -fmacho64 -DMACHO "$crate/pregenerated/x86_64-macho"
    echo "wrote ${#sources[@]} objects per format under third_party/mozjpeg-sys/pregenerated" >&2
fi
