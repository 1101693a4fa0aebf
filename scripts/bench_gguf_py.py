#!/usr/bin/env python3
"""Baseline for benches/quant.rs: gguf-py's numpy dequantization of raw GGUF block bytes.

Usage: bench_gguf_py.py TYPE FILE ELEMENTS ITERS [ROWS]
  TYPE      a GGML type name (Q4_0, Q6_K, ...)
  FILE      raw block bytes of ELEMENTS elements, as a GGUF file stores them
  ITERS     how many times to decode them
  ROWS      if given, time a matrix-vector product instead: the decoded [ROWS, ELEMENTS / ROWS]
            matrix times a vector of ones, as numpy float32 (`dequantize(...) @ x`)
Prints one JSON line: {"type", "elements", "iters", "seconds" (all ITERS decodes, without the
interpreter's start-up and imports), "sha256" (of the f32 little-endian output, so the caller
can check that gguf-py decoded the same values)}.
"""
import hashlib
import json
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


def main() -> None:
    type_name, path, elements, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rows = int(sys.argv[5]) if len(sys.argv) > 5 else None
    qtype = GGMLQuantizationType[type_name]
    raw = np.fromfile(path, dtype=np.uint8)
    x = np.ones(elements // rows, dtype=np.float32) if rows else None
    out = None
    start = time.perf_counter()
    for _ in range(iters):
        out = dequantize(raw, qtype)
        if rows:
            y = out.reshape(rows, -1).astype(np.float32, copy=False) @ x
    seconds = time.perf_counter() - start
    out = np.ascontiguousarray(out, dtype="<f4").reshape(-1)
    assert out.size == elements, (out.size, elements)
    print(json.dumps({
        "type": type_name,
        "elements": elements,
        "iters": iters,
        "seconds": seconds,
        "sha256": hashlib.sha256(out.tobytes()).hexdigest(),
    }))


if __name__ == "__main__":
    main()
