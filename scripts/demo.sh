#!/usr/bin/env bash
# The main demo: fetches the real model files, then loads each one onto the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 scripts/fetch_models.py
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo run --release --example load_models
