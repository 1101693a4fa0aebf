#!/usr/bin/env python3
"""Baseline for benches/lora.rs: PEFT's merge arithmetic, `W + (B @ A) * scaling`
(peft/tuners/lora/layer.py, Linear.merge with get_delta_weight), in numpy float32 on the
same weights: SmolLM2's q/k/v/o projections decoded to f32 by gguf-py (not timed).

Usage: bench_lora_numpy.py SMOLLM2_GGUF RANK ITERS
Prints one JSON line: {"targets", "rank", "iters", "seconds" (all ITERS merges of every
target, without start-up, reading and decoding)}.
"""
import json
import sys
import time

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output")


def main() -> None:
    path, rank, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    reader = GGUFReader(path)
    rng = np.random.default_rng(0)
    targets = []
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in PROJECTIONS:
            w = dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
            w = np.ascontiguousarray(w, dtype=np.float32)
            a = rng.standard_normal((rank, w.shape[1]), dtype=np.float32)
            b = rng.standard_normal((w.shape[0], rank), dtype=np.float32)
            targets.append((w, a, b))
    scaling = np.float32(2.0)
    start = time.perf_counter()
    for _ in range(iters):
        for w, a, b in targets:
            merged = w + (b @ a) * scaling
    seconds = time.perf_counter() - start
    print(json.dumps({"targets": len(targets), "rank": rank, "iters": iters, "seconds": seconds}))


if __name__ == "__main__":
    main()
