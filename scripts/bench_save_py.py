#!/usr/bin/env python3
"""Baseline for benches/save.rs: Python `safetensors.numpy.save_file` of a model's tensors.

Usage: bench_save_py.py MODEL OUT ITERS
  MODEL  a .safetensors file (read with safetensors.numpy.load_file) or a .gguf file (each tensor
         as gguf-py's GGUFReader holds its stored bytes: quantized blocks as uint8 arrays)
  OUT    where to save (overwritten each time)
Reading is not timed; each save is followed by os.fsync, as mlmf's writer fsyncs.
Prints one JSON line: {"tensors", "bytes", "iters", "seconds"}.
"""
import json
import os
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file


def tensors_of(path):
    if path.endswith(".gguf"):
        from gguf import GGUFReader

        reader = GGUFReader(path)
        return {t.name: np.ascontiguousarray(t.data) for t in reader.tensors}
    return load_file(path)


def main() -> None:
    model, out, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tensors = tensors_of(model)
    total = sum(a.nbytes for a in tensors.values())
    start = time.perf_counter()
    for _ in range(iters):
        save_file(tensors, out)
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - start
    print(json.dumps({"tensors": len(tensors), "bytes": total, "iters": iters, "seconds": seconds}))


if __name__ == "__main__":
    main()
