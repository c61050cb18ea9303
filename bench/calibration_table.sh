#!/usr/bin/env bash
# The calibration table of issue #12, rerun with its commands: null studies (no planted effect)
# `synth --personas 12 --questions 120 --hidden 256 --layers 20 --methods A --seed S`, then
# `analyze --permutations 199 --components K`, S = 1..30 (or $1 seeds), K = 16, 64, 256; prints
# the share of base->em rows with p <= 0.05 per metric (the pre-registered p and the two-sided p).
# Extra synth flags (e.g. --spectrum-decay 1) can be passed in PG_SYNTH_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
cargo build --release --locked -p extractor >/dev/null
PG="$CARGO_TARGET_DIR/release/persona-geometry"
SEEDS="${1:-30}"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
for s in $(seq 1 "$SEEDS"); do
  # shellcheck disable=SC2086
  "$PG" synth --personas 12 --questions 120 --hidden 256 --layers 20 --methods A --seed "$s" \
    ${PG_SYNTH_FLAGS:-} -o "$W/s$s.pgb" >/dev/null
  for k in 16 64 256; do
    "$PG" analyze "$W/s$s.pgb" --permutations 199 --components "$k" --out "$W/r$s-$k" >/dev/null 2>&1
  done
done
python3 - "$W" "$SEEDS" <<'PY'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
metrics = ["M1_raw", "M1_centred", "M1_separation", "M2_em_axis", "M2_pc1_axis", "M3_accuracy", "M3_log_posterior"]
print("| K | " + " | ".join(metrics) + " |")
print("|---|" + "---|" * len(metrics))
for k in (16, 64, 256):
    cells = []
    for m in metrics:
        rej = rej2 = 0
        for s in range(1, n + 1):
            r = json.load(open(f"{w}/r{s}-{k}/report.json"))
            row = next(x for x in r["rows"] if x["family"] == "EmVsBase" and x["metric"] == m)
            rej += row["p"] <= 0.05
            rej2 += row["p_two_sided"] <= 0.05
        cells.append(f"{rej}/{n} ({rej2}/{n})")
    print(f"| {k} | " + " | ".join(cells) + " |")
PY
