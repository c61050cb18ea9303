#!/usr/bin/env bash
# Packs what bench/gpu_run.sh needs into .gpu/ (ignored by git; carry it to the device):
# the CUDA binary (scripts/build_cuda.sh) as pg.xz and the fixtures the GPU checks read
# (fixture.tar.xz for `verify`, fixtures.tar.xz for `train`, families.tar.xz for `families`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
xz -T2 -6 -c "${CUDA_TARGET_DIR:-$HOME/.cache/persona-geometry/target-cuda}/release/persona-geometry" > .gpu/pg.xz
tar -C ../shared/fixtures -cJf .gpu/fixtures.tar.xz hf-tiny-qwen2/model lora-train
# The whole HF fixture (model, adapters, expected.json) for `verify`, unpacked as fixture/.
tar -C ../shared/fixtures --transform 's,^hf-tiny-qwen2,fixture,' -cJf .gpu/fixture.tar.xz hf-tiny-qwen2
tar -C ../shared/fixtures -cJf .gpu/families.tar.xz hf-tiny-qwen3 hf-tiny-gemma2 hf-tiny-gemma3
ls -la .gpu
