#!/usr/bin/env bash
# The default study's GPU work (issue #15), for the `device` tool or any CUDA host: unpacks the
# CUDA binary (.gpu/pg.xz), then runs the steps named, writing what comes back into $OUT:
#   model    puts SmolLM2's GGUF together from /tmp/gguf.part0 (carried earlier as .gpu_a/) + .gpu/gguf.part1 (the device
#            tool carries 64 MiB a call, so the 98 MB file travels in two calls) and checks it
#   arms     scripts/train_default_arms.sh on the GPU: null.jsonl, then 3 arms x 3 seeds at once;
#            returns null.jsonl (+ provenance) and one tar of adapters per arm
#   study    extracts studies/default-full.toml (base + 9 finetunes; resumes its parts)
#   analyze  analyze --figures + compact (k 48) of the full bundle; returns the report and the
#            compact bundle (split in 15 MB pieces: cat them)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/pg-out}"
mkdir -p "$OUT"
export PG=/tmp/persona-geometry
xz -dc .gpu/pg.xz > "$PG" && chmod +x "$PG"
LIB=$(python3 -c "import nvidia,os;print([os.path.join(p,'cu13','lib') for p in nvidia.__path__][0])")
export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}"
# The checkout is refreshed between calls: the model, adapters and study outputs live in /tmp
# (kept while the machine stays warm), linked into the checkout where the study files look.
KEEP=/tmp/pg-keep
mkdir -p "$KEEP/models" "$KEEP/adapters" "$KEEP/default-full" runs
for link in models:"$KEEP/models" runs/adapters:"$KEEP/adapters" runs/default-full:"$KEEP/default-full"; do
  # A real directory there (a run on one's own GPU host) is used as is.
  [ -e "${link%%:*}" ] && [ ! -L "${link%%:*}" ] && continue
  ln -sfn "${link#*:}" "${link%%:*}"
done
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
for step in "$@"; do
  case "$step" in
  model)
    mkdir -p models
    if ! echo "$GGUF_SHA256  $GGUF" | sha256sum -c --status 2>/dev/null; then
      # part0 came in an earlier call and was copied to /tmp (paths in the checkout are not kept).
      cat /tmp/gguf.part0 .gpu/gguf.part1 > "$GGUF"
      echo "$GGUF_SHA256  $GGUF" | sha256sum -c || exit 1
    fi ;;
  arms)
    start=$(date +%s)
    DEVICE=cuda SEEDS="0 1 2" PARALLEL=1 ./scripts/train_default_arms.sh 2>&1 | tee "$OUT/arms.log"
    echo "arms: $(( $(date +%s) - start )) s" | tee -a "$OUT/arms.log"
    tail -n 3 runs/adapters/*.log >> "$OUT/arms.log"
    tar -C data/finetune -cJf "$OUT/null-data.tar.xz" null.jsonl null.jsonl.provenance.json
    for arm in em benign null; do
      tar -C runs/adapters -cf "$OUT/adapters-$arm.tar" \
        --exclude=checkpoint "$arm-s0" "$arm-s1" "$arm-s2"
    done
    ls -la "$OUT" ;;
  study)
    start=$(date +%s)
    resume=(); [ -d runs/default-full/default-full.pgb.parts ] && resume=(--resume)
    "$PG" extract studies/default-full.toml "${resume[@]}" 2>&1 | tee "$OUT/study.log"
    echo "study: $(( $(date +%s) - start )) s" | tee -a "$OUT/study.log" ;;
  analyze)
    B=runs/default-full/default-full.pgb
    start=$(date +%s)
    "$PG" analyze "$B" --out runs/default-full/report --figures 2>&1 | tee "$OUT/analyze.log"
    echo "analyze: $(( $(date +%s) - start )) s" | tee -a "$OUT/analyze.log"
    "$PG" compact "$B" -o runs/default-full/default-full.compact.pgb --components 48 \
      --reference runs/default-full/report/report.json 2>&1 | tee -a "$OUT/analyze.log"
    tar -C runs/default-full -cJf "$OUT/report.tar.xz" report
    split -b 15000000 -d -a 1 runs/default-full/default-full.compact.pgb "$OUT/compact.part"
    sha256sum runs/default-full/default-full.compact.pgb | tee -a "$OUT/analyze.log" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
