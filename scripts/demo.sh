#!/usr/bin/env bash
# The whole job on the built-in demo data, on CPU in a few minutes:
# synthetic faces -> multi-resolution LMDB -> progressive training 4x4..32x32 -> sample grid.
# Everything lands in demo/ (ignored by git). Re-running continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=${DEMO_DIR:-demo}
KIMG=${DEMO_KIMG:-}            # optional: stop training early, e.g. DEMO_KIMG=20

mkdir -p "$OUT"
if [ ! -d "$OUT/faces" ]; then
    $PY -m data_prep synth "$OUT/faces.partial" --count 2000 --size 64 --seed 0
    mv "$OUT/faces.partial" "$OUT/faces"
fi
$PY -m data_prep build "$OUT/faces" "$OUT/faces.lmdb" --max-res 32
$PY -m data_prep preview "$OUT/faces.lmdb" --res 32 --out "$OUT/reals.png" --count 64

$PY train.py --data "$OUT/faces.lmdb" --out "$OUT/run" --config small --resume auto \
    ${KIMG:+--total-kimg "$KIMG"}

if [ -f generate.py ]; then
    $PY generate.py "$OUT/run" --out "$OUT/samples" --seeds 0-63 --grid 8x8
fi
echo
echo "reals:    $OUT/reals.png"
echo "samples:  $OUT/run/samples-latest.png  (EMA generator, fixed latents)"
echo "model:    $(ls "$OUT"/run/checkpoint-*.pt | tail -n 1)"
