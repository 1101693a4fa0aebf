#!/usr/bin/env bash
# Runs every test of mlmf on a fresh machine: installs what is missing, fetches the real model
# files into the cache (outside git), then runs the unit, integration, doc and benchmark-smoke
# tests. The GPU tests run on whatever adapter wgpu finds (lavapipe on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 scripts/fetch_models.py

# The reference readers tests check written files with: gguf-py (scripts/check_gguf.py) and
# Python safetensors (scripts/check_safetensors.py), in a venv in the model cache: outside git,
# made once and reused.
models="${MLMF_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mlmf}"
venv="$models/venv"
gguf_version=0.19.0
safetensors_version=0.6.2
# Baselines of the audio bench (crates/mlmf/benches/audio.rs), as the fixtures were made with.
soundfile_version=0.14.0
soxr_version=1.1.0
if ! "$venv/bin/python" -c "import importlib.metadata as m, numpy; assert m.version('gguf') == '$gguf_version'; assert m.version('safetensors') == '$safetensors_version'; assert m.version('soundfile') == '$soundfile_version'; assert m.version('soxr') == '$soxr_version'" 2>/dev/null; then
    echo "making $venv with gguf==$gguf_version, safetensors==$safetensors_version, soundfile==$soundfile_version, soxr==$soxr_version" >&2
    mkdir -p "$models"
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install -q "gguf==$gguf_version" "safetensors==$safetensors_version" \
        "soundfile==$soundfile_version" "soxr==$soxr_version"  # gguf pulls numpy
fi
export MLMF_PYTHON="$venv/bin/python"
# The Vulkan loader complains on stderr without a runtime directory; give it one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# The `video` feature (FFmpeg through ffmpeg-next) and the `mpi` feature (Open MPI through rsmpi;
# its tests start mpirun themselves) are on for the whole run (scripts/setup.sh installs what they
# need): the same features for every command, so the workspace is built once.
features=mlmf/video,mlmf-cli/video,mlmf/mpi,mlmf-cli/mpi
cargo test --workspace --all-targets --features "$features"
cargo test --workspace --doc --features "$features"
