#!/usr/bin/env bash
# Installs what building and testing the explorer page needs; idempotent (skips what is there).
#   - Rust target wasm32-unknown-unknown
#   - trunk 0.21.14 (0.22 needs a newer rustc; about 10-25 minutes to build once)
#   - wasm-bindgen-cli 0.2.130 (must equal the `wasm-bindgen` pin in explorer/Cargo.toml)
#   - npm: binaryen 132 (wasm-opt; Debian's binaryen 108 breaks the page), playwright-core and
#     axe-core 4.14.1 (the accessibility test)
#   - Debian chromium + chromium-driver (headless browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TOOLS_TARGET="${PG_TOOLS_TARGET:-$HOME/.cache/persona-geometry/tools/target}"
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! trunk --version 2>/dev/null | grep -q "0.21.14"; then
  echo "[setup] installing trunk 0.21.14 (one-time build)"
  cargo install --locked trunk@0.21.14 --target-dir "$TOOLS_TARGET"
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q "0.2.130"; then
  echo "[setup] installing wasm-bindgen-cli 0.2.130"
  cargo install wasm-bindgen-cli --version 0.2.130 --target-dir "$TOOLS_TARGET"
fi
if [ ! -x tests/browser/node_modules/.bin/wasm-opt ] || [ ! -d tests/browser/node_modules/playwright-core ] \
  || [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
  echo "[setup] installing npm packages (binaryen 132, playwright-core, axe-core)"
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "[setup] installing chromium and chromium-driver (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
