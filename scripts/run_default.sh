#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on the embedded default: extract the default study
# (SmolLM2-135M-Instruct with a steering positive control and a random-direction negative
# control) -> bundle -> analyze -> compact. Resumes an interrupted run. Prints where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
STUDY="${1:-studies/default.toml}"
echo "[run] building persona-geometry (release)"
cargo build --release --locked -p extractor
PG="$CARGO_TARGET_DIR/release/persona-geometry"
OUT_DIR=runs/default
[ "$STUDY" = studies/default-full.toml ] && OUT_DIR=runs/default-full
BUNDLE="$OUT_DIR/$(basename "$OUT_DIR").pgb"
mkdir -p "$OUT_DIR"
if [ ! -f "$BUNDLE" ]; then
  RESUME=()
  [ -d "$BUNDLE.parts" ] && RESUME=(--resume)
  "$PG" extract "$STUDY" "${RESUME[@]}"
fi
"$PG" inspect "$BUNDLE"
"$PG" analyze "$BUNDLE" --out "$OUT_DIR/report"
"$PG" compact "$BUNDLE" -o "$OUT_DIR/$(basename "$OUT_DIR").compact.pgb"
echo
echo "[run] report: $OUT_DIR/report/report.md (and report.json); bundle: $BUNDLE"
