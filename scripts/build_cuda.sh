#!/usr/bin/env bash
# Builds the CUDA binary (candle with `cuda`, sm_90) on this CPU-only machine with the CUDA 13.0
# toolchain from PyPI wheels, and a link-only libcuda.so stub (the real driver library comes with
# the GPU host's driver). Idempotent; the binary lands in
# $CUDA_TARGET_DIR/release/persona-geometry (default ~/.cache/persona-geometry/target-cuda).
# CUDA <= 13.0 because the GPU hosts' driver is 13.0. CI does not run this (no GPU, ~15 min).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CUDA_PY="${CUDA_PY:-$HOME/.cache/persona-geometry/cuda/py}"
CU="$CUDA_PY/nvidia/cu13"
if [ ! -x "$CU/bin/nvcc" ]; then
  python3 -m pip install --quiet --target "$CUDA_PY" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
    "nvidia-cuda-cccl<13.1" "nvidia-curand<10.5" "nvidia-cublas<13.2"
fi
# Unversioned names for the linker.
for lib in "$CU"/lib/lib*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
export CUDA_TARGET_DIR="${CUDA_TARGET_DIR:-$HOME/.cache/persona-geometry/target-cuda}"
export CARGO_TARGET_DIR="$CUDA_TARGET_DIR"
cargo fetch --locked
# Link-only libcuda.so: every cu* driver symbol cudarc declares, as an empty function.
STUB="$CUDA_PY/stub"
if [ ! -f "$STUB/libcuda.so" ]; then
  mkdir -p "$STUB"
  grep -rhoE "fn cu[A-Za-z0-9_]+\(" "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys/ | sed -e 's/^fn //' -e 's/($//' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$STUB/stub.c"
  [ -s "$STUB/stub.c" ] || { echo "no cu* symbols found in cudarc's driver bindings" >&2; exit 1; }
  cc -shared -fPIC -o "$STUB/libcuda.so" "$STUB/stub.c"
  ln -sf libcuda.so "$STUB/libcuda.so.1"
fi
export CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" CUDA_COMPUTE_CAP=90
export PATH="$CU/bin:$PATH"
export LIBRARY_PATH="$STUB:$CU/lib:${LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$CU/lib:${LD_LIBRARY_PATH:-}"
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$CU/include"
export RUSTFLAGS="-C target-cpu=x86-64-v3 -L $STUB -L $CU/lib"
# Extra arguments go to cargo (e.g. `--example merge_speed`).
cargo build --release --locked -p extractor --features cuda "$@"
# The CUDA-only unit tests that need no GPU (every kernel name the launches use is in the loaded fatbin;
# our kernels and the candle modules we launch are fatbins); the stub stands in for the driver
# library at load time.
LD_LIBRARY_PATH="$STUB:$LD_LIBRARY_PATH" cargo test --release --locked -p runtime --features cuda --lib -- cuda_ops train_kernels kernel_modules tc_attention
echo "built $CARGO_TARGET_DIR/release/persona-geometry"
