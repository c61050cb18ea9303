#!/usr/bin/env bash
# Sets up (idempotent) and runs every test: Rust unit/integration tests (HF fixture oracle,
# planted effects, null calibration, import, end-to-end, SmolLM2 smoke), then the independent
# Python oracles (scikit-learn LDA/Ledoit-Wolf, statsmodels BH/Holm) on cases the Rust tests wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
export PG_ORACLE_DIR="${PG_ORACLE_DIR:-$(mktemp -d)}"
export PG_REQUIRE_SMOLLM2=1
# The analysis library must stay browser-ready (no threads, no LAPACK, no getrandom).
cargo check --locked -p shared --target wasm32-unknown-unknown
cargo test --workspace --locked 2>&1 | tee "$PG_ORACLE_DIR/cargo-test.log"
python3 tests/oracle/check_sklearn.py
