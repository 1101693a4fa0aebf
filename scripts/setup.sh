#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test mlmf: a Vulkan driver
# (Mesa's lavapipe, a conformant Vulkan device that runs on the CPU; real GPUs bring their own
# driver), pip for fetching the model packages and venv for the gguf-py the tests compare with.
# Does nothing when all are present.
set -euo pipefail

need=()
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    need+=(mesa-vulkan-drivers)
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    need+=(python3-pip)
fi
# scripts/test.sh makes a venv for gguf-py; Debian ships venv's ensurepip in python3-venv.
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "mlmf needs: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
