#!/usr/bin/env bash
# Builds the explorer site into dist/ (release, wasm-opt -O3). Plain static files: publish dist/
# on any static host. `./scripts/build_explorer.sh serve` serves it on http://127.0.0.1:8080/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_explorer.sh
export PATH="$PWD/tests/browser/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persona-geometry/target}"
if [ "${1:-}" = serve ]; then
  exec trunk serve --release
fi
trunk build --release
ls -l dist
