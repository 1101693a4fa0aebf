#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test mlmf: a Vulkan driver
# (Mesa's lavapipe, a conformant Vulkan device that runs on the CPU; real GPUs bring their own
# driver), pip for fetching the model packages, venv for the gguf-py the tests compare with, for
# the `video` feature (ffmpeg-next) FFmpeg's development packages, pkg-config to find them and
# libclang for bindgen, and for the `mpi` feature (rsmpi) Open MPI's development files and mpirun.
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
# The `video` feature links the system's FFmpeg (5.1 on Debian 12) through ffmpeg-sys-next, whose
# build script finds the libraries with pkg-config and generates bindings with libclang.
if ! command -v pkg-config >/dev/null 2>&1; then
    need+=(pkg-config)
fi
for lib in libavcodec libavformat libavutil libswscale libavfilter libavdevice libswresample; do
    if ! pkg-config --exists "$lib" 2>/dev/null; then
        need+=("$lib-dev")
    fi
done
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
# The `mpi` feature: mpi-sys's build script asks `mpicc -show` (or pkg-config's ompi) how to link
# Open MPI and generates bindings with libclang (above); the tests start ranks with mpirun.
if ! pkg-config --exists ompi 2>/dev/null || ! command -v mpicc >/dev/null 2>&1; then
    need+=(libopenmpi-dev)
fi
if ! command -v mpirun >/dev/null 2>&1; then
    need+=(openmpi-bin)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "mlmf needs: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
