#!/usr/bin/env python3
"""Baseline for benches/models.rs (group `matmul`): numpy's float32 matrix product.

Usage: bench_matmul_numpy.py M K N TRANS_B ITERS
  A is [M, K]; B is [K, N], or [N, K] used transposed when TRANS_B is 1 (nn.Linear's x @ W.T,
  as `a @ b.T`, which numpy hands to BLAS without a copy). Values are random in [-1, 1).
Prints one JSON line: {"m", "k", "n", "trans_b", "iters", "seconds" (all ITERS products,
without the interpreter's start-up, imports and making the operands), "threads" (what numpy's
BLAS reports using, when threadpoolctl is installed; else null)}.
"""
import json
import sys
import time

import numpy as np


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"]


def main() -> None:
    m, k, n, trans_b, iters = (int(v) for v in sys.argv[1:6])
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(np.float32)
    out = np.empty((m, n), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(iters):
        np.matmul(a, b.T if trans_b else b, out=out)
    seconds = time.perf_counter() - start
    print(json.dumps({"m": m, "k": k, "n": n, "trans_b": bool(trans_b), "iters": iters,
                      "seconds": seconds, "threads": blas_threads()}))


if __name__ == "__main__":
    main()
