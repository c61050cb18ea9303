#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on the embedded default: extract the default study
# (SmolLM2-135M-Instruct with a steering positive control and a random-direction negative
# control) -> bundle -> analyze (+ SVG figures) -> compact -> the explorer page, served on
# 127.0.0.1 with this run's bundle. Resumes an interrupted run. Prints where things are.
#   ./scripts/run_default.sh [STUDY.toml]     PG_NO_SERVE=1 skips serving; PG_PORT sets the port
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
NAME="$(basename "$OUT_DIR")"
BUNDLE="$OUT_DIR/$NAME.pgb"
mkdir -p "$OUT_DIR"
if [ ! -f "$BUNDLE" ]; then
  RESUME=()
  [ -d "$BUNDLE.parts" ] && RESUME=(--resume)
  "$PG" extract "$STUDY" "${RESUME[@]}"
fi
"$PG" inspect "$BUNDLE"
"$PG" analyze "$BUNDLE" --out "$OUT_DIR/report" --figures
"$PG" compact "$BUNDLE" -o "$OUT_DIR/$NAME.compact.pgb" --reference "$OUT_DIR/report/report.json"
echo
echo "[run] report: $OUT_DIR/report/report.md (and report.json, figures/); bundle: $BUNDLE"
echo "[run] building the explorer page (first time: installs trunk, wasm-bindgen, binaryen)"
./scripts/build_explorer.sh >/dev/null
cp "$OUT_DIR/$NAME.compact.pgb" "dist/run-$NAME.compact.pgb"
cp "$OUT_DIR/$NAME.compact.pgb.head.json" "dist/run-$NAME.compact.pgb.head.json"
[ -n "${PG_NO_SERVE:-}" ] && exit 0
PORT="${PG_PORT:-8080}"
echo "[run] explorer with this run's bundle:  http://127.0.0.1:$PORT/?bundle=run-$NAME.compact.pgb"
echo "[run] the embedded full-size study:     http://127.0.0.1:$PORT/"
echo "[run] serving dist/ (plain static files; Ctrl-C stops)"
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory dist
