#!/usr/bin/env python3
"""Write gguf_py_block_types.gguf with gguf-py 0.19.0 (scripts/test.sh's venv): one small tensor
per GGML block type gguf-py knows (two rows of two blocks of seeded random bytes, each f16 scale
made finite), so that the reader and the fuzzer see every block geometry, the ten types of issue
12 (MXFP4, TQ1_0, TQ2_0 and the i-quants on grids) included, in a file an independent writer
made. Their values are checked elsewhere (crates/mlmf-gpu/tests/block_types.rs); this file is
about layout: names, types, shapes and offsets as gguf-py wrote them.

Run: $MLMF_PYTHON tests/data/make_gguf_block_types.py   (rewrites the file beside it, byte for
byte the same each run)
"""

import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_py_block_types.gguf")

# Byte offsets of the f16 scales to make finite (ggml-common.h); IQ1_M's d is spread over the top
# nibbles of its scales, its exponent's top bit is bit 6 of byte 55. MXFP4's E8M0 is any byte.
F16_AT = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ3_XXS: [0], T.IQ1_S: [0], T.IQ4_NL: [0], T.IQ3_S: [0],
    T.IQ2_S: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [],
}


def main():
    rng = np.random.default_rng(12)
    w = gguf.GGUFWriter(OUT, "llama")
    w.add_string("general.name", "block types")
    for qt in list(F16_AT) + [T.IQ1_M]:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        blocks = rng.integers(0, 256, size=(4, size), dtype=np.uint8)
        for at in F16_AT.get(qt, []):
            blocks[(blocks[:, at + 1] & 0x7C) == 0x7C, at + 1] &= np.uint8(0xBF)
        if qt == T.IQ1_M:
            blocks[:, 55] &= np.uint8(0xBF)
        raw = blocks.reshape(2, 2 * size)
        w.add_tensor(qt.name, raw, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{OUT}: {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
