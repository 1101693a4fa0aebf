#!/usr/bin/env python3
"""Baseline for benches/quant.rs: gguf-py's numpy dequantization of raw GGUF block bytes.

Usage: bench_gguf_py.py TYPE FILE ELEMENTS
  TYPE      a GGML type name (Q4_0, Q6_K, ...)
  FILE      raw block bytes of ELEMENTS elements, as a GGUF file stores them
Prints one JSON line: {"type", "elements", "seconds" (median of 3), "gb_per_s" (f32 output bytes
per second), "sha256" (of the f32 little-endian output, so the caller can check it decoded the
same values)}.
"""
import hashlib
import json
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


def main() -> None:
    type_name, path, elements = sys.argv[1], sys.argv[2], int(sys.argv[3])
    qtype = GGMLQuantizationType[type_name]
    raw = np.fromfile(path, dtype=np.uint8)
    times = []
    out = None
    for _ in range(3):
        start = time.perf_counter()
        out = dequantize(raw, qtype)
        times.append(time.perf_counter() - start)
    out = np.ascontiguousarray(out, dtype="<f4").reshape(-1)
    assert out.size == elements, (out.size, elements)
    seconds = sorted(times)[1]
    print(json.dumps({
        "type": type_name,
        "elements": elements,
        "seconds": seconds,
        "gb_per_s": elements * 4 / seconds / 1e9,
        "sha256": hashlib.sha256(out.tobytes()).hexdigest(),
    }))


if __name__ == "__main__":
    main()
