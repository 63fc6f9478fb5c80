#!/usr/bin/env bash
# Builds, on a machine without a GPU, what benches/gpu/device-run.sh runs on a GPU machine: the
# `lus` binary and the test binaries that have CUDA variants (`test_device!`), all with the
# `cuda` feature, stripped, into BIN_DIR (default .gpu/bin, git-ignored by .git/info/exclude).
#
#   usage: benches/gpu/build.sh [BIN_DIR]
#   env:   CARGO_TARGET_DIR (default /tmp/lus-cuda-target), and those of .ci/cuda-check.sh
#
# The binaries link the CUDA 13 libraries dynamically and need the NVIDIA driver to start;
# device-run.sh finds the libraries of the machine's PyTorch wheels.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir=${1:-.gpu/bin}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/lus-cuda-target}
mkdir -p "$bin_dir"
.ci/cuda-check.sh build --release --locked -p lus-experiments --bin lus --features cuda
cp "$CARGO_TARGET_DIR/release/lus" "$bin_dir/lus"
# package:test target pairs with CUDA variants
for pair in lus-unet:reference lus-train:reference lus-train:device lus-transfer:classifier; do
  package=${pair%%:*}; target=${pair##*:}
  executable=$(.ci/cuda-check.sh test --release --locked --no-run -p "$package" --test "$target" \
    --features cuda --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
  [ -x "$executable" ] || { echo "no test binary for $pair" >&2; exit 1; }
  cp "$executable" "$bin_dir/test-$package-$target"
done
strip "$bin_dir"/*
# The test binaries find their fixtures under the CARGO_MANIFEST_DIR they were built with.
echo "$PWD" > "$bin_dir/source-root"
ls -l "$bin_dir"
