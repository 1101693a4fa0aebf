#!/usr/bin/env python3
"""Baseline for crates/mlmf/benches/audio.rs: decode with soundfile (libsndfile) to float32,
mix to mono by the mean, resample to 16 kHz with python-soxr (libsoxr, its default "HQ"
quality; skipped when the file is already at 16 kHz), the same steps mlmf's bench times.

Usage: bench_audio_py.py FILE ITERS
Prints one JSON line: {"iters", "seconds" (all ITERS, without start-up), "n_out", "duration"
(seconds of audio in the file), "soundfile", "soxr", "libsndfile"}.
"""
import json
import sys
import time

import soundfile
import soxr


def once(path):
    x, sr = soundfile.read(path, dtype="float32", always_2d=True)
    mono = x.mean(axis=1, dtype="float32")
    if sr != 16000:
        mono = soxr.resample(mono, sr, 16000)
    return mono, sr, x.shape[0]


def main():
    path, iters = sys.argv[1], int(sys.argv[2])
    out, sr, n = once(path)
    start = time.perf_counter()
    for _ in range(iters):
        once(path)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "iters": iters, "seconds": seconds, "n_out": len(out), "duration": n / sr,
        "soundfile": soundfile.__version__, "soxr": soxr.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }))


if __name__ == "__main__":
    main()
