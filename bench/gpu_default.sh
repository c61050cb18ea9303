#!/usr/bin/env bash
# The default study's GPU work (issue #15), for the `device` tool or any CUDA host. Runs the steps
# named, writing what comes back into $OUT:
#   stash    copies every carried .gpu_*/ file into /tmp/pg-stash (the device tool carries
#            64 MiB a call with the working tree, so the 98 MB GGUF travels in pieces over
#            consecutive calls: .gpu_a/gguf.part0, .gpu_b/gguf.part1, .gpu/gguf.part2)
#   model    puts SmolLM2's GGUF together from the pieces (stash + .gpu/) and checks its SHA-256
#   adapters puts the finetunes already trained where the study looks: seed 0 from the committed
#            studies/adapters/, others from a carried .gpu/adapters-*.tar
#   arms     scripts/train_default_arms.sh on the GPU for $SEEDS (default "0 1 2"; adapters that
#            exist are kept); returns one tar per arm of the seeds it trained
#   study    extracts studies/default-full.toml (base + 9 finetunes; resumes its parts)
#   analyze  analyze --figures + compact (k 48) of the full bundle; returns the report and the
#            compact bundle (split in 15 MB pieces: cat them)
# The binary comes from .gpu/pg.xz (scripts/build_cuda.sh, xz) when carried, else the one an
# earlier call of this machine unpacked.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/pg-out}"
mkdir -p "$OUT"
export PG=/tmp/persona-geometry
if [ -f .gpu/pg.xz ]; then xz -dc .gpu/pg.xz > "$PG" && chmod +x "$PG"; fi
need_pg() { [ -x "$PG" ] || { echo "no binary: carry .gpu/pg.xz" >&2; exit 1; }; }
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
  stash)
    mkdir -p /tmp/pg-stash
    for f in .gpu_*/*; do [ -f "$f" ] && cp "$f" /tmp/pg-stash/; done
    ls -la /tmp/pg-stash ;;
  model)
    mkdir -p models
    if ! echo "$GGUF_SHA256  $GGUF" | sha256sum -c --status 2>/dev/null; then
      # Earlier pieces were stashed in /tmp (paths in the checkout are not kept between calls).
      cp .gpu/gguf.part* /tmp/pg-stash/ 2>/dev/null
      cat $(ls /tmp/pg-stash/gguf.part* | sort) > "$GGUF"
      echo "$GGUF_SHA256  $GGUF" | sha256sum -c || exit 1
    fi ;;
  adapters)
    for arm in em benign null; do
      [ -e "runs/adapters/$arm-s0" ] || cp -r "studies/adapters/$arm-s0" "runs/adapters/$arm-s0"
    done
    for t in .gpu/adapters-*.tar; do [ -f "$t" ] && tar -C runs/adapters -xf "$t"; done
    ls runs/adapters ;;
  arms)
    need_pg
    start=$(date +%s)
    seeds="${SEEDS:-0 1 2}"
    DEVICE=cuda SEEDS="$seeds" PARALLEL=1 PG="$PG" ./scripts/train_default_arms.sh 2>&1 | tee "$OUT/arms.log"
    echo "arms: $(( $(date +%s) - start )) s" | tee -a "$OUT/arms.log"
    tail -n 3 runs/adapters/*.log >> "$OUT/arms.log"
    for arm in em benign null; do
      dirs=(); for seed in $seeds; do dirs+=("$arm-s$seed"); done
      tar -C runs/adapters -cf "$OUT/adapters-$arm.tar" --exclude=checkpoint "${dirs[@]}"
    done
    ls -la "$OUT" ;;
  study)
    need_pg
    start=$(date +%s)
    resume=(); [ -d runs/default-full/default-full.pgb.parts ] && resume=(--resume)
    "$PG" extract studies/default-full.toml "${resume[@]}" 2>&1 | tee "$OUT/study.log"
    echo "study: $(( $(date +%s) - start )) s" | tee -a "$OUT/study.log" ;;
  analyze)
    need_pg
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
