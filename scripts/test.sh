#!/usr/bin/env bash
# Runs every test of mlmf on a fresh machine: installs what is missing, fetches the real model
# files into the cache (outside git), then runs the unit, integration, doc and benchmark-smoke
# tests. The GPU tests run on whatever adapter wgpu finds (lavapipe on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 scripts/fetch_models.py
# The Vulkan loader complains on stderr without a runtime directory; give it one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --all-targets
cargo test --doc
