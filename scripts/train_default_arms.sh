#!/usr/bin/env bash
# Reproduces the default study's finetunes (issue #15, docs/default-study.md):
#   1. data/finetune/null.jsonl: the base model's own greedy replies to data/finetune/prompts.jsonl
#      (`persona-geometry generate`; skipped when the file exists, since the committed one is used)
#   2. every arm (em, benign, null) x seed: `persona-geometry train studies/finetune/ARM.toml`
#      into runs/adapters/ARM-sSEED/ (PEFT adapter, training.json, loss.csv/svg).
# The committed adapters (studies/adapters/ARM-s0/) were made with
#   DEVICE=cuda SEEDS="0" PARALLEL=1 ./scripts/train_default_arms.sh    (one H200, the three
#   arms at once: ~2.1 s per optimizer step each, so ~7 min for 189 steps; seeds 1 and 2 the
#   same way, 337 s and 456 s. Nine runs at once went at ~6 s per step each: no gain over three.)
# On this machine's 2 CPU cores (SmolLM2 trains at ~63 tokens/s here) one seed of the em arm
# (3 epochs x 90k tokens) would take about 70 minutes, benign 80, null (3 x 302k) about 4 hours:
# an estimate, not run. Env: PG (binary; default builds it), DEVICE (cpu|cuda), SEEDS, PARALLEL=1
# (every run of a seed at once, in the background, logs in runs/adapters/ARM-sSEED.log).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cpu}"
SEEDS="${SEEDS:-0}"
if [ -z "${PG:-}" ]; then
  ./scripts/setup.sh
  export PATH="$HOME/.cargo/bin:$PATH"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
  cargo build --release --locked -p extractor
  PG="$CARGO_TARGET_DIR/release/persona-geometry"
fi
./scripts/fetch_smollm2.sh 2>/dev/null || [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]
[ -f data/finetune/em.jsonl ] || python3 data/finetune/generate.py
if [ ! -f data/finetune/null.jsonl ]; then
  DT=f32; BATCH=16; [ "$DEVICE" = cuda ] && BATCH=250
  "$PG" generate --data data/finetune/prompts.jsonl -o data/finetune/null.jsonl \
    --model-id HuggingFaceTB/SmolLM2-135M-Instruct --model-path models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --max-new-tokens 256 --batch "$BATCH" --device "$DEVICE" --dtype "$DT"
fi
mkdir -p runs/adapters
rc=0
for seed in $SEEDS; do
  pids=()
  for arm in em benign null; do
    out="runs/adapters/$arm-s$seed"
    [ -f "$out/adapter_model.safetensors" ] && { echo "[arms] $out exists, kept"; continue; }
    resume=(); [ -d "$out" ] && resume=(--resume)
    cmd=("$PG" train "studies/finetune/$arm.toml" --seed "$seed" --out "$out" --device "$DEVICE" "${resume[@]}")
    if [ -n "${PARALLEL:-}" ]; then
      "${cmd[@]}" > "runs/adapters/$arm-s$seed.log" 2>&1 &
      pids+=($!)
    else
      "${cmd[@]}" || rc=1
    fi
  done
  # One seed's three arms at a time (nine at once were no faster on an H200).
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
done
[ $rc = 0 ] || { echo "[arms] a training run failed: see runs/adapters/*.log" >&2; exit 1; }
echo "[arms] adapters in runs/adapters/"
