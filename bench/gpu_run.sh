#!/usr/bin/env bash
# One GPU-host session of checks and timings, for the `device` tool or any CUDA host with torch's
# CUDA 13 libraries: unpacks the CUDA binary carried in .gpu/pg.xz (built here with
# scripts/build_cuda.sh), then runs what the arguments name, logging to $OUT (or /tmp/pg-out):
#   verify      parity with the HF fixture on the GPU (f32 within 1e-4, the fused kernels in use)
#   bench       Method A + B (auto batch) with the fused kernels, and B again with them off
#   benchab     Method A + B (auto batch) alone (bench without the unfused comparison)
#   tclong      Method B for 16 prompts x 1,000 new tokens: CUDA-core, then tensor-core attention
#   tcab        benchab with the CUDA-core attention kernel (PG_TC_ATTENTION=0), then with the
#               tensor-core one (the default), same build, same card
#   tcvariants  the tensor-core attention's f16 and head-dimension-64 variants checked against the
#               f32 reference (bf16 at 128 is what `check` covers), with short workloads
#   bench256    Method B at batch 256 (the reference's batch)
#   groupbytes  the HF fixture study (bf16, batch "auto", 240 questions: persona groups of 3) on one
#               GPU whole, as 3 shards merged, and aborted after 5 units then resumed: the three
#               bundles must be byte-identical (.gpu/fixture.tar.xz)
#   prefixab    Method A + B on the default study's own prompts with the shared-prefix prefill off
#               (PG_SHARED_PREFIX=0), then on (the default), same build, same card
#   normab      Method A + B on the default study's own prompts with the fused residual update +
#               RMSNorm off (PG_FUSED_NORM=0: the two kernels it replaces), then on (the default),
#               same build, same card; then on at a 1,440-row decoding batch (.gpu/fixtures.tar.xz)
#   studyab     Method A + B on the default study's own prompts (12 personas x 240 questions through
#               the chat template: each persona's prompt computed once per prefill chunk), then the
#               HF reference on the same token ids: A at batch 64 and 256, B at 256 (STUDY_HF_B=0
#               skips B); needs .gpu/fixtures.tar.xz (the tokenizer: hf-tiny-qwen2/model)
#   check       the kernel checks and a quarter of the workload (a quick look after a change)
#   merge       LoRA merge time on the GPU for a 7B-shaped r = 32 adapter (.gpu/merge.xz, built by
#               scripts/build_cuda.sh --example merge_speed)
#   profile     per-section profile of one 720-row batch (device synchronised per section)
#   hf          the HF transformers reference (bench/hf_reference_workload.py), same card
#   big         Method B at batch $BIG_BATCH (default 1440), to see whether larger batches pay
#   ncu         Nsight Compute counters of one decoding-attention launch ($NCU_KERNEL: a regex of
#               the kernel's name, default attention_decode: the tensor-core kernel)
#   kernels     every kernel's duration over ~3 decoding steps of a 720-row batch (ncu, CSV;
#               bench/ncu_summary.py sums it per kernel)
#   kernelsA    the same over ~3 prefill batches of Method A (batch 64)
#   clocks      `bench` (A + B, auto batch) with the SM clock and power sampled every 200 ms
#   batchA      Method A at batch 64, 128 and 256, then the HF reference's A at 64 and 256
#   train       `train` on the training oracle's recipe in f32 and bf16 on the GPU, checked against
#               the Trainer's record, and the adapter loaded with PEFT (bench/gpu_train.py check);
#               needs .gpu/fixtures.tar.xz (hf-tiny-qwen2 + lora-train, made by bench/pack_gpu.sh)
#   trainbench  `train` vs HF Trainer + PEFT (bf16, SDPA, gradient checkpointing) on random
#               Qwen2.5-7B-shaped weights, upstream recipe, 20 steps of 16 x ~300 tokens:
#               tokens/s and peak GPU memory (nvidia-smi, both sides)
#   trainnodrop ours again with lora_dropout = 0 (after trainbench): what the dropout masks cost
#   trainours   ours again on the trainbench workload with the caller's environment ($TAG names
#               the log), e.g. PG_FUSED_ADAM=0 TAG=candle-adam
#   fullstudy   bench-workload --full-study: a random 7B-shaped checkpoint + two adapters written
#               to disk, the real extract on base + em + benign at the default size, every phase
#               timed; then extract again on the written files (cold if the page cache drops)
#   trainprof   `train` on the trainbench workload for 3 steps (wall time per step), then every
#               kernel's duration over a window after warm-up (ncu, CSV, xz)
#   families    verify-fixture on the GPU for the Qwen3, Gemma 2 and Gemma 3 fixtures
#               (.gpu/families.tar.xz, made by bench/pack_gpu.sh)
#   qwen3 / gemma2  bench-workload --arch qwen3-8b / gemma2-9b against the HF reference on the
#               same shape (bench/configs/), 1,440 prompts, same call
#   twogpu      scale-out (needs 2 GPUs): the 7B-shaped workload on GPU 0 alone, then split in
#               two halves run at once on GPUs 0 and 1 (what `extract --devices 0,1` does with a
#               study's units); then the fixture study (.gpu/fixture.tar.xz: hf-tiny-qwen2 model
#               + adapters, bf16, batch auto) extracted on one GPU and with --devices 0,1: bytes
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/pg-out}"
mkdir -p "$OUT"
PG=/tmp/persona-geometry
xz -dc "${PGXZ:-.gpu/pg.xz}" > "$PG" && chmod +x "$PG"
LIB=$(python3 -c "import nvidia,os;print([os.path.join(p,'cu13','lib') for p in nvidia.__path__][0])")
export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}"
# The HF fixture travels as .gpu/fixture (a copy of ../shared/fixtures/hf-tiny-qwen2) or,
# smaller, as .gpu/fixture.tar.xz.
FIXTURE=.gpu/fixture
if [ ! -d "$FIXTURE" ] && [ -f .gpu/fixture.tar.xz ]; then
  mkdir -p /tmp/pg-fixture && tar -C /tmp/pg-fixture -xJf .gpu/fixture.tar.xz && FIXTURE=/tmp/pg-fixture/fixture
fi
if [ -f .gpu/fixtures.tar.xz ] && [ ! -d /tmp/pg-fixtures ]; then
  mkdir -p /tmp/pg-fixtures && tar -C /tmp/pg-fixtures -xJf .gpu/fixtures.tar.xz
fi
FX=/tmp/pg-fixtures
# Peak GPU memory of a command as nvidia-smi sees it (MiB), sampled every 100 ms.
with_peak() {
  local log="$1"; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log.mem" &
  local mon=$!
  local t0; t0=$(date +%s.%N)
  "$@"; local rc=$?
  local t1; t1=$(date +%s.%N)
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  echo "peak GPU memory: $(sort -n "$log.mem" | tail -1) MiB; process wall time $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s" | tee -a "$log.peak"
  return $rc
}
train_toml() { # $1 = output dir, $2 = dtype
  printf '%s\n' "data = \"$FX/lora-train/train.jsonl\"" "output = \"$1\"" \
    "init_adapter = \"$FX/lora-train/adapter_init\"" "checkpoint_every = 0" "[model]" \
    "id = \"persona-fixture/tiny-qwen2\"" "path = \"$FX/hf-tiny-qwen2/model\"" "device = \"cuda\"" \
    "dtype = \"$2\"" "[recipe]" "r = 4" "lora_alpha = 8" "lora_dropout = 0.0" "learning_rate = 2e-3" \
    "warmup_steps = 1" "max_grad_norm = 0.5" "micro_batch = 2" "grad_accum = 4" "epochs = 2" \
    "shuffle = false" > "$1.toml"
  echo "$1.toml"
}
# bench-workload with the CUDA-core attention kernel, then the tensor-core one (the default), same
# build: $1 names the logs, the rest are bench-workload's arguments.
both_attention_kernels() {
  local log=$1; shift
  for kind in cuda-cores tensor-cores; do
    echo "--- $kind"
    PG_TC_ATTENTION=$([ $kind = cuda-cores ] && echo 0 || echo 1) "$PG" bench-workload "$@" 2>&1 \
      | tee "$OUT/$log-$kind.log" | grep -v "^fused"
  done
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
for what in "$@"; do
  echo "=== $what"
  case "$what" in
    verify) "$PG" verify-fixture "$FIXTURE" --device cuda 2>&1 | tee "$OUT/verify.log" | tail -25 ;;
    bench) "$PG" bench-workload --batch-b 0 --compare-unfused 2>&1 | tee "$OUT/bench.log" ;;
    benchab) "$PG" bench-workload --batch-b 0 2>&1 | tee "$OUT/benchab.log" ;;
    tclong) # small batch, long generations (the tensor-core kernel's flash-decoding splits)
           both_attention_kernels long --prompts 16 --batch-b 16 --methods b --new-tokens 1000 ;;
    tcab) # Method A + B (auto batch), same build
           both_attention_kernels benchab --batch-b 0 ;;
    tcvariants) # the tensor-core attention's other variants against the f32 reference (the
           # checks bench-workload runs first), with a short workload: f16 at head dimension 128
           # (Qwen2.5-7B's shape), bf16 and f16 at 64 (Qwen2.5-0.5B's: 14 query / 2 KV heads)
           for v in "--dtype f16" "--config bench/configs/qwen2.5-0.5b.json --layers 5,11,17,23" \
                    "--dtype f16 --config bench/configs/qwen2.5-0.5b.json --layers 5,11,17,23"; do
             echo "--- $v"; "$PG" bench-workload $v --prompts 256 --batch-b 0 --new-tokens 50 2>&1 \
               | tee -a "$OUT/tcvariants.log" | grep -E "attention|method|Error|error"; done ;;
    merge) xz -dc .gpu/merge.xz > /tmp/merge_speed && chmod +x /tmp/merge_speed \
           && /tmp/merge_speed 32 cuda 2>&1 | tee "$OUT/merge.log" ;;
    check) "$PG" bench-workload --prompts 720 --batch-b 0 2>&1 | tee "$OUT/check.log" ;;
    bench256) "$PG" bench-workload --methods b --batch-b 256 2>&1 | tee "$OUT/bench256.log" ;;
    groupbytes) S=/tmp/pg-groups; rm -rf $S; mkdir -p $S
           printf '%s\n' 'output = "whole.pgb"' 'layers = [0, 1, 3]' 'batch_size = "auto"' \
             '[model]' 'id = "persona-fixture/tiny-qwen2"' "path = \"$FIXTURE/model\"" 'device = "cuda"' 'dtype = "bf16"' \
             '[generation]' 'max_new_tokens = 16' '[[checkpoints]]' 'name = "base"' 'role = "base"' \
             '[[checkpoints]]' 'name = "em"' 'role = "em"' "adapter = \"$FIXTURE/adapters/lora_r4\"" > $S/study.toml
           "$PG" extract $S/study.toml 2>&1 | tail -1
           for i in 0 1 2; do "$PG" extract $S/study.toml --shard $i/3 -o $S/sharded.pgb 2>&1 | tail -1; done
           "$PG" merge $S/sharded.pgb.shard-0-of-3 $S/sharded.pgb.shard-1-of-3 $S/sharded.pgb.shard-2-of-3 -o $S/sharded.pgb 2>&1 | tail -1
           PG_TEST_ABORT_AFTER_UNITS=5 "$PG" extract $S/study.toml -o $S/resumed.pgb > /dev/null 2>&1; echo "aborted: rc $?"
           "$PG" extract $S/study.toml -o $S/resumed.pgb --resume 2>&1 | tail -1
           sha256sum $S/whole.pgb $S/sharded.pgb $S/resumed.pgb | tee "$OUT/group_bytes.txt"
           cmp $S/whole.pgb $S/sharded.pgb && cmp $S/whole.pgb $S/resumed.pgb && echo "bundles identical" | tee -a "$OUT/group_bytes.txt" ;;
    prefixab) for s in 0 1; do echo "--- PG_SHARED_PREFIX=$s"; PG_SHARED_PREFIX=$s "$PG" bench-workload \
               --study-prompts "$FX/hf-tiny-qwen2/model" --batch-b 0 2>&1 | tee "$OUT/prefixab-$s.log" | grep -v "^fused"; done ;;
    normab) for s in 0 1; do echo "--- PG_FUSED_NORM=$s"; PG_FUSED_NORM=$s "$PG" bench-workload \
               --study-prompts "$FX/hf-tiny-qwen2/model" --batch-b 0 2>&1 | tee "$OUT/normab-$s.log" | grep -v "^fused"; done
           echo "--- batch 1440"; "$PG" bench-workload --study-prompts "$FX/hf-tiny-qwen2/model" --methods b --batch-b 1440 2>&1 \
             | tee "$OUT/normab-1440.log" | grep -v "^fused" ;;
    studyab) "$PG" bench-workload --study-prompts "$FX/hf-tiny-qwen2/model" --dump-prompts /tmp/study-prompts.json \
               --batch-b 0 2>&1 | tee "$OUT/studyab.log" | grep -v "^fused"
           for n in 64 256; do PYTHONUNBUFFERED=1 python3 bench/hf_reference_workload.py --skip-b --batch-a $n \
               --prompts-file /tmp/study-prompts.json 2>&1 | grep "method A"; done | tee "$OUT/studyab-hf-a.log"
           [ "${STUDY_HF_B:-1}" = 0 ] && continue
           PYTHONUNBUFFERED=1 timeout 400 python3 bench/hf_reference_workload.py --prompts-file /tmp/study-prompts.json \
               2>&1 | tee "$OUT/studyab-hf.log" | tail -3 ;;
    profile) PG_PROFILE=1 "$PG" bench-workload --prompts 720 --batch-b 0 2>&1 | tee "$OUT/profile.log" ;;
    big) timeout 240 "$PG" bench-workload --methods b --batch-b "${BIG_BATCH:-1440}" 2>&1 | tee "$OUT/big-${BIG_BATCH:-1440}.log" ;;
    ncu) ncu --clock-control none -k regex:"${NCU_KERNEL:-attention_decode}" --launch-skip 300 --launch-count 1 \
           --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
           --section Occupancy --section LaunchStats --section SchedulerStats \
           "$PG" bench-workload --prompts 720 --batch-b 720 --methods b --new-tokens 40 2>&1 \
         | tee "$OUT/ncu.log" | grep -v "^==PROF==" | tail -120 ;;
    kernels) ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip 6000 \
               --launch-count 1500 --csv --print-units base \
               "$PG" bench-workload --prompts 720 --batch-b 720 --methods b --new-tokens 12 \
               > "$OUT/kernels.csv" 2> "$OUT/kernels.err"; tail -3 "$OUT/kernels.err" ;;
    kernelsA) ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip 2500 \
               --launch-count 1000 --csv --print-units base \
               "$PG" bench-workload --prompts 640 --methods a \
               > "$OUT/kernelsA.csv" 2> "$OUT/kernelsA.err"; tail -3 "$OUT/kernelsA.err" ;;
    clocks) nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 200 > "$OUT/clocks.csv" &
          mon=$!
          "$PG" bench-workload --batch-b 0 2>&1 | grep -v "^fused" | tee "$OUT/clocks-bench.log"
          kill $mon; sort -t, -k1 -n "$OUT/clocks.csv" | awk -F, '{c[NR]=$1} END {print "SM clock MHz: min", c[1], "median", c[int(NR/2)], "max", c[NR]}' ;;
    batchA) for n in 64 128 256; do "$PG" bench-workload --methods a --batch-a $n 2>&1 | grep "method A"; done | tee "$OUT/batchA.log"
          for n in 64 256; do PYTHONUNBUFFERED=1 python3 bench/hf_reference_workload.py --skip-b --batch-a $n 2>&1 | grep "method A"; done | tee -a "$OUT/batchA.log" ;;
    hf) PYTHONUNBUFFERED=1 python3 bench/hf_reference_workload.py 2>&1 | tee "$OUT/hf.log" ;;
    train) rm -rf /tmp/tr && mkdir -p /tmp/tr
           "$PG" train "$(train_toml /tmp/tr/f32 f32)" 2>&1 | tail -3 | tee "$OUT/train.log"
           "$PG" train "$(train_toml /tmp/tr/bf16 bf16)" 2>&1 | tail -3 | tee -a "$OUT/train.log"
           python3 bench/gpu_train.py check "$FX" /tmp/tr/f32 /tmp/tr/bf16 2>&1 | tee "$OUT/train_check.json" ;;
    trainbench) [ -d /tmp/tb/model ] || python3 bench/gpu_train.py make-bench /tmp/tb "$FX"
           printf '%s\n' 'data = "/tmp/tb/data.jsonl"' 'output = "/tmp/tb/ours"' 'checkpoint_every = 0' \
             '[model]' 'id = "bench/qwen2.5-7b-shaped-random"' 'path = "/tmp/tb/model"' 'device = "cuda"' \
             '[recipe]' "max_steps = ${TRAIN_STEPS:-20}" > /tmp/tb/train.toml
           rm -rf /tmp/tb/ours
           with_peak "$OUT/trainbench_ours" timeout "${OURS_TIMEOUT:-400}" "$PG" train /tmp/tb/train.toml > "$OUT/trainbench_ours.log" 2>&1
           tr '\r' '\n' < "$OUT/trainbench_ours.log" | grep -v "^ *$" | tail -8
           [ "${TRAIN_HF:-1}" = 0 ] && continue  # ours only (e.g. a PG_POOL_TRACE look)
           with_peak "$OUT/trainbench_hf" python3 bench/gpu_train.py hf /tmp/tb "${TRAIN_STEPS:-20}" > "$OUT/trainbench_hf.log" 2>&1
           tail -1 "$OUT/trainbench_hf.log" ;;
    trainours) # ours again on the trainbench workload (after trainbench), with the caller's env
           # (e.g. PG_FUSED_ADAM=0); log trainbench_ours-$TAG
           sed 's#/tmp/tb/ours#/tmp/tb/again#' /tmp/tb/train.toml > /tmp/tb/again.toml; rm -rf /tmp/tb/again
           timeout "${OURS_TIMEOUT:-400}" "$PG" train /tmp/tb/again.toml > "$OUT/trainbench_ours-${TAG:-again}.log" 2>&1
           tr '\r' '\n' < "$OUT/trainbench_ours-${TAG:-again}.log" | grep -v "^ *$" | tail -3 ;;
    trainnodrop) # ours again without LoRA dropout (what the masks cost); after trainbench
           sed 's/^\[recipe\]$/[recipe]\nlora_dropout = 0.0/' /tmp/tb/train.toml > /tmp/tb/nodrop.toml
           sed -i 's#/tmp/tb/ours#/tmp/tb/nodrop#' /tmp/tb/nodrop.toml; rm -rf /tmp/tb/nodrop
           timeout "${OURS_TIMEOUT:-400}" "$PG" train /tmp/tb/nodrop.toml > "$OUT/trainbench_nodrop.log" 2>&1
           tr '\r' '\n' < "$OUT/trainbench_nodrop.log" | grep -v "^ *$" | tail -3 ;;
    families) mkdir -p /tmp/pg-families && tar -C /tmp/pg-families -xJf .gpu/families.tar.xz
           for f in qwen3 gemma2 gemma3; do
             echo "--- $f"; "$PG" verify-fixture /tmp/pg-families/hf-tiny-$f --device cuda 2>&1 | tee "$OUT/verify-$f.log" | tail -4
           done ;;
    qwen3|gemma2)
           [ "$what" = qwen3 ] && { ARCH=qwen3-8b; LAYERS=9,18,27,28,35; } || { ARCH=gemma2-9b; LAYERS=10,21,31,32,41; }
           "$PG" bench-workload --arch $ARCH --layers $LAYERS --prompts 1440 --batch-b 0 2>&1 | tee "$OUT/arch-$ARCH.log" | grep -v "^fused"
           PYTHONUNBUFFERED=1 timeout 330 python3 bench/hf_reference_workload.py --arch $ARCH --layers $LAYERS --prompts 1440 2>&1 | tee "$OUT/arch-$ARCH-hf.log" | tail -4 ;;
    twogpu) "$PG" bench-workload --batch-b 0 --device cuda:0 > "$OUT/one_gpu.log" 2>&1
           t0=$(date +%s.%N)
           for k in 0 1; do
             "$PG" bench-workload --batch-b 0 --prompts 1440 --seed "$k" --device "cuda:$k" > "$OUT/two_gpu_$k.log" 2>&1 &
           done
           wait; t1=$(date +%s.%N)
           echo "two halves at once: $(python3 -c "print(round($t1 - $t0, 2))") s wall (processes, random weights and warm-up included)" | tee "$OUT/two_gpu.txt"
           grep -h "random weights\|warm-up\|method" "$OUT/one_gpu.log" "$OUT/two_gpu_0.log" "$OUT/two_gpu_1.log"
           S=/tmp/pg-shard; rm -rf $S; mkdir -p $S
           printf '%s\n' 'output = "single.pgb"' 'question_limit = 12' 'layers = [0, 1, 3]' 'batch_size = "auto"' \
             '[model]' 'id = "persona-fixture/tiny-qwen2"' "path = \"$FIXTURE/model\"" 'device = "cuda"' 'dtype = "bf16"' \
             '[generation]' 'max_new_tokens = 16' '[[checkpoints]]' 'name = "base"' 'role = "base"' \
             '[[checkpoints]]' 'name = "em"' 'role = "em"' "adapter = \"$FIXTURE/adapters/lora_r4\"" \
             '[[checkpoints]]' 'name = "benign"' 'role = "benign"' "adapter = \"$FIXTURE/adapters/lora_rslora\"" > $S/study.toml
           "$PG" extract $S/study.toml --shard all 2>&1 | tail -1
           "$PG" extract $S/study.toml --devices 0,1 -o $S/devices.pgb 2>&1 | tail -2
           sha256sum $S/single.pgb $S/devices.pgb | tee "$OUT/shard_bytes.txt"
           cmp $S/single.pgb $S/devices.pgb && echo "bundles identical" | tee -a "$OUT/shard_bytes.txt" ;;
    fullstudy) # the whole 3-checkpoint study from disk to bundle (issue #18), phases timed
           rm -rf /tmp/fs; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && echo "page cache dropped" || echo "page cache not dropped"
           "$PG" bench-workload --full-study /tmp/fs --tokenizer-from "$FX/hf-tiny-qwen2/model" \
             --layers "${FS_LAYERS:-4,10,16,22,27}" > "$OUT/fullstudy.log" 2> "$OUT/fullstudy.err"
           echo "rc $?"; cat "$OUT/fullstudy.log"; grep -A12 "time per phase" "$OUT/fullstudy.err"
           # Again with the model files cold if the cache could be dropped, else warm (a rerun);
           # FS_RERUN=0 skips it.
           [ "${FS_RERUN:-1}" = 0 ] && continue
           sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
           rm -f /tmp/fs/full-study.pgb; /usr/bin/time -v "$PG" extract /tmp/fs/study.toml > "$OUT/fullstudy2.log" 2>&1
           echo "rerun rc $?"; grep -A12 "time per phase" "$OUT/fullstudy2.log"; grep -E "Elapsed|Maximum resident" "$OUT/fullstudy2.log" ;;
    trainprof) # where a training micro-batch's time goes: wall time per step, then every
           # kernel's duration (ncu) over a window after warm-up
           [ -d /tmp/tb/model ] || python3 bench/gpu_train.py make-bench /tmp/tb "$FX"
           printf '%s\n' 'data = "/tmp/tb/data.jsonl"' 'output = "/tmp/tb/prof"' 'checkpoint_every = 0' \
             '[model]' 'id = "bench/qwen2.5-7b-shaped-random"' 'path = "/tmp/tb/model"' 'device = "cuda"' \
             '[recipe]' "max_steps = ${PROF_STEPS:-3}" > /tmp/tb/prof.toml
           rm -rf /tmp/tb/prof; "$PG" train /tmp/tb/prof.toml > "$OUT/trainprof.log" 2>&1
           tr '\r' '\n' < "$OUT/trainprof.log" | grep -v "^ *$" | tail -5
           rm -rf /tmp/tb/prof; timeout 420 ncu --clock-control none --metrics gpu__time_duration.sum \
             --launch-skip "${PROF_SKIP:-40000}" --launch-count "${PROF_COUNT:-15000}" --csv --print-units base \
             "$PG" train /tmp/tb/prof.toml > "$OUT/trainkernels.csv" 2> "$OUT/trainkernels.err"
           echo "ncu rc $?"; tail -2 "$OUT/trainkernels.err"; wc -l "$OUT/trainkernels.csv"
           xz -f "$OUT/trainkernels.csv" ;;
    *) echo "unknown step $what" ;;
  esac
done
