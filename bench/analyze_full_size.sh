#!/usr/bin/env bash
# Benchmark of the exact analysis at the default study's full size: 12 personas x 240 questions,
# hidden 3,584 (Qwen2.5-7B), 3 checkpoints, methods A and B, 5 layers, N = 10,000 permutations,
# 1,000 bootstrap resamples (`analyze` defaults). Synthetic activations with a power-law noise
# spectrum; timing does not depend on the values. Peer in the same run: the direct numpy null of
# one cell (bench/m1_null_numpy.py). Also times `--m3-features components`. Needs ~4 GB of memory and ~3 GB of disk in $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
cargo build --release --locked -p extractor >/dev/null
PG="$CARGO_TARGET_DIR/release/persona-geometry"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
"$PG" synth --personas 12 --questions 240 --hidden 3584 --layers 7,14,20,21,27 --methods A,B \
  --spectrum-decay 1 --seed 1 -o "$W/full.pgb" >/dev/null
start=$(date +%s.%N)
"$PG" analyze "$W/full.pgb" --out "$W/report" 2>/dev/null >/dev/null
end=$(date +%s.%N)
ours=$(echo "$end - $start" | bc)
echo "persona-geometry analyze (exact, full width, N = 10,000, M3 on full activations): ${ours} s wall on $(nproc) cores"
start=$(date +%s.%N)
"$PG" analyze "$W/full.pgb" --out "$W/report-components" --m3-features components 2>/dev/null >/dev/null
end=$(date +%s.%N)
echo "the same with --m3-features components (M3 on the top 256 residual PCs): $(echo "$end - $start" | bc) s wall"
"$PG" export "$W/full.pgb" --format npz -o "$W/full.npz" >/dev/null
python3 bench/m1_null_numpy.py "$W/full.npz" A 20 1000 | tee "$W/peer.txt"
per_k=$(sed -n 's/.*= \([0-9.]*\) s per 1,000 draws/\1/p' "$W/peer.txt")
# The analysis draws 3 comparisons x 10 (method, layer) x 10,000 permutations = 300,000 nulls.
peer=$(echo "$per_k * 300" | bc)
echo "numpy direct nulls alone for the same analysis (300,000 draws, M1 only): ${peer} s"
echo "ratio (numpy nulls / whole persona-geometry analysis): $(echo "scale=1; $peer / $ours" | bc)x"
