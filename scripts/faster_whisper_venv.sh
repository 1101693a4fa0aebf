#!/usr/bin/env bash
# Makes the virtual environment of the Whisper bench's baseline (crates/mlmf/benches/whisper.rs,
# through scripts/bench_whisper_fw.py): faster-whisper and CTranslate2 at the versions the
# fixture /work/shared/fixtures/whisper was made with, from PyPI, outside git.
#
# A venv of its own, not the test venv ($models/venv, scripts/test.sh): faster-whisper pulls
# CTranslate2, onnxruntime, av, tokenizers and huggingface-hub (a few hundred MB), which no test
# needs; the test venv stays small and quick to make on a fresh machine.
#
# Usage: scripts/faster_whisper_venv.sh   (idempotent: does nothing when the venv already holds
# those versions). Prints the venv's python as its last line; the bench finds it through
# $MLMF_FW_PYTHON, whose default is this same path.
set -euo pipefail

models="${MLMF_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mlmf}"
venv="${MLMF_FW_VENV:-$models/faster-whisper-venv}"
faster_whisper_version=1.2.1
ctranslate2_version=4.8.5

if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('faster-whisper') == '$faster_whisper_version'; assert m.version('ctranslate2') == '$ctranslate2_version'; import faster_whisper, ctranslate2" 2>/dev/null; then
    echo "making $venv with faster-whisper==$faster_whisper_version, ctranslate2==$ctranslate2_version" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "faster-whisper==$faster_whisper_version" "ctranslate2==$ctranslate2_version"
fi
echo "$venv/bin/python"
