#!/usr/bin/env bash
# Builds the explorer (release) and the CLI, then runs the tests in headless Chromium: the Rust-level
# ones (explorer/tests/web.rs through wasm-bindgen-test-runner + chromedriver; capabilities in
# explorer/webdriver.json) and the page's (tests/browser/*.test.mjs, Playwright): loading,
# numbers equal to `analyze`, controls, permalink, exports, errors, workers. Called by
# scripts/test_all.sh; runs on its own too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
./scripts/build_explorer.sh >/dev/null
(cd explorer && CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}" \
  cargo test --locked --target wasm32-unknown-unknown --test web)
cargo build --release --locked -p extractor
export PG_BIN="$CARGO_TARGET_DIR/release/persona-geometry"
export PG_DIST="$PWD/dist"
export PG_WORK="${PG_WORK:-$(mktemp -d)}"
node --test --test-concurrency=1 tests/browser/
