#!/usr/bin/env bash
# Wheels that bench/gpu_check.py needs and the GPU image lacks (lmdb; torch 2.11, accelerate and
# numpy are there), for its Python 3.12 on x86-64, into .whl/ (kept out of git). Carry .whl with
# the device call and install it first (bench/RESULTS.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
PY="${PYTHON:-python3}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "lmdb==${LMDB_VERSION:-3.0.0}"
ls .whl
