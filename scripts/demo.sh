#!/usr/bin/env bash
# The main demo: fetches the real models and sample photos, then runs the image+text search
# (MobileNetV2 and all-MiniLM-L6-v2 on the GPU, joined by late fusion) on them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 scripts/fetch_models.py
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo run --release --example image_text_search -- "$@"
