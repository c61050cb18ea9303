#!/usr/bin/env bash
# Sets up (idempotent) and runs every test: Rust unit/integration tests (HF fixture oracle,
# planted effects, null calibration, import, end-to-end, SmolLM2 smoke, the default study's
# controls end to end), the independent Python oracles (scikit-learn LDA/Ledoit-Wolf, statsmodels
# BH/Holm) on cases the Rust tests wrote, then the explorer page in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/setup_explorer.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
export PG_ORACLE_DIR="${PG_ORACLE_DIR:-$(mktemp -d)}"
export PG_E2E_DIR="${PG_E2E_DIR:-$(mktemp -d)}"
export PG_REQUIRE_SMOLLM2=1 PG_REQUIRE_GEMMA3=1 PG_REQUIRE_E2E=1
# The analysis library must stay browser-ready (no threads, no LAPACK, no getrandom).
cargo check --locked -p shared --target wasm32-unknown-unknown
cargo test --workspace --exclude explorer --locked 2>&1 | tee "$PG_ORACLE_DIR/cargo-test.log"
python3 tests/oracle/check_sklearn.py
./scripts/test_browser.sh
